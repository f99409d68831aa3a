"""The dialect: the only place that knows the wire format of chat completions.

A :class:`Request` (provider-neutral) becomes a body; an answer, whole or as server-sent
events, becomes a :class:`Completion`; an error body becomes a message. The shape is the
OpenAI-style one the AI/ML API gateway documents, with its habits: Anthropic or OpenAI
finish reasons, ``reasoning_content`` beside the content, a ``system`` field. What differs
between servers (the stop field, tool shapes, stream usage, ``system``) is read from a
:class:`~batchrun.profiles.Profile`, never from a provider's name.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any

from batchrun import fastjson
from batchrun.errors import EmbeddedError, Retryable, RowFailed
from batchrun.images import is_claude
from batchrun.profiles import GATEWAY, Profile
from batchrun.records import Completion, Request
from batchrun.send import spend
from batchrun.send.images import LoadedImage
from batchrun.send.tracing import server_id
from batchrun.tools import openai_tool_choice, openai_tools

#: Characters of a server's text quoted in an error message.
TEXT_MAX = 300
#: Bytes of an error body read: enough for any message, bounded against a hostile server.
ERROR_BODY_MAX = 64 * 1024

#: What a success body of the wrong shape raises while it is taken apart.
SHAPE_ERRORS = (KeyError, IndexError, TypeError, AttributeError, ValueError)


class ChatCompletions:
    """``POST /chat/completions``, OpenAI-shaped (the gateway's and most servers')."""

    path = "/chat/completions"

    def __init__(self, *, profile: Profile = GATEWAY, system_as_message: bool = False) -> None:
        self.profile = profile
        #: Send ``system`` as a leading system message instead of the body field (for
        #: OpenAI-compatible servers that do not know the field; the profile may say so).
        self.system_as_message = system_as_message or not profile.system_field
        # Rows share one params dict (the job's): translated once, not once a row.
        self._params_in: dict[str, Any] | None = None
        self._params_out: dict[str, Any] = {}

    def __repr__(self) -> str:
        return (
            f"ChatCompletions(profile={self.profile.name!r}, "
            f"system_as_message={self.system_as_message})"
        )

    def encode(self, request: Request, images: Sequence[LoadedImage] = ()) -> dict[str, Any]:
        """The request body, in a stable key order (params first, then messages); a row's
        images go first in its last user message, as the model's blocks."""
        params = request.params
        if params is not self._params_in:
            self._params_out = self.wire_params(params)
            self._params_in = params
        body = dict(self._params_out)
        messages = request.messages
        if images:
            messages = _with_images(messages, images, is_claude(str(params.get("model", ""))))
        if self.system_as_message and "system" in params:
            body["messages"] = [{"role": "system", "content": params["system"]}, *messages]
        else:
            body["messages"] = messages
        return body

    def wire_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The neutral parameters in the profile's names and shapes (messages apart)."""
        profile = self.profile
        out: dict[str, Any] = {}
        for name, value in params.items():
            if name == "system" and self.system_as_message:
                continue  # a leading message instead (encode)
            if name == "stop_sequences":
                out[profile.stop_field] = value
            elif name == "tools" and profile.tool_shape == "openai":
                out["tools"] = openai_tools(value)
            elif name == "tool_choice":
                # Every profile takes these forms: the gateway's documentation lists them
                # too. The job keeps the neutral one, so fingerprints stay as they were.
                out["tool_choice"] = openai_tool_choice(value)
            else:
                out[name] = value
        if params.get("stream") and profile.stream_usage:
            out["stream_options"] = {"include_usage": True}
        return out

    # --- answers ----------------------------------------------------------------------------

    def decode(self, raw: bytes) -> Completion:
        """A non-streamed success body; RowFailed(invalid_response) if it is not one."""
        try:
            payload = fastjson.loads(raw, exact_ints=False)
            if isinstance(payload, dict) and "choices" not in payload:
                embedded = _embedded_error(payload)
                if embedded is not None:
                    raise embedded
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
                reported_cost_usd=usage_cost(usage),
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
                    if "meta" in chunk:
                        # The gateway's last event: what the streamed answer cost.
                        state.spend = spend.from_meta(chunk) or state.spend
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
        """The message of an error body (see :meth:`error_info`)."""
        return self.error_info(raw)[0]

    def error_info(self, raw: bytes) -> tuple[str, str | None]:
        """The message and the server's request id of an error body: OpenAI's
        ``{"error": {...}}``, the gateway's ``{"message", "path", "requestId", "statusCode",
        "timestamp"}``, or text. Not cut: the caller redacts, then cuts."""
        try:
            # fastjson refuses what the journal could not store (a lone surrogate) and
            # nesting past the stack: such a body is quoted as text.
            payload = fastjson.loads(raw, exact_ints=False)
        except (ValueError, UnicodeDecodeError):
            return raw.decode("utf-8", "replace").strip() or "(empty body)", None
        if isinstance(payload, dict):
            request_id = server_id(payload.get("requestId"))
            err = payload.get("error", payload)
            if isinstance(err, dict):
                request_id = request_id or server_id(err.get("requestId"))
                msg = err.get("message") or err.get("detail") or json.dumps(err)
                return (msg if isinstance(msg, str) else json.dumps(msg)), request_id
            if isinstance(err, str):
                return err, request_id
        return json.dumps(payload), None


