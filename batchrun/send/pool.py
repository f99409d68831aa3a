"""The pool: bounded concurrency without polling. It knows nothing of the items.

For each item: take an in-flight slot from the limiter, *then* create the task, inside one
TaskGroup; each task's result goes to one callback. The worker owns the slot it was started
with and gives it back (a row waiting out a backoff lends it to others meanwhile).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Generic, TypeVar

from batchrun.errors import Stopped
from batchrun.send.limits import Limiter

T = TypeVar("T")
R = TypeVar("R")


class Pool(Generic[T, R]):
    """Runs ``worker`` over items with at most the limiter's window in flight."""

    def __init__(self, limiter: Limiter, stopping: Callable[[], bool]) -> None:
        self.limiter = limiter
        self.stopping = stopping
        self.tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"Pool(tasks={len(self.tasks)}, limiter={self.limiter!r})"

    async def run(
        self,
        items: AsyncIterable[T],
        worker: Callable[[T], Awaitable[R]],
        on_result: Callable[[R], None],
    ) -> None:
        """Until the items run out or ``stopping()``; returns when every task has ended."""

        async def one(item: T) -> None:
            on_result(await worker(item))

        async with asyncio.TaskGroup() as tg:
            async for item in items:
                if self.stopping():
                    break
                try:
                    await self.limiter.slot()
                except Stopped:
                    break
                if self.stopping():
                    self.limiter.release_slot()
                    break
                task = tg.create_task(one(item))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    def cancel(self) -> None:
        """Cancel every task in flight (the end of a stop's grace)."""
        for task in self.tasks:
            task.cancel()
