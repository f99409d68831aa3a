"""Re-asks: a row of a structured-output job whose answer is invalid is asked again.

:class:`ReaskingSender` wraps a :class:`~batchrun.send.attempt.RowSender`: each ok answer
is checked; an invalid one (no call of the tool, arguments that are not JSON or do not
match the schema) is followed by the answer and the violation, and sent again, up to
``max_reasks`` times; then the row is an ``invalid_output`` error naming the violation.
Every send counts in the row's attempts, tokens, cost and credits.

A re-ask is another request: it gets its own Idempotency-Key. Before it leaves, the driver
records its :class:`ReaskState` (``before_reask``), so that after a crash the rerun sends
the very same conversation and the row keeps what its earlier answers used. Like the rest
of :mod:`batchrun.send`, this knows nothing of the journal: the driver does, via hooks.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from batchrun.errors import NotSent
from batchrun.records import OK, Request, RowResult
from batchrun.send.attempt import Outcome, RowSender


class Checked(Protocol):
    """What a check says of an answer (:class:`batchrun.structured.Verdict`)."""

    @property
    def arguments(self) -> str | None: ...
    @property
    def violation(self) -> str | None: ...
    @property
    def followup(self) -> tuple[dict[str, Any], ...]: ...


#: (completion text, tool calls JSON) → verdict.
Check = Callable[[str | None, str | None], Checked]


class ReaskHooks(Protocol):
    async def before_reask(
        self, request: Request, previous: Request, answer: RowResult, state: ReaskState
    ) -> None:
        """``answer`` (to ``previous``) was invalid; ``request`` asks again. Record
        ``state`` durably before returning; raise NotSent to leave the row for the next
        run (which goes on from ``state``)."""
        ...

    def failed_for_good(self, error_type: str, message: str) -> None: ...


def _add(a: int | None, b: int | None) -> int | None:
    return None if a is None and b is None else (a or 0) + (b or 0)


def _add_cost(a: float | None, b: float | None) -> float | None:
    return None if a is None and b is None else (a or 0.0) + (b or 0.0)


@dataclass(slots=True)
class ReaskState:
    """A row between its re-asks: the conversation after the row's own messages, and what
    the answers so far used (they were paid for)."""

    followup: list[dict[str, Any]] = field(default_factory=list)
    reasks: int = 0
    attempts: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    reported_cost_usd: float | None = None
    credits_used: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ReaskState:
        # A key a journal written before it was kept lacks (credits_used) takes its
        # default, None: what the earlier answers used is then unknown, not zero.
        return cls(**json.loads(text))

    @property
    def spent(self) -> tuple[int, int]:
        """(prompt, completion) tokens the row's answers have used so far."""
        return self.prompt_tokens or 0, self.completion_tokens or 0

    def after(self, answer: RowResult, followup: tuple[dict[str, Any], ...]) -> ReaskState:
        """The state once ``answer`` came and is followed by ``followup``."""
        return ReaskState(
            followup=[*self.followup, *followup],
            reasks=self.reasks + 1,
            attempts=self.attempts + answer.attempts,
            prompt_tokens=_add(self.prompt_tokens, answer.prompt_tokens),
            completion_tokens=_add(self.completion_tokens, answer.completion_tokens),
            total_tokens=_add(self.total_tokens, answer.total_tokens),
            reported_cost_usd=_add_cost(self.reported_cost_usd, answer.reported_cost_usd),
            credits_used=_add(self.credits_used, answer.credits_used),
        )

    def request_for(self, original: Request) -> Request:
        """The row's request with the follow-up after its messages (the estimate grows by
        the follow-up's characters, ~4 a token)."""
        extra = len(json.dumps(self.followup, ensure_ascii=False)) // 4
        # Everything else stays the row's: params, max_tokens, images, client request id.
        return replace(
            original,
            messages=[*original.messages, *self.followup],
            prompt_tokens=original.prompt_tokens + extra,
        )

    def merged(self, result: RowResult) -> RowResult:
        """``result`` with the earlier answers' attempts, tokens, cost and credits added."""
        return replace(
            result,
            attempts=self.attempts + result.attempts,
            prompt_tokens=_add(self.prompt_tokens, result.prompt_tokens),
            completion_tokens=_add(self.completion_tokens, result.completion_tokens),
            total_tokens=_add(self.total_tokens, result.total_tokens),
            reported_cost_usd=_add_cost(self.reported_cost_usd, result.reported_cost_usd),
            credits_used=_add(self.credits_used, result.credits_used),
        )


def load_states(rows: Iterable[tuple[Any, ...]]) -> dict[int, ReaskState]:
    """States as the driver recorded them: (position, :meth:`ReaskState.to_json`, …) rows."""
    return {row[0]: ReaskState.from_json(row[1]) for row in rows}


class ReaskingSender:
    """Sends a row through ``sender`` and asks again while its answer is invalid.

    ``known_states``: rows an earlier run left between re-asks (they go on from there).
    """

    def __init__(
        self,
        sender: RowSender,
        check: Check,
        max_reasks: int,
        hooks: ReaskHooks,
        known_states: dict[int, ReaskState] | None = None,
    ) -> None:
        self.sender = sender
        self.check = check
        self.max_reasks = max_reasks
        self.hooks = hooks
        self.known_states = known_states if known_states is not None else {}

    def __repr__(self) -> str:
        return f"ReaskingSender(max_reasks={self.max_reasks}, sender={self.sender!r})"

    async def send(self, request: Request) -> Outcome:
        """Send one row to its end (the caller took a slot for its first send)."""
        state = self.known_states.pop(request.position, None) or ReaskState()
        current = state.request_for(request) if state.followup else request
        while True:
            outcome = await self.sender.send(current)
            result = outcome.result
            if result is None:
                return outcome
            if result.status != OK:
                outcome.result = state.merged(result)
                return outcome
            verdict = self.check(result.completion, result.tool_calls)
            if verdict.arguments is not None:
                result.arguments = verdict.arguments
                outcome.result = state.merged(result)
                return outcome
            violation = verdict.violation or "invalid answer"
            if state.reasks >= self.max_reasks:
                self.hooks.failed_for_good("invalid_output", violation)
                return Outcome(
                    current, _invalid(state.merged(result), violation, state.reasks), False
                )
            state = state.after(result, verdict.followup)
            nxt = state.request_for(request)
            try:
                await self.hooks.before_reask(nxt, current, result, state)
                await self.sender.limiter.slot()  # RowSender.send gives it back
            except NotSent:  # stopping: the state is recorded, a rerun goes on from it
                return Outcome(nxt, None, False)
            except asyncio.CancelledError:
                self.sender.hooks.cancelled(Outcome(nxt, None, False))
                raise
            current = nxt


def _invalid(result: RowResult, violation: str, reasks: int) -> RowResult:
    """The error row of an answer still invalid after the re-asks: what was paid stays, the
    last answer's tool calls show what was wrong."""
    asked = f" (after {reasks} re-ask{'s' if reasks != 1 else ''})" if reasks else ""
    return replace(
        result,
        status="error",
        completion=None,
        finish_reason_normalized="error",
        error_type="invalid_output",
        error=f"invalid output{asked}: {violation}",
        arguments=None,
        finished_at=time.time(),
    )
