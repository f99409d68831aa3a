"""Batch mode's stage on its own: how rows are cut into chunks, and how polls back off, with
a real journal and input file but no server (a fake client)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import batchrun.batchmode as batchmode
import batchrun.send.batch_openai as batch_openai
from batchrun import batchjournal as bj
from batchrun.batchmode import MAX_WAIT_S, BatchMode
from batchrun.batchopts import BatchOptions
from batchrun.checkpoint import Checkpoint
from batchrun.errors import BatchrunError, Retryable
from batchrun.events import Event, Progress
from batchrun.job import Job
from batchrun.prepare import Prepared
from batchrun.records import Completion
from batchrun.scan import scan_input
from batchrun.send.batch import ENVELOPE_BYTES, BatchResult, BatchStatus


class Host:
    def __init__(self) -> None:
        self.progress = Progress()
        self.possibly_charged_twice = 0
        self.events: list[Event] = []
        self.stopped: list[BatchrunError] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def stop(self, error: BatchrunError) -> None:
        self.stopped.append(error)

    def stopping(self) -> bool:
        return bool(self.stopped)


@contextlib.contextmanager
def batch_mode(tmp_path: Path, rows: list[str], **batch: Any) -> Iterator[BatchMode]:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in rows))
    job = Job(
        input_path=src,
        output_path=tmp_path / "o.parquet",
        mode="batch",
        batch=BatchOptions(**batch),
    )
    scan = scan_input(job)
    prep = Prepared(scan, scan.total_rows, 0, {}, 0, 0, {})
    ckpt = Checkpoint(job.checkpoint_dir)
    ckpt.lock()
    ckpt.open()
    try:
        yield BatchMode(Host(), job, ckpt, prep, "test-key")  # type: ignore[arg-type]
    finally:
        ckpt.close()


def _prompts(n: int) -> list[str]:
    # Lengths vary, so that a chunk's end falls wherever the bytes run out.
    return [f"Label item {i}. " + "x" * (i * 37 % 300) for i in range(n)]


@pytest.mark.parametrize(
    ("api", "module", "limit"),
    [("gateway", batchmode, 256 * 1024 * 1024), ("openai", batch_openai, 200 * 1024 * 1024)],
)
def test_chunks_are_cut_by_bytes_before_the_batch_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api: str, module: Any, limit: int
) -> None:
    assert limit == module.MAX_BYTES  # the documented limit of the shape, patched below
    small = 8_000
    monkeypatch.setattr(module, "MAX_BYTES", small)
    envelope = ENVELOPE_BYTES if api == "gateway" else batch_openai.ENVELOPE_BYTES
    with batch_mode(tmp_path, _prompts(300), api=api, size=1_000) as mode:
        requests = {pos: req for pos, req in mode._pending()}
        size = {pos: len(mode.dialect.line(f"r{pos}", req)) + 1 for pos, req in requests.items()}
        chunks = list(mode.plan())
    assert [p for chunk in chunks for p, _ in chunk] == list(range(300))  # each row once, in order
    assert len(chunks) > 3  # the bytes cut it: --batch-size 1,000 would make one chunk
    for i, chunk in enumerate(chunks):
        used = sum(size[p] for p, _ in chunk)
        assert used + envelope <= small, f"chunk {i} is over the limit"
        if i + 1 < len(chunks):  # and full: the next row would not have fitted
            assert used + size[chunks[i + 1][0][0]] + envelope > small
        assert all(cid == f"r{p}" for p, cid in chunk)


def test_the_batch_size_cuts_first_when_the_bytes_allow(tmp_path: Path) -> None:
    with batch_mode(tmp_path, _prompts(250), size=100) as mode:
        assert [len(c) for c in mode.plan()] == [100, 100, 50]


class FlakyClient:
    """Polls fail ``failures`` times (a 503 each), then the batch runs once, then it ends."""

    def __init__(self, failures: int, positions: list[int]) -> None:
        self.answers: list[str] = ["fail"] * failures + ["running", "ended"]
        self.positions = positions

    @contextlib.asynccontextmanager
    async def poll(self, batch_id: str) -> AsyncIterator[Any]:
        answer = self.answers.pop(0)
        if answer == "fail":
            raise Retryable("server_error", "HTTP 503: busy", status=503)
        running = BatchStatus(batch_id, "in_progress", {"processing": len(self.positions)})
        yield _Answer(running if answer == "running" else None, self.positions)


class _Answer:
    def __init__(self, status: BatchStatus | None, positions: list[int]) -> None:
        self.status, self.positions = status, positions
        self.ended: BatchStatus | None = None
        self.bad_lines = 0

    async def results(self) -> AsyncIterator[BatchResult]:
        for p in self.positions:
            yield BatchResult(f"r{p}", Completion("ok", "end_turn", None, 1, 1, 2, "m", "msg_1"))


@pytest.mark.parametrize("failures", [0, 1, 6])
def test_polls_back_off_from_the_interval_doubling_to_5_minutes_and_reset_on_success(
    tmp_path: Path, failures: int
) -> None:
    with batch_mode(tmp_path, _prompts(3)) as mode:
        chunk = bj.record_chunk(mode.ckpt, "key-1", [(p, f"r{p}") for p in range(3)])
        bj.set_batch(mode.ckpt, chunk, "msgbatch_1", "in_progress", {})
        mode.client = FlakyClient(failures, [0, 1, 2])  # type: ignore[assignment]
        slept: list[float] = []

        async def sleep(seconds: float) -> None:
            slept.append(seconds)

        mode.sleep = sleep  # type: ignore[method-assign]
        asyncio.run(mode.poll_all())
        assert mode.ckpt.done_bitmap(3) == bytearray([0b111])
    interval = mode.job.batch.poll_interval_s
    assert interval == 30.0 and MAX_WAIT_S == 300.0  # the defaults the figures below assume
    backoff = [30.0, 60.0, 120.0, 240.0, 300.0, 300.0][:failures]
    # After each failed poll the wait doubles, from the interval up to 5 minutes; a poll
    # answered brings it back to the interval.
    assert slept == [*backoff, 30.0]
    assert not mode.host.stopped  # type: ignore[attr-defined]


def test_the_summary_groups_finished_batches_by_how_they_ended(tmp_path: Path) -> None:
    with batch_mode(tmp_path, _prompts(6)) as mode:
        ckpt = mode.ckpt
        made = [bj.record_chunk(ckpt, f"k{p}", [(p, f"r{p}")]) for p in range(6)]
        for chunk in made[:5]:
            bj.set_batch(ckpt, chunk, f"b{chunk.chunk}", "in_progress", {"processing": 1})
        for chunk, final in zip(made, ["ended", "canceled", "ended", "expired"], strict=False):
            bj.set_done(ckpt, chunk, {"succeeded": 1}, final)
        assert bj.batch_summary(ckpt)["batches"] == {
            "done (ended)": 2, "done (canceled)": 1, "done (expired)": 1,
            "open (in_progress)": 1, "pending": 1,
        }  # fmt: skip
        # A chunk done under a batchrun that kept no final status: its status is the last
        # one seen while it ran, which says nothing of how it ended.
        ckpt.db.execute("UPDATE batches SET status='in_progress' WHERE chunk=0")
        assert bj.batch_summary(ckpt)["batches"]["done"] == 1
