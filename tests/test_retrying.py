"""The retry policy: classification of statuses and Retry-After parsing, table-driven, no
sleeping."""

from __future__ import annotations

import email.utils
import random
from types import SimpleNamespace

import pytest

from batchrun.errors import Retryable, RowFailed, StopRun
from batchrun.job import RetryPolicy
from batchrun.send.retrying import (
    WaitRetryAfterOrBackoff,
    backoff_s,
    classify_status,
    error_type_for_status,
    parse_retry_after,
)


@pytest.mark.parametrize(
    ("status", "cls", "error_type"),
    [
        (400, RowFailed, "bad_request"),
        (401, StopRun, "authentication"),
        (403, StopRun, "permission_denied"),
        (404, RowFailed, "not_found"),
        (408, Retryable, "timeout"),
        (409, Retryable, "server_error"),
        (413, RowFailed, "payload_too_large"),
        (418, RowFailed, "http_error"),
        (422, RowFailed, "unprocessable"),
        (425, Retryable, "server_error"),
        (429, Retryable, "rate_limited"),
        (500, Retryable, "server_error"),
        (502, Retryable, "server_error"),
        (503, Retryable, "server_error"),
        (529, Retryable, "server_error"),
    ],
)
def test_status_classes(status: int, cls: type, error_type: str) -> None:
    assert classify_status(status) is cls
    assert error_type_for_status(status) == error_type


NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": " 2.5 "}, 2.5),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after-ms": "junk", "retry-after": "9"}, 9.0),
        ({"retry-after": email.utils.formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({"retry-after": email.utils.formatdate(NOW - 30, usegmt=True)}, 0.0),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    got = parse_retry_after(headers, now=NOW)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def test_backoff_is_full_jitter_within_the_exponential_cap() -> None:
    policy = RetryPolicy(backoff_initial_s=0.5, backoff_max_s=4.0)
    rng = random.Random(1)
    for attempt, cap in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        waits = [backoff_s(attempt, policy, rng) for _ in range(200)]
        assert all(0 <= w <= cap for w in waits)
        assert max(waits) > cap * 0.8  # jitter spans the range, not a fixed wait


def _state(exc: BaseException, attempt: int) -> SimpleNamespace:
    return SimpleNamespace(outcome=SimpleNamespace(exception=lambda: exc), attempt_number=attempt)


def test_wait_uses_retry_after_capped_else_backoff() -> None:
    policy = RetryPolicy(backoff_initial_s=0, backoff_max_s=0, max_retry_after_s=10)
    wait = WaitRetryAfterOrBackoff(policy)
    assert wait(_state(Retryable("rate_limited", "x", retry_after_s=3), 1)) == 3  # type: ignore[arg-type]
    assert wait(_state(Retryable("rate_limited", "x", retry_after_s=99), 1)) == 10  # type: ignore[arg-type]
    assert wait(_state(Retryable("server_error", "x"), 1)) == 0  # type: ignore[arg-type]
    offset = WaitRetryAfterOrBackoff(
        RetryPolicy(backoff_initial_s=1, backoff_max_s=100), random.Random(0), attempt_offset=1
    )
    assert offset.seconds(Retryable("server_error", "x"), 5) <= 16
