"""The limiter, with a fake clock where time matters: slots, pauses, storms, pacing."""

from __future__ import annotations

import asyncio

from batchrun.job import Limits
from batchrun.limits import Limiter


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_slots_are_bounded_fifo_and_woken_by_release() -> None:
    async def main() -> list[int]:
        lim = Limiter(Limits(concurrency=2))
        order: list[int] = []
        await lim.slot()
        await lim.slot()

        async def waiter(i: int) -> None:
            await lim.slot()
            order.append(i)

        tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
        await asyncio.sleep(0)
        assert lim.in_flight == 2 and order == []
        lim.release_slot()
        await asyncio.sleep(0)
        lim.release_slot()
        await asyncio.sleep(0)
        assert order == [0, 1] and lim.in_flight == 2
        tasks[2].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        lim.release_slot()
        lim.release_slot()
        assert lim.in_flight == 0  # the cancelled waiter leaked nothing
        return order

    asyncio.run(main())


def test_a_stray_429_does_not_pause_everyone() -> None:
    clock = Clock()
    lim = Limiter(Limits(concurrency=64), clock=clock)
    for _ in range(100):
        lim._sends.append(clock.t)
        lim.on_success()
    lim.on_rate_limited(5.0)
    assert not lim.rate_limit_storm()
    assert lim._pause_until < clock.t


def test_a_run_of_429s_pauses_everyone_for_retry_after_and_slows_the_pace() -> None:
    clock = Clock()
    lim = Limiter(Limits(concurrency=8), clock=clock)
    for _ in range(200):
        lim.on_success()
    for _ in range(8):
        lim.on_rate_limited(3.0)
    assert lim._pause_until == clock.t + 3.0
    assert lim.pacing_rate == 200 / 10  # accepted over the 10 s window
    assert lim.window < 8


def test_without_retry_after_the_pause_doubles_while_the_storm_goes_on() -> None:
    clock = Clock()
    lim = Limiter(Limits(concurrency=4, requests_per_minute=600), pause_initial_s=0.5, clock=clock)
    pauses = []
    for _ in range(4):
        for _ in range(4):
            lim.on_rate_limited(None)
        pauses.append(lim._pause_until - clock.t)
        clock.t = lim._pause_until + 0.1
    assert pauses == [0.5, 1.0, 2.0, 4.0]
    assert lim.pacing_rate is None  # with --rpm the user's rate stands


def test_before_send_waits_out_the_pause() -> None:
    async def main() -> float:
        lim = Limiter(Limits(concurrency=1))
        loop = asyncio.get_running_loop()
        lim._pause_until = lim._clock() + 0.05
        t0 = loop.time()
        await lim.before_send(10)
        return loop.time() - t0

    assert asyncio.run(main()) >= 0.045


def test_rpm_spreads_requests_instead_of_bursting() -> None:
    async def main() -> float:
        lim = Limiter(Limits(concurrency=50, requests_per_minute=1200))  # 20 per second
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for _ in range(8):
            await lim.before_send(1)
        return loop.time() - t0

    assert asyncio.run(main()) >= 0.3  # 8 sends at 20/s: not all at once


def test_token_budget_waits_and_gives_back_unused_tokens() -> None:
    async def main() -> None:
        lim = Limiter(Limits(concurrency=4, tokens_per_minute=6000))  # 100/s, 1,000 bucket
        await lim.before_send(900)
        assert lim._tokens == 100
        lim.after_send(900, 100)  # used far less than estimated
        assert lim._tokens == 900

    asyncio.run(main())
