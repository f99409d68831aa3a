"""End to end under real API behaviour: faults, rate limits, stops (CLI subprocess against
the simulator on 127.0.0.1). Durations are kept to a few seconds each; the full-size
versions of these scenarios are in ``make bench``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli, write_jsonl

pytestmark = pytest.mark.e2e


def _src(tmp_path: Path, n: int) -> Path:
    return write_jsonl(
        tmp_path / "in.jsonl", [{"id": i, "prompt": f"question number {i}"} for i in range(n)]
    )


def test_faults_are_retried_until_every_row_is_ok_and_none_is_billed_twice(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(
        error_500_rate=0.10, rate_429=0.05, retry_after_s=0.05, drop_rate=0.02, seed=3
    )
    n = 600
    out = tmp_path / "out.parquet"
    proc = run_cli(
        "run", "--input", str(_src(tmp_path, n)), "--output", str(out), "--base-url", sim.url,
        "--concurrency", "32", "--max-attempts", "12",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == list(range(n))
    assert set(table.column("status").to_pylist()) == {"ok"}
    stats = sim.stats
    assert stats.by_status.get(500, 0) > 0 and stats.by_status.get(429, 0) > 0 and stats.dropped > 0
    assert stats.ok == n
    assert stats.billed_twice == 0
    attempts = table.column("attempts").to_pylist()
    assert sum(attempts) == stats.requests  # every request is accounted to its row
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["retries"] == stats.requests - n
    assert summary["rate_limited"] == stats.by_status[429]


def test_rpm_limit_is_never_exceeded_and_nearly_saturated(tmp_path: Path, sim_factory: Any) -> None:
    # 6,000/min enforced over 2 s windows (200 a window); the run lasts about 4 s.
    sim = sim_factory(rpm_limit=6000, rpm_window_s=2.0)
    n = 400
    t0 = time.monotonic()
    proc = run_cli(
        "run", "--input", str(_src(tmp_path, n)), "--output", str(tmp_path / "o.parquet"),
        "--base-url", sim.url, "--rpm", "6000", "--concurrency", "32", "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sim.stats.rate_limited == 0
    summary = json.loads((tmp_path / "o.summary.json").read_text())
    # The pacing itself: 400 requests at 100/s cannot take less than ~4 s.
    assert summary["wall_time_s"] >= 3.5
    assert time.monotonic() - t0 < 30


def test_without_rpm_the_client_finds_the_rate_of_a_limit_without_retry_after(
    tmp_path: Path, sim_factory: Any
) -> None:
    # 3,000/min over 2 s windows = 100 a window, no Retry-After: the limiter must find ~50/s.
    sim = sim_factory(rpm_limit=3000, rpm_window_s=2.0, limit_sends_retry_after=False)
    n = 300
    proc = run_cli(
        "run", "--input", str(_src(tmp_path, n)), "--output", str(tmp_path / "o.parquet"),
        "--base-url", sim.url, "--concurrency", "32", "--max-attempts", "30", "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    stats = sim.stats
    assert stats.ok == n
    assert stats.rate_limited > 0  # it had to find the limit
    assert stats.rate_limited < 0.35 * stats.requests  # and did not hammer it


def test_out_of_credits_stops_within_seconds_with_at_most_concurrency_requests(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(rate_403=1.0)
    out = tmp_path / "out.parquet"
    t0 = time.monotonic()
    proc = run_cli(
        "run",
        "--input",
        str(_src(tmp_path, 500)),
        "--output",
        str(out),
        "--base-url",
        sim.url,
        "--concurrency",
        "8",
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 4, proc.stderr
    assert elapsed < 15
    assert sim.stats.requests <= 8
    assert "Insufficient credits" in proc.stderr
    assert "rerun the same command" in proc.stderr
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["exit_code"] == 4 and summary["rows_ok"] == 0
    assert summary["rows_possibly_charged_twice"] == 0


def test_bad_key_is_exit_4(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(api_key="the-right-key")
    proc = run_cli(
        "run",
        "--input",
        str(_src(tmp_path, 50)),
        "--output",
        str(tmp_path / "o.parquet"),
        "--base-url",
        sim.url,
        "--concurrency",
        "4",
        key="wrong",
    )
    assert proc.returncode == 4
    assert "HTTP 401" in proc.stderr
    assert "wrong" not in proc.stderr.replace("wrong key", "")
    assert sim.stats.requests <= 4


def test_unknown_model_stops_the_run_instead_of_failing_every_row(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory()
    proc = run_cli(
        "run", "--input", str(_src(tmp_path, 500)), "--output", str(tmp_path / "o.parquet"),
        "--base-url", sim.url, "--model", "nonexistent-model", "--concurrency", "4",
        "--no-model-check",  # the check would stop it before any row (test_gateway.py)
    )  # fmt: skip
    assert proc.returncode == 4
    assert "same error" in proc.stderr and "--retry-failed" in proc.stderr
    assert sim.stats.requests < 50


def test_retry_failed_sends_exactly_the_failed_rows(tmp_path: Path, sim_factory: Any) -> None:
    flaky = sim_factory(error_500_rate=0.3, seed=11)
    src = _src(tmp_path, 200)
    out = tmp_path / "out.parquet"
    first = run_cli(
        "run",
        "--input",
        str(src),
        "--output",
        str(out),
        "--base-url",
        flaky.url,
        "--max-attempts",
        "1",
        "--max-failure-rate",
        "1",
    )
    assert first.returncode == 0, first.stderr
    failed = pq.read_table(out).column("status").to_pylist().count("error")
    assert failed > 0
    healthy = sim_factory()
    second = run_cli(
        "run",
        "--input",
        str(src),
        "--output",
        str(out),
        "--base-url",
        healthy.url,
        "--max-attempts",
        "1",
        "--retry-failed",
    )
    assert second.returncode == 5  # another base URL is another job: refused, nothing sent
    assert healthy.stats.requests == 0
    flaky_before = flaky.stats.requests
    third = run_cli(
        "run",
        "--input",
        str(src),
        "--output",
        str(out),
        "--base-url",
        flaky.url,
        "--max-attempts",
        "10",
        "--retry-failed",
    )
    assert third.returncode == 0, third.stderr
    table = pq.read_table(out)
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert flaky.stats.ok - (200 - failed) == failed
    assert flaky.stats.requests - flaky_before >= failed
    assert json.loads((tmp_path / "out.summary.json").read_text())["rows_resumed"] == 200 - failed


def test_a_stalled_stream_times_out_after_the_read_timeout_and_is_retried(
    tmp_path: Path, sim_factory: Any
) -> None:
    # A third of the streams go silent after their first chunk and never finish.
    sim = sim_factory(stream_stall_rate=0.3, seed=5)
    n = 30
    out = tmp_path / "out.parquet"
    t0 = time.monotonic()
    proc = run_cli(
        "run", "--input", str(_src(tmp_path, n)), "--output", str(out), "--base-url", sim.url,
        "--stream", "--read-timeout", "0.3", "--timeout", "60", "--concurrency", "30",
        "--max-attempts", "10", "--quiet",
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(out)
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert max(table.column("attempts").to_pylist()) > 1
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["retries"] == sim.stats.requests - n > 0
    # Far below one --timeout: the silence, not the whole-request limit, ended the stalls.
    assert elapsed < 30