def image_block(image: LoadedImage, claude: bool) -> dict[str, Any]:
    """Claude models through the gateway: an Anthropic base64 image block only. Others:
    an OpenAI ``image_url`` part (a data URL, or the http(s) URL passed on)."""
    if image.data is None:
        assert image.url is not None and not claude
        return {"type": "image_url", "image_url": {"url": image.url}}
    data = base64.b64encode(image.data).decode("ascii")
    if claude:
        source = {"type": "base64", "media_type": image.media_type, "data": data}
        return {"type": "image", "source": source}
    return {"type": "image_url", "image_url": {"url": f"data:{image.media_type};base64,{data}"}}


def _with_images(
    messages: list[dict[str, Any]], images: Sequence[LoadedImage], claude: bool
) -> list[dict[str, Any]]:
    """A copy of ``messages`` whose last user message starts with the images (the
    request's own messages stay as they are: a retry encodes them again)."""
    blocks = [image_block(i, claude) for i in images]
    out = list(messages)
    at = next((k for k in range(len(out) - 1, -1, -1) if out[k].get("role") == "user"), None)
    if at is None:
        return [*out, {"role": "user", "content": blocks}]
    content = out[at].get("content")
    if isinstance(content, str):
        parts: list[Any] = [{"type": "text", "text": content}]
    else:
        parts = list(content or ())
    out[at] = {**out[at], "content": [*blocks, *parts]}
    return out


def _embedded_error(payload: dict[str, Any]) -> EmbeddedError | None:
    """The gateway's error body sent with a success status: ``statusCode`` (a number or a
    numeric string) and a ``message``."""
    code = payload.get("statusCode")
    if isinstance(code, str) and code.strip().isdigit():
        code = int(code.strip())
    if not (isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599):
        return None
    msg = payload.get("message")
    text = msg if isinstance(msg, str) else json.dumps(msg, ensure_ascii=False)
    return EmbeddedError(code, text, server_id(payload.get("requestId")))


def _content_text(content: Any) -> str | None:
    """Message content as text: a string, or the text parts of a list of content blocks."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


def usage_cost(usage: Any) -> float | None:
    """``usage.cost`` in USD, where the server reports it there (LiteLLM does in a stream's
    usage chunk); None when absent or not a finite number >= 0."""
    cost = usage.get("cost") if isinstance(usage, dict) else None
    if isinstance(cost, bool) or not isinstance(cost, int | float):
        return None
    return float(cost) if math.isfinite(cost) and cost >= 0 else None


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
        self.spend: spend.Spend | None = None
        self.done = False

    def feed(self, chunk: dict[str, Any]) -> None:
        """Merge one chunk; a chunk of the wrong shape raises one of SHAPE_ERRORS."""
        self.model = _str_or_none(chunk.get("model")) or self.model
        self.response_id = _str_or_none(chunk.get("id")) or self.response_id
        usage = chunk.get("usage")
        if usage and isinstance(usage, dict):
            self.usage = usage
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
            # The gateway's meta event, else a usage.cost (LiteLLM's usage chunk).
            reported_cost_usd=self.spend.usd if self.spend else usage_cost(self.usage),
            credits_used=self.spend.credits if self.spend else None,
        )
