"""The one writer: workers hand it rows; it commits them to the journal in small groups.

Each wake-up drains everything queued and commits it in one transaction, so under load a
commit carries many rows, and an idle queue commits a row within a loop turn of its
arrival. ``mark_inflight`` resolves only once the mark is committed: the request leaves
after its Idempotency-Key is on disk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from batchrun.checkpoint import Checkpoint, Reask
from batchrun.errors import JournalFailed
from batchrun.records import RowResult

_STOP = object()


class _CountDoubt:
    """A row sent again with a key whose last send's outcome is unknown (see ``count_doubt``)."""

    __slots__ = ("position",)

    def __init__(self, position: int) -> None:
        self.position = position


class _KeepKey:
    """A finished row whose in-flight mark must stay (see ``record``)."""

    __slots__ = ("result",)

    def __init__(self, result: RowResult) -> None:
        self.result = result


class _Reask:
    """A row about to be asked again (see ``record_reask``)."""

    __slots__ = ("done", "row")

    def __init__(self, row: Reask, done: asyncio.Future[None]) -> None:
        self.row = row
        self.done = done


class JournalWriter:
    """Group-committing writer over a :class:`Checkpoint` (one per run)."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._ckpt = checkpoint
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        #: Called once if a commit fails (disk full, I/O error): nothing more can be
        #: recorded, so the run must stop rather than go on paying for rows it would lose.
        self._on_failure = on_failure
        self.failure: BaseException | None = None
        self.commits = 0
        self.rows_written = 0

    def __repr__(self) -> str:
        return f"JournalWriter(queued={self._queue.qsize()}, commits={self.commits}, rows={self.rows_written})"

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="batchrun-journal-writer")

    async def mark_inflight(self, position: int, key: str) -> None:
        """Record that ``position`` is about to be sent with ``key``; returns once committed.

        Raises the commit's error if the journal cannot be written."""
        if self.failure is not None:
            raise JournalFailed(self.failure)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((position, key, fut))
        await fut

    async def record_reask(
        self, position: int, state: str, prompt_tokens: int | None, completion_tokens: int | None
    ) -> None:
        """Record that ``position`` is about to be asked again (its state, what its answers
        used); returns once committed, so the re-ask leaves only after its state is on disk.

        Raises the commit's error if the journal cannot be written."""
        if self.failure is not None:
            raise JournalFailed(self.failure)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Reask((position, state, prompt_tokens, completion_tokens), fut))
        await fut

    def record(self, result: RowResult, *, keep_key: bool = False) -> None:
        """Queue a finished row; it is committed within a loop turn or two. ``keep_key``:
        the row failed with its last send's outcome unknown; its in-flight mark stays."""
        self._queue.put_nowait(_KeepKey(result) if keep_key else result)

    def count_doubt(self, position: int) -> None:
        """The row is being sent again with a key whose last send may have been billed:
        count it as possibly charged twice (once a row, over every run)."""
        self._queue.put_nowait(_CountDoubt(position))

    def forget_inflight(self, position: int) -> None:
        """The row was not sent after all (run stopped before it): drop its in-flight mark."""
        self._queue.put_nowait(position)

    async def close(self) -> None:
        """Commit everything queued, then stop. A failed writer was reported already."""
        if self._task is None:
            return
        if self.failure is None:
            self._queue.put_nowait(_STOP)
        await asyncio.shield(self._task)
        self._task = None

    async def _run(self) -> None:
        queue = self._queue
        stop = False
        while not stop:
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            marks: list[tuple[int, str]] = []
            waiters: list[asyncio.Future[None]] = []
            results: list[RowResult] = []
            forget: list[int] = []
            keep: list[int] = []
            doubts: list[int] = []
            reasks: list[Reask] = []
            for item in items:
                if item is _STOP:
                    stop = True
                elif isinstance(item, RowResult):
                    results.append(item)
                elif isinstance(item, _KeepKey):
                    results.append(item.result)
                    keep.append(item.result.position)
                elif isinstance(item, tuple):
                    marks.append((item[0], item[1]))
                    waiters.append(item[2])
                elif isinstance(item, int):
                    forget.append(item)
                elif isinstance(item, _CountDoubt):
                    doubts.append(item.position)
                elif isinstance(item, _Reask):
                    reasks.append(item.row)
                    waiters.append(item.done)
            try:
                self._ckpt.write(marks, results, forget, keep, doubts, reasks)
            except Exception as exc:
                self.failure = exc
                for w in waiters:
                    if not w.done():
                        w.set_exception(JournalFailed(exc))
                self._fail_queued(exc)
                if self._on_failure is not None:
                    self._on_failure(exc)
                return  # nothing more can be written; the failure is reported
            self.commits += 1
            self.rows_written += len(results)
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    def _fail_queued(self, exc: BaseException) -> None:
        """Fail the marks still queued: their requests must not leave."""
        while not self._queue.empty():
            item = self._queue.get_nowait()
            waiter = item[2] if isinstance(item, tuple) else getattr(item, "done", None)
            if isinstance(waiter, asyncio.Future) and not waiter.done():
                waiter.set_exception(JournalFailed(exc))
