"""The cluster's one set of limits: a coordinator every shard leases its share from.

``--concurrency``, ``--rpm`` and ``--tpm`` are cluster totals. Each shard renews a lease
every :data:`LEASE_S` seconds; a lease is the shard's fair share of what is free, valid
for :data:`LEASE_TTL_S`: a shard that finishes (or dies) gives its share back at once (or
when its lease lapses), so shards finishing unevenly waste nothing. In-flight requests
count against the concurrency until they end, and a share that shrank counts at its old
size until the shard has the new one (it asks again), so a shrinking share never lets the
cluster exceed the total; a rate share is granted only out of what the others' leases
leave, counted the same way.

One controller for 429s. A shard that sees a storm (429s a real share of its sends, see
:class:`~batchrun.send.limits.Limiter`) reports it; the whole cluster pauses for the
Retry-After (or a doubling pause). Without ``--rpm``, the coordinator also *finds* the
rate, as a single run's limiter does, but once for the cluster: on the first storm it paces
the cluster at 90 % of what the server accepted over the last seconds (summed over the
shards' reports) and cuts the window; both grow back slowly while no storm comes. Shards
never probe the limit on their own, so N shards do not hit it N times.

One budget for the cluster: --max-cost and --max-tokens-total are leased to the shards as
allowances (see :mod:`batchrun.cluster.allowance`).

One stop for the cluster: a shard that stops (401/403, the same-error stop, a budget) or
the driver (a signal) stops every shard; each keeps its journal, and a rerun resumes all.

Plain Python: the driver runs it as a Ray actor; tests call it directly.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batchrun.cluster.allowance import Allowances, Amounts
from batchrun.send.limits import (
    DECREASE_FACTOR,
    HEADROOM,
    INCREASE_PER_S,
    MIN_RATE_PER_S,
    RATE_WINDOW_S,
)

#: Seconds between a shard's lease renewals.
LEASE_S = 0.25
#: A lease not renewed within this many seconds is free again (a dead shard's share).
LEASE_TTL_S = 3.0
#: Requests a minute kept back from --rpm for each shard while several
#: pace at once. Each shard's throttle spaces its own sends, but their phases are
#: independent: in any window of the server's, each may land one request more than its
#: share. One request a shard per 2 s keeps a limit counted over windows of 2 s or more
#: (4 shards against 1,800/min in 2 s windows: 56 + 4 ≤ 60), at 2 % of 6,000/min.
SLACK_PER_SHARD_RPM = 30.0


@dataclass
class _Lease:
    slots: int = 0
    in_flight: int = 0
    rpm: float = 0.0
    tpm: float = 0.0
    #: The grant before the last (slots, rpm, tpm): a shard uses it until the last one
    #: reaches it, which is certain only when it asks again.
    before: tuple[int, float, float] = (0, 0.0, 0.0)
    wants: bool = True
    #: Waiting for a slot (uses all it has): its demand has no bound but the fair share.
    saturated: bool = True
    renewed: float = 0.0
    stats: dict[str, int] = field(default_factory=dict)


def _water_fill(total: int, demands: dict[int, float]) -> dict[int, int]:
    """Slots for each shard: a shard that uses less than an even split gets what it uses,
    the rest is split evenly among those that would use more (remainder to the first)."""
    shares: dict[int, int] = {}
    left = total
    hungry = sorted(demands, key=lambda s: (demands[s], s))
    while hungry and demands[hungry[0]] * len(hungry) <= left:
        s = hungry.pop(0)
        shares[s] = int(demands[s])
        left -= shares[s]
    if hungry:
        base, extra = divmod(left, len(hungry))
        for i, s in enumerate(sorted(hungry)):
            shares[s] = base + (1 if i < extra else 0)
    return shares


def _fair(total: float, me: int, active: list[int], integral: bool) -> float:
    """My fair share of ``total`` among ``active`` shards (integral: remainder to the first)."""
    if me not in active:
        return 0
    n = len(active)
    if not integral:
        return total / n
    base, extra = divmod(int(total), n)
    return base + (1 if active.index(me) < extra else 0)


class Coordinator:
    def __init__(
        self,
        concurrency: int,
        rpm: float | None,
        tpm: float | None,
        clock: Callable[[], float] = time.monotonic,
        caps: Amounts | None = None,
        spent: dict[int, Amounts] | None = None,
    ) -> None:
        """``caps``: --max-cost / --max-tokens-total (see :mod:`batchrun.cluster.allowance`),
        ``spent``: what each shard's journal recorded before this run."""
        self.budget = Allowances(caps, spent or {}) if caps else None
        self.concurrency = concurrency
        self.rpm = rpm
        self.tpm = tpm
        self._clock = clock
        self.leases: dict[int, _Lease] = {}
        self.pause_until = 0.0
        self.stopped_by: int | None = None
        self.pauses = 0
        # The cluster's own pace without --rpm (requests per second; None until a storm).
        self.adaptive = rpm is None
        self.window = concurrency
        self.rate: float | None = None
        self._accepted: deque[tuple[float, int]] = deque()
        self._last_increase = clock()

    def _live(self, now: float) -> dict[int, _Lease]:
        return {s: le for s, le in self.leases.items() if now - le.renewed <= LEASE_TTL_S}

    def lease(
        self,
        shard: int,
        in_flight: int,
        wants: bool,
        stats: dict[str, int] | None = None,
        accepted: int = 0,
        saturated: bool = True,
        budget: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Renew ``shard``'s lease (``accepted``: its answers other than 429 since the
        last renewal; ``saturated``: it waits for a slot, so it would use more); returns
        its share and the cluster's pause and stop. A shard that is not saturated (its
        last rows in flight, say) is leased what it uses and one more, so the slots it
        does not use go to the shards that wait for them. ``budget``: its budget's report,
        answered with its allowance (see :mod:`batchrun.cluster.allowance`)."""
        now = self._clock()
        mine = self.leases.setdefault(shard, _Lease())
        # A shard asks again only once it applied its last grant: from now on that grant
        # is the one it may still be using while the new one travels to it.
        mine.before = (mine.slots, mine.rpm, mine.tpm)
        mine.in_flight, mine.wants, mine.renewed = in_flight, wants, now
        mine.saturated = saturated
        if stats is not None:
            mine.stats = stats
        if accepted:
            self._accepted.append((now, accepted))
        self._grow(now)
        live = self._live(now)
        active = sorted(s for s, le in live.items() if le.wants)
        others = [le for s, le in live.items() if s != shard]
        # Never more than what the others leave: their lease, the one before if larger
        # (a smaller grant holds only once it reached them), or their flight.
        free_slots = self.window - sum(max(le.slots, le.before[0], le.in_flight) for le in others)
        demands = {s: math.inf if live[s].saturated else live[s].in_flight + 1 for s in active}
        share = _water_fill(self.window, demands).get(shard, 0)
        mine.slots = max(0, min(share, free_slots))
        rpm = self.rpm if self.rpm else (self.rate * 60 if self.rate else None)
        if rpm and len(active) > 1:
            rpm = max(rpm / 2, rpm - SLACK_PER_SHARD_RPM * len(active))
        if rpm:
            free = rpm - sum(max(le.rpm, le.before[1]) for le in others)
            mine.rpm = max(0.0, min(_fair(rpm, shard, active, False), free))
        if self.tpm:
            free = self.tpm - sum(max(le.tpm, le.before[2]) for le in others)
            mine.tpm = max(0.0, min(_fair(self.tpm, shard, active, False), free))
        out: dict[str, Any] = {
            "slots": mine.slots,
            "rpm": mine.rpm if rpm else None,
            "tpm": mine.tpm if self.tpm else None,
            "pause_s": max(0.0, self.pause_until - now),
            "stop": self.stopped_by is not None,
        }
        if self.budget is not None and budget is not None:
            out["budget"] = self.budget.lease(shard, budget, sorted(live), wants)
        return out

    def _grow(self, now: float) -> None:
        """Without a storm for a second: the pace and the window grow a little."""
        elapsed = now - self._last_increase
        if not self.adaptive or elapsed < 1.0 or now < self.pause_until:
            return
        self._last_increase = now
        if self.rate is not None:
            self.rate *= (1 + INCREASE_PER_S) ** elapsed
        if self.window < self.concurrency:
            self.window += 1

    def pause(self, seconds: float) -> None:
        """A shard hit the limit (a storm of 429s): the whole cluster waits; without
        --rpm the cluster's pace and window come down (once a storm, not once a shard)."""
        now = self._clock()
        if now < self.pause_until:
            # Another shard's report of the same storm: the pause may only grow.
            self.pause_until = max(self.pause_until, now + seconds)
            return
        self.pause_until = now + seconds
        self.pauses += 1
        self._last_increase = self.pause_until
        if not self.adaptive:
            return
        self.window = max(1, int(self.window * DECREASE_FACTOR))
        while self._accepted and now - self._accepted[0][0] > RATE_WINDOW_S:
            self._accepted.popleft()
        if not self._accepted:
            return  # nothing accepted yet: no rate to pace at; the pause and window act
        accepted = max(MIN_RATE_PER_S, HEADROOM * sum(n for _, n in self._accepted) / RATE_WINDOW_S)
        self.rate = accepted if self.rate is None else min(self.rate * DECREASE_FACTOR, accepted)
        self.rate = max(MIN_RATE_PER_S, self.rate)

    def stop(self, shard: int) -> None:
        if self.stopped_by is None:
            self.stopped_by = shard

    def release(self, shard: int, spent: Amounts | None = None) -> None:
        """The shard's run ended: its share is free at once, and the part of its budget
        allowance it did not spend (``spent``: what it did; None: unknown, kept held)."""
        self.leases.pop(shard, None)
        if self.budget is not None:
            self.budget.release(shard, spent)

    def reported(self, shard: int) -> dict[str, int]:
        """The shard's last counters (its worker may since be lost): rows done, requests,
        429s, rows it had when it started."""
        lease = self.leases.get(shard)
        return dict(lease.stats) if lease is not None else {}

    def progress(self) -> dict[str, int]:
        """The running shards' counters summed (for the driver's one progress display)."""
        out: dict[str, int] = {}
        for le in self.leases.values():
            for k, v in le.stats.items():
                out[k] = out.get(k, 0) + v
        return out

    def state(self) -> dict[str, Any]:
        return {"stopped_by": self.stopped_by, "pauses": self.pauses, "rate": self.rate}
