"""The client against aioresponses: the request on the wire, answers (JSON and SSE) parsed,
statuses and network errors mapped to failure classes, the key never in a message."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.http_exceptions import BadHttpMessage
from aioresponses import CallbackResult, aioresponses

from batchrun import __version__
from batchrun.errors import Retryable, RowFailed, SendFailed, StopRun
from batchrun.records import Completion, Request
from batchrun.send.client import ApiClient
from batchrun.send.spend import parse_usd

BASE = "https://api.example.test/v1"
URL = f"{BASE}/chat/completions"
KEY = "sk-secret-0123456789abcdef"
BODY: dict[str, Any] = {
    "model": "anthropic/claude-3-opus",
    "max_tokens": 5,
    "temperature": 0,
    "stop_sequences": ["\n\n"],
    "metadata": {"run": "nightly", "nested": {"a": [1, 2.5, None, True]}},
    "messages": [{"role": "user", "content": 'Grüße, 世界 — "quoted"\n'}],
}

Setup = Callable[[aioresponses], None]


def _run(
    setup: Setup,
    call: Callable[[ApiClient], Awaitable[Any]],
    *,
    base_url: str = BASE,
    concurrency: int = 7,
    cost_header: str | None = None,
) -> tuple[Any, aioresponses]:
    async def main() -> tuple[Any, aioresponses]:
        with aioresponses() as mocked:
            setup(mocked)
            async with ApiClient(
                base_url, KEY, concurrency=concurrency, timeout_s=5, cost_header=cost_header
            ) as client:
                return await call(client), mocked

    return asyncio.run(main())


def _req(body: dict[str, Any]) -> Request:
    """The neutral request whose wire body is ``body``."""
    params = {k: v for k, v in body.items() if k != "messages"}
    return Request(
        position=0,
        messages=body["messages"],
        params=params,
        max_tokens=params.get("max_tokens", 16),
        prompt_tokens=1,
    )


def _complete(setup: Setup, body: dict[str, Any] | None = None) -> Completion:
    result, _ = _run(setup, lambda c: c.complete(_req(body or BODY), "key-1"))
    assert isinstance(result, Completion)
    return result


def _failure(setup: Setup, body: dict[str, Any] | None = None) -> SendFailed:
    async def call(client: ApiClient) -> SendFailed:
        try:
            await client.complete(_req(body or BODY), "key-1")
        except SendFailed as exc:
            return exc
        raise AssertionError("no failure raised")

    exc, _ = _run(setup, call)
    assert isinstance(exc, SendFailed)
    return exc


def _ok(finish_reason: str = "end_turn", **message: Any) -> dict[str, Any]:
    msg = {"role": "assistant", "content": "hello there", **message}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "anthropic/claude-3-opus-20240229",
        "created": 1,
        "choices": [{"index": 0, "message": msg, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
    }


# --- the request on the wire ------------------------------------------------------------------


def test_request_url_headers_and_body_on_the_wire() -> None:
    seen: list[dict[str, Any]] = []

    def callback(url: Any, **kwargs: Any) -> CallbackResult:
        seen.append({"url": str(url), **kwargs})
        return CallbackResult(status=201, payload=_ok())

    _complete(lambda m: m.post(URL, callback=callback))
    assert len(seen) == 1
    sent = seen[0]
    assert sent["url"] == URL
    headers = sent["headers"]
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["Idempotency-Key"] == "key-1"
    assert headers["User-Agent"].startswith("batchrun/")
    assert __version__ in headers["User-Agent"]
    assert headers["Content-Type"] == "application/json"
    data = sent["data"]
    assert isinstance(data, bytes)
    assert json.loads(data.decode("utf-8")) == BODY  # sent as given, non-ASCII intact


def test_each_request_carries_its_own_idempotency_key() -> None:
    keys: list[str] = []

    def callback(url: Any, **kwargs: Any) -> CallbackResult:
        keys.append(kwargs["headers"]["Idempotency-Key"])
        return CallbackResult(status=201, payload=_ok())

    async def call(client: ApiClient) -> None:
        await client.complete(_req(BODY), "first")
        await client.complete(_req(BODY), "second")

    _run(lambda m: m.post(URL, callback=callback, repeat=True), call)
    assert keys == ["first", "second"]


@pytest.mark.parametrize("base_url", [BASE, BASE + "/"])
def test_url_is_base_url_plus_chat_completions(base_url: str) -> None:
    async def call(client: ApiClient) -> str:
        await client.complete(_req(BODY), "k")
        return client.url

    url, mocked = _run(lambda m: m.post(URL, payload=_ok(), status=201), call, base_url=base_url)
    assert url == URL
    assert [str(u) for (_, u) in mocked.requests] == [URL]


@pytest.mark.parametrize("concurrency", [3, 100, 300])
def test_connection_pool_is_sized_to_the_concurrency(concurrency: int) -> None:
    async def main() -> None:
        async with ApiClient(BASE, KEY, concurrency=concurrency, timeout_s=7.5) as client:
            session = client.transport._session
            assert session is not None
            connector = session.connector
            assert isinstance(connector, aiohttp.TCPConnector)
            assert connector.limit == concurrency
            assert connector.limit_per_host == concurrency
            assert session.timeout.total == 7.5

    asyncio.run(main())


@pytest.mark.parametrize(
    "read_timeout, expected_sock_read",
    [(None, None), (2.0, 2.0), (30.0, 7.5)],  # never longer than the whole request
)
def test_read_timeout_only_where_asked_and_within_the_total(
    read_timeout: float | None, expected_sock_read: float | None
) -> None:
    client = ApiClient(BASE, KEY, concurrency=2, timeout_s=7.5, read_timeout_s=read_timeout)
    assert client.transport.timeout.total == 7.5
    assert client.transport.timeout.sock_read == expected_sock_read


def test_session_is_closed_on_exit_even_after_an_error() -> None:
    async def main() -> aiohttp.ClientSession:
        client = ApiClient(BASE, KEY, concurrency=2, timeout_s=5)
        seen: list[aiohttp.ClientSession] = []
        with pytest.raises(RuntimeError, match="boom"):
            async with client:
                assert (
                    client.transport._session is not None and not client.transport._session.closed
                )
                seen.append(client.transport._session)
                raise RuntimeError("boom")
        assert client.transport._session is None
        return seen[0]

    assert asyncio.run(main()).closed


def test_repr_does_not_show_the_key() -> None:
    client = ApiClient(BASE, KEY, concurrency=2, timeout_s=5)
    assert KEY not in repr(client)
    assert "concurrency=2" in repr(client)


# --- non-streamed answers ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201])
def test_success_body_parsed_into_a_completion(status: int) -> None:
    result = _complete(lambda m: m.post(URL, status=status, payload=_ok()))
    assert result == Completion(
        text="hello there",
        finish_reason="end_turn",
        tool_calls=None,
        prompt_tokens=4,
        completion_tokens=2,
        total_tokens=6,
        model="anthropic/claude-3-opus-20240229",
        response_id="chatcmpl-1",
    )


def test_content_as_a_list_of_text_blocks_is_joined() -> None:
    blocks = [
        {"type": "text", "text": "one "},
        {"type": "image", "source": {}},
        {"type": "text", "text": "two"},
    ]
    result = _complete(lambda m: m.post(URL, status=201, payload=_ok(content=blocks)))
    assert result.text == "one two"


def test_tool_calls_are_kept_as_json_text() -> None:
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
        {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]
    payload = _ok("tool_use", content=None, tool_calls=calls)
    result = _complete(lambda m: m.post(URL, status=201, payload=payload))
    assert result.text is None
    assert result.finish_reason == "tool_use"
    assert isinstance(result.tool_calls, str)
    assert json.loads(result.tool_calls) == calls


def test_missing_or_odd_usage_gives_none_not_a_crash() -> None:
    payload = _ok()
    payload["usage"] = {"prompt_tokens": "4", "completion_tokens": True}
    result = _complete(lambda m: m.post(URL, status=201, payload=payload))
    assert (result.prompt_tokens, result.completion_tokens, result.total_tokens) == (
        None,
        None,
        None,
    )
    del payload["usage"]
    result = _complete(lambda m: m.post(URL, status=201, payload=payload))
    assert result.total_tokens is None and result.text == "hello there"


@pytest.mark.parametrize(
    "body",
    [
        "<html>502 from the gateway, but with status 201</html>",
        "",
        json.dumps({"object": "chat.completion", "choices": []}),
        json.dumps({"id": "x", "object": "chat.completion"}),
        json.dumps(["not", "an", "object"]),
    ],
)
def test_success_status_without_a_completion_fails_the_row(body: str) -> None:
    exc = _failure(lambda m: m.post(URL, status=201, body=body))
    assert type(exc) is RowFailed
    assert exc.error_type == "invalid_response"


# --- server-sent events ------------------------------------------------------------------------


def _sse(*events: Any) -> str:
    return "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events)


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "stream-1",
        "object": "chat.completion.chunk",
        "model": "m-served",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


USAGE_CHUNK = {
    "id": "stream-1",
    "object": "chat.completion.chunk",
    "model": "m-served",
    "choices": [],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}


def _sse_setup(body: str, status: int = 200) -> Setup:
    return lambda m: m.post(URL, status=status, body=body, content_type="text/event-stream")


def test_sse_stream_merged_into_one_completion() -> None:
    body = ": keep-alive comment\n\n" + _sse(
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Hel"}),
        _chunk({"content": "lo, "}),
        _chunk({"content": "world"}),
        _chunk({}, "end_turn"),
        USAGE_CHUNK,
        "[DONE]",
    )
    result = _complete(_sse_setup(body), {**BODY, "stream": True})
    assert result == Completion(
        text="Hello, world",
        finish_reason="end_turn",
        tool_calls=None,
        prompt_tokens=3,
        completion_tokens=2,
        total_tokens=5,
        model="m-served",
        response_id="stream-1",
    )


def test_sse_with_201_status_is_parsed_too() -> None:
    body = _sse(_chunk({"content": "x"}), _chunk({}, "stop"), "[DONE]")
    assert _complete(_sse_setup(body, status=201)).text == "x"


def test_sse_tool_call_deltas_are_merged_by_index() -> None:
    def call(index: int, **fields: Any) -> dict[str, Any]:
        return _chunk({"tool_calls": [{"index": index, **fields}]})

    body = _sse(
        _chunk({"role": "assistant"}),
        call(0, id="c0", type="function", function={"name": "get_", "arguments": ""}),
        call(1, id="c1", type="function", function={"name": "lookup", "arguments": '{"q"'}),
        call(0, function={"name": "weather", "arguments": '{"city": '}),
        call(1, function={"arguments": ': "x"}'}),
        call(0, function={"arguments": '"Paris"}'}),
        _chunk({}, "tool_calls"),
        USAGE_CHUNK,
        "[DONE]",
    )
    result = _complete(_sse_setup(body))
    assert result.text is None
    assert result.finish_reason == "tool_calls"
    assert isinstance(result.tool_calls, str)
    calls = json.loads(result.tool_calls)
    assert [c["id"] for c in calls] == ["c0", "c1"]
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert calls[1]["function"] == {"name": "lookup", "arguments": '{"q": "x"}'}
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}


def test_sse_without_done_but_with_a_finish_reason_is_complete() -> None:
    body = _sse(_chunk({"content": "fine"}), _chunk({}, "stop"))
    result = _complete(_sse_setup(body))
    assert (result.text, result.finish_reason) == ("fine", "stop")


def test_sse_cut_short_is_retryable_with_unknown_outcome() -> None:
    body = _sse(_chunk({"role": "assistant"}), _chunk({"content": "half an ans"}))
    exc = _failure(_sse_setup(body))
    assert type(exc) is Retryable
    assert exc.error_type == "connection_error"
    assert exc.definite is False


def test_sse_error_object_inside_the_stream_is_retryable() -> None:
    body = _sse(
        _chunk({"content": "par"}),
        {"error": {"type": "overloaded_error", "message": "Overloaded"}},
    )
    exc = _failure(_sse_setup(body))
    assert type(exc) is Retryable
    assert exc.error_type == "server_error"
    assert "Overloaded" in exc.message


def test_sse_chunk_that_is_not_json_fails_the_row() -> None:
    body = _sse(_chunk({"content": "x"}), "{not json", "[DONE]")
    exc = _failure(_sse_setup(body))
    assert type(exc) is RowFailed
    assert exc.error_type == "invalid_response"


@pytest.mark.parametrize(
    "chunks",
    [
        [{"choices": ["x"]}],
        [{"choices": [{"delta": "text"}]}],
        [_chunk({"tool_calls": [{"index": 0, "function": {"name": 5}}]})],
        [_chunk({"tool_calls": "many"})],
    ],
)
def test_sse_chunk_of_the_wrong_shape_fails_the_row(chunks: list[Any]) -> None:
    exc = _failure(_sse_setup(_sse(*chunks, _chunk({}, "stop"), "[DONE]")))
    assert type(exc) is RowFailed
    assert exc.error_type == "invalid_response"


# --- statuses ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls", "error_type"),
    [
        (400, RowFailed, "bad_request"),
        (404, RowFailed, "not_found"),
        (413, RowFailed, "payload_too_large"),
        (422, RowFailed, "unprocessable"),
        (401, StopRun, "authentication"),
        (403, StopRun, "permission_denied"),
        (408, Retryable, "timeout"),
        (409, Retryable, "server_error"),
        (425, Retryable, "server_error"),
        (429, Retryable, "rate_limited"),
        (500, Retryable, "server_error"),
        (503, Retryable, "server_error"),
        (529, Retryable, "server_error"),
    ],
)
def test_statuses_map_to_failure_classes(
    status: int, cls: type[SendFailed], error_type: str
) -> None:
    exc = _failure(lambda m: m.post(URL, status=status, payload={"error": {"message": "nope"}}))
    assert type(exc) is cls
    assert exc.error_type == error_type
    assert exc.status == status
    assert exc.definite is True  # the server answered
    assert exc.message == f"HTTP {status}: nope"
    assert exc.retry_after_s is None  # no header: no Retry-After invented


@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 503, 529])
@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "2"}, 2.0),
        ({"Retry-After": "0.25"}, 0.25),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "1500", "Retry-After": "9"}, 1.5),
    ],
)
def test_retryable_statuses_carry_retry_after_from_the_headers(
    status: int, headers: dict[str, str], seconds: float
) -> None:
    exc = _failure(lambda m: m.post(URL, status=status, payload={"error": "busy"}, headers=headers))
    assert type(exc) is Retryable
    assert exc.retry_after_s == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"error": {"message": "model not found", "type": "x"}}', "model not found"),
        ('{"error": "plain string error"}', "plain string error"),
        ('{"detail": "no such route"}', "no such route"),
        ("<html>Bad gateway</html>", "<html>Bad gateway</html>"),
        ("", "(empty body)"),
    ],
)
def test_error_bodies_of_every_shape_give_a_message(body: str, expected: str) -> None:
    exc = _failure(lambda m: m.post(URL, status=400, body=body))
    assert exc.message == f"HTTP 400: {expected}"


def test_a_huge_error_body_is_cut_short() -> None:
    exc = _failure(lambda m: m.post(URL, status=500, body="x" * 100_000))
    assert len(exc.message) < 400


# --- network errors ------------------------------------------------------------------------------


# asyncio.TimeoutError is TimeoutError since Python 3.11 (aiohttp raises either name).
@pytest.mark.parametrize("error", [TimeoutError(), TimeoutError("read timed out")])
def test_timeouts_are_retryable_with_unknown_outcome(error: Exception) -> None:
    exc = _failure(lambda m: m.post(URL, exception=error))
    assert type(exc) is Retryable
    assert exc.error_type == "timeout"
    assert exc.definite is False
    assert exc.status is None
    assert "5 s" in exc.message  # names the per-request timeout


@pytest.mark.parametrize(
    "error",
    [
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientConnectionError("connection reset by peer"),
        aiohttp.ClientOSError(104, "Connection reset by peer"),
        aiohttp.ClientPayloadError("response payload is not completed"),
    ],
)
def test_connection_errors_are_retryable_with_unknown_outcome(error: Exception) -> None:
    exc = _failure(lambda m: m.post(URL, exception=error))
    assert type(exc) is Retryable
    assert exc.error_type == "connection_error"
    assert exc.definite is False
    assert exc.message  # never an empty message


def test_errors_outside_the_retry_classes_are_not_swallowed() -> None:
    async def call(client: ApiClient) -> None:
        await client.complete(_req(BODY), "k")

    with pytest.raises(ValueError, match="a bug"):
        _run(lambda m: m.post(URL, exception=ValueError("a bug")), call)


# --- the key never appears in a message ----------------------------------------------------------


def _assert_no_key(exc: SendFailed) -> None:
    for text in (exc.message, str(exc), repr(exc), repr(exc.args)):
        assert KEY not in text
        assert KEY[:12] not in text  # not even its head


@pytest.mark.parametrize("status", [400, 401, 403, 429, 500])
def test_key_echoed_in_a_json_error_body_is_redacted(status: int) -> None:
    payload = {"error": {"message": f"Invalid API key provided: {KEY}. Check it."}}
    exc = _failure(lambda m: m.post(URL, status=status, payload=payload))
    _assert_no_key(exc)
    assert "***" in exc.message
    assert "Invalid API key provided" in exc.message  # the rest of the message is kept


def test_key_echoed_in_a_plain_text_error_body_is_redacted() -> None:
    exc = _failure(lambda m: m.post(URL, status=502, body=f"upstream rejected Bearer {KEY}"))
    _assert_no_key(exc)


def test_key_echoed_at_the_cut_of_a_long_error_message_does_not_leak_its_head() -> None:
    message = "x" * 280 + KEY  # the message is cut at 300 characters, mid-key
    exc = _failure(lambda m: m.post(URL, status=400, payload={"error": {"message": message}}))
    _assert_no_key(exc)


def test_key_in_a_connection_error_is_redacted() -> None:
    error = aiohttp.ClientConnectionError(f"proxy refused Authorization: Bearer {KEY}")
    exc = _failure(lambda m: m.post(URL, exception=error))
    _assert_no_key(exc)


def test_key_echoed_in_a_success_body_that_is_not_a_completion_is_redacted() -> None:
    exc = _failure(lambda m: m.post(URL, status=201, body=f"<html>key={KEY}</html>"))
    assert exc.error_type == "invalid_response"
    _assert_no_key(exc)


def test_key_echoed_in_an_error_inside_the_stream_is_redacted() -> None:
    body = _sse({"error": {"message": f"key {KEY} has no credits"}})
    exc = _failure(_sse_setup(body))
    assert exc.error_type == "server_error"
    _assert_no_key(exc)


def test_key_echoed_in_a_stream_chunk_that_is_not_json_is_redacted() -> None:
    body = _sse(f"oops {KEY}")
    exc = _failure(_sse_setup(body))
    assert exc.error_type == "invalid_response"
    _assert_no_key(exc)


@pytest.mark.parametrize(
    "value, cost",
    [
        ("0.0012", 0.0012),
        (" 0.5 ", 0.5),
        ("$0.25", 0.25),
        ("0", 0.0),
        ("1e-05", 1e-05),
        (None, None),
        ("", None),
        ("free", None),
        ("-0.1", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_parse_cost(value: str | None, cost: float | None) -> None:
    assert parse_usd(value) == cost


@pytest.mark.parametrize(
    "cost_header, headers, expected",
    [
        ("x-litellm-response-cost", {"x-litellm-response-cost": "0.0042"}, 0.0042),
        ("x-litellm-response-cost", {"X-LiteLLM-Response-Cost": "0.0042"}, 0.0042),  # any case
        ("x-litellm-response-cost", {}, None),
        ("x-cost", {"x-litellm-response-cost": "0.0042"}, None),  # another header named
        (None, {"x-litellm-response-cost": "0.0042"}, None),  # reading costs switched off
    ],
)
def test_reported_cost_is_read_from_the_named_header(
    cost_header: str | None, headers: dict[str, str], expected: float | None
) -> None:
    result, _ = _run(
        lambda m: m.post(URL, payload=_ok(), status=201, headers=headers),
        lambda c: c.complete(_req(BODY), "key-1"),
        cost_header=cost_header,
    )
    assert isinstance(result, Completion)
    assert result.text is not None
    assert result.reported_cost_usd == expected


@pytest.mark.parametrize(
    "cost_header, usage_cost, headers, expected",
    [
        ("x-cost", 0.002, {}, 0.002),  # usage.cost when the header says nothing
        ("x-cost", 0.002, {"x-cost": "0.003"}, 0.003),  # the header wins
        ("x-cost", 0.002, {"x-cost": "nonsense"}, 0.002),
        (None, 0.002, {"x-cost": "0.003"}, 0.002),  # no header read: what the body says
        ("x-cost", -1, {}, None),
        ("x-cost", True, {}, None),
        ("x-cost", "0.002", {}, None),  # a number, not text
        ("x-cost", 1e400, {}, None),  # infinity
    ],
)
def test_reported_cost_from_usage_cost(
    cost_header: str | None, usage_cost: Any, headers: dict[str, str], expected: float | None
) -> None:
    payload = _ok()
    payload["usage"] = {**payload["usage"], "cost": usage_cost}
    result, _ = _run(
        lambda m: m.post(URL, payload=payload, status=201, headers=headers),
        lambda c: c.complete(_req(BODY), "key-1"),
        cost_header=cost_header,
    )
    assert isinstance(result, Completion)
    assert result.reported_cost_usd == expected


@pytest.mark.parametrize(
    "payload",
    [
        {"choices": [{"message": "just text", "finish_reason": "stop"}]},
        {"choices": [{"message": {"content": "x"}}], "usage": ["x"]},
        {"choices": "none"},
        {"choices": [None]},
        ["not", "an", "object"],
    ],
)
def test_success_body_of_the_wrong_shape_fails_the_row(payload: Any) -> None:
    exc = _failure(lambda m: m.post(URL, payload=payload, status=201))
    assert type(exc) is RowFailed
    assert exc.error_type == "invalid_response"


def test_fields_of_unexpected_json_types_are_kept_as_text_or_dropped() -> None:
    payload = {
        "id": 123,
        "model": {"name": "m"},
        "choices": [{"message": {"content": "hi"}, "finish_reason": 7}],
        "usage": {"prompt_tokens": 2**64, "completion_tokens": -1, "total_tokens": True},
    }
    c = _complete(lambda m: m.post(URL, payload=payload, status=201))
    assert (c.text, c.response_id, c.model, c.finish_reason) == ("hi", "123", '{"name": "m"}', "7")
    assert (c.prompt_tokens, c.completion_tokens, c.total_tokens) == (None, None, None)


def test_a_reply_that_is_not_readable_http_is_retryable_with_unknown_outcome() -> None:
    exc = _failure(lambda m: m.post(URL, exception=BadHttpMessage("bad status line")))
    assert type(exc) is Retryable
    assert exc.error_type == "connection_error" and exc.definite is False
