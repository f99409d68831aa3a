"""How hard a run pushes the API and when it gives up: concurrency and rate limits, the
retry policy, the spending caps. Frozen and validated, part of :class:`batchrun.job.Job`."""

from __future__ import annotations

from dataclasses import dataclass

from batchrun.checks import check, is_int, is_number


@dataclass(frozen=True, kw_only=True)
class Limits:
    """How hard to push the API."""

    concurrency: int = 16
    #: Requests per minute, spread evenly; None = find the sustainable rate from 429s.
    requests_per_minute: float | None = None
    #: Tokens per minute (prompt estimate + max_tokens before sending, real usage after).
    tokens_per_minute: float | None = None

    def __post_init__(self) -> None:
        check(
            is_int(self.concurrency) and 1 <= self.concurrency <= 10_000,
            f"concurrency must be an integer from 1 to 10000, got {self.concurrency!r}",
        )
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None:
                check(
                    is_number(value) and value > 0,
                    f"{name} must be a positive number, got {value!r}",
                )


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """What to do when a request does not succeed. Waits are in seconds."""

    max_attempts: int = 6
    #: Per request, whole request including reading the (streamed) answer.
    timeout_s: float = 120.0
    #: A streamed answer silent this long has stalled, the wait for its first byte included.
    #: (A non-streamed answer arrives in one piece at the end: only ``timeout_s`` applies.)
    read_timeout_s: float = 60.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    #: A Retry-After longer than this stops the run (resumably) instead of hanging.
    max_retry_after_s: float = 600.0
    #: Stop the run after this many consecutive rows failed with the same non-retryable error.
    same_error_stop_after: int = 20

    def __post_init__(self) -> None:
        check(
            is_int(self.max_attempts) and self.max_attempts >= 1,
            f"max_attempts must be an integer >= 1, got {self.max_attempts!r}",
        )
        check(
            is_number(self.timeout_s) and self.timeout_s > 0,
            f"timeout must be a positive number of seconds, got {self.timeout_s!r}",
        )
        check(
            is_number(self.read_timeout_s) and self.read_timeout_s > 0,
            f"read_timeout must be a positive number of seconds, got {self.read_timeout_s!r}",
        )
        check(
            self.backoff_initial_s >= 0 and self.backoff_max_s >= self.backoff_initial_s,
            "backoff waits must be >= 0 and max >= initial",
        )
        check(self.max_retry_after_s >= 0, "max_retry_after_s must be >= 0")
        check(
            is_int(self.same_error_stop_after) and self.same_error_stop_after >= 1,
            "same_error_stop_after must be an integer >= 1",
        )


@dataclass(frozen=True, kw_only=True)
class Budget:
    """Caps over the whole output (earlier runs' rows count): stop starting requests before
    a cap would be crossed."""

    max_cost_usd: float | None = None
    max_tokens_total: int | None = None

    def __post_init__(self) -> None:
        if self.max_cost_usd is not None:
            check(
                is_number(self.max_cost_usd) and self.max_cost_usd > 0,
                f"max_cost must be a positive amount of USD, got {self.max_cost_usd!r}",
            )
        if self.max_tokens_total is not None:
            check(
                is_int(self.max_tokens_total) and self.max_tokens_total > 0,
                f"max_tokens_total must be a positive integer, got {self.max_tokens_total!r}",
            )
