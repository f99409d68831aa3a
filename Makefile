# Everything starts from a machine with only Python: each target creates the venv if needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install test test-interop interop-env lint demo bench bench-quick clean

# A real LiteLLM proxy for the interop tests, in its own venv: litellm needs aiohttp >= 3.14,
# which the test venv cannot have (aioresponses builds no responses for it). ~90 s, ~750 MB.
INTEROP := .venv-interop
INTEROP_STAMP := $(INTEROP)/.installed-stamp
LITELLM_SPEC ?= litellm[proxy]==1.108.7

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(INTEROP_STAMP):
	$(PY) -m venv $(INTEROP)
	$(INTEROP)/bin/python -m pip install -q '$(LITELLM_SPEC)'
	touch $(INTEROP_STAMP)

interop-env: $(INTEROP_STAMP)

# tests/test_interop_litellm.py also runs under `make test` once the venv exists.
test-interop: $(STAMP) $(INTEROP_STAMP)
	$(BIN)/python -m pytest -q tests/test_interop_litellm.py

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
	rm -rf $(VENV) $(INTEROP) out .pytest_cache .mypy_cache .ruff_cache
