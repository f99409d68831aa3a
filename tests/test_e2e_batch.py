"""End to end, batch mode: the real CLI in a subprocess against the simulator's Batch API on
127.0.0.1 (over real sockets), kill -9 at named moments included."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from batchrun.simulate import completion_for, usage_for
from tests.conftest import ROOT, run_cli, write_jsonl
from tests.imagefiles import png

pytestmark = pytest.mark.e2e


def _rows(n: int) -> list[dict[str, Any]]:
    return [{"id": f"row-{i:05d}", "prompt": f"Label item {i}.", "k": i % 7} for i in range(n)]


def _expected(prompt: str) -> tuple[str, dict[str, int]]:
    body = {
        "model": "anthropic/claude-3-opus",
        "max_tokens": 512,
        "messages": [{"role": "user", "content": prompt}],
    }
    return completion_for(body)[0], usage_for(body)


APIS = pytest.mark.parametrize("api", ["gateway", "openai"])


def _batch_args(
    src: Path, out: Path, url: str, *extra: str, api: str = "gateway", quiet: bool = True
) -> list[str]:
    return [
        "run", "--input", str(src), "--output", str(out), "--base-url", url,
        "--mode", "batch", "--batch-api", api, "--poll-interval", "0.1",
        *(["--quiet"] if quiet else []), *extra,
    ]  # fmt: skip


def _check_rows(out: Path, rows: list[dict[str, Any]], *, ok_only: bool = True) -> Any:
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == [r["id"] for r in rows]
    assert table.column("k").to_pylist() == [r["k"] for r in rows]
    status = table.column("status").to_pylist()
    completion = table.column("completion").to_pylist()
    prompt_tokens = table.column("prompt_tokens").to_pylist()
    completion_tokens = table.column("completion_tokens").to_pylist()
    for i, r in enumerate(rows):
        if status[i] != "ok":
            assert not ok_only, f"row {i}: {table.column('error').to_pylist()[i]}"
            continue
        text, usage = _expected(r["prompt"])
        assert completion[i] == text, f"row {i}"
        assert prompt_tokens[i] == usage["prompt_tokens"], f"row {i}"
        assert completion_tokens[i] == usage["completion_tokens"], f"row {i}"
    return table


def _summary(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(out.with_suffix(".summary.json").read_text())
    return data


@APIS
def test_3000_rows_in_3_batches_no_chat_request_each_row_its_own_answer(
    tmp_path: Path, sim_factory: Any, api: str
) -> None:
    sim = sim_factory(batch_delay_s=1.5)
    rows = _rows(3000)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    proc = run_cli(*_batch_args(src, out, sim.url, "--batch-size", "1000", api=api, quiet=False))
    assert proc.returncode == 0, proc.stderr
    # Each poll of a running batch that moved says its request counts, in the shape's names.
    running = (
        r"processing [\d,]+, succeeded [\d,]+, errored 0, canceled 0, expired 0"
        if api == "gateway"
        else r"total 1,000, completed [\d,]+, failed 0"
    )
    assert re.search(rf"^batchrun: chunk \d \(rows [^)]+\): in_progress — {running}$",
                     proc.stderr, re.M), proc.stderr  # fmt: skip
    # The progress line shows each batch's counts: here the last one, as each batch ended.
    ended = (
        "succeeded 1,000, errored 0, canceled 0, expired 0"
        if api == "gateway"
        else "total 1,000, completed 1,000, failed 0"
    )
    last = proc.stderr.strip().splitlines()
    line = next(x for x in reversed(last) if x.startswith("batchrun: 3,000/3,000 rows"))
    assert line.endswith("; ".join(f"batch {n}: {ended}" for n in range(3))), line
    assert sim.stats.batches_created == 3
    assert sim.stats.batch_requests == 3000
    assert sim.stats.requests == 0  # not one chat completion
    _check_rows(out, rows)
    summary = _summary(out)
    assert summary["mode"] == "batch"
    # Grouped by how each batch ended, in the shape's words.
    assert summary["batches"] == {f"done ({'ended' if api == 'gateway' else 'completed'})": 3}
    assert summary["rows_possibly_charged_twice"] == 0
    # The cost is at the batch rate: half the list price of the tokens used.
    list_cost = (summary["prompt_tokens"] * 15 + summary["completion_tokens"] * 75) / 1e6
    assert summary["estimated_cost_usd"] == pytest.approx(list_cost / 2, rel=1e-6)


@APIS
def test_errored_and_expired_rows_are_error_rows_and_retry_failed_sends_exactly_those(
    tmp_path: Path, sim_factory: Any, api: str
) -> None:
    sim = sim_factory(batch_delay_s=0.2, batch_errored_rate=0.05, batch_expired_rate=0.05)
    rows = _rows(600)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    first = run_cli(*_batch_args(src, out, sim.url, "--batch-size", "250", api=api))
    assert first.returncode == 3, first.stderr  # rows failed, none allowed to
    table = _check_rows(out, rows, ok_only=False)
    types = table.column("error_type").to_pylist()
    failed = [i for i, t in enumerate(types) if t is not None]
    assert {types[i] for i in failed} == {"batch_errored", "batch_expired"}
    assert 20 < len(failed) < 120
    assert "simulated" in table.column("error").to_pylist()[types.index("batch_errored")]
    created = sim.stats.batch_requests
    assert sim.stats.batches_created == 3
    second = run_cli(
        *_batch_args(src, out, sim.url, "--retry-failed", "--batch-size", "250", api=api)
    )
    assert sim.stats.batch_requests - created == len(failed)
    assert second.returncode in (0, 3), second.stderr
    table = _check_rows(out, rows, ok_only=False)
    still = [i for i, t in enumerate(table.column("error_type").to_pylist()) if t is not None]
    assert set(still) <= set(failed) and len(still) < len(failed)


@APIS
def test_retry_failed_in_live_mode_sends_exactly_the_failed_batch_rows_as_chat_requests(
    tmp_path: Path, sim_factory: Any, api: str
) -> None:
    sim = sim_factory(batch_delay_s=0.2, batch_errored_rate=0.05, batch_expired_rate=0.05)
    rows = _rows(300)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    first = run_cli(*_batch_args(src, out, sim.url, "--batch-size", "100", api=api))
    assert first.returncode == 3, first.stderr
    types = pq.read_table(out).column("error_type").to_pylist()
    failed = {i for i, t in enumerate(types) if t is not None}
    assert {types[i] for i in failed} == {"batch_errored", "batch_expired"}
    created, in_batches = sim.stats.batches_created, sim.stats.batch_requests
    live = run_cli("run", "--input", str(src), "--output", str(out), "--base-url", sim.url,
                   "--retry-failed", "--quiet")  # fmt: skip
    assert live.returncode == 0, live.stderr
    # Exactly the failed rows, each as one chat request; no batch made, none added to.
    assert sim.stats.requests == len(failed)
    assert (sim.stats.batches_created, sim.stats.batch_requests) == (created, in_batches)
    table = _check_rows(out, rows)  # every row ok now, each with its own answer
    # A batch row has no latency of its own; a live one does: the sent rows are the failed.
    latency = table.column("latency_ms").to_pylist()
    assert {i for i, ms in enumerate(latency) if ms is not None} == failed
    assert _summary(out)["mode"] == "live"


def test_rows_the_batch_shape_cannot_carry_are_refused_before_anything_is_sent(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory()
    rows: list[dict[str, Any]] = [
        {"id": 1, "messages": [{"role": "user", "content": "hi"}]},
        {"id": 2, "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
    ]  # fmt: skip
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    proc = run_cli(*_batch_args(src, tmp_path / "o.parquet", sim.url))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "line 2" in lines[0] and "'messages'" in lines[0]
    assert "one user message" in lines[0]
    stream = run_cli(*_batch_args(src, tmp_path / "p.parquet", sim.url, "--stream"))
    assert stream.returncode == 2 and "stream" in stream.stderr
    # A row with an image: the line names the image column, not the prompt's.
    (tmp_path / "cat.png").write_bytes(png())
    pics = write_jsonl(tmp_path / "pics.jsonl", [{"prompt": "hi", "photo": None},
                                                 {"prompt": "what is it?", "photo": "cat.png"}])  # fmt: skip
    image = run_cli(*_batch_args(pics, tmp_path / "q.parquet", sim.url, "--image-column", "photo"))
    assert image.returncode == 2
    lines = image.stderr.strip().splitlines()
    assert len(lines) == 1 and "line 2" in lines[0] and "images are not sent" in lines[0]
    assert "'photo'" in lines[0] and "'prompt'" not in lines[0], lines[0]
    assert sim.stats.batches_created == 0 and sim.stats.batch_polls == 0


def test_untrusted_results_are_ignored_and_counted_never_given_to_a_row(
    tmp_path: Path, sim_factory: Any
) -> None:
    # Results out of order, a line of no request, a line that is not JSON, and a second
    # result (another row's answer) for one row; polls answered 500 now and then.
    sim = sim_factory(batch_delay_s=0.2, batch_stray_results=True, batch_poll_500_rate=0.3)
    rows = _rows(300)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    proc = run_cli(*_batch_args(src, out, sim.url, "--batch-size", "100"))
    assert proc.returncode == 3, proc.stderr
    table = _check_rows(out, rows, ok_only=False)  # every ok row holds its own answer
    errors = [e for e in table.column("error").to_pylist() if e is not None]
    assert len(errors) == 3  # one row a batch had two results: neither is trusted
    assert all("more than one result" in e for e in errors)
    summary = _summary(out)
    assert summary["batch_results_ignored"] == 9  # 3 batches x (unknown, not JSON, repeat)


def _popen(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "batchrun", *args],
        cwd=ROOT,
        env={"AIMLAPI_KEY": "test-key", "PATH": "/usr/bin:/bin", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(
    ("point", "window"),
    [
        ("before_create:2", True),  # the chunk is recorded, its create never left
        ("after_create:2", True),  # the server made the batch, its id is not recorded
        ("polling", False),
        ("results:2", False),  # part of a batch's results recorded
    ],
)
@APIS
def test_kill_9_at_each_moment_then_rerun_polls_recorded_batches_every_row_once(
    tmp_path: Path, sim_factory: Any, point: str, window: bool, api: str
) -> None:
    sim = sim_factory(batch_delay_s=1.0)
    rows = _rows(1500)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    args = _batch_args(src, out, sim.url, "--batch-size", "500", api=api)
    killed = _popen(args, {"BATCHRUN_CRASH_AT": point})
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    before = sim.stats.batches_created
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    _check_rows(out, rows)
    summary = _summary(out)
    extra = sim.stats.batch_requests - len(rows)  # requests billed beyond one a row
    assert summary["rows_possibly_charged_twice"] >= extra
    if window:
        assert summary["rows_possibly_charged_twice"] == 500
        assert len(summary["batches_in_doubt"]) == 1
        assert "chunk 1 (rows 500-999" in summary["batches_in_doubt"][0]
        assert "possibly created twice" in proc.stdout
    else:
        # Every batch was recorded: the rerun created none, only polled.
        assert extra == 0 and summary["rows_possibly_charged_twice"] == 0
        assert sim.stats.batches_created == before == 3
        assert summary["batches_in_doubt"] == []


def test_the_window_costs_nothing_when_the_server_honours_the_create_key(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(batch_delay_s=0.2, honor_idempotency=True)
    rows = _rows(400)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    args = _batch_args(src, out, sim.url, "--batch-size", "200")
    _popen(args, {"BATCHRUN_CRASH_AT": "after_create"}).communicate(timeout=60)
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    _check_rows(out, rows)
    assert sim.stats.batch_creates_replayed == 1
    assert sim.stats.batches_created == 2 and sim.stats.batch_requests == 400


def test_ctrl_c_while_polling_exits_130_at_once_and_the_rerun_goes_on_polling(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(batch_delay_s=3.0)
    rows = _rows(200)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    args = _batch_args(src, out, sim.url)
    proc = _popen(args, {})
    journal = out.with_suffix(".checkpoint") / "journal.sqlite"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if journal.exists():
            with sqlite3.connect(journal) as db:
                try:
                    if db.execute(
                        "SELECT count(*) FROM batches WHERE batch_id IS NOT NULL"
                    ).fetchone()[0]:
                        break
                except sqlite3.OperationalError:
                    pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "to resume" in err
    assert sim.stats.batches_created == 1
    # A live run now would pay again for rows the open batch may answer: refused.
    live = run_cli("run", "--input", str(src), "--output", str(out), "--base-url", sim.url)
    assert live.returncode == 5 and "--mode batch" in live.stderr
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert sim.stats.batches_created == 1
    _check_rows(out, rows)


@APIS
def test_cancel_cancels_the_open_batches_and_the_rerun_records_them_as_canceled(
    tmp_path: Path, sim_factory: Any, api: str
) -> None:
    sim = sim_factory(batch_delay_s=30.0)
    rows = _rows(100)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    args = _batch_args(src, out, sim.url, "--batch-size", "50", api=api)
    proc = _popen(args, {"BATCHRUN_CRASH_AT": "polling"})
    proc.communicate(timeout=60)
    cancel = run_cli("cancel", "--output", str(out))
    assert cancel.returncode == 0, cancel.stderr
    assert len(re.findall(r": cancell?ing$", cancel.stdout, re.M)) == 2
    assert sim.stats.batch_cancels == 2
    rerun = run_cli(*args)
    assert rerun.returncode == 3, rerun.stderr
    table = pq.read_table(out)
    assert set(table.column("error_type").to_pylist()) <= {"batch_canceled", None}
    assert "batch_canceled" in table.column("error_type").to_pylist()
    # The summary tells cancelled batches from those that ran to their end.
    canceled = "canceled" if api == "gateway" else "cancelled"
    assert _summary(out)["batches"] == {f"done ({canceled})": 2}


def test_the_dry_run_shows_the_live_and_the_batch_estimate_and_the_batch_lines(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory()
    src = write_jsonl(tmp_path / "in.jsonl", _rows(10))
    proc = run_cli(*_batch_args(src, tmp_path / "o.parquet", sim.url, "--dry-run"))
    assert proc.returncode == 0, proc.stderr
    assert "live $" in proc.stdout and "batch (this job) $" in proc.stdout
    assert f"POST {sim.url}/batches" in proc.stdout
    assert '{"custom_id": "r0", "params": {"model": "anthropic/claude-3-opus"' in proc.stdout
    # Batch mode refuses --dedupe and --cache: the dry run must not offer them.
    assert "dedupe and the cache: not used in --mode batch" in proc.stdout
    assert "--dedupe forces it" not in proc.stdout
    assert sim.stats.batch_polls == 0 and sim.stats.batches_created == 0


def test_the_openai_shape_carries_multi_turn_rows_and_refuses_changing_shape_midway(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(batch_delay_s=5.0)
    rows: list[dict[str, Any]] = [
        {"id": i, "messages": [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": f"q{i}"}]}
        for i in range(20)
    ]  # fmt: skip
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    args = _batch_args(src, out, sim.url, api="openai")
    _popen(args, {"BATCHRUN_CRASH_AT": "polling"}).communicate(timeout=60)
    other = run_cli(*_batch_args(src, out, sim.url, api="gateway"))
    assert other.returncode == 2 and "line 1" in other.stderr  # a system message
    assert sim.stats.batches_created == 1
