"""Row, request and result types shared by the stages of a run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OK = "ok"
ERROR = "error"

#: Raw finish reasons (Anthropic and OpenAI styles) → the normalized vocabulary.
FINISH_REASONS: dict[str, str] = {
    "stop": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "max_tokens": "length",
    "tool_calls": "tool_calls",
    "tool_use": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "refusal": "content_filter",
    "safety": "content_filter",
}


def normalize_finish_reason(raw: str | None) -> str | None:
    """Map a raw finish reason to stop/length/tool_calls/content_filter; None if unknown."""
    if not isinstance(raw, str):
        return None
    return FINISH_REASONS.get(raw.lower())


@dataclass(slots=True)
class Request:
    """One row turned into a request body."""

    position: int  #: 0-based position of the row in the input
    body: dict[str, Any]
    #: Estimated tokens the request will use (prompt estimate + max_tokens), for --tpm.
    estimated_tokens: int


@dataclass(slots=True)
class Completion:
    """What a successful answer (JSON or SSE) says."""

    text: str | None
    finish_reason: str | None
    tool_calls: str | None  #: JSON text
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    model: str | None
    response_id: str | None
    #: What the server said the request cost (USD), where it says so in a header.
    reported_cost_usd: float | None = None


@dataclass(slots=True)
class RowResult:
    """The outcome of one row: what the sink records and the output holds."""

    position: int
    status: str
    completion: str | None = None
    finish_reason: str | None = None
    finish_reason_normalized: str | None = None
    tool_calls: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    model: str | None = None
    response_id: str | None = None
    attempts: int = 0
    latency_ms: float | None = None
    error_type: str | None = None
    error: str | None = None
    #: Unix time in seconds at which the row finished.
    finished_at: float = 0.0
    reported_cost_usd: float | None = None

    @classmethod
    def success(
        cls, position: int, c: Completion, *, attempts: int, latency_ms: float, finished_at: float
    ) -> RowResult:
        return cls(
            position=position,
            status=OK,
            completion=c.text,
            finish_reason=c.finish_reason,
            finish_reason_normalized=normalize_finish_reason(c.finish_reason),
            tool_calls=c.tool_calls,
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            total_tokens=c.total_tokens,
            model=c.model,
            response_id=c.response_id,
            attempts=attempts,
            latency_ms=latency_ms,
            finished_at=finished_at,
            reported_cost_usd=c.reported_cost_usd,
        )

    @classmethod
    def failure(
        cls,
        position: int,
        *,
        error_type: str,
        error: str,
        attempts: int,
        latency_ms: float | None,
        finished_at: float,
    ) -> RowResult:
        return cls(
            position=position,
            status=ERROR,
            finish_reason_normalized="error",
            attempts=attempts,
            latency_ms=latency_ms,
            error_type=error_type,
            error=error,
            finished_at=finished_at,
        )
