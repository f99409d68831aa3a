"""Row, request and result types shared by the stages of a run.

:class:`RowResult` is the one declaration of the result columns: each field carries its
Arrow type and meaning (:func:`column`), and the journal's columns, the output's Parquet
schema and finalize all derive from it. Adding a result column is one field here plus a
journal version bump (new columns are added to older journals automatically).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import pyarrow as pa

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
    """One row turned into a provider-neutral request: the dialect makes the wire body.

    ``params`` are the body parameters in the API's names (model, max_tokens, temperature,
    system, tools, …): the job's, with the row's own overrides applied. ``messages`` are
    ``[{role, content}]``, content a string or a list of parts.
    """

    position: int  #: 0-based position of the row in the input
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    #: The answer's token cap for this request (``params["max_tokens"]``).
    max_tokens: int
    #: Estimated prompt tokens (text and any images) for budgets, --tpm and the dry run.
    prompt_tokens: int
    #: Sent as ``X-Client-Request-Id`` (see :mod:`batchrun.send.tracing`): the row's name in
    #: the gateway's logs, the same on every attempt and every resume.
    client_request_id: str | None = None
    #: Images to send with the last user message, as references (path, URL, bytes, data
    #: URL): read when the row is sent, never held for the whole input
    #: (see :mod:`batchrun.images`).
    images: tuple[Any, ...] = ()

    @property
    def estimated_tokens(self) -> int:
        """Worst case the request can use: the prompt estimate plus its max_tokens."""
        return self.prompt_tokens + self.max_tokens


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
    #: The model's reasoning, where the answer carries it (null when absent or empty).
    reasoning_content: str | None = None
    #: The id the gateway recorded the charge under (``x-inference-id``).
    inference_id: str | None = None
    #: Credits the gateway reported for the request ($1 = 2,000,000 credits).
    credits_used: int | None = None


def column(
    arrow_type: pa.DataType,
    meaning: str,
    *,
    nullable: bool = True,
    default: Any = None,
    output: bool = True,
) -> Any:
    """A result column: its Arrow type and meaning ride on the RowResult field.
    ``output=False``: kept in the journal only (finalize derives output columns from it)."""
    meta = {"arrow": arrow_type, "meaning": meaning, "nullable": nullable, "output": output}
    if default is MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


_TS = pa.timestamp("ms", tz="UTC")


@dataclass(slots=True, kw_only=True)
class RowResult:
    """The outcome of one row: what the journal records and the output holds.

    The field order is the column order of the journal and of the output.
    """

    position: int
    status: str = column(pa.string(), "ok or error", nullable=False, default=MISSING)
    completion: str | None = column(pa.string(), "the assistant's text (null on error)")
    finish_reason: str | None = column(pa.string(), "raw finish reason from the API")
    finish_reason_normalized: str | None = column(
        pa.string(), "stop, length, tool_calls, content_filter or error"
    )
    tool_calls: str | None = column(pa.string(), "tool calls as JSON text, if any")
    prompt_tokens: int | None = column(pa.int64(), "prompt tokens as reported")
    completion_tokens: int | None = column(pa.int64(), "completion tokens as reported")
    total_tokens: int | None = column(pa.int64(), "total tokens as reported")
    model: str | None = column(pa.string(), "model as served")
    response_id: str | None = column(pa.string(), "the API's id of the answer")
    attempts: int = column(pa.int32(), "requests made for this row", default=0)
    latency_ms: float | None = column(pa.float64(), "last attempt's latency")
    error_type: str | None = column(pa.string(), "error class (null on ok)")
    error: str | None = column(pa.string(), "error message (null on ok)")
    #: Unix time in seconds at which the row finished (stored as a ms timestamp).
    finished_at: float = column(_TS, "when the row finished", default=0.0)
    reported_cost_usd: float | None = column(
        pa.float64(), "the cost the API reported for the row, USD"
    )
    reasoning_content: str | None = column(
        pa.string(), "the model's reasoning, where the answer carries it"
    )
    client_request_id: str | None = column(
        pa.string(), "X-Client-Request-Id sent for the row (its name in the gateway's logs)"
    )
    inference_id: str | None = column(
        pa.string(), "the gateway's id of the answer the row keeps (x-inference-id)"
    )
    credits_used: int | None = column(
        pa.int64(), "credits the gateway reported for the row ($1 = 2,000,000)"
    )
    served_by: int | None = column(
        pa.int64(),
        "0-based input position of the row whose request paid for this answer (dedupe); "
        "null for a row that paid itself",
    )
    cached: bool = column(
        pa.bool_(),
        "the answer came from the response cache (--cache): nothing was paid "
        "(null in rows recorded before the column existed)",
        default=False,
    )
    #: With --schema: the validated tool-call arguments as compact JSON. Finalize turns them
    #: into one typed column per property (batchrun.typed), so this stays in the journal.
    arguments: str | None = column(
        pa.string(), "validated tool-call arguments as JSON (--schema)", output=False
    )
    #: A resume books a row recorded without usage at up to its own max_tokens (budget.py),
    #: which a row's --params-column may set above the job's: the journal keeps it.
    max_tokens: int | None = column(
        pa.int64(),
        "the max_tokens the row was sent with (its own or the job's; null before journal 9)",
        output=False,
    )

    @classmethod
    def success(
        cls,
        position: int,
        c: Completion,
        *,
        attempts: int,
        latency_ms: float,
        finished_at: float,
        client_request_id: str | None = None,
        max_tokens: int | None = None,
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
            reasoning_content=c.reasoning_content,
            client_request_id=client_request_id,
            inference_id=c.inference_id,
            credits_used=c.credits_used,
            max_tokens=max_tokens,
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
        client_request_id: str | None = None,
        inference_id: str | None = None,
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
            client_request_id=client_request_id,
            inference_id=inference_id,
        )

    def answer(self) -> Completion:
        """The answer of an ok row, as the client made it (what the response cache keeps)."""
        return Completion(
            text=self.completion,
            finish_reason=self.finish_reason,
            tool_calls=self.tool_calls,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.total_tokens,
            model=self.model,
            response_id=self.response_id,
            reported_cost_usd=self.reported_cost_usd,
            reasoning_content=self.reasoning_content,
        )

    def served(self, position: int, *, leader: int) -> RowResult:
        """This answer written to a row whose request is the same as this one's (dedupe):
        nothing was sent for it, nothing paid (its usage columns say what the answer used,
        ``served_by`` says which row paid)."""
        return dataclasses.replace(
            self,
            position=position,
            served_by=leader,
            cached=False,
            attempts=0,
            latency_ms=None,
            reported_cost_usd=None,
            # No request went out for this row: no id of its own, no charge of its own
            # (the leader's row holds both).
            client_request_id=None,
            inference_id=None,
            credits_used=None,
            finished_at=time.time(),
        )


#: The result columns in order (``position`` is the journal's key, not a column).
RESULT_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(RowResult))[1:]
#: The output's result fields, derived from the declarations above (journal-only ones left out).
RESULT_FIELDS: tuple[pa.Field, ...] = tuple(
    pa.field(f.name, f.metadata["arrow"], nullable=f.metadata["nullable"])
    for f in fields(RowResult)[1:]
    if f.metadata["output"]
)
#: Index in a journal result tuple (position first) of each output result field.
OUTPUT_INDEXES: tuple[int, ...] = tuple(RESULT_COLUMNS.index(f.name) + 1 for f in RESULT_FIELDS)
#: What each result column means (for the README and ``--help``).
RESULT_MEANINGS: dict[str, str] = {f.name: f.metadata["meaning"] for f in fields(RowResult)[1:]}
