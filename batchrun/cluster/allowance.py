"""``--max-cost`` and ``--max-tokens-total`` on Ray: one budget over the whole output, its
allowances leased to the shards.

The caps are the cluster's, as they are one process's (see :mod:`batchrun.budget`): over
every shard and every run of the output, each request reserving its worst case. The
coordinator *holds* an amount for every shard: for a running shard the allowance it leased
it (its gate's caps, which its spent + reserved never cross), for any other what it is
known to have spent. Allowances are granted only out of what the cap leaves over the sum
held, so the shards' spent + reserved never sum above the cap.

- Each lease renewal reports the shard's spent, reserved and what it holds; a shard tops
  its slack up to a share of what is free (half the free amount split among the running
  shards), and a request that does not fit its slack asks for the difference.
- A shard whose request does not fit with nothing of its own in flight gives its slack
  back (it lowers its gate's caps *before* it says so, so it never holds more than the
  coordinator counts) and waits for the next lease. Only when no running shard has
  anything in flight, none holds slack, and no one's request fits what is free is the
  budget *exhausted*: the shard told so stops with the budget's reason, and so does the
  cluster (its stop is every shard's), resumably.
- A shard that ends returns its slack: what it holds becomes what it spent. A dead shard's
  allowance stays held until it runs again.

What the driver counts before it grants anything: each shard's spend as recorded in its
journal (computed as a resumed single run counts it, :func:`batchrun.budget.start_gate`),
from the copy in the store and, when this machine holds the shard's journal, from that
too (the larger). The cap holds over what the journals recorded; a shard's rows answered
after its last copy by a worker killed since (at most a copy interval of its sending, the
rows counted as possibly charged twice) may be spent beyond it, as may rows in flight
when a run was killed, as on one machine.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from batchrun.budget import BudgetGate, start_gate
from batchrun.checkpoint import Checkpoint
from batchrun.cluster.store import Store
from batchrun.job import Job
from batchrun.pricing import PriceTable

#: Amounts by dimension: "usd" (--max-cost), "tokens" (--max-tokens-total); only the capped.
Amounts = dict[str, float]
#: Slack below this share of a cap counts as none (the float residue of a settle).
_EPS = 1e-9


def caps_of(job: Job) -> Amounts:
    b = job.budget
    caps = {"usd": b.max_cost_usd, "tokens": b.max_tokens_total}
    return {d: float(v) for d, v in caps.items() if v is not None}


class Allowances:
    """The coordinator's side: what each shard holds of the caps."""

    def __init__(self, caps: Amounts, spent: dict[int, Amounts]) -> None:
        self.caps = caps
        self.held: dict[int, Amounts] = {s: dict(v) for s, v in spent.items()}
        #: The running shards' last reports.
        self.reports: dict[int, dict[str, Any]] = {}

    def free(self) -> Amounts:
        return {d: c - sum(h.get(d, 0.0) for h in self.held.values()) for d, c in self.caps.items()}

    def _slack(self, shard: int) -> Amounts:
        r, held = self.reports[shard], self.held[shard]
        return {d: held[d] - r["spent"][d] - r["reserved"][d] for d in self.caps}

    def _fits(self, need: Amounts | None, slack: Amounts, free: Amounts) -> bool:
        return need is None or all(need[d] - slack[d] <= free[d] for d in self.caps)

    def lease(
        self, shard: int, report: dict[str, Any], live: list[int], wants: bool
    ) -> dict[str, Any]:
        """Take ``shard``'s report (``live``: the shards whose leases are live); return what
        it holds now (its gate's new caps), whether the budget is exhausted, and the
        cluster's spend (for its messages)."""
        before = self.held.get(shard, {})
        if report["cap"] is None:  # its first lease this run: at least what it spent
            held = {d: max(before.get(d, 0.0), report["spent"][d]) for d in self.caps}
        else:
            held = {d: float(report["cap"][d]) for d in self.caps}
        self.held[shard] = held
        self.reports[shard] = report
        running = [s for s in live if s in self.reports]
        for s in list(self.reports):  # a lapsed lease: its allowance stays held
            if s not in live and s != shard:
                del self.reports[s]
        free, slack, need = self.free(), self._slack(shard), report["need"]
        if wants and self._fits(need, slack, free):
            share = {d: free[d] / (2 * max(1, len(running))) for d in self.caps}
            for d in self.caps:
                want = max(share[d], need[d] if need else 0.0) - slack[d]
                held[d] += max(0.0, min(free[d], want))
            free = self.free()
        return {
            "cap": dict(held),
            "exhausted": self.exhausted(shard, free),
            "spent": {d: sum(self._spent(s, d) for s in self.held) for d in self.caps},
        }

    def _spent(self, shard: int, d: str) -> float:
        r = self.reports.get(shard)
        return float(r["spent"][d]) if r is not None else self.held[shard].get(d, 0.0)

    def exhausted(self, shard: int, free: Amounts) -> bool:
        """Nothing fits even with nothing in flight: ``shard`` asks, and no running shard
        has a reservation, slack, or a request that fits what is free."""
        if self.reports[shard]["need"] is None:
            return False
        for r in self.reports.values():
            if r["in_flight"] or r["need"] is None:
                return False
        for s, r in self.reports.items():
            slack = self._slack(s)
            if any(slack[d] > _EPS * self.caps[d] for d in self.caps):
                return False
            if self._fits(r["need"], slack, free):
                return False
        return True

    def release(self, shard: int, spent: Amounts | None) -> None:
        """The shard's run ended: it holds what it spent (unknown: its allowance stays)."""
        self.reports.pop(shard, None)
        if spent is not None:
            self.held[shard] = {d: float(spent[d]) for d in self.caps}


