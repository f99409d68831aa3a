"""The producer: the rows a run still has to do, in input order, as requests to send.

Recorded rows are skipped; a row answered without a request (a dedupe follower, a cache
hit: :mod:`batchrun.serve`) is handed to ``record_served`` instead; every other request is
admitted under the budget before it is yielded to the pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable

from batchrun.budget import RowBudget
from batchrun.builder import RequestBuilder
from batchrun.checkpoint import Checkpoint
from batchrun.errors import BatchrunError, RunStopped
from batchrun.io.readers import iter_batches
from batchrun.job import Job
from batchrun.prepare import Prepared
from batchrun.records import Request, RowResult
from batchrun.serve import Shortcuts

BUDGET_HINT = "raise --max-cost / --max-tokens-total and rerun the same command to continue"


class Producer:
    """Walks the input once for one run."""

    def __init__(
        self,
        job: Job,
        prep: Prepared,
        ckpt: Checkpoint,
        budget: RowBudget,
        shortcuts: Shortcuts | None,
        *,
        stopping: Callable[[], bool],
        stop: Callable[[BatchrunError], None],
        record_served: Callable[[list[RowResult]], None],
    ) -> None:
        self.job = job
        self.prep = prep
        self.ckpt = ckpt
        self.budget = budget
        self.shortcuts = shortcuts
        self.stopping = stopping
        self.stop = stop
        self.record_served = record_served

    def __repr__(self) -> str:
        return f"Producer(budget={self.budget!r}, shortcuts={self.shortcuts!r})"

    async def requests(self) -> AsyncGenerator[Request, None]:
        """Rows not yet recorded, as requests, each admitted under the budget."""
        job, total, scan = self.job, self.prep.total, self.prep.scan
        bits = self.ckpt.done_bitmap(total)
        builder = RequestBuilder(job, str(job.input_path))
        builder.mode, builder.column, builder.id_column = scan.mode, scan.column, scan.id_column
        shortcuts = self.shortcuts
        for batch in iter_batches(job.input_path):
            if self.stopping() or batch.start >= total:
                return
            for offset, row in enumerate(batch.rows):
                pos = batch.start + offset
                if pos >= total or self.stopping():
                    return
                if bits[pos >> 3] & (1 << (pos & 7)):
                    continue
                if shortcuts is not None and shortcuts.is_follower(pos):
                    served = shortcuts.follower(pos)  # no request: its leader's answer
                    if served is not None:
                        self.record_served([served])
                    continue
                assert row is not None  # the scan proved every row valid
                request = builder.build(row, pos, batch.where(offset))
                if shortcuts is not None:
                    hit = shortcuts.cached(request)
                    if hit is not None:  # costs nothing: no budget to reserve
                        self.record_served([hit, *shortcuts.answered(pos, hit)])
                        continue
                if self.budget.active:
                    why = await self.budget.admit(request, self.stopping)
                    if why is not None:
                        if not self.stopping():  # else the stop's own reason stands
                            self.stop(RunStopped(f"budget: {why}", hint=BUDGET_HINT))
                        return
                if shortcuts is not None:
                    shortcuts.sending(request)
                yield request
            await asyncio.sleep(0)  # let workers run between input batches
