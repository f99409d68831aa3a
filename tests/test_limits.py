"""The limiter: in-flight slots (bounded, FIFO, woken by release, cancellation-safe), the
global pause after a storm of 429s, requests/min spreading, the adaptive pace and window, and
the tokens/min bucket. Time is a fake clock and ``asyncio.sleep`` a recorder wherever the
logic allows; the one real-time test (asyncio-throttle reads ``time.monotonic``) is short."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from batchrun.errors import Stopped
from batchrun.job import Limits
from batchrun.send.limits import (
    DECREASE_FACTOR,
    HEADROOM,
    INCREASE_PER_S,
    MIN_RATE_PER_S,
    RATE_WINDOW_S,
    Limiter,
    _rpm_throttler,
)

_real_sleep = asyncio.sleep


async def _turns(n: int = 5) -> None:
    """Let the loop run a few turns (real zero-sleeps, never a timed wait)."""
    for _ in range(n):
        await _real_sleep(0)


class Clock:
    """A monotonic clock that moves only when told to (or when fake_sleep sleeps)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class SleepRecorder:
    """Replaces asyncio.sleep with virtual time: each sleeper parks until the recorder moves
    the fake clock to its wake-up time, once every runnable task has had its turn. Concurrent
    sleepers therefore overlap as they would in real time, and every wait is recorded."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.waits: list[float] = []
        self._parked: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0
        self._driver: asyncio.Task[None] | None = None

    async def __call__(self, delay: float, result: Any = None) -> Any:
        if delay <= 0:
            await _real_sleep(0)
            return result
        self.waits.append(delay)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._parked, (self.clock.t + delay, self._seq, fut))
        if self._driver is None or self._driver.done():
            self._driver = asyncio.create_task(self._drive())
        await fut
        return result

    async def _drive(self) -> None:
        while self._parked:
            await _turns(20)  # let every runnable task run until it parks or finishes
            due, _, fut = heapq.heappop(self._parked)
            self.clock.t = max(self.clock.t, due)
            if not fut.done():
                fut.set_result(None)

    @property
    def total(self) -> float:
        return sum(self.waits)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sleeps(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> Iterator[SleepRecorder]:
    recorder = SleepRecorder(clock)
    monkeypatch.setattr(asyncio, "sleep", recorder)  # what batchrun.limits calls
    yield recorder


def _run(coro: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(coro())  # type: ignore[arg-type]


def _storm(lim: Limiter, retry_after_s: float | None = None) -> None:
    """A run of 429s long enough to count as the limit being hit."""
    for _ in range(lim._storm_min):
        lim.on_rate_limited(retry_after_s)


# --- in-flight slots ---------------------------------------------------------------------------


def test_slots_never_exceed_the_window_and_waiters_are_fifo() -> None:
    async def main() -> None:
        lim = Limiter(Limits(concurrency=3))
        order: list[int] = []
        peak = 0

        async def worker(i: int) -> None:
            nonlocal peak
            await lim.slot()
            order.append(i)
            peak = max(peak, lim.in_flight)
            assert lim.in_flight <= lim.window
            await _real_sleep(0)
            lim.release_slot()

        async with asyncio.TaskGroup() as tg:
            for i in range(20):
                tg.create_task(worker(i))
        assert order == list(range(20))
        assert peak == 3
        assert lim.in_flight == 0 and not lim._waiters

    _run(main)


def test_a_waiter_is_woken_by_release_without_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_sleep(*_: Any, **__: Any) -> None:
        raise AssertionError("slot() must wait on a future, not sleep")

    async def main() -> None:
        monkeypatch.setattr(asyncio, "sleep", no_sleep)
        lim = Limiter(Limits(concurrency=1))
        await lim.slot()
        got = asyncio.create_task(lim.slot())
        await _turns(50)
        assert not got.done()  # blocked, however many loop turns pass
        assert lim.in_flight == 1 and len(lim._waiters) == 1
        lim.release_slot()
        assert lim.in_flight == 1  # handed straight to the waiter
        await _turns(1)
        assert got.done() and got.exception() is None

    _run(main)


def test_a_cancelled_waiter_does_not_leak_a_slot() -> None:
    async def main() -> None:
        lim = Limiter(Limits(concurrency=1))
        await lim.slot()
        cancelled = asyncio.create_task(lim.slot())
        after = asyncio.create_task(lim.slot())
        await _turns()
        cancelled.cancel()
        await _turns()
        assert cancelled.cancelled()
        lim.release_slot()
        await _turns()
        assert after.done()  # the slot skipped the cancelled waiter
        assert lim.in_flight == 1
        lim.release_slot()
        assert lim.in_flight == 0
        await lim.slot()  # and the window is whole again
        assert lim.in_flight == 1

    _run(main)


def test_a_waiter_cancelled_just_as_it_was_granted_gives_the_slot_back() -> None:
    async def main() -> None:
        lim = Limiter(Limits(concurrency=1))
        await lim.slot()
        waiter = asyncio.create_task(lim.slot())
        await _turns()
        lim.release_slot()  # grants the waiter's future...
        waiter.cancel()  # ...and the task is cancelled before it resumes
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert lim.in_flight == 0
        await asyncio.wait_for(lim.slot(), 1)

    _run(main)


def test_repr_shows_live_state() -> None:
    lim = Limiter(Limits(concurrency=5))
    assert repr(lim) == "Limiter(in_flight=0, window=5, rate=unpaced, 429s=0)"


# --- the global pause -------------------------------------------------------------------------


def test_a_storm_of_429s_pauses_every_sender_for_the_retry_after(
    clock: Clock, sleeps: SleepRecorder
) -> None:
    async def main() -> None:
        lim = Limiter(Limits(concurrency=4), clock=clock)
        _storm(lim, retry_after_s=3.0)
        assert lim.rate_limited == 4
        assert lim._pause_until == pytest.approx(clock.t + 3.0)
        start = clock.t
        sent_at: list[float] = []

        async def send() -> None:
            await lim.before_send(1)
            sent_at.append(clock.t)

        await asyncio.gather(*(send() for _ in range(4)))
        assert sent_at == pytest.approx([start + 3.0] * 4)  # no one went before the pause ended
        assert sleeps.waits == pytest.approx([3.0] * 4)  # each waited once, together
        sleeps.waits.clear()
        await lim.before_send(1)
        assert sleeps.waits == []  # the pause is over

    _run(main)


def test_before_send_does_not_wait_without_limits_or_pause(
    clock: Clock, sleeps: SleepRecorder
) -> None:
    async def main() -> None:
        lim = Limiter(Limits(concurrency=4), clock=clock)
        for _ in range(100):
            await lim.before_send(10_000)
        assert sleeps.waits == []

    _run(main)


def test_before_send_waits_for_a_pause_extended_while_it_slept(
    clock: Clock, sleeps: SleepRecorder
) -> None:
    async def main() -> None:
        lim = Limiter(Limits(concurrency=4), clock=clock)
        start = clock.t
        lim._pause_until = start + 1.0
        waiting = asyncio.create_task(lim.before_send(1))
        await _turns(3)  # it is asleep until start + 1
        assert sleeps.waits == [1.0]
        lim._pause_until = start + 3.0  # another storm pushed the end further meanwhile
        await waiting
        assert sleeps.waits == pytest.approx([1.0, 2.0])
        assert clock.t == pytest.approx(start + 3.0)

    _run(main)


def test_a_real_pause_holds_before_send_back() -> None:
    async def main() -> float:
        lim = Limiter(Limits(concurrency=4))
        _storm(lim, retry_after_s=0.05)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await lim.before_send(1)
        return loop.time() - t0

    waited = _run(main)
    assert 0.04 <= waited < 1.0


def test_a_stray_429_among_successes_pauses_no_one(clock: Clock) -> None:
    lim = Limiter(Limits(concurrency=64), clock=clock)
    for _ in range(100):
        lim._sends.append(clock.t)
        lim.on_success()
    lim.on_rate_limited(5.0)
    assert not lim.rate_limit_storm()
    assert lim._pause_until <= clock.t
    assert lim.window == 64 and lim.pacing_rate is None


def test_without_retry_after_the_pause_doubles_while_the_storm_goes_on(clock: Clock) -> None:
    lim = Limiter(
        Limits(concurrency=4, requests_per_minute=600),
        pause_initial_s=0.5,
        pause_max_s=3.0,
        clock=clock,
    )
    pauses = []
    for _ in range(5):
        _storm(lim)
        pauses.append(lim._pause_until - clock.t)
        clock.t = lim._pause_until + 0.1
    assert pauses == pytest.approx([0.5, 1.0, 2.0, 3.0, 3.0])  # capped at pause_max_s
    assert lim.pacing_rate is None and lim.window == 4  # with --rpm the user's rate stands


# --- requests per minute ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rpm", "per_slice", "period_s"),
    [(60, 1, 1.0), (600, 1, 0.1), (1200, 2, 0.1), (6000, 10, 0.1), (90, 1, 60 / 90)],
)
def test_rpm_is_cut_into_small_slices(rpm: float, per_slice: int, period_s: float) -> None:
    throttler = _rpm_throttler(rpm)
    assert throttler.rate_limit == per_slice
    assert throttler.period == pytest.approx(period_s)
    assert throttler.rate_limit / throttler.period * 60 == pytest.approx(rpm)


def test_rpm_spreads_sends_instead_of_bursting() -> None:
    async def main() -> list[float]:
        lim = Limiter(Limits(concurrency=50, requests_per_minute=1200))  # 20 per second
        assert not lim.adaptive
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        times = []
        for _ in range(10):
            await lim.before_send(1)
            times.append(loop.time() - t0)
        return times

    times = _run(main)
    assert times[1] < 0.05  # the first slice goes at once...
    assert times[2] >= 0.09  # ...the next waits for its slice
    assert times[-1] >= 0.38  # 10 sends at 20/s: two slices of 2 per 0.1 s
    assert times[-1] < 2.0


# --- adaptive pace and window -------------------------------------------------------------------


def test_a_storm_sets_a_pace_from_the_accepted_rate_and_shrinks_the_window(
    clock: Clock,
) -> None:
    lim = Limiter(Limits(concurrency=20), clock=clock)
    assert lim.adaptive
    for i in range(100):  # 100 accepted over the last 10 s
        clock.t = 1000.0 + i * 0.05
        lim.on_success()
    assert lim.pacing_rate is None and lim.window == 20
    _storm(lim, retry_after_s=1.0)
    assert lim.pacing_rate == pytest.approx(HEADROOM * 100 / RATE_WINDOW_S)
    assert lim.window == int(20 * DECREASE_FACTOR)
    assert "rate=" in repr(lim) and "unpaced" not in repr(lim)


def test_only_the_accepted_requests_of_the_rate_window_count(clock: Clock) -> None:
    lim = Limiter(Limits(concurrency=8), clock=clock)
    for _ in range(500):
        lim.on_success()  # long ago
    clock.t += RATE_WINDOW_S + 5
    for _ in range(40):
        lim.on_success()
    _storm(lim)
    assert lim.pacing_rate == pytest.approx(HEADROOM * 40 / RATE_WINDOW_S)


def test_the_pace_never_falls_below_the_floor(clock: Clock) -> None:
    lim = Limiter(Limits(concurrency=8), clock=clock)
    lim.on_success()  # one accepted request in ten seconds
    _storm(lim)
    assert lim.pacing_rate == MIN_RATE_PER_S


def test_a_storm_before_any_success_shrinks_the_window_without_a_pace(clock: Clock) -> None:
    lim = Limiter(Limits(concurrency=10), clock=clock)
    _storm(lim)
    assert lim.pacing_rate is None
    assert lim.window == int(10 * DECREASE_FACTOR)


def test_successive_429s_of_one_storm_cut_only_once(clock: Clock) -> None:
    lim = Limiter(Limits(concurrency=20), clock=clock)
    for _ in range(100):
        lim.on_success()
    _storm(lim, retry_after_s=0.05)
    window, rate = lim.window, lim.pacing_rate
    assert window < 20 and rate is not None
    # More 429s over the next two seconds: during the pause, after it, past the cooldown;
    # each pause ends after 0.05 s, so the wall is confirmed again and again.
    for i in range(1, 20):
        clock.t += 0.1
        for _ in range(lim._storm_min):
            lim.on_rate_limited(0.05)
        assert lim.window == window, f"cut again {i * 0.1:.1f} s later"
        assert lim.pacing_rate == rate
    assert lim.rate_limited == 20 * lim._storm_min
    assert lim._storm_streak > 1  # one wall confirmed again and again: one cut


def test_a_new_storm_after_the_cooldown_cuts_again(clock: Clock) -> None:
    lim = Limiter(Limits(concurrency=20), clock=clock)
    for _ in range(100):
        lim.on_success()
    _storm(lim, retry_after_s=0.5)
    first_window, first_rate = lim.window, lim.pacing_rate
    assert first_rate is not None
    clock.t += 5.0  # well after the pause, the streak gap and the cooldown
    _storm(lim, retry_after_s=0.5)
    assert lim.window == int(first_window * DECREASE_FACTOR)
    assert lim.pacing_rate is not None and lim.pacing_rate < first_rate


def test_success_grows_the_window_back_by_one_per_second(clock: Clock) -> None:
    lim = Limiter(Limits(concurrency=8), clock=clock)
    for _ in range(100):
        lim.on_success()
    _storm(lim, retry_after_s=1.0)
    cut = lim.window
    assert cut == int(8 * DECREASE_FACTOR) < 8
    rate = lim.pacing_rate
    assert rate is not None
    pause_end = lim._pause_until
    clock.t = pause_end - 0.5
    lim.on_success()
    assert lim.window == cut  # no growth while paused
    clock.t = pause_end + 0.5
    lim.on_success()
    assert lim.window == cut  # nor before a whole second without a 429
    grown = []
    for s in range(1, 5):
        clock.t = pause_end + s
        lim.on_success()
        lim.on_success()  # a second success in the same second adds nothing
        grown.append(lim.window)
    assert grown == [min(8, cut + s) for s in range(1, 5)]
    assert lim.pacing_rate == pytest.approx(rate * (1 + INCREASE_PER_S) ** 4)


def test_growing_the_window_wakes_a_waiter(clock: Clock) -> None:
    async def main() -> None:
        lim = Limiter(Limits(concurrency=4), clock=clock)
        _storm(lim, retry_after_s=0.0)
        assert lim.window == 3
        for _ in range(3):
            await lim.slot()
        waiter = asyncio.create_task(lim.slot())
        await _turns()
        assert not waiter.done()
        clock.t += 1.5
        lim.on_success()
        assert lim.window == 4
        await _turns(1)
        assert waiter.done() and lim.in_flight == 4

    _run(main)


def test_the_pace_spaces_sends(clock: Clock, sleeps: SleepRecorder) -> None:
    async def main() -> None:
        lim = Limiter(Limits(concurrency=8), clock=clock)
        for _ in range(50):
            lim.on_success()  # 50 in 10 s → pace 4.5/s
        _storm(lim, retry_after_s=2.0)
        rate = lim.pacing_rate
        assert rate is not None and rate == pytest.approx(HEADROOM * 5)
        start = clock.t
        for _ in range(5):
            await lim.before_send(1)
        # The pause first, then one send per 1/rate seconds.
        assert clock.t - start == pytest.approx(2.0 + 4 / rate)
        assert sleeps.waits[0] == pytest.approx(2.0)
        assert sleeps.waits[-4:] == pytest.approx([1 / rate] * 4)

    _run(main)


# --- tokens per minute --------------------------------------------------------------------------


def test_token_budget_waits_when_exhausted(clock: Clock, sleeps: SleepRecorder) -> None:
    async def main() -> None:
        lim = Limiter(Limits(concurrency=4, tokens_per_minute=6000), clock=clock)  # 100/s
        await lim.before_send(900)  # the bucket holds 10 s of budget: 1,000
        assert sleeps.waits == []
        assert lim._tokens == pytest.approx(100)
        await lim.before_send(300)  # 200 short at 100/s: two seconds
        assert sleeps.waits == pytest.approx([2.0])
        assert lim._tokens == pytest.approx(0)

    _run(main)


def test_after_send_returns_unused_tokens(clock: Clock, sleeps: SleepRecorder) -> None:
    async def main() -> None:
        lim = Limiter(Limits(concurrency=4, tokens_per_minute=6000), clock=clock)
        await lim.before_send(900)
        lim.after_send(900, 100)  # used far less than estimated
        assert lim._tokens == pytest.approx(900)
        await lim.before_send(800)
        assert sleeps.waits == []  # the returned budget was usable at once

    _run(main)


def test_after_send_takes_more_when_usage_beats_the_estimate(
    clock: Clock, sleeps: SleepRecorder
) -> None:
    async def main() -> None:
        lim = Limiter(Limits(concurrency=4, tokens_per_minute=6000), clock=clock)
        await lim.before_send(500)
        lim.after_send(500, 900)  # 400 more than estimated
        assert lim._tokens == pytest.approx(100)
        lim.after_send(500, None)  # unknown usage changes nothing
        assert lim._tokens == pytest.approx(100)
        await lim.before_send(300)
        assert sleeps.waits == pytest.approx([2.0])

    _run(main)


def test_tokens_refill_with_time_up_to_the_capacity(clock: Clock, sleeps: SleepRecorder) -> None:
    async def main() -> None:
        lim = Limiter(Limits(concurrency=4, tokens_per_minute=6000), clock=clock)
        await lim.before_send(1000)
        clock.t += 3.0  # 300 back
        await lim.before_send(300)
        assert sleeps.waits == []
        clock.t += 3600.0  # an idle hour refills only the 10 s capacity
        await lim.before_send(1000)
        assert sleeps.waits == []
        await lim.before_send(1)
        assert sleeps.waits == pytest.approx([0.01])

    _run(main)


def test_a_request_bigger_than_the_bucket_waits_for_a_full_bucket_not_forever(
    clock: Clock, sleeps: SleepRecorder
) -> None:
    async def main() -> None:
        lim = Limiter(Limits(concurrency=4, tokens_per_minute=600), clock=clock)  # cap 100
        await lim.before_send(5000)
        assert sleeps.waits == []
        await lim.before_send(5000)
        assert sleeps.total == pytest.approx(10.0)  # one full bucket at 10 tokens/s

    _run(main)


def test_stop_ends_every_wait_at_once() -> None:
    async def main() -> None:
        lim = Limiter(Limits(concurrency=1))
        await lim.slot()
        waiting_for_slot = asyncio.create_task(lim.slot())
        _storm(lim, retry_after_s=600.0)  # a ten-minute pause
        waiting_in_pause = asyncio.create_task(lim.before_send(1))
        await _turns()
        assert not waiting_for_slot.done() and not waiting_in_pause.done()
        lim.stop()
        await _turns()
        for task in (waiting_for_slot, waiting_in_pause):
            assert isinstance(task.exception(), Stopped)
        with pytest.raises(Stopped):
            await lim.slot()  # and no new waits

    asyncio.run(asyncio.wait_for(main(), 5))