class ShardBudget:
    """A shard's side: its gate's caps are the allowance its lease carries."""

    def __init__(self) -> None:
        self.gate: BudgetGate | None = None
        self.first = True

    def attach(self, gate: BudgetGate) -> None:
        """The run's gate: nothing is admitted until the first lease."""
        if not gate.active:
            return
        self.gate = gate
        gate.wait_for_more = True
        if gate.cap_usd is not None:
            gate.cap_usd = gate.spent_usd
        if gate.cap_tokens is not None:
            gate.cap_tokens = gate.spent_tokens

    def _amounts(self, usd: float, tokens: float) -> Amounts:
        g = self.gate
        assert g is not None
        out: Amounts = {}
        if g.cap_usd is not None:
            out["usd"] = usd
        if g.cap_tokens is not None:
            out["tokens"] = tokens
        return out

    def report(self) -> dict[str, Any] | None:
        g = self.gate
        if g is None:
            return None
        if g.wanted is not None and g.in_flight == 0:
            # Blocked with nothing in flight: give the slack back, first here, then say so.
            if g.cap_usd is not None:
                g.cap_usd = g.spent_usd + g.reserved_usd
            if g.cap_tokens is not None:
                g.cap_tokens = g.spent_tokens + g.reserved_tokens
        return {
            "cap": None if self.first else self._amounts(g.cap_usd or 0.0, g.cap_tokens or 0),
            "spent": self.spent(),
            "reserved": self._amounts(g.reserved_usd, g.reserved_tokens),
            "in_flight": g.in_flight,
            "need": None if g.wanted is None else self._amounts(*g.wanted),
        }

    def spent(self) -> Amounts | None:
        g = self.gate
        return None if g is None else self._amounts(g.spent_usd, g.spent_tokens)

    def apply(self, lease: dict[str, Any]) -> None:
        g = self.gate
        if g is None:
            return
        self.first = False
        cap = lease["cap"]
        g.cap_usd = cap["usd"] if g.cap_usd is not None else None
        g.cap_tokens = cap["tokens"] if g.cap_tokens is not None else None
        g.wait_for_more = not lease["exhausted"]
        spent = lease["spent"]
        g.elsewhere = (
            spent.get("usd", g.spent_usd) - g.spent_usd,
            int(spent.get("tokens", g.spent_tokens) - g.spent_tokens),
        )
        self.wake()

    def wake(self) -> None:
        """Waiters for the budget look again (a new allowance, a stop)."""
        if self.gate is not None:
            self.gate.settled.set()


def spent_before(job: Job, store: Store, shards: list[tuple[str, int, Path]]) -> dict[int, Amounts]:
    """What each shard (its journal's name in the store, its rows, where this machine would
    hold its journal) recorded as spent, for the coordinator to count before it grants
    anything; exit 2 (nothing sent) when --max-cost names a model without a price."""
    prices = PriceTable.load(job.prices_path) if job.prices_path else PriceTable.default()
    model = job.params.model
    BudgetGate(job.budget, prices.get(model), model=model, spent_usd=0.0, spent_tokens=0)
    return {i: recorded(job, store, *shard) for i, shard in enumerate(shards)}


def recorded(job: Job, store: Store, journal_name: str, total: int, local: Path) -> Amounts:
    """What a shard's journal says it spent, as its own run will count it: from the store's
    copy and the journal at ``local`` on this machine, the larger."""
    caps = caps_of(job)
    best = dict.fromkeys(caps, 0.0)
    prices = PriceTable.load(job.prices_path) if job.prices_path else PriceTable.default()
    with tempfile.TemporaryDirectory() as tmp:
        for i, source in enumerate(("store", "local")):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            target = folder / "journal.sqlite"
            if source == "store":
                if not store.get(journal_name, target):
                    continue
            elif local.exists():
                with contextlib.closing(sqlite3.connect(f"file:{local}?mode=ro", uri=True)) as src, \
                        contextlib.closing(sqlite3.connect(target)) as dst:  # fmt: skip
                    src.backup(dst)
            else:
                continue
            spent = _spent_in(job, prices, folder, total)
            best = {d: max(best[d], spent[d]) for d in caps}
    return best


def _spent_in(job: Job, prices: PriceTable, folder: Path, total: int) -> Amounts:
    ckpt = Checkpoint(folder)
    ckpt.open()
    try:
        scan = ckpt.get_meta("scan") or {}
        rows = max(1, int(scan.get("total_rows") or 1))
        mean = int(scan.get("estimated_prompt_tokens") or 0) // rows
        gate = start_gate(ckpt, prices, job.budget, model=job.params.model,
                          max_tokens=job.params.max_tokens, total=total,
                          mean_prompt_estimate=mean)  # fmt: skip
    finally:
        ckpt.close()
    out = {"usd": gate.spent_usd, "tokens": float(gate.spent_tokens)}
    return {d: out[d] for d in caps_of(job)}
