"""Batch results → rows: joined on ``custom_id`` and recorded as they are read.

Whatever the server sends is untrusted: a line that is not a result, a ``custom_id`` of no
row of the batch, or a second result for one row is never given to a row. The lines are
counted (the summary's ``batch_results_ignored``); a row with two results gets neither (an
error row, sent again by ``--retry-failed``). Rows the results leave out are error rows.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from batchrun import batchjournal as bj
from batchrun.batchjournal import Chunk
from batchrun.checkpoint import Checkpoint
from batchrun.events import Event
from batchrun.records import RowResult
from batchrun.send.batch import RESULT_TYPES, BatchResult, BatchStatus, counts_text

if TYPE_CHECKING:
    from batchrun.batchmode import BatchHost

#: Results committed to the journal in groups of this many (each group within ms of its read).
GROUP = 256


#: Fault injection for the crash tests: ``BATCHRUN_CRASH_AT=point[:n]`` kills the process
#: (SIGKILL) the n-th time (default first) it reaches ``point``: before_create,
#: after_create (the server made the batch, its id is not committed), polling, results.
CRASH_ENV = "BATCHRUN_CRASH_AT"
_crash_seen: dict[str, int] = {}


def crash_point(name: str) -> None:
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _crash_seen[name] = _crash_seen.get(name, 0) + 1
    if _crash_seen[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def failed(position: int, message: str, error_type: str = "batch_errored") -> RowResult:
    return RowResult.failure(
        position, error_type=error_type, error=message, attempts=1, latency_ms=None,
        finished_at=time.time(),
    )  # fmt: skip


def final_status(tally: dict[str, int]) -> str:
    """How a gateway batch ended, from its results (an ended batch answers with them, not
    with its object): only a cancel ends requests ``canceled``, and only a batch that ran
    past its 24 hours leaves them ``expired``; else it simply ``ended``."""
    if tally.get("canceled"):
        return "canceled"
    return "expired" if tally.get("expired") else "ended"


class ResultRecorder:
    """Records the results of the job's batches (one per run)."""

    def __init__(self, ckpt: Checkpoint, host: BatchHost) -> None:
        self.ckpt, self.host = ckpt, host
        #: Lines ignored: not a result, a custom_id of no row of the batch, a row's second.
        self.ignored = {"not_a_result": 0, "unknown_custom_id": 0, "duplicate_custom_id": 0}

    async def record(
        self, chunk: Chunk, results: AsyncIterator[BatchResult], ended: BatchStatus | None = None
    ) -> None:
        """Join results on custom_id and record them as they are read; rows the results
        leave out become error rows; then the chunk is done. ``ended``: the batch object as
        it ended, if the shape sends one."""
        expected = bj.chunk_rows(self.ckpt, chunk.chunk)
        recorded = {
            p
            for (p,) in self.ckpt.db.execute(
                "SELECT r.position FROM results r JOIN batch_rows b ON b.position = r.position"
                " WHERE b.chunk=?",
                (chunk.chunk,),
            )
        }
        seen: set[str] = set()
        twice: set[str] = set()
        group: list[RowResult] = []
        #: Result lines by type, in the gateway's names (its request_counts once ended).
        tally = dict.fromkeys(RESULT_TYPES, 0)
        async for r in results:
            pos = expected.get(r.custom_id)
            if pos is None:
                self.ignored["unknown_custom_id"] += 1
                continue
            if r.custom_id in seen:
                # Two answers for one row: neither can be trusted to be the row's own.
                self.ignored["duplicate_custom_id"] += 1
                if r.custom_id not in twice:
                    twice.add(r.custom_id)
                    group.append(failed(pos, "the batch sent more than one result for this row"))
                continue
            seen.add(r.custom_id)
            kind = "succeeded" if r.completion is not None else (r.error_type or "")
            kind = kind.removeprefix("batch_")
            tally[kind if kind in tally else "errored"] += 1
            if pos in recorded:
                continue  # recorded by a run that died while reading these results
            if r.completion is not None:
                result = RowResult.success(
                    pos, r.completion, attempts=1, latency_ms=0.0, finished_at=time.time()
                )
                result.latency_ms = None  # no request of its own: the batch took hours
            else:
                result = failed(pos, r.error or "", r.error_type or "batch_errored")
            group.append(result)
            if len(group) >= GROUP:
                self.commit(group)
                group = []
                crash_point("results")
        missing = [pos for cid, pos in expected.items() if cid not in seen and pos not in recorded]
        group += [
            failed(p, "the batch's results have no line for this row") for p in sorted(missing)
        ]
        self.commit(group)
        # The counts the batch ended with: the provider's where the shape sends its object
        # (OpenAI's), else what its results say (the gateway answers with them instead).
        counts = ended.request_counts if ended is not None and ended.request_counts else tally
        final = (ended.final if ended is not None else None) or final_status(tally)
        bj.set_done(self.ckpt, chunk, counts, final)
        self.host.progress.batch_counts[chunk.chunk] = counts
        self.host.emit(
            Event(
                "notice",
                self.host.progress,
                message=f"{chunk.name()}: {final}, results recorded — {counts_text(counts)}",
            )
        )

    def commit(self, group: list[RowResult]) -> None:
        if not group:
            return
        self.ckpt.write([], group)
        p = self.host.progress
        for result in group:
            p.count(result)
            self.host.emit(Event("row", p, result=result))
