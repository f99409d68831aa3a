"""The client against aioresponses: the request on the wire, answers parsed, statuses and
network errors mapped to failure classes, the key never in a message."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses

from batchrun.client import ApiClient
from batchrun.records import Completion
from batchrun.retrying import RequestFailed, Retryable, RowFailed, StopRun

BASE = "https://api.example.test/v1"
URL = f"{BASE}/chat/completions"
KEY = "sk-secret-123"
BODY = {
    "model": "anthropic/claude-3-opus",
    "max_tokens": 5,
    "messages": [{"role": "user", "content": "hi"}],
}


def _run(setup: Callable[[aioresponses], None], call: Callable[[ApiClient], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        with aioresponses() as mocked:
            setup(mocked)
            async with ApiClient(BASE, KEY, concurrency=7, timeout_s=5) as client:
                return await call(client), mocked

    return asyncio.run(main())


def _ok(status: int = 201, **message: Any) -> dict[str, Any]:
    msg = {"role": "assistant", "content": "hello there", **message}
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "model": "anthropic/claude-3-opus", "created": 1,
        "choices": [{"index": 0, "message": msg, "finish_reason": "end_turn"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
    }  # fmt: skip


def test_request_on_the_wire_and_201_parsed() -> None:
    seen: dict[str, Any] = {}

    def callback(url: Any, **kwargs: Any) -> CallbackResult:
        seen.update(kwargs)
        return CallbackResult(status=201, payload=_ok())

    result, _ = _run(lambda m: m.post(URL, callback=callback), lambda c: c.complete(BODY, "key-1"))
    assert json.loads(seen["data"]) == BODY
    headers = {**seen["headers"]}
    assert headers["Idempotency-Key"] == "key-1"
    assert result == Completion(
        "hello there", "end_turn", None, 4, 2, 6, "anthropic/claude-3-opus", "chatcmpl-1"
    )


def test_session_headers_and_pool_size() -> None:
    async def main() -> None:
        async with ApiClient(BASE, KEY, concurrency=300, timeout_s=5) as client:
            session = client._session
            assert session is not None
            assert session.connector is not None and session.connector.limit == 300
            assert session.headers["Authorization"] == f"Bearer {KEY}"
            assert session.headers["User-Agent"].startswith("batchrun/")

    asyncio.run(main())


def test_content_blocks_and_tool_calls() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    payload = _ok(
        content=[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], tool_calls=calls
    )
    result, _ = _run(
        lambda m: m.post(URL, status=200, payload=payload), lambda c: c.complete(BODY, "k")
    )
    assert result.text == "ab"
    assert json.loads(result.tool_calls) == calls


def _sse(*chunks: Any) -> str:
    return "".join(f"data: {c if isinstance(c, str) else json.dumps(c)}\n\n" for c in chunks)


def test_sse_stream_merged() -> None:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "s1",
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    body = _sse(
        chunk({"role": "assistant"}), chunk({"content": "Hel"}), chunk({"content": "lo"}),
        chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": '{"a"'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
        chunk({}, "stop"), {"id": "s1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}},
        "[DONE]",
    )  # fmt: skip
    result, _ = _run(
        lambda m: m.post(URL, status=200, body=body, content_type="text/event-stream"),
        lambda c: c.complete({**BODY, "stream": True}, "k"),
    )
    assert result.text == "Hello"
    assert result.finish_reason == "stop"
    assert json.loads(result.tool_calls)[0]["function"] == {"name": "f", "arguments": '{"a": 1}'}
    assert (result.prompt_tokens, result.completion_tokens, result.total_tokens) == (3, 2, 5)


def test_sse_cut_short_is_retryable_with_unknown_outcome() -> None:
    body = _sse(
        {"id": "s", "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]}
    )
    exc = _failure(lambda m: m.post(URL, status=200, body=body, content_type="text/event-stream"))
    assert isinstance(exc, Retryable) and not exc.definite


def _failure(setup: Callable[[aioresponses], None]) -> RequestFailed:
    async def call(client: ApiClient) -> RequestFailed:
        try:
            await client.complete(BODY, "k")
        except RequestFailed as exc:
            return exc
        raise AssertionError("no failure raised")

    exc, _ = _run(setup, call)
    assert isinstance(exc, RequestFailed)
    return exc


@pytest.mark.parametrize(
    ("status", "cls", "error_type"),
    [
        (400, RowFailed, "bad_request"), (404, RowFailed, "not_found"), (413, RowFailed, "payload_too_large"),
        (422, RowFailed, "unprocessable"), (401, StopRun, "authentication"), (403, StopRun, "permission_denied"),
        (408, Retryable, "timeout"), (409, Retryable, "server_error"), (425, Retryable, "server_error"),
        (429, Retryable, "rate_limited"), (500, Retryable, "server_error"), (503, Retryable, "server_error"),
        (529, Retryable, "server_error"),
    ],
)  # fmt: skip
def test_statuses_map_to_failure_classes(status: int, cls: type, error_type: str) -> None:
    exc = _failure(
        lambda m: m.post(
            URL, status=status, payload={"error": {"message": "nope"}}, headers={"Retry-After": "2"}
        )
    )
    assert type(exc) is cls
    assert exc.error_type == error_type
    assert exc.status == status and exc.definite
    assert exc.message == f"HTTP {status}: nope"
    assert exc.retry_after_s == 2.0


def test_success_status_with_a_body_that_is_not_a_completion_fails_the_row() -> None:
    exc = _failure(lambda m: m.post(URL, status=201, body="<html>gateway</html>"))
    assert isinstance(exc, RowFailed) and exc.error_type == "invalid_response"


@pytest.mark.parametrize(
    ("error", "error_type"),
    [
        (TimeoutError(), "timeout"),
        (aiohttp.ServerDisconnectedError(), "connection_error"),
        (aiohttp.ClientConnectionError("reset"), "connection_error"),
        (aiohttp.ClientPayloadError("cut"), "connection_error"),
    ],
)
def test_network_errors_are_retryable_with_unknown_outcome(
    error: Exception, error_type: str
) -> None:
    exc = _failure(lambda m: m.post(URL, exception=error))
    assert isinstance(exc, Retryable)
    assert exc.error_type == error_type and not exc.definite


def test_the_key_never_appears_in_a_message() -> None:
    exc = _failure(
        lambda m: m.post(URL, status=401, payload={"error": {"message": f"key {KEY} is invalid"}})
    )
    assert KEY not in exc.message and KEY not in str(exc)
    assert "***" in exc.message
