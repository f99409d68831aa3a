"""Progress display (presentation only): a tqdm bar on a terminal, a plain line otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

from batchrun.events import Event, Progress
from batchrun.send.batch import counts_text

#: Seconds between plain progress lines when stderr is not a terminal.
PLAIN_INTERVAL_S = 10.0


def _postfix(p: Progress) -> str:
    parts = [f"ok={p.ok:,}", f"err={p.error:,}", f"tok={p.prompt_tokens + p.completion_tokens:,}"]
    if p.retries:
        parts.append(f"retries={p.retries:,}")
    if p.rate_limited:
        parts.append(f"429s={p.rate_limited:,}")
    lim = p.limiter
    if lim is not None:
        parts.append(f"inflight={lim.in_flight}/{lim.window}")
        oldest = p.oldest_send_s()
        if oldest is not None and oldest >= 1:
            parts.append(f"oldest={oldest:,.0f}s")
        if lim.pacing_rate is not None:
            parts.append(f"pace={lim.pacing_rate * 60:,.0f}/min")
    if p.batch_counts:
        parts.append(
            "; ".join(
                f"batch {n}: {counts_text(c) or 'no counts yet'}"
                for n, c in sorted(p.batch_counts.items())
            )
        )
    return " ".join(parts)


class ProgressView:
    """Turns runner events into a progress bar or periodic lines on ``stream``."""

    def __init__(self, *, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.bar: tqdm[None] | None = None
        self._last_line = 0.0
        self._last_postfix = 0.0
        self._started = time.monotonic()

    def __call__(self, event: Event) -> None:
        if event.kind == "warning" and event.message:
            print(f"batchrun: {event.message}", file=self.stream, flush=True)
            return  # --quiet hides progress, not what went wrong
        if self.quiet:
            return
        p = event.progress
        if event.kind == "start":
            self._started = time.monotonic()
            if p.already_done:
                self.note(
                    f"resuming: {p.already_done:,} of {p.total:,} rows already done, {p.to_send:,} to send"
                )
            if self.tty:
                self.bar = tqdm(
                    total=p.total,
                    initial=p.already_done,
                    unit="row",
                    file=self.stream,
                    dynamic_ncols=True,
                    mininterval=0.25,
                    smoothing=0.1,
                )
        elif event.kind == "row":
            now = time.monotonic()
            if self.bar is not None:
                self.bar.update(1)
                if now - self._last_postfix > 0.5:
                    self._last_postfix = now
                    self.bar.set_postfix_str(_postfix(p), refresh=False)
            elif now - self._last_line >= PLAIN_INTERVAL_S:
                self._last_line = now
                self._plain(p)
        elif event.kind == "tick":
            # No answer for a while (a server that never answers): off a terminal the line
            # must still come on time, saying what is in flight and for how long.
            now = time.monotonic()
            if self.bar is None and now - self._last_line >= PLAIN_INTERVAL_S - 0.5:
                self._last_line = now
                self._plain(p)
            elif self.bar is not None:
                self.bar.set_postfix_str(_postfix(p), refresh=True)
        elif event.kind == "notice" and event.message:
            self.note(event.message)
        elif event.kind == "finalizing":
            if self.bar is None and p.done:
                self._plain(p)
            self.close()

    def _plain(self, p: Progress) -> None:
        elapsed = max(1e-9, time.monotonic() - self._started)
        done = p.already_done + p.done
        print(
            f"batchrun: {done:,}/{p.total:,} rows ({100 * done / max(1, p.total):.1f}%), "
            f"{p.done / elapsed:,.1f} rows/s, {_postfix(p)}",
            file=self.stream,
            flush=True,
        )

    def note(self, message: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(f"batchrun: {message}", file=self.stream)
        else:
            print(f"batchrun: {message}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
