# Everything starts from a machine with only Python: each target creates the venv if needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install test lint demo bench bench-quick clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check batchrun tests bench
	$(BIN)/ruff format --check batchrun tests bench
	$(BIN)/mypy

# Runs jobs/demo.toml against a local simulator (with latency, 5 % errors and some 429s,
# all retried) and prints the summary.
demo: $(STAMP)
	@set -e; \
	port=$$($(BIN)/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'); \
	$(BIN)/batchrun simulate --port $$port --latency-ms 60 --jitter-ms 40 --error-rate 0.05 \
		--rate-429 0.02 --retry-after 0.5 & sim=$$!; \
	trap 'kill $$sim 2>/dev/null || true' EXIT; \
	$(BIN)/python -c 'import socket, sys, time; [time.sleep(0.1) for _ in range(100) if socket.socket().connect_ex(("127.0.0.1", int(sys.argv[1])))]' $$port; \
	AIMLAPI_KEY=demo-key-not-secret $(BIN)/batchrun run jobs/demo.toml --restart \
		--base-url http://127.0.0.1:$$port/v1

bench: $(STAMP)
	$(BIN)/python -m bench.run

bench-quick: $(STAMP)
	$(BIN)/python -m bench.run --quick

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
