"""Interop: the real CLI through a real LiteLLM proxy (``litellm --config``, started here on
127.0.0.1) in front of the simulator's OpenAI flavour, as a user would run it.

LiteLLM comes from its own venv (``make interop-env``: litellm needs an aiohttp the test venv
cannot have), found at ``$BATCHRUN_LITELLM`` or ``.venv-interop/bin/litellm``. Without it
these tests skip, except under CI, where a missing proxy is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from batchrun.simulate import SimConfig
from tests.conftest import ROOT, SimThread, run_cli, write_jsonl

pytestmark = [pytest.mark.e2e, pytest.mark.interop]

MASTER_KEY = "sk-interop-not-a-secret-0123456789"
START_TIMEOUT_S = 180


def _litellm() -> str | None:
    found = os.environ.get("BATCHRUN_LITELLM") or str(ROOT / ".venv-interop" / "bin" / "litellm")
    return found if Path(found).is_file() else shutil.which("litellm")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proxy:
    """The simulators behind one LiteLLM proxy, a model name each."""

    def __init__(self, url: str, sims: dict[str, SimThread]) -> None:
        self.url = url
        self.sims = sims


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    binary = _litellm()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("litellm not found: .ci/run must run `make interop-env` first")
        pytest.skip("litellm not installed (make interop-env)")
    sims = {
        "sim-ok": SimThread(SimConfig(flavor="openai"), record_bodies=True),
        "sim-busy": SimThread(
            SimConfig(flavor="openai", first_429s=1, retry_after_s=3.0), record_bodies=True
        ),
        "sim-500": SimThread(SimConfig(flavor="openai", error_500_rate=1.0)),
    }
    for sim in sims.values():
        sim.__enter__()
    folder = tmp_path_factory.mktemp("litellm")
    models = [
        {
            "model_name": name,
            # The upstream model is a priced one, so LiteLLM reports a cost.
            "litellm_params": {"model": "openai/gpt-4o-mini", "api_base": sim.url, "api_key": "k"},
        }
        for name, sim in sims.items()
    ]
    config = {
        "model_list": models,
        # batchrun does the retrying: LiteLLM must relay the upstream's answer at once.
        "litellm_settings": {"num_retries": 0, "request_timeout": 60},
        "router_settings": {"disable_cooldowns": True, "num_retries": 0},
        "general_settings": {"master_key": MASTER_KEY},
    }
    (folder / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    port = _free_port()
    env = {
        **os.environ,
        # Nothing fetched from outside: the bundled model cost map, no telemetry.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "NO_DOCS": "True",
    }
    log = (folder / "litellm.log").open("w")
    cmd = [binary, "--config", str(folder / "config.yaml"), "--host", "127.0.0.1"]
    proc = subprocess.Popen([*cmd, "--port", str(port)], stdout=log, stderr=log, env=env)
    try:
        _wait_ready(port, proc, folder / "litellm.log")
        yield Proxy(f"http://127.0.0.1:{port}/v1", sims)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        for sim in sims.values():
            sim.__exit__(None, None, None)


def _wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"litellm exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/health/liveliness", timeout=2
            ) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"litellm did not start in {START_TIMEOUT_S} s: {log.read_text()[-2000:]}")


def _run(proxy: Proxy, tmp_path: Path, name: str, model: str, *args: str, rows: int) -> Any:
    src = tmp_path / "in.jsonl"
    if not src.exists():
        write_jsonl(src, [{"id": i, "prompt": f"question {i}: say something"} for i in range(rows)])
    out = tmp_path / f"{name}.parquet"
    proc = run_cli(
        "run", "--input", str(src), "--output", str(out), "--base-url", proxy.url,
        "--provider", "litellm", "--model", model, "--concurrency", "16", *args,
        key=MASTER_KEY, timeout=300,
    )  # fmt: skip
    summary = json.loads((tmp_path / f"{name}.summary.json").read_text())
    return proc, pq.read_table(out), summary


def test_plain_and_streamed_runs_agree_with_usage_and_cost_on_every_row(
    proxy: Proxy, tmp_path: Path
) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."sim-ok"]\ninput = 0.15\noutput = 0.6\n')
    common = ("--prices", str(prices))
    plain, a, plain_summary = _run(proxy, tmp_path, "plain", "sim-ok", *common, rows=500)
    streamed, b, streamed_summary = _run(
        proxy, tmp_path, "streamed", "sim-ok", *common, "--stream", rows=500
    )
    assert plain.returncode == 0, plain.stderr
    assert streamed.returncode == 0, streamed.stderr
    assert a.column("completion").to_pylist() == b.column("completion").to_pylist()
    for table, summary in ((a, plain_summary), (b, streamed_summary)):
        for col in ("prompt_tokens", "completion_tokens", "total_tokens", "reported_cost_usd"):
            values = table.column(col).to_pylist()
            assert None not in values, col
        assert min(table.column("reported_cost_usd").to_pylist()) > 0
        assert summary["rows_without_usage"] == 0
        assert summary["rows_cost_reported"] == 500
        # LiteLLM prices gpt-4o-mini at the list price the bundled table has (given here
        # for the name LiteLLM serves it under).
        assert table.column("model").to_pylist() == ["sim-ok"] * 500
        assert summary["reported_cost_usd"] == pytest.approx(
            summary["estimated_cost_usd"], rel=1e-3
        )
    assert a.column("total_tokens").to_pylist() == b.column("total_tokens").to_pylist()
    # Streams asked for their usage; LiteLLM forwards neither Idempotency-Key nor metadata
    # (the README says so where it promises no double billing).
    seen = proxy.sims["sim-ok"].stats.bodies
    streams = [r["body"] for r in seen if r["body"].get("stream")]
    assert len(streams) == 500
    assert all(s.get("stream_options", {}).get("include_usage") for s in streams)
    assert all(r["headers"]["Idempotency-Key"] is None for r in seen)


def test_metadata_is_not_forwarded(proxy: Proxy, tmp_path: Path) -> None:
    before = len(proxy.sims["sim-ok"].stats.bodies)
    proc, _table, _ = _run(
        proxy, tmp_path, "meta", "sim-ok", "--metadata", '{"batch": "nightly"}', rows=3
    )
    assert proc.returncode == 0, proc.stderr
    seen = proxy.sims["sim-ok"].stats.bodies[before:]
    assert len(seen) == 3 and all("metadata" not in r["body"] for r in seen)


@pytest.mark.parametrize("stream", ["--no-stream", "--stream"])
@pytest.mark.parametrize(
    "tools",
    [
        [{"name": "look", "description": "d", "input_schema": {"type": "object"}}],
        [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}],
    ],
)
def test_tools_with_a_forced_choice_give_tool_calls_on_every_row(
    proxy: Proxy, tmp_path: Path, stream: str, tools: list[Any]
) -> None:
    proc, table, _ = _run(
        proxy, tmp_path, "tools", "sim-ok", stream, "--tools", json.dumps(tools),
        "--tool-choice", "required", rows=40,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    calls = [json.loads(c) for c in table.column("tool_calls").to_pylist()]
    assert all(c and c[0]["function"]["name"] == "look" for c in calls)
    assert set(table.column("finish_reason_normalized").to_pylist()) == {"tool_calls"}


def test_a_named_tool_choice_in_the_gateways_shape_reaches_the_server(
    proxy: Proxy, tmp_path: Path
) -> None:
    tools = [{"name": "look", "input_schema": {"type": "object"}}]
    proc, table, _ = _run(
        proxy, tmp_path, "named", "sim-ok", "--tools", json.dumps(tools),
        "--tool-choice", '{"type": "tool", "name": "look"}', rows=5,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert None not in table.column("tool_calls").to_pylist()


def test_a_relayed_429_is_retried_after_its_retry_after(proxy: Proxy, tmp_path: Path) -> None:
    sim = proxy.sims["sim-busy"]
    proc, table, summary = _run(proxy, tmp_path, "busy", "sim-busy", "--concurrency", "1", rows=1)
    assert proc.returncode == 0, proc.stderr
    assert table.column("attempts").to_pylist() == [2]
    assert summary["rate_limited"] == 1
    first, second = (r["at"] for r in sim.stats.bodies)
    # The upstream said Retry-After: 3 and LiteLLM relayed it as llm_provider-retry-after.
    assert second - first >= 3.0


def test_relayed_500s_are_retried_then_error_rows(proxy: Proxy, tmp_path: Path) -> None:
    proc, table, summary = _run(proxy, tmp_path, "fails", "sim-500", "--max-attempts", "2", rows=4)
    assert proc.returncode == 3, proc.stderr
    assert set(table.column("error_type").to_pylist()) == {"server_error"}
    assert table.column("attempts").to_pylist() == [2] * 4
    assert summary["rows_error"] == 4


def test_a_relayed_400_fails_the_row_without_a_retry(proxy: Proxy, tmp_path: Path) -> None:
    # OpenAI refuses a tool message without its tool_call_id; LiteLLM relays the 400.
    convo = [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}]
    src = write_jsonl(tmp_path / "in.jsonl", [{"messages": convo}, {"messages": convo}])
    assert src.exists()
    proc, table, _ = _run(proxy, tmp_path, "bad", "sim-ok", rows=2)
    assert proc.returncode == 3, proc.stderr
    assert set(table.column("error_type").to_pylist()) == {"bad_request"}
    assert table.column("attempts").to_pylist() == [1, 1]
    assert "tool_call_id" in table.column("error").to_pylist()[0]


def test_the_litellm_example_job_runs_through_the_proxy(proxy: Proxy, tmp_path: Path) -> None:
    out = tmp_path / "labels.parquet"
    proc = run_cli(
        "run", str(ROOT / "jobs" / "label_via_litellm.toml"), "--base-url", proxy.url,
        "--model", "sim-ok", "--output", str(out), "--limit", "50", "--quiet",
        env={"LITELLM_MASTER_KEY": MASTER_KEY}, key=None, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(out)
    calls = [json.loads(c) for c in table.column("tool_calls").to_pylist()]
    assert all(c[0]["function"]["name"] == "label" for c in calls)
    assert None not in table.column("total_tokens").to_pylist()
    # temperature 0: repeated reviews are deduped, and only the rows that paid have a cost.
    served = table.column("served_by").to_pylist()
    costs = table.column("reported_cost_usd").to_pylist()
    assert None not in [c for c, s in zip(costs, served, strict=True) if s is None]
