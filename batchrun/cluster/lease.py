"""A shard's limiter: the ordinary :class:`~batchrun.send.limits.Limiter`, with its
window, its pace and its tokens/min set from the coordinator's lease (renewed every
:data:`~batchrun.cluster.coordinator.LEASE_S` seconds) instead of from the job.

The shard never finds the rate on its own (that is the coordinator's, once for the
cluster): it throttles its sends to its leased share, as a single run throttles to --rpm.
A storm it sees pauses it at once and is reported, so the whole cluster pauses.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from batchrun.budget import BudgetGate
from batchrun.cluster.allowance import ShardBudget
from batchrun.job import Limits
from batchrun.send.limits import Limiter, _rpm_throttler

#: Renews the lease: (in_flight, wants more, answers accepted since, waits for a slot,
#: the budget's report or None) → the lease.
Renew = Callable[[int, bool, int, bool, dict[str, Any] | None], Awaitable[dict[str, Any]]]


class LeasedLimiter(Limiter):
    def __init__(
        self,
        limits: Limits,
        renew: Renew,
        on_storm: Callable[[float], None],
        on_stop: Callable[[], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(limits, **kwargs)
        self._renew = renew
        self._on_storm = on_storm
        self._on_stop = on_stop
        self.adaptive = False  # the coordinator finds the cluster's rate
        self._throttler = None  # until a lease gives a share of the rate
        self.window = 0  # nothing in flight before the first lease
        self._leased = asyncio.Event()  # a rate share above zero is held (when rates are)
        self._rate_leased = False
        self._accepted_since = 0
        self.cluster_stopped = False
        self.done = False
        #: --max-cost / --max-tokens-total: the gate's caps are the leased allowance.
        self.budget = ShardBudget()

    def use_budget(self, gate: BudgetGate) -> None:
        self.budget.attach(gate)

    def _cluster_stop(self) -> None:
        """The cluster stops (or its coordinator is gone): every wait here ends, the
        budget's too."""
        self.cluster_stopped = True
        super().stop()
        self.budget.wake()

    async def renew_forever(self, every_s: float, lapse_s: float) -> None:
        """Renew until the run ends (cancelled) — the lease is the only source of slots.
        A lost renewal leaves the last lease in force; none for ``lapse_s`` seconds means
        the coordinator (and so the driver) is gone: stop, resumably, rather than send on
        with nobody holding the cluster's limits or taking the results."""
        last_ok = self._clock()
        while True:
            accepted, self._accepted_since = self._accepted_since, 0
            try:
                saturated = bool(self._waiters) or self.in_flight >= self.window
                report = self.budget.report()
                lease = await self._renew(
                    self.in_flight, not self.done, accepted, saturated, report
                )
                self.apply(lease)
                last_ok = self._clock()
            except Exception:
                self._accepted_since += accepted
                if self._clock() - last_ok > lapse_s and not self.cluster_stopped:
                    self._cluster_stop()
            await asyncio.sleep(every_s)

    def apply(self, lease: dict[str, Any]) -> None:
        if lease["stop"]:
            if not self.cluster_stopped and not self.stopped:
                self._cluster_stop()
            return
        if "budget" in lease:
            self.budget.apply(lease["budget"])
        self.window = max(0, int(lease["slots"]))
        self._wake()
        rpm = lease["rpm"]
        self._rate_leased = rpm is not None
        if rpm:
            # asyncio-throttle, as a single run's --rpm: it counts the sends actually made,
            # so sends held up by a busy loop never go out in a bunch. One throttler for the
            # life of the shard, its limits changed in place: tasks already waiting in it
            # see the new share (a new throttler would let them through at the old one).
            new = _rpm_throttler(rpm)
            if self._throttler is None:
                self._throttler = new
            else:
                self._throttler.rate_limit, self._throttler.period = new.rate_limit, new.period
            self._leased.set()
        else:
            self._leased.clear()
        tpm = lease["tpm"]
        if tpm is not None:
            self._tok_rate = tpm / 60.0
            self._tok_capacity = self._tok_rate  # one second of budget: no burst of the cluster's
            self._tokens = min(self._tokens, self._tok_capacity)
        pause = float(lease["pause_s"])
        if pause > 0:
            self._pause_until = max(self._pause_until, self._clock() + pause)

    async def before_send(self, estimated_tokens: int) -> None:
        if self._rate_leased and not self._leased.is_set():
            await self.unless_stopped(self._leased.wait)  # no share of the rate yet
        await super().before_send(estimated_tokens)

    def on_success(self) -> None:
        self._accepted_since += 1
        super().on_success()

    def on_rate_limited(self, retry_after_s: float | None) -> None:
        before = self._pause_until
        super().on_rate_limited(retry_after_s)
        if self._pause_until > before:  # this shard saw a storm: the cluster pauses
            with contextlib.suppress(Exception):
                self._on_storm(self._pause_until - self._clock())

    def stop(self) -> None:
        """This shard stops for its own reason (a 401/403, the same-error stop, a budget,
        a journal failure): so does every other."""
        if not self.stopped and not self.cluster_stopped:
            with contextlib.suppress(Exception):
                self._on_stop()
        super().stop()
