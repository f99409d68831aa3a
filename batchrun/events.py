"""What a run reports while it goes: live counters and events (the CLI draws them)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from batchrun.records import OK, RowResult
from batchrun.send.limits import Limiter


@dataclass
class Progress:
    """Live counters of a run, shared with whoever draws progress."""

    total: int = 0
    already_done: int = 0
    to_send: int = 0
    ok: int = 0
    error: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    #: Invalid structured answers asked again (--schema).
    reasks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    limiter: Limiter | None = None
    #: position → monotonic time its current send started, for rows in a send now.
    sending_since: dict[int, float] = field(default_factory=dict)
    #: Batch mode: each batch's last request counts as the provider sent them, by chunk
    #: number (a live run has no requests in flight to show; the progress line shows these).
    batch_counts: dict[int, dict[str, int]] = field(default_factory=dict)

    def count(self, result: RowResult, *, paid: bool = True) -> None:
        """A row recorded: its status, and its tokens if it paid for its answer (a row
        served by dedupe or the cache did not), into the counters."""
        if result.status == OK:
            self.ok += 1
            if paid:
                self.prompt_tokens += result.prompt_tokens or 0
                self.completion_tokens += result.completion_tokens or 0
        else:
            self.error += 1

    @property
    def done(self) -> int:
        return self.ok + self.error

    def oldest_send_s(self, now: float | None = None) -> float | None:
        """Seconds the longest-running send in flight has waited (None: none in flight)."""
        if not self.sending_since:
            return None
        return (time.monotonic() if now is None else now) - min(self.sending_since.values())


@dataclass
class Event:
    """Something the presentation layer may show.

    ``kind``: start, row, notice, warning (shown even with --quiet), tick (a periodic
    heartbeat while sending), finalizing."""

    kind: str
    progress: Progress
    message: str | None = None
    result: RowResult | None = None


EventSink = Callable[[Event], None]
