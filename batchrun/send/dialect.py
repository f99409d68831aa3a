"""The dialect: the only place that knows the wire format of chat completions.

A :class:`Request` (provider-neutral) becomes a body; an answer, whole or as server-sent
events, becomes a :class:`Completion`; an error body becomes a message. The shape is the
OpenAI-style one the AI/ML API gateway documents, with its habits: Anthropic or OpenAI
finish reasons, ``reasoning_content`` beside the content, a ``system`` field.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from batchrun import fastjson
from batchrun.errors import Retryable, RowFailed
from batchrun.records import Completion, Request

#: Characters of a server's text quoted in an error message.
TEXT_MAX = 300
#: Bytes of an error body read: enough for any message, bounded against a hostile server.
ERROR_BODY_MAX = 64 * 1024

#: What a success body of the wrong shape raises while it is taken apart.
SHAPE_ERRORS = (KeyError, IndexError, TypeError, AttributeError, ValueError)


class ChatCompletions:
    """``POST /chat/completions``, OpenAI-shaped (the gateway's and most servers')."""

    path = "/chat/completions"

    def __init__(self, *, system_as_message: bool = False) -> None:
        #: Send ``system`` as a leading system message instead of the body field (for
        #: OpenAI-compatible servers that do not know the field).
        self.system_as_message = system_as_message

    def __repr__(self) -> str:
        return f"ChatCompletions(system_as_message={self.system_as_message})"

    def encode(self, request: Request) -> dict[str, Any]:
        """The request body, in a stable key order (params first, then messages)."""
        params = request.params
        if self.system_as_message and "system" in params:
            body = {k: v for k, v in params.items() if k != "system"}
            body["messages"] = [{"role": "system", "content": params["system"]}, *request.messages]
            return body
        body = dict(params)
        body["messages"] = request.messages
        return body

    # --- answers ----------------------------------------------------------------------------

    def decode(self, raw: bytes) -> Completion:
        """A non-streamed success body; RowFailed(invalid_response) if it is not one."""
        try:
            payload = fastjson.loads(raw, exact_ints=False)
            choice = payload["choices"][0]
            message = choice.get("message") or {}
            usage = payload.get("usage") or {}
            tool_calls = message.get("tool_calls")
            return Completion(
                text=_content_text(message.get("content")),
                finish_reason=_str_or_none(choice.get("finish_reason")),
                tool_calls=json.dumps(tool_calls, ensure_ascii=False) if tool_calls else None,
                prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
                completion_tokens=_int_or_none(usage.get("completion_tokens")),
                total_tokens=_int_or_none(usage.get("total_tokens")),
                model=_str_or_none(payload.get("model")),
                response_id=_str_or_none(payload.get("id")),
                reasoning_content=_str_or_none(message.get("reasoning_content")) or None,
            )
        except (*SHAPE_ERRORS, UnicodeDecodeError):
            snippet = raw[:ERROR_BODY_MAX].decode("utf-8", "replace")
            raise RowFailed(
                "invalid_response", f"success status but not a chat completion: {snippet!r}"
            ) from None

    async def decode_stream(self, lines: AsyncIterator[bytes]) -> Completion:
        """Read a server-sent-events answer to the end and merge its chunks."""
        state = _StreamState()
        try:
            async for raw_line in lines:
                line = raw_line.strip()
                if not line.startswith(b"data:"):
                    continue  # comments, event names, keep-alives
                data = line[5:].strip()
                if data == b"[DONE]":
                    state.done = True
                    break
                try:
                    chunk = fastjson.loads(data, exact_ints=False)
                except ValueError:
                    raise RowFailed(
                        "invalid_response",
                        f"stream chunk is not JSON: {data[:ERROR_BODY_MAX].decode('utf-8', 'replace')!r}",
                    ) from None
                if isinstance(chunk, dict) and "error" in chunk:
                    raise Retryable(
                        "server_error", f"error inside the stream: {self.error_message(data)}"
                    )
                if isinstance(chunk, dict):
                    state.feed(chunk)
        except SHAPE_ERRORS as exc:
            # A chunk of the wrong shape: the server answered (and billed), but not in a
            # form that can be read. Retrying would pay again.
            raise RowFailed(
                "invalid_response",
                f"stream is not a chat completion stream ({type(exc).__name__})",
            ) from None
        if not state.done and state.finish_reason is None:
            raise Retryable("connection_error", "stream ended before it finished", definite=False)
        return state.result()

    def error_message(self, raw: bytes) -> str:
        """The message of an error body (OpenAI's ``{"error": {...}}``, the gateway's
        ``{"message", "requestId", …}``, or text). Not cut: the caller redacts, then cuts."""
        try:
            # fastjson refuses what the journal could not store (a lone surrogate) and
            # nesting past the stack: such a body is quoted as text.
            payload = fastjson.loads(raw, exact_ints=False)
        except (ValueError, UnicodeDecodeError):
            return raw.decode("utf-8", "replace").strip() or "(empty body)"
        if isinstance(payload, dict):
            err = payload.get("error", payload)
            if isinstance(err, dict):
                msg = err.get("message") or err.get("detail") or json.dumps(err)
                return msg if isinstance(msg, str) else json.dumps(msg)
            if isinstance(err, str):
                return err
        return json.dumps(payload)


def _content_text(content: Any) -> str | None:
    """Message content as text: a string, or the text parts of a list of content blocks."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


def _int_or_none(value: Any) -> int | None:
    """A token count as the journal and the output can hold it (a non-negative int64)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    return None


def _str_or_none(value: Any) -> str | None:
    """A text field (model, id, finish reason) as text, whatever JSON type the server used."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


class _StreamState:
    """Accumulates ``chat.completion.chunk`` deltas into one Completion."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.reasoning: list[str] = []
        self.finish_reason: str | None = None
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] = {}
        self.model: str | None = None
        self.response_id: str | None = None
        self.done = False

    def feed(self, chunk: dict[str, Any]) -> None:
        """Merge one chunk; a chunk of the wrong shape raises one of SHAPE_ERRORS."""
        self.model = _str_or_none(chunk.get("model")) or self.model
        self.response_id = _str_or_none(chunk.get("id")) or self.response_id
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text = _content_text(delta.get("content"))
            if text:
                self.parts.append(text)
            reasoning = _str_or_none(delta.get("reasoning_content"))
            if reasoning:
                self.reasoning.append(reasoning)
            for call in delta.get("tool_calls") or ():
                slot = self.tool_calls.setdefault(
                    call.get("index", len(self.tool_calls)),
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if call.get("id"):
                    slot["id"] = call["id"]
                fn = call.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
            if choice.get("finish_reason"):
                self.finish_reason = _str_or_none(choice["finish_reason"])

    def result(self) -> Completion:
        calls = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return Completion(
            text="".join(self.parts) if self.parts or not calls else None,
            finish_reason=self.finish_reason,
            tool_calls=json.dumps(calls, ensure_ascii=False) if calls else None,
            prompt_tokens=_int_or_none(self.usage.get("prompt_tokens")),
            completion_tokens=_int_or_none(self.usage.get("completion_tokens")),
            total_tokens=_int_or_none(self.usage.get("total_tokens")),
            model=self.model,
            response_id=self.response_id,
            reasoning_content="".join(self.reasoning) or None,
        )
