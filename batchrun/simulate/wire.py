"""How answers and errors look on the wire: a ``chat.completion`` JSON body, the SSE events
of a streamed answer (``chat.completion.chunk``), and the API's JSON error body."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from batchrun.simulate.answers import Answer

JSON = "application/json"
#: Tool-call arguments stream in pieces of this many characters.
_ARGS_PIECE = 8


def error_body(status: int, message: str, path: str = "/v1/chat/completions") -> dict[str, Any]:
    """The gateway's error body: no ``error`` key, a ``requestId`` to quote to support."""
    return {
        "message": message,
        "path": path,
        "requestId": str(uuid.uuid4()),
        "statusCode": status,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
    }


#: OpenAI's error codes by status (the ``code`` of its error object).
_OPENAI_CODES = {
    401: "invalid_api_key",
    403: "insufficient_quota",
    404: "model_not_found",
    429: "rate_limit_exceeded",
}


def error_response(
    status: int,
    message: str,
    kind: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    *,
    openai: bool = False,
) -> web.Response:
    """An error answer as the gateway sends it (``kind`` and ``param`` name the problem in
    the message, where OpenAI would put them in fields of their own), or with ``openai``
    as OpenAI does: ``{"error": {message, type, param, code}}`` (param and code null where
    they do not apply)."""
    if openai:
        code = _OPENAI_CODES.get(status, "invalid_value" if status == 400 else None)
        err = {"message": message, "type": kind, "param": param, "code": code}
        return web.Response(
            status=status, body=json.dumps({"error": err}), content_type=JSON, headers=headers
        )
    del kind  # the gateway's body has no type field
    text = message if param is None or param in message else f"{param}: {message}"
    return web.Response(
        status=status, body=json.dumps(error_body(status, text)), content_type=JSON, headers=headers
    )


def completion_body(answer: Answer, rid: str, created: int) -> bytes:
    """The non-streamed answer (the gateway sends it with HTTP 201, OpenAI with 200)."""
    call = answer.tool_call
    message: dict[str, Any] = {"role": "assistant", "content": None if call else answer.text}
    if answer.reasoning is not None:
        message["reasoning_content"] = answer.reasoning
    if call is not None:
        message["tool_calls"] = [call]
    return json.dumps({
        "id": rid, "object": "chat.completion", "model": answer.model, "created": created,
        "choices": [{"index": 0, "message": message, "finish_reason": answer.finish}],
        "usage": answer.usage,
    }).encode()  # fmt: skip


def reasoning_pieces(text: str) -> list[str]:
    """``text`` split at spaces into 1-3 non-empty pieces (how many: by its length), the way
    a streamed answer sends its reasoning."""
    words = text.split(" ")
    n = min(1 + len(text) % 3, len(words))
    cuts = [len(words) * k // n for k in range(n + 1)]
    return [("" if k == 0 else " ") + " ".join(words[cuts[k] : cuts[k + 1]]) for k in range(n)]


def _deltas(answer: Answer) -> Iterator[dict[str, Any]]:
    """The deltas after the role delta: the reasoning in pieces, if any; then a tool call's
    name and its arguments in pieces, else the text word by word."""
    if answer.reasoning is not None:
        for piece in reasoning_pieces(answer.reasoning):
            yield {"reasoning_content": piece}
    call = answer.tool_call
    if call is not None:
        fn = call["function"]
        head = {"name": fn["name"], "arguments": ""}
        yield {"tool_calls": [{"index": 0, "id": call["id"], "type": "function", "function": head}]}
        args = fn["arguments"]
        for i in range(0, len(args), _ARGS_PIECE):
            part = {"arguments": args[i : i + _ARGS_PIECE]}
            yield {"tool_calls": [{"index": 0, "function": part}]}
        return
    for i, w in enumerate(answer.text.split(" ")):
        yield {"content": w if i == 0 else " " + w}


def sse_events(
    answer: Answer,
    rid: str,
    created: int,
    spent: tuple[float, int] | None = None,
    *,
    usage: bool = True,
) -> Iterator[bytes]:
    """The streamed answer's server-sent events, the role delta first, the usage chunk
    (``choices: []``) when ``usage``, the gateway's ``meta.usage`` event with ``spent``
    (USD, credits) last before ``[DONE]``."""

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        data = {
            "id": rid,
            "object": "chat.completion.chunk",
            "model": answer.model,
            "created": created,
            "choices": choices,
            **extra,
        }
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    def delta(d: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return event([{"index": 0, "delta": d, "finish_reason": finish_reason}])

    yield delta({"role": "assistant"})
    for d in _deltas(answer):
        yield delta(d)
    yield delta({}, answer.finish)
    if usage:
        yield event([], usage=answer.usage)
    if spent is not None:
        # The gateway's last event: what the answer cost (no cost header on a stream).
        usd, credits = spent
        meta = {"usage": {"credits_used": credits, "usd_spent": usd}}
        yield b"data: " + json.dumps({"meta": meta}).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"
