"""End to end: the real CLI in a subprocess against the real simulator on 127.0.0.1."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun.io.writers import SCHEMA_VERSION
from batchrun.simulate import completion_for, reasoning_for, usage_for
from tests.conftest import ROOT, kill_at_random_moments, run_cli, write_jsonl

pytestmark = pytest.mark.e2e

TEMPLATE_ROWS = 2000


def _rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"row-{i:05d}",
            "prompt": f"Summarize item {i} in a few words.",
            "topic": f"t{i % 5}",
            "weight": i * 0.5,
        }
        for i in range(n)
    ]


def _expected(prompt: str, **params: Any) -> tuple[str, dict[str, int]]:
    body = {
        "model": "anthropic/claude-3-opus",
        "max_tokens": 512,
        **params,
        "messages": [{"role": "user", "content": prompt}],
    }
    text = completion_for(body)[0]
    return text, usage_for(body)


def _expected_reasoning(prompt: str, rate: float, **params: Any) -> str | None:
    body = {
        "model": "anthropic/claude-3-opus",
        "max_tokens": 512,
        **params,
        "messages": [{"role": "user", "content": prompt}],
    }
    return reasoning_for(body, rate)


def _check_output(out: Path, rows: list[dict[str, Any]]) -> pa.Table:
    table = pq.read_table(out)
    assert table.num_rows == len(rows)
    assert table.column("id").to_pylist() == [r["id"] for r in rows]
    assert table.column("topic").to_pylist() == [r["topic"] for r in rows]
    assert table.column("weight").to_pylist() == [r["weight"] for r in rows]
    assert set(table.column("status").to_pylist()) == {"ok"}
    completions = table.column("completion").to_pylist()
    prompt_tokens = table.column("prompt_tokens").to_pylist()
    completion_tokens = table.column("completion_tokens").to_pylist()
    for i, r in enumerate(rows):
        text, usage = _expected(r["prompt"])
        assert completions[i] == text, f"row {i}"
        assert prompt_tokens[i] == usage["prompt_tokens"], f"row {i}"
        assert completion_tokens[i] == usage["completion_tokens"], f"row {i}"
    return table


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_2000_rows_in_order_with_the_simulators_answers(
    tmp_path: Path, sim_factory: Any, fmt: str
) -> None:
    sim = sim_factory(latency_ms=2)
    rows = _rows(TEMPLATE_ROWS)
    if fmt == "jsonl":
        src = write_jsonl(tmp_path / "in.jsonl", rows)
    else:
        src = tmp_path / "in.parquet"
        pq.write_table(pa.Table.from_pylist(rows), src, row_group_size=300)
    out = tmp_path / "out.parquet"
    proc = run_cli(
        "run",
        "--input",
        str(src),
        "--output",
        str(out),
        "--base-url",
        sim.url,
        "--concurrency",
        "32",
    )
    assert proc.returncode == 0, proc.stderr
    table = _check_output(out, rows)
    assert table.schema.metadata[b"batchrun.schema_version"] == SCHEMA_VERSION.encode()
    # The simulator's default share of answers carries reasoning: each row keeps its own.
    reasoning = table.column("reasoning_content").to_pylist()
    assert reasoning == [_expected_reasoning(r["prompt"], 0.25) for r in rows]
    assert 0 < sum(r is not None for r in reasoning) < len(rows)
    assert sim.stats.requests == TEMPLATE_ROWS
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["rows_ok"] == TEMPLATE_ROWS
    assert summary["prompt_tokens"] == sum(table.column("prompt_tokens").to_pylist())
    assert summary["prompt_tokens"] == sim.stats.prompt_tokens
    assert summary["completion_tokens"] == sim.stats.completion_tokens


def test_every_documented_parameter_reaches_the_wire(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(record_bodies=True)
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "q": "weather in Oslo?"}])
    tools = [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    proc = run_cli(
        "run", "--input", str(src), "--output", str(tmp_path / "o.parquet"), "--base-url", sim.url,
        "--model", "anthropic/claude-3-opus", "--template", "Q: {q}", "--system", "Be terse.",
        "--max-tokens", "64", "--temperature", "0.3", "--top-p", "0.9", "--top-k", "40",
        "--frequency-penalty", "-0.5", "--stop", "END", "--stop", "STOP",
        "--tools", json.dumps(tools), "--tool-choice", '{"type": "auto"}',
        "--metadata", '{"job": "e2e"}',
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (recorded,) = sim.stats.bodies
    body = recorded["body"]
    assert body == {
        "model": "anthropic/claude-3-opus",
        "max_tokens": 64,
        "temperature": 0.3,
        "top_p": 0.9,
        "top_k": 40,
        "frequency_penalty": -0.5,
        "stop_sequences": ["END", "STOP"],
        "system": "Be terse.",
        "tools": tools,
        "tool_choice": "auto",  # written as Anthropic's object, sent in the documented form
        "metadata": {"job": "e2e"},
        "messages": [{"role": "user", "content": "Q: weather in Oslo?"}],
    }
    headers = recorded["headers"]
    assert headers["Authorization"] == "Bearer ***"
    assert headers["User-Agent"].startswith("batchrun/")
    assert len(headers["Idempotency-Key"]) >= 16


def test_streamed_and_non_streamed_runs_agree(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory()
    rows = _rows(200)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    outs = {}
    for mode in ("--stream", "--no-stream"):
        out = tmp_path / f"out{mode}.parquet"
        proc = run_cli(
            "run",
            "--input",
            str(src),
            "--output",
            str(out),
            "--base-url",
            sim.url,
            mode,
            "--max-tokens",
            "6",
        )
        assert proc.returncode == 0, proc.stderr
        outs[mode] = pq.read_table(out).select(
            [
                "id",
                "completion",
                "finish_reason",
                "prompt_tokens",
                "completion_tokens",
                "reasoning_content",
            ]
        )
    assert outs["--stream"].to_pylist() == outs["--no-stream"].to_pylist()
    reasoning = outs["--stream"].column("reasoning_content").to_pylist()
    assert reasoning == [_expected_reasoning(r["prompt"], 0.25, max_tokens=6) for r in rows]
    assert any(r is not None for r in reasoning)
    assert {"max_tokens", "end_turn"} >= set(outs["--stream"].column("finish_reason").to_pylist())


@pytest.mark.parametrize(
    ("content", "args", "expect"),
    [
        ('{"prompt": "a"}\n{"prompt": "b",\n', [], "line 2"),
        ('{"text": "a"}\n', ["--template", "{missing}"], "'missing' not found"),
        ('{"prompt": "a"}\n', ["--temperature", "7"], "temperature"),
    ],
)
def test_bad_input_is_exit_2_with_zero_requests(
    tmp_path: Path, sim_factory: Any, content: str, args: list[str], expect: str
) -> None:
    sim = sim_factory()
    src = tmp_path / "in.jsonl"
    src.write_text(content)
    proc = run_cli(
        "run",
        "--input",
        str(src),
        "--output",
        str(tmp_path / "o.parquet"),
        "--base-url",
        sim.url,
        *args,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert (len(lines) == 1 and expect in lines[0] and str(src) in lines[0]) or expect in lines[0]
    assert "Traceback" not in proc.stderr
    assert sim.stats.requests == 0


def test_missing_key_is_exit_2_with_zero_requests(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory()
    src = write_jsonl(tmp_path / "in.jsonl", _rows(3))
    proc = run_cli(
        "run",
        "--input",
        str(src),
        "--output",
        str(tmp_path / "o.parquet"),
        "--base-url",
        sim.url,
        key=None,
    )
    assert proc.returncode == 2
    assert "AIMLAPI_KEY" in proc.stderr
    assert sim.stats.requests == 0


def test_kill_9_at_random_points_then_resume_gives_every_row_exactly_once(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(latency_ms=25, jitter_ms=15)
    rows = _rows(1500)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    args = [
        sys.executable,
        "-m",
        "batchrun",
        "run",
        "--input",
        str(src),
        "--output",
        str(out),
        "--base-url",
        sim.url,
        "--concurrency",
        "16",
        "--quiet",
    ]
    rng = random.Random(7)
    env = {"AIMLAPI_KEY": "test-key", "PATH": "/usr/bin:/bin"}
    kills = kill_at_random_moments(args, env, rng)
    assert kills >= 3
    for _ in range(3):
        final = run_cli(
            "run",
            "--input",
            str(src),
            "--output",
            str(out),
            "--base-url",
            sim.url,
            "--concurrency",
            "16",
            "--quiet",
        )
        if final.returncode == 0:
            break
    assert final.returncode == 0, final.stderr
    _check_output(out, rows)
    # Only rows in flight at a kill can have been answered twice; the summary counts them
    # (rows: one in flight at two kills was billed three times, and is one row).
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert sim.stats.billed_twice <= kills * 16
    assert sim.stats.keys_billed_twice <= summary["rows_possibly_charged_twice"]


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_a_signal_writes_partial_output_and_rerun_completes(
    tmp_path: Path, sim_factory: Any, sig: signal.Signals, code: int
) -> None:
    sim = sim_factory(latency_ms=30)
    rows = _rows(1000)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun", "run", "--input", str(src), "--output", str(out), "--base-url", sim.url, "--concurrency", "8"],
        cwd=ROOT, env={"AIMLAPI_KEY": "k", "PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # Signal once rows are being answered, not after a fixed sleep: on a loaded machine
    # the process may still be importing (no handler yet) when a fixed delay runs out.
    deadline = time.monotonic() + 20
    while sim.stats.ok < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == code, stderr
    assert f"interrupted by {sig.name}" in stderr
    assert "to resume: batchrun run --input" in stderr
    partial = pq.read_table(out)
    assert 0 < partial.num_rows < len(rows)
    ids = partial.column("id").to_pylist()
    assert ids == sorted(ids)
    assert json.loads((tmp_path / "out.summary.json").read_text())["state"] == "partial"
    done_before = partial.num_rows
    sent_before = sim.stats.requests
    final = run_cli(
        "run",
        "--input",
        str(src),
        "--output",
        str(out),
        "--base-url",
        sim.url,
        "--concurrency",
        "8",
    )
    assert final.returncode == 0, final.stderr
    _check_output(out, rows)
    assert sim.stats.requests - sent_before == len(rows) - done_before


def test_a_second_sigint_stops_at_once_and_loses_nothing_recorded(
    tmp_path: Path, sim_factory: Any
) -> None:
    # Answers take 0.1 to 4.9 s: some rows finish quickly, others would keep the run
    # waiting out its 5 s grace after a first Ctrl-C.
    sim = sim_factory(latency_ms=2500, jitter_ms=2400, seed=11)
    rows = _rows(40)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    journal = tmp_path / "out.checkpoint" / "journal.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun", "run", "--input", str(src), "--output", str(out), "--base-url", sim.url, "--concurrency", "40"],
        cwd=ROOT, env={"AIMLAPI_KEY": "k", "PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 15
    while sim.stats.ok < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=20)
    assert time.monotonic() - t0 < 3  # not the slow answers, not the 5 s grace
    assert proc.returncode == 130, stderr
    with sqlite3.connect(journal) as db:
        recorded = db.execute("SELECT count(*) FROM results").fetchone()[0]
    assert 0 < recorded < len(rows)
    sent_before = sim.stats.requests
    final = run_cli("run", "--input", str(src), "--output", str(out), "--base-url", sim.url, "--concurrency", "40")  # fmt: skip
    assert final.returncode == 0, final.stderr
    _check_output(out, rows)
    # Every row recorded before the second Ctrl-C was kept: the rerun sent only the rest.
    assert sim.stats.requests - sent_before == len(rows) - recorded


def test_second_run_on_the_same_output_exits_5_at_once(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(latency_ms=50)
    src = write_jsonl(tmp_path / "in.jsonl", _rows(400))
    out = tmp_path / "out.parquet"
    first = subprocess.Popen(
        [sys.executable, "-m", "batchrun", "run", "--input", str(src), "--output", str(out), "--base-url", sim.url, "--concurrency", "4", "--quiet"],
        cwd=ROOT, env={"AIMLAPI_KEY": "k", "PATH": "/usr/bin:/bin"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while sim.stats.requests == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        second = run_cli("run", "--input", str(src), "--output", str(out), "--base-url", sim.url)
        assert second.returncode == 5
        assert "another batchrun run" in second.stderr
    finally:
        first.kill()
        first.wait(10)


def test_changed_job_exits_5_and_sends_nothing(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory()
    src = write_jsonl(tmp_path / "in.jsonl", _rows(20))
    out = tmp_path / "out.parquet"
    assert (
        run_cli("run", "--input", str(src), "--output", str(out), "--base-url", sim.url).returncode
        == 0
    )
    before = sim.stats.requests
    again = run_cli("run", "--input", str(src), "--output", str(out), "--base-url", sim.url)
    assert again.returncode == 0 and sim.stats.requests == before  # finished: nothing sent
    changed = run_cli(
        "run", "--input", str(src), "--output", str(out), "--base-url", sim.url, "--max-tokens", "9"
    )
    assert changed.returncode == 5
    assert "max_tokens" in changed.stderr and "--restart" in changed.stderr
    assert sim.stats.requests == before
