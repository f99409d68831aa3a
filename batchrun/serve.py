"""Answers that need no request, consulted before a row is sent: a follower's (its leader's
answer: :mod:`batchrun.dedupe`) and a stored one (:mod:`batchrun.cache`).

The run asks :meth:`Shortcuts.follower` for each row the plan names a follower, and
:meth:`Shortcuts.cached` for the others before it sends them; it tells
:meth:`Shortcuts.answered` how each sent row ended, and records the rows it hands back in
the same journal commit as the leader's own row.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from batchrun.cache import ResponseCache, cache_key
from batchrun.checkpoint import Checkpoint
from batchrun.dedupe import Followers, request_body
from batchrun.job import Job
from batchrun.records import OK, Request, RowResult
from batchrun.send import ChatCompletions


class Shortcuts:
    """Dedupe's followers and the response cache of one run."""

    def __init__(
        self,
        job: Job,
        ckpt: Checkpoint,
        followers: dict[int, int],
        cache: ResponseCache | None,
        notice: Callable[[str], None],
    ) -> None:
        self.ckpt = ckpt
        self.followers = Followers(followers)
        self.cache = cache
        self.base_url = job.base_url
        self.dialect = ChatCompletions(system_as_message=job.params.system_as_message)
        self.notice = notice
        #: Cache keys of rows sent, until their answer is in.
        self._keys: dict[int, bytes] = {}

    def __repr__(self) -> str:
        return f"Shortcuts({self.followers!r}, cache={self.cache!r})"

    def is_follower(self, position: int) -> bool:
        return position in self.followers.leader_of

    def follower(self, position: int) -> RowResult | None:
        """The row of a follower if its leader's answer is known (from this run or the
        journal); None if it waits for its leader in flight (it comes out of
        :meth:`answered`) or its leader was left for the next run (so is it)."""
        f = self.followers
        leader = f.leader_of.pop(position)
        answer = f.answer_of(leader)
        if answer is None and leader not in f.waiting and leader not in f.left:
            answer = self.ckpt.result_at(leader)  # recorded by an earlier run
            if answer is not None and f.remaining.get(leader, 0) > 1:
                f.answers[leader] = answer
        if answer is not None:
            return f.serve(position, leader, answer)
        if not f.wait_for(position, leader):
            f.left.add(leader)
        return None

    def cached(self, request: Request) -> RowResult | None:
        """The row of a request the cache holds the answer to, or None (then the request is
        to be sent; its key is kept for :meth:`answered`)."""
        cache = self.cache
        if cache is None:
            return None
        key = cache_key(self.base_url, request_body(self.dialect, request))
        try:
            answer = cache.get(key)
        except sqlite3.Error as exc:
            self._cache_failed(exc)
            return None
        if answer is None:
            if cache.writes:
                self._keys[request.position] = key
            return None
        result = RowResult.success(
            request.position, answer, attempts=0, latency_ms=0.0, finished_at=0.0
        )
        result.latency_ms = None
        result.cached = True
        result.finished_at = time.time()
        return result

    def sending(self, request: Request) -> None:
        """The row is about to be sent: its followers produced meanwhile wait for it."""
        if self.followers.is_leader(request.position):
            self.followers.sending(request.position)

    def answered(self, position: int, result: RowResult | None) -> list[RowResult]:
        """A row ended (``result`` None: left for the next run). Keeps a good answer in the
        cache; returns the rows of the followers that waited for it."""
        key = self._keys.pop(position, None)
        if key is not None and result is not None and result.status == OK and not result.cached:
            assert self.cache is not None
            try:
                self.cache.put(key, result.answer())
            except sqlite3.Error as exc:
                self._cache_failed(exc)
        if not self.followers.is_leader(position) and position not in self.followers.waiting:
            return []
        return self.followers.finished(position, result)

    def close(self) -> None:
        if self.cache is not None:
            try:
                self.cache.close()
            except sqlite3.Error as exc:
                self._cache_failed(exc)

    def _cache_failed(self, exc: sqlite3.Error) -> None:
        """The cache is an optimisation: one that cannot be read or written is said once
        and left alone for the rest of the run, which goes on sending."""
        self.notice(f"response cache not used from here on: {exc}")
        self._keys.clear()
        if self.cache is not None:
            cache, self.cache = self.cache, None
            cache.discard()


def open_shortcuts(
    job: Job, ckpt: Checkpoint, followers: dict[int, int], notice: Callable[[str], None]
) -> Shortcuts | None:
    """Dedupe's followers and the cache, when the run has either (UsageError if the cache
    cannot be opened: before anything is sent)."""
    cache = None
    if job.cache_dir is not None:
        cache = ResponseCache(job.cache_dir, job.cache_mode)
        cache.open()
    if cache is None and not followers:
        return None
    return Shortcuts(job, ckpt, followers, cache, notice)
