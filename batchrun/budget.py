"""Spending caps: ``--max-cost`` (USD) and ``--max-tokens-total``, over the whole output.

Spend is what the API reported for a row where it did (the gateway's cost headers or its
stream's ``meta.usage``), the estimate from tokens and list prices otherwise; a request in
flight is held at its estimated worst case.

Before a request starts, its worst case (prompt estimate + ``max_tokens``) is reserved; the
request is not started if spent + reserved + worst case would cross a cap. When the row
finishes, its reservation is replaced by what it really used. So the run stops *before* a
cap, never more than the requests in flight beyond it (and then only if their prompts were
underestimated).
"""

from __future__ import annotations

import asyncio

from batchrun.checkpoint import PAID, Checkpoint
from batchrun.errors import UsageError
from batchrun.job import Budget
from batchrun.pricing import Price, PriceTable


def _estimate(
    ckpt: Checkpoint, prices: PriceTable, default_model: str, below: int, which: str
) -> float | None:
    """Estimated USD from the tokens of the recorded rows matching ``which`` (SQL over the
    results' columns), priced by the model that served them, at the batch rate for rows
    answered through a batch (``--mode batch``); None when some of them belong to a model
    without a price."""
    total = 0.0
    for model, batched, prompt, completion in ckpt.db.execute(
        "SELECT r.model, b.position IS NOT NULL, sum(r.prompt_tokens), sum(r.completion_tokens)"
        " FROM results r LEFT JOIN batch_rows b ON b.position = r.position"
        f" WHERE r.position < ? AND {which} GROUP BY 1, 2",
        (below,),
    ):
        if not (prompt or completion):
            continue
        price = prices.get(model or default_model) or prices.get(default_model)
        if price is None:
            return None
        total += (price.batch() if batched else price).cost(prompt or 0, completion or 0)
    return total


def recorded_cost(
    ckpt: Checkpoint, prices: PriceTable, default_model: str, below: int, *, saved: bool = False
) -> float | None:
    """Estimated USD of the rows recorded so far that paid for their answers; ``saved``: of
    the rows served by dedupe or the cache instead (what they would have cost)."""
    return _estimate(ckpt, prices, default_model, below, f"NOT ({PAID})" if saved else PAID)


def recorded_spend(
    ckpt: Checkpoint, prices: PriceTable, default_model: str, below: int
) -> float | None:
    """What the rows recorded so far cost, as ``--max-cost`` counts it: the spend the API
    reported where it did, the estimate from tokens for the other rows that paid (a row
    served by dedupe or the cache paid nothing). None when such a row's model has no price."""
    reported = ckpt.db.execute(
        "SELECT sum(reported_cost_usd) FROM results WHERE position < ?", (below,)
    ).fetchone()[0]
    estimate = _estimate(
        ckpt, prices, default_model, below, f"reported_cost_usd IS NULL AND {PAID}"
    )
    return None if estimate is None else float(reported or 0.0) + estimate


class BudgetGate:
    """Admits requests while the caps allow; tracks spent and reserved amounts."""

    def __init__(
        self,
        budget: Budget,
        price: Price | None,
        *,
        model: str,
        spent_usd: float,
        spent_tokens: int,
    ) -> None:
        if budget.max_cost_usd is not None and price is None:
            raise UsageError(
                f"no price is known for model {model!r}, so --max-cost cannot be enforced",
                hint='give its prices with --prices FILE ([models."NAME"] input = .., output = ..)',
            )
        self.budget = budget
        self.price = price
        self.spent_usd = spent_usd
        self.spent_tokens = spent_tokens
        self.reserved_usd = 0.0
        self.reserved_tokens = 0
        self.in_flight = 0
        #: Set by every settle: a request that did not fit beside the ones in flight may
        #: fit once they are settled at what they really used.
        self.settled = asyncio.Event()

    def __repr__(self) -> str:
        return (
            f"BudgetGate(spent=${self.spent_usd:.4f}, reserved=${self.reserved_usd:.4f}, "
            f"tokens={self.spent_tokens}+{self.reserved_tokens})"
        )

    @property
    def active(self) -> bool:
        return self.budget.max_cost_usd is not None or self.budget.max_tokens_total is not None

    def _worst(self, prompt_estimate: int, max_tokens: int) -> tuple[float, int]:
        usd = self.price.cost(prompt_estimate, max_tokens) if self.price else 0.0
        return usd, prompt_estimate + max_tokens

    def admit(self, prompt_estimate: int, max_tokens: int) -> str | None:
        """Reserve a request's worst case; None if admitted, else why not (a cap)."""
        usd, tokens = self._worst(prompt_estimate, max_tokens)
        b = self.budget
        if b.max_cost_usd is not None and self.spent_usd + self.reserved_usd + usd > b.max_cost_usd:
            return (
                f"the cost cap of ${b.max_cost_usd:,.4f} is reached "
                f"(spent ${self.spent_usd:,.4f} so far)"
            )
        if (
            b.max_tokens_total is not None
            and self.spent_tokens + self.reserved_tokens + tokens > b.max_tokens_total
        ):
            return (
                f"the token cap of {b.max_tokens_total:,} is reached "
                f"({self.spent_tokens:,} tokens used so far)"
            )
        self.reserved_usd += usd
        self.reserved_tokens += tokens
        self.in_flight += 1
        return None

    def settle(
        self,
        prompt_estimate: int,
        max_tokens: int,
        answered: bool,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        reported_usd: float | None = None,
    ) -> None:
        """Replace a reservation by what the request really used: nothing if it failed,
        the reported usage if answered, the worst case if answered without usage (an
        answer was paid for, and nothing says how much). The cost is the one the API
        reported (``reported_usd``) when it did, else the estimate from the tokens."""
        usd, tokens = self._worst(prompt_estimate, max_tokens)
        self.reserved_usd -= usd
        self.reserved_tokens -= tokens
        self.in_flight -= 1
        self.settled.set()
        if answered and prompt_tokens is None and completion_tokens is None:
            p, c = prompt_estimate, max_tokens
        else:
            p, c = prompt_tokens or 0, completion_tokens or 0
        self.spent_tokens += p + c
        if reported_usd is not None:
            self.spent_usd += reported_usd
        elif self.price is not None:
            self.spent_usd += self.price.cost(p, c)
