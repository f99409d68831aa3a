"""Spending caps: ``--max-cost`` (USD) and ``--max-tokens-total``, over the whole output.

Spend is what the API reported for a row where it did (the gateway's cost headers or its
stream's ``meta.usage``), the estimate from tokens and list prices otherwise; a request in
flight is held at its estimated worst case.

Before a request starts, its worst case (prompt estimate + ``max_tokens``) is reserved; the
request is not started if spent + reserved + worst case would cross a cap. When the row
finishes, its reservation is replaced by what it really used. So the run stops *before* a
cap, never more than the requests in flight beyond it (and then only if their prompts were
underestimated).

An answer **without usage** (an OpenAI-compatible stream that was not asked for it, or a
server that sends none) is paid for, but nothing says how much. It is booked at an
estimate rather than at its worst case, which would stop a long run far too early: its
prompt estimate (characters / 4 + 4, upper-leaning) plus its output counted from what came
back — one token per 3 UTF-8 bytes of the text, tool calls and reasoning, plus one, at most
``max_tokens``; the whole ``max_tokens`` when it stopped for length. Rows recorded without
usage by an earlier run are booked alike on a resume, at the ``max_tokens`` each was sent
with (the journal keeps it: a row's own may be above the job's), their prompt at the
input's mean prompt estimate. Tokens a model spends on reasoning it does not show are not seen: where a
model does that, the cap is a lower bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping

from batchrun.checkpoint import PAID, Checkpoint
from batchrun.errors import UsageError
from batchrun.job import Budget
from batchrun.pricing import Price, PriceTable
from batchrun.records import OK, Request, RowResult
from batchrun.send.attempt import Outcome
from batchrun.send.reask import ReaskState

#: UTF-8 bytes of output counted as one token when the answer says no usage: English runs
#: about 4 bytes a token, CJK text about 3 bytes a character and token; 3 leans high.
OUTPUT_BYTES_PER_TOKEN = 3


#: What a run says when the first answer without usage arrives.
NO_USAGE_NOTICE = (
    "answers come without usage: their tokens are null, the cost unknown, and budgets book"
    " them at an estimate (prompt + counted output); an OpenAI-compatible server sends usage"
    " in a stream only when asked (--provider openai, litellm or vllm ask)"
)


def output_estimate(texts: Iterable[str | None], max_tokens: int, hit_cap: bool) -> int:
    """Completion tokens booked for an answer without usage (see the module docstring)."""
    if hit_cap:
        return max_tokens
    size = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts if t)
    return min(max_tokens, -(-size // OUTPUT_BYTES_PER_TOKEN) + 1)


def unknown_usage(
    ckpt: Checkpoint, below: int, max_tokens: int, *, unpriced: bool = False
) -> tuple[int, int]:
    """(rows, estimated completion tokens) of the ok rows recorded without usage
    (``unpriced``: only those whose cost the API did not report either). Each row is
    counted up to the max_tokens it was sent with (its own, --params-column, may be above
    the job's); ``max_tokens``, the job's, stands in for rows recorded before the journal
    kept it."""
    rows = estimate = 0
    for text, calls, reasoning, reason, cost, cap in ckpt.db.execute(
        "SELECT completion, tool_calls, reasoning_content, finish_reason_normalized,"
        " reported_cost_usd, coalesce(max_tokens, ?) FROM results"
        " WHERE position < ? AND status = 'ok'"
        f" AND prompt_tokens IS NULL AND completion_tokens IS NULL AND {PAID}",
        (max_tokens, below),
    ):
        if unpriced and cost is not None:
            continue
        rows += 1
        estimate += output_estimate((text, calls, reasoning), cap, reason == "length")
    return rows, estimate


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


def start_gate(
    ckpt: Checkpoint,
    prices: PriceTable,
    budget: Budget,
    *,
    model: str,
    max_tokens: int,
    total: int,
    mean_prompt_estimate: int,
) -> BudgetGate:
    """The gate of a run, with what the output's rows (those without usage at the estimate
    of the module docstring) and the answers of rows left between re-asks have spent."""
    gate = BudgetGate.for_run(
        budget,
        prices,
        ckpt,
        model=model,
        max_tokens=max_tokens,
        below=total,
        mean_prompt_estimate=mean_prompt_estimate,
    )
    pending = ckpt.between_reasks(total)
    pending_prompt = sum(r[2] or 0 for r in pending)
    pending_completion = sum(r[3] or 0 for r in pending)
    if gate.price is not None:
        gate.spent_usd += gate.price.cost(pending_prompt, pending_completion)
    gate.spent_tokens += pending_prompt + pending_completion
    return gate


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
        #: The caps admit() holds to: the budget's, or on a Ray shard the allowance leased
        #: from the cluster's coordinator (see :mod:`batchrun.cluster.allowance`).
        self.cap_usd: float | None = budget.max_cost_usd
        self.cap_tokens: float | None = budget.max_tokens_total
        #: A Ray shard's gate: a request that does not fit with nothing in flight waits for
        #: the next lease, until the coordinator says the cluster's budget is spent.
        self.wait_for_more = False
        #: The worst case of the last request that did not fit (None: the last one did).
        self.wanted: tuple[float, int] | None = None
        #: What the other shards of a Ray run spent (for the messages).
        self.elsewhere: tuple[float, int] = (0.0, 0)
        self.price = price
        self.spent_usd = spent_usd
        self.spent_tokens = spent_tokens
        self.reserved_usd = 0.0
        self.reserved_tokens = 0
        self.in_flight = 0
        #: Set by every settle: a request that did not fit beside the ones in flight may
        #: fit once they are settled at what they really used.
        self.settled = asyncio.Event()

    @classmethod
    def for_run(
        cls,
        budget: Budget,
        prices: PriceTable,
        ckpt: Checkpoint,
        *,
        model: str,
        max_tokens: int,
        below: int,
        mean_prompt_estimate: int,
    ) -> BudgetGate:
        """A gate that has spent what the rows recorded so far used: the spend the API
        reported, else the estimate from their usage, and for those without usage the
        estimate of the module docstring."""
        price = prices.get(model)
        known = ckpt.aggregate(below)["total_tokens"]
        rows, output = unknown_usage(ckpt, below, max_tokens)
        tokens = known + rows * mean_prompt_estimate + output
        usd = recorded_spend(ckpt, prices, model, below) or 0.0
        rows, output = unknown_usage(ckpt, below, max_tokens, unpriced=True)
        if price is not None:
            usd += price.cost(rows * mean_prompt_estimate, output)
        return cls(budget, price, model=model, spent_usd=usd, spent_tokens=tokens)

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
        b, (other_usd, other_tokens) = self.budget, self.elsewhere
        self.wanted = (usd, tokens)
        if self.cap_usd is not None and self.spent_usd + self.reserved_usd + usd > self.cap_usd:
            return (
                f"the cost cap of ${b.max_cost_usd:,.4f} is reached "
                f"(spent ${self.spent_usd + other_usd:,.4f} so far)"
            )
        if (
            self.cap_tokens is not None
            and self.spent_tokens + self.reserved_tokens + tokens > self.cap_tokens
        ):
            return (
                f"the token cap of {b.max_tokens_total:,} is reached "
                f"({self.spent_tokens + other_tokens:,} tokens used so far)"
            )
        self.wanted = None
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
        *,
        output: Iterable[str | None] = (),
        hit_cap: bool = True,
    ) -> None:
        """Replace a reservation by what the request really used: nothing if it failed,
        the reported usage if answered, and if answered without usage (paid for, and
        nothing says how much) the prompt estimate plus ``output`` counted (see the module
        docstring; ``hit_cap``: it stopped for length, or nothing of it could be read).
        The cost is the one the API reported (``reported_usd``) when it did, else the
        estimate from the tokens."""
        usd, tokens = self._worst(prompt_estimate, max_tokens)
        self.reserved_usd -= usd
        self.reserved_tokens -= tokens
        self.in_flight -= 1
        self.settled.set()
        if answered and prompt_tokens is None and completion_tokens is None:
            p, c = prompt_estimate, output_estimate(output, max_tokens, hit_cap)
        else:
            p, c = prompt_tokens or 0, completion_tokens or 0
        self.spent_tokens += p + c
        if reported_usd is not None:
            self.spent_usd += reported_usd
        elif self.price is not None:
            self.spent_usd += self.price.cost(p, c)


#: What a row's answers used so far: prompt and completion tokens, the reported USD.
Spent = tuple[int, int, float | None]
#: Failed rows whose answer was paid for all the same (it came, but could not be used).
_PAID_ERRORS = ("invalid_response", "internal_error", "invalid_output")


class RowBudget:
    """The run's reservations under a :class:`BudgetGate`, one per admitted request: a row's
    first send, and each of its re-asks, which settles the answered send before it admits
    itself. ``prior``: what a row's earlier answers used (settled already, in this run or,
    for a row an earlier run left between re-asks, counted in the gate's spent amounts)."""

    def __init__(self, gate: BudgetGate) -> None:
        self.gate = gate
        self.prior: dict[int, Spent] = {}
        #: Rows holding no reservation: a re-ask that was not admitted.
        self.unreserved: set[int] = set()

    def __repr__(self) -> str:
        return f"RowBudget({self.gate!r}, between_reasks={len(self.prior)})"

    @property
    def active(self) -> bool:
        return self.gate.active

    def resume(self, states: Mapping[int, ReaskState]) -> None:
        """Rows an earlier run left between re-asks: their answers are in the spent amounts."""
        for pos, st in states.items():
            self.prior[pos] = (*st.spent, st.reported_cost_usd)

    async def admit(self, request: Request, stopping: Callable[[], bool]) -> str | None:
        """Reserve a request's worst case. One that does not fit beside the requests in
        flight waits for them to settle at what they really used; the cap stops the run
        only when it does not fit even with nothing in flight (on a Ray shard: nothing in
        flight in the cluster, see ``wait_for_more``)."""
        gate = self.gate
        while True:
            gate.settled.clear()
            why = gate.admit(request.prompt_tokens, request.max_tokens)
            if why is None:
                self.unreserved.discard(request.position)
            if why is None or stopping() or (gate.in_flight == 0 and not gate.wait_for_more):
                return why
            await gate.settled.wait()

    def answered(self, previous: Request, answer: RowResult, spent: Spent) -> None:
        """``previous`` was answered (and is to be asked again): settle it at its usage.
        ``spent``: what the row's answers have used so far."""
        pos = previous.position
        self.prior[pos] = spent
        if self.active:
            self.gate.settle(
                previous.prompt_tokens,
                previous.max_tokens,
                True,
                answer.prompt_tokens,
                answer.completion_tokens,
                answer.reported_cost_usd,
            )
            self.unreserved.add(pos)

    def settle(self, outcome: Outcome) -> None:
        """Replace the reservation of a row's last request by what it used: what was (or
        may have been) paid for is an answer, even one that could not be used, or a send
        whose outcome is unknown."""
        request, result = outcome.request, outcome.result
        pos = request.position
        # A row left unfinished goes on from its prior next run.
        none: Spent = (0, 0, None)
        earlier = self.prior.pop(pos, none) if result is not None else self.prior.get(pos, none)
        if not self.active or pos in self.unreserved:
            self.unreserved.discard(pos)
            return
        answered = result is not None and (
            result.status == OK or result.error_type in _PAID_ERRORS or outcome.maybe_billed
        )
        prompt, completion = (
            (result.prompt_tokens, result.completion_tokens) if result else (None, None)
        )
        if (prompt, completion) != (None, None):
            prompt, completion = (prompt or 0) - earlier[0], (completion or 0) - earlier[1]
        usd = result.reported_cost_usd if result else None
        if usd is not None:
            usd -= earlier[2] or 0.0
        r = result if result is not None and result.status == OK else None
        self.gate.settle(
            request.prompt_tokens,
            request.max_tokens,
            answered,
            prompt,
            completion,
            usd,
            # An answer without usage is booked from its text (see the module docstring).
            output=(r.completion, r.tool_calls, r.reasoning_content) if r else (),
            hit_cap=r is None or r.finish_reason_normalized == "length",
        )
