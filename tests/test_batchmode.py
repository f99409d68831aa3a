"""Batch mode's stage on its own: how rows are cut into chunks, with a real journal and input
file but no server."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import batchrun.batchmode as batchmode
import batchrun.send.batch_openai as batch_openai
from batchrun.batchmode import BatchMode
from batchrun.batchopts import BatchOptions
from batchrun.checkpoint import Checkpoint
from batchrun.errors import BatchrunError
from batchrun.events import Event, Progress
from batchrun.job import Job
from batchrun.prepare import Prepared
from batchrun.scan import scan_input
from batchrun.send.batch import ENVELOPE_BYTES


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
