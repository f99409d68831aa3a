"""How fast to go: in-flight window, requests/min, tokens/min, and slowing down on 429s.

One object, :class:`Limiter`, behind a small interface the runner uses:

- ``await slot()`` / ``release_slot()`` — an in-flight slot, taken by the producer *before*
  it creates a task;
- ``await before_send(tokens)`` — before every attempt: honours a global pause, the
  requests-per-minute throttle (asyncio-throttle, in slices of about 0.1 to 1 s so a minute's
  quota is never sent in a burst) and the tokens-per-minute budget;
- ``after_send(estimated, actual)`` — corrects the token budget with real usage;
- ``on_success()`` / ``on_rate_limited(retry_after_s, backoff_s)`` — feedback. Once 429s
  are a real share of recent answers (the limit is hit, not a stray 429), everyone pauses
  for the Retry-After. Without ``--rpm`` the limiter also *finds* the sustainable rate: it
  sets a pacing rate from what the server accepted over the last window and cuts the
  in-flight window (multiplicative decrease), then raises both slowly while no 429 comes
  (additive increase).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from asyncio_throttle.throttler import Throttler

from batchrun.errors import Stopped
from batchrun.pacing import Limits

if TYPE_CHECKING:
    from batchrun.budget import BudgetGate

#: Seconds over which accepted requests are counted to estimate the sustainable rate.
RATE_WINDOW_S = 10.0
DECREASE_FACTOR = 0.85
#: The pace set after a storm stays this far under the rate the server accepted.
HEADROOM = 0.9
#: Fractional increase of the pacing rate per second without a 429.
INCREASE_PER_S = 0.01
#: The limit counts as hit after STORM_MIN_429S 429s in a row without a success, or when
#: 429s are STORM_SHARE of the requests sent in the last RECENT_S seconds (and at least
#: STORM_SHARE_MIN_429S of them); both counts capped at the concurrency.
STORM_MIN_429S = 32
STORM_SHARE = 0.10
STORM_SHARE_MIN_429S = 8
RECENT_S = 2.0
#: A storm within this many seconds of the end of the last pause continues its streak.
STREAK_GAP_S = 2.0
#: 429s in a row that confirm a storm right after the last pause.
STREAK_CONFIRM_429S = 4
#: The adaptive pace never goes below this many requests per second.
MIN_RATE_PER_S = 0.5


def _rpm_throttler(rpm: float) -> Throttler:
    # k requests per k*60/rpm seconds: slices near 0.1 s for high rates, 1 request per
    # interval for low ones. Same average, never a minute's burst.
    k = max(1, math.ceil(rpm / 600))
    return Throttler(rate_limit=k, period=k * 60.0 / rpm)


class _Pacer:
    """Spaces sends at ``rate`` per second without polling: each send books the next slot."""

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self._clock = clock
        self._next = clock()

    async def wait(self) -> None:
        now = self._clock()
        at = max(self._next, now)
        self._next = at + 1.0 / self.rate
        if at > now:
            await asyncio.sleep(at - now)


class Limiter:
    """All rate and concurrency limits of one run (see the module docstring)."""

    def __init__(
        self,
        limits: Limits,
        *,
        pause_initial_s: float = 1.0,
        pause_max_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        #: First global pause after a storm of 429s without Retry-After; doubles per storm.
        self.pause_initial_s = pause_initial_s
        self.pause_max_s = pause_max_s
        self._storm_streak = 0
        self._clock = clock
        self.window = limits.concurrency
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._throttler = (
            _rpm_throttler(limits.requests_per_minute) if limits.requests_per_minute else None
        )
        self.adaptive = limits.requests_per_minute is None
        self._pacer: _Pacer | None = None
        self._pause_until = 0.0
        self._last_increase = clock()
        self._accepted: deque[float] = deque()
        self._successes_since_grow = 0
        # Token bucket for --tpm: capacity of 10 s of budget, refilled continuously.
        tpm = limits.tokens_per_minute
        self._tok_rate = tpm / 60.0 if tpm else 0.0
        self._tok_capacity = self._tok_rate * 10.0
        self._tokens = self._tok_capacity
        self._tok_time = clock()
        self.rate_limited = 0
        # Times of the sends and of the 429s of the last RECENT_S seconds.
        self._sends: deque[float] = deque()
        self._429s: deque[float] = deque()
        self._storm_min = min(STORM_MIN_429S, limits.concurrency)
        self._share_min = min(STORM_SHARE_MIN_429S, limits.concurrency)
        self._429_run = 0  # 429s since the last success
        #: Set by ``stop()``: every wait here ends at once (see ``Stopped``). The flag is
        #: what is read (several times a row); the event is what waits end on.
        self.stopped = False
        self._stopped = asyncio.Event()

    def __repr__(self) -> str:
        rate = f"{self._pacer.rate:.1f}/s" if self._pacer else "unpaced"
        return f"Limiter(in_flight={self.in_flight}, window={self.window}, rate={rate}, 429s={self.rate_limited})"

    @property
    def pacing_rate(self) -> float | None:
        """Requests per second the adaptive pacer currently allows (None = not pacing)."""
        return self._pacer.rate if self._pacer else None

    # --- in-flight slots ------------------------------------------------------------------

    def use_budget(self, gate: BudgetGate) -> None:
        """The run's budget gate (a Ray shard's limiter leases its caps, see
        :class:`~batchrun.cluster.lease.LeasedLimiter`); a single run's keeps the job's."""

    def stop(self) -> None:
        """The run is stopping: end every wait for a slot, a pause or a rate limit now
        (those waiting get :class:`Stopped`) and refuse new ones."""
        self.stopped = True
        self._stopped.set()
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(Stopped())

    async def sleep(self, seconds: float) -> None:
        """Sleep, unless the run stops first (then raise Stopped)."""
        await self.unless_stopped(lambda: asyncio.sleep(seconds))

    async def unless_stopped(self, wait: Callable[[], Awaitable[object]]) -> None:
        """Await ``wait()``, unless the run stops first (then raise Stopped). Only pauses,
        the token bucket and a shard waiting for its lease come here, never the hot path,
        so two tasks a wait are cheap."""
        if self.stopped:
            raise Stopped
        waiter = asyncio.ensure_future(wait())
        stopper = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            stopper.cancel()
        if self.stopped:
            raise Stopped

    async def slot(self) -> None:
        """Wait for an in-flight slot (FIFO, woken by release, never polled)."""
        if self.stopped:
            raise Stopped
        if self.in_flight < self.window and not self._waiters:
            self.in_flight += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release_slot()  # granted and cancelled at once: give it back
            raise

    def release_slot(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.window:
            fut = self._waiters.popleft()
            if not fut.done():
                self.in_flight += 1
                fut.set_result(None)

    # --- before and after each attempt ------------------------------------------------------

    async def before_send(self, estimated_tokens: int) -> None:
        # Not polling: each sleep lasts exactly until the pause ends; the loop only re-checks
        # because another 429 may have pushed the end further while we slept.
        while (delay := self._pause_until - self._clock()) > 0:
            await self.sleep(delay)
        if self._throttler is not None:
            await self._throttler.acquire()  # type: ignore[no-untyped-call]
        if self._pacer is not None:
            await self._pacer.wait()
        if self._tok_rate:
            await self._take_tokens(min(estimated_tokens, self._tok_capacity))
        now = self._clock()
        sends = self._sends
        sends.append(now)
        while now - sends[0] > RECENT_S:  # bounded by the sends of RECENT_S seconds
            sends.popleft()

    async def _take_tokens(self, n: float) -> None:
        while True:
            now = self._clock()
            self._tokens = min(
                self._tok_capacity, self._tokens + (now - self._tok_time) * self._tok_rate
            )
            self._tok_time = now
            if self._tokens >= n:
                self._tokens -= n
                return
            await self.sleep((n - self._tokens) / self._tok_rate)

    def after_send(self, estimated_tokens: int, actual_tokens: int | None) -> None:
        """Give back (or take more of) the token budget once real usage is known."""
        if self._tok_rate and actual_tokens is not None:
            self._tokens = min(
                self._tok_capacity,
                self._tokens + min(estimated_tokens, self._tok_capacity) - actual_tokens,
            )

    # --- feedback -------------------------------------------------------------------------------

    def on_success(self) -> None:
        self._429_run = 0
        now = self._clock()
        if not self.adaptive:
            return
        self._accepted.append(now)
        while self._accepted and now - self._accepted[0] > RATE_WINDOW_S:
            self._accepted.popleft()
        elapsed = now - self._last_increase
        if elapsed >= 1.0:
            self._last_increase = now
            if self._pacer is not None:
                self._pacer.rate *= (1 + INCREASE_PER_S) ** elapsed
            if self.window < self.limits.concurrency:
                self.window += 1
                self._wake()

    def rate_limit_storm(self) -> bool:
        """Whether the limit is hit: a run of 429s with no success between them, or 429s
        making up a real share of the requests *sent* in the last seconds. Counting sends,
        not answers, keeps a burst of fast 429s (they come back before the successes sent
        with them) from looking like a wall; the run catches a wall hit after a burst of
        successes at once."""
        now = self._clock()
        # Right after a storm's pause a few 429s in a row confirm the wall is still there.
        in_streak = self._storm_streak > 0 and now - self._pause_until < STREAK_GAP_S
        if self._429_run >= (STREAK_CONFIRM_429S if in_streak else self._storm_min):
            return True
        for times in (self._sends, self._429s):
            while times and now - times[0] > RECENT_S:
                times.popleft()
        n429 = len(self._429s)
        return n429 >= self._share_min and n429 >= STORM_SHARE * len(self._sends)

    def on_rate_limited(self, retry_after_s: float | None) -> None:
        """A 429. When 429s are a real share of recent sends, the limit is hit: everyone
        pauses for the Retry-After, else for a pause that doubles while the storm goes on
        (a wall without Retry-After is probed, not hammered); without --rpm the pace slows
        and the window shrinks too. A stray 429 among successes only delays its own row."""
        self.rate_limited += 1
        self._429_run += 1
        now = self._clock()
        self._429s.append(now)
        if now < self._pause_until or not self.rate_limit_storm():
            return  # answers to requests sent before the pause began are part of its storm
        self._storm_streak = self._storm_streak + 1 if now - self._pause_until < STREAK_GAP_S else 1
        if retry_after_s is not None:
            pause = retry_after_s
        else:
            pause = min(self.pause_max_s, self.pause_initial_s * 2 ** (self._storm_streak - 1))
        self._pause_until = now + pause
        self._last_increase = max(now + pause, self._last_increase)
        if not self.adaptive or self._storm_streak > 1:
            return  # the same wall again: the pause doubles, the pace was already set
        self.window = max(1, int(self.window * DECREASE_FACTOR))
        if not self._accepted:
            return  # nothing accepted yet: no rate to pace at; the pause and window act alone
        # Over the whole window even early in the run: a limit enforced per window admits
        # a burst and then nothing, and the burst is not the rate.
        accepted_rate = max(MIN_RATE_PER_S, HEADROOM * len(self._accepted) / RATE_WINDOW_S)
        if self._pacer is None:
            self._pacer = _Pacer(accepted_rate, self._clock)
        else:
            self._pacer.rate = max(
                MIN_RATE_PER_S, min(self._pacer.rate * DECREASE_FACTOR, accepted_rate)
            )
