"""What the simulator is told (SimConfig) and what it counts (SimStats)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from batchrun.simulate.toolargs import INVALID_KINDS

#: The seed model's names: one model, four aliases.
CLAUDE_3_OPUS_ALIASES = (
    "anthropic/claude-3-opus",
    "claude-3-opus",
    "claude-3-opus-20240229",
    "claude-3-opus-latest",
)
#: The models ``GET /v1/models`` lists (others with a provider prefix are served too).
MODELS = (
    *CLAUDE_3_OPUS_ALIASES,
    "anthropic/claude-3-haiku",
    "anthropic/claude-3-5-sonnet",
    "claude-3-5-haiku-20241022",
    "gpt-4o-mini",
    "gpt-4o",
)

FLAVORS = ("gateway", "openai")

_RATES = (
    "error_500_rate",
    "rate_429",
    "rate_429_no_retry_after",
    "rate_403",
    "drop_rate",
    "stream_stall_rate",
    "reasoning_rate",
    "correct_rate",
    "invalid_rate",
    "batch_errored_rate",
    "batch_expired_rate",
    "batch_poll_500_rate",
)


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """Behaviour of the simulator. Rates are fractions of requests (0..1); times as named."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    error_500_rate: float = 0.0
    rate_429: float = 0.0
    rate_429_no_retry_after: float = 0.0
    retry_after_s: float = 1.0
    #: The first this many admitted requests are answered 429 with ``retry_after_s``
    #: (a server busy at the start: the retry after it is what is rehearsed).
    first_429s: int = 0
    rate_403: float = 0.0
    drop_rate: float = 0.0
    rpm_limit: int | None = None
    rpm_window_s: float = 10.0
    limit_sends_retry_after: bool = True
    ratelimit_headers: bool = False
    api_key: str | None = None
    honor_idempotency: bool = False
    stream_stall_rate: float = 0.0
    #: Send each answer's cost (bundled list prices, USD) in this response header.
    cost_header: str | None = None
    #: Report spend as the gateway does: ``x-aimlapi-usd-spent`` / ``x-aimlapi-credits-used``
    #: on non-streamed answers, a final ``meta.usage`` event on streams.
    gateway_cost: bool = True
    #: Reject body fields a Claude model's schema lacks (``additionalProperties: false``).
    strict: bool = True
    #: What ``GET /v1/models`` lists (None: the endpoint answers 404).
    models: tuple[str, ...] | None = MODELS
    #: Share of answers that carry ``reasoning_content`` (which ones: a digest of the prompt).
    reasoning_rate: float = 0.25
    #: An answer key (JSONL or Parquet with prompts and ``answers_column``): keyed prompts
    #: are answered with the expected value for a share ``correct_rate`` of them (which ones:
    #: a digest of ``answers_seed`` and the prompt), else with a wrong one. See graded.py.
    answers_file: str | None = None
    answers_column: str = "answer"
    correct_rate: float = 1.0
    answers_seed: int = 0
    #: Share of forced tool calls whose arguments are made invalid, in one of
    #: ``invalid_kinds`` (which answers, and which way: a digest of the conversation).
    invalid_rate: float = 0.0
    invalid_kinds: tuple[str, ...] = INVALID_KINDS
    seed: int = 0
    #: Which server it stands in for: "gateway" (the documented API: HTTP 201, a usage
    #: chunk in every stream, Anthropic tool shapes, unknown fields refused) or "openai"
    #: (HTTP 200, stream usage only when asked, OpenAI tool shapes and string tool
    #: choices, ``stop``, no ``system`` or ``top_k``, OpenAI's error objects).
    flavor: str = "gateway"
    #: Batch API: seconds from a batch's creation to its end (the time scale), the shares
    #: of its requests that end errored or expired, of polls answered 500, results in
    #: shuffled order, and result lines of no request / a request's second (see batches.py).
    batch_delay_s: float = 1.0
    batch_errored_rate: float = 0.0
    batch_expired_rate: float = 0.0
    batch_poll_500_rate: float = 0.0
    batch_shuffle: bool = True
    batch_stray_results: bool = False

    def __post_init__(self) -> None:
        for name in _RATES:
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.latency_ms < 0 or self.jitter_ms < 0 or self.retry_after_s < 0:
            raise ValueError("latency, jitter and retry-after must be >= 0")
        if self.first_429s < 0:
            raise ValueError("first_429s must be >= 0")
        if self.rpm_limit is not None and self.rpm_limit < 1:
            raise ValueError("rpm_limit must be >= 1")
        if self.flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {', '.join(FLAVORS)}, got {self.flavor!r}")
        if self.batch_delay_s < 0 or self.batch_errored_rate + self.batch_expired_rate > 1:
            raise ValueError("batch_delay_s must be >= 0 and the batch fault rates sum to <= 1")
        if self.rpm_window_s <= 0:
            raise ValueError("rpm_window_s must be > 0")
        unknown = [k for k in self.invalid_kinds if k not in INVALID_KINDS]
        if unknown or not self.invalid_kinds:
            raise ValueError(f"invalid kinds are some of {', '.join(INVALID_KINDS)}, got {unknown}")


@dataclass
class SimStats:
    """Live counters, served as JSON at ``GET /_sim/stats``."""

    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    dropped: int = 0
    ok: int = 0
    replayed: int = 0
    #: Fresh 2xx answers for an Idempotency-Key that already had one: the row was billed twice.
    billed_twice: int = 0
    #: Distinct Idempotency-Keys billed more than once (a row billed three times is one).
    keys_billed_twice: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    rate_limited: int = 0
    #: The costs sent in the cost header, summed over fresh answers (replays not again).
    reported_cost_usd: float = 0.0
    #: The gateway's spend reported (headers or meta.usage), over fresh answers: USD (the
    #: exactly rounded sum of the values sent) and credits.
    usd_spent: float = 0.0
    credits_used: int = 0
    #: X-Client-Request-Id headers received: valid ones (echoed and logged), others.
    client_request_ids: int = 0
    client_request_ids_invalid: int = 0
    #: GET /v1/models requests.
    model_lists: int = 0
    #: Forced tool calls answered with invalid arguments, by the way they were made invalid.
    invalid_answers: dict[str, int] = field(default_factory=dict)
    #: Requests that follow up an answer (a tool result or a user turn after the assistant's).
    followups: int = 0
    #: Batch API: batches made, requests in them (each one billed), creates answered
    #: with an existing batch (a repeated Idempotency-Key), polls, cancels, results served.
    batches_created: int = 0
    batch_requests: int = 0
    batch_creates_replayed: int = 0
    batch_polls: int = 0
    batch_cancels: int = 0
    batch_results_served: int = 0
    bodies: list[dict[str, Any]] | None = None

    def count(self, status: int) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["by_status"] = {str(k): v for k, v in sorted(self.by_status.items())}
        d.pop("bodies")
        return d
