"""What is retried, and how long to wait: the whole retry policy of batchrun in one place.

Status classes (DESIGN): retry 408, 409, 425, 429 and 5xx, timeouts and connection errors;
fail the row on other 4xx and on an unparseable success body; stop the run on 401 and 403.
Waits honour ``retry-after-ms`` and ``Retry-After`` (seconds or HTTP date), else
exponential backoff with full jitter.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Mapping

from tenacity import RetryCallState

from batchrun.errors import Retryable, RowFailed, SendFailed, StopRun
from batchrun.pacing import RetryPolicy
from batchrun.profiles import STANDARD_RETRY_HEADERS, RetryHeader

RETRY_STATUSES = frozenset({408, 409, 425, 429})
STOP_STATUSES = frozenset({401, 403})

_STATUS_TYPES = {
    400: "bad_request",
    401: "authentication",
    403: "permission_denied",
    404: "not_found",
    408: "timeout",
    409: "server_error",
    413: "payload_too_large",
    422: "unprocessable",
    425: "server_error",
    429: "rate_limited",
}


def error_type_for_status(status: int) -> str:
    if status >= 500:
        return "server_error"
    return _STATUS_TYPES.get(status, "http_error")


def classify_status(status: int) -> type[SendFailed]:
    """Which class of failure an HTTP status is (call only for non-2xx statuses)."""
    if status in STOP_STATUSES:
        return StopRun
    if status in RETRY_STATUSES or status >= 500:
        return Retryable
    return RowFailed


def parse_retry_after(
    headers: Mapping[str, str],
    now: float | None = None,
    *,
    names: tuple[RetryHeader, ...] = STANDARD_RETRY_HEADERS,
) -> float | None:
    """Seconds the server asks us to wait, or None when it does not say (or says nonsense).

    Reads the headers ``names`` in order, the first usable one wins: by default
    ``retry-after-ms`` (milliseconds), then ``Retry-After`` as seconds (integer or decimal)
    or as an HTTP date; a profile may add its own (LiteLLM relays the upstream's as
    ``llm_provider-retry-after(-ms)``). Negative values become 0.
    """
    for name, unit in names:
        raw = headers.get(name)
        if raw is None:
            continue
        value = _milliseconds(raw) if unit == "ms" else _seconds_or_date(raw, now)
        if value is not None:
            return value
    return None


def _milliseconds(raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return max(0.0, value / 1000.0) if math.isfinite(value) else None


def _seconds_or_date(raw: str, now: float | None) -> float | None:
    raw = raw.strip()
    try:
        value = float(raw)
    except ValueError:
        pass
    else:
        return max(0.0, value) if math.isfinite(value) else None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_s(attempt: int, policy: RetryPolicy, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff before retry number ``attempt`` (1 = first retry)."""
    cap = min(policy.backoff_max_s, policy.backoff_initial_s * 2 ** (attempt - 1))
    return (rng or random).uniform(0, cap)


class WaitRetryAfterOrBackoff:
    """tenacity wait strategy: the server's Retry-After when given, else jittered backoff.

    ``attempt_offset`` counts attempts made before tenacity took over.
    """

    def __init__(
        self, policy: RetryPolicy, rng: random.Random | None = None, *, attempt_offset: int = 0
    ) -> None:
        self.policy = policy
        self.rng = rng
        self.attempt_offset = attempt_offset

    def seconds(self, exc: BaseException | None, attempt: int) -> float:
        """Wait after failed attempt number ``attempt`` (1-based) that raised ``exc``."""
        retry_after = getattr(exc, "retry_after_s", None)
        if retry_after is not None:
            return float(min(retry_after, self.policy.max_retry_after_s))
        return backoff_s(attempt, self.policy, self.rng)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return self.seconds(exc, state.attempt_number + self.attempt_offset)
