"""The HTTP client: one aiohttp session per run, one attempt per call, answers parsed.

The client sends one request and either returns a :class:`Completion` or raises one of the
:mod:`batchrun.retrying` failure classes; retrying is the runner's business.
"""

from __future__ import annotations

import json
import math
import time
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

from batchrun import __version__, fastjson
from batchrun.records import Completion
from batchrun.retrying import (
    RequestFailed,
    Retryable,
    RowFailed,
    classify_status,
    error_type_for_status,
    parse_retry_after,
)

USER_AGENT = f"batchrun/{__version__}"
_ERROR_TEXT_MAX = 300


class ApiClient:
    """Owns the aiohttp session; use as ``async with ApiClient(...) as client``."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        concurrency: int,
        timeout_s: float,
        read_timeout_s: float | None = None,
        cost_header: str | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = api_key
        self._concurrency = concurrency
        # A read timeout re-arms a timer on every chunk received: worth it for streams (a
        # stalled stream), pure cost for answers that arrive whole.
        self._timeout = aiohttp.ClientTimeout(
            total=timeout_s,
            sock_read=min(read_timeout_s, timeout_s) if read_timeout_s is not None else None,
        )
        self._session: aiohttp.ClientSession | None = None
        self._cost_header = cost_header
        #: Last rate-limit headers seen (x-ratelimit-*), for the limiter and the progress line.
        self.ratelimit: dict[str, str] = {}

    async def __aenter__(self) -> ApiClient:
        # The pool must fit the concurrency: aiohttp's default caps at 100 connections.
        connector = aiohttp.TCPConnector(limit=self._concurrency, limit_per_host=self._concurrency)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            headers={
                "Authorization": f"Bearer {self._api_key}",
                "User-Agent": USER_AGENT,
                "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream",
            },
            raise_for_status=False,
            # An API client has no use for cookies, and the jar costs time on every request.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def __repr__(self) -> str:
        return f"ApiClient(url={self.url!r}, concurrency={self._concurrency})"

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    async def complete(self, body: dict[str, Any], idempotency_key: str) -> Completion:
        """Send one request; return the parsed answer or raise a RequestFailed subclass."""
        assert self._session is not None, "use ApiClient as an async context manager"
        data = fastjson.dumps(body)
        try:
            async with self._session.post(
                self.url, data=data, headers={"Idempotency-Key": idempotency_key}
            ) as resp:
                if any(h.lower().startswith("x-ratelimit") for h in resp.headers):
                    self.ratelimit = {
                        k.lower(): v
                        for k, v in resp.headers.items()
                        if k.lower().startswith("x-ratelimit")
                    }
                if 200 <= resp.status < 300:
                    try:
                        if resp.content_type == "text/event-stream":
                            completion = await parse_sse(resp)
                        else:
                            completion = parse_completion(await resp.read())
                    except RequestFailed as exc:
                        # Bodies quoted in these messages may echo the key.
                        exc.message = self._redact(exc.message)
                        exc.args = (exc.message,)
                        raise
                    if self._cost_header is not None:
                        completion.reported_cost_usd = parse_cost(
                            resp.headers.get(self._cost_header)
                        )
                    return completion
                raise await self._failure(resp)
        except TimeoutError:
            # aiohttp's timeouts are TimeoutError, not ClientError. The server may have
            # done (and billed) the work: the outcome is unknown.
            t = self._timeout
            within = f"within {t.total:g} s" + (
                f" (or silent for {t.sock_read:g} s)" if t.sock_read is not None else ""
            )
            raise Retryable("timeout", f"no complete answer {within}", definite=False) from None
        except aiohttp.ClientPayloadError as exc:
            raise Retryable(
                "connection_error", f"answer cut off: {self._redact(str(exc))}", definite=False
            ) from None
        except aiohttp.ClientConnectionError as exc:
            raise Retryable(
                "connection_error",
                f"connection failed: {self._redact(str(exc)) or type(exc).__name__}",
                definite=False,
            ) from None
        except (aiohttp.ClientError, HttpProcessingError) as exc:
            # A reply that is not HTTP as aiohttp reads it (a malformed status line or
            # headers, say): whatever the server did with the request is unknown.
            raise Retryable(
                "connection_error",
                f"unreadable answer: {self._redact(str(exc)) or type(exc).__name__}",
                definite=False,
            ) from None

    async def _failure(self, resp: aiohttp.ClientResponse) -> RequestFailed:
        raw = await resp.read()
        if self._api_key:
            # Before the message is cut short: a cut key would no longer be found.
            raw = raw.replace(self._api_key.encode(), b"***")
        message = _error_message(raw)
        cls = classify_status(resp.status)
        return cls(
            error_type_for_status(resp.status),
            self._redact(f"HTTP {resp.status}: {message}"),
            status=resp.status,
            retry_after_s=parse_retry_after(resp.headers),
        )


def _error_message(raw: bytes) -> str:
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw[:_ERROR_TEXT_MAX].decode("utf-8", "replace").strip() or "(empty body)"
    if isinstance(payload, dict):
        err = payload.get("error", payload)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail") or json.dumps(err)
            return str(msg)[:_ERROR_TEXT_MAX]
        if isinstance(err, str):
            return err[:_ERROR_TEXT_MAX]
    return json.dumps(payload)[:_ERROR_TEXT_MAX]


def parse_cost(value: str | None) -> float | None:
    """A cost header's value in USD ("0.0012", "$0.0012"); None if absent or not a number."""
    if value is None:
        return None
    try:
        cost = float(value.strip().removeprefix("$"))
    except ValueError:
        return None
    return cost if math.isfinite(cost) and cost >= 0 else None


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


#: What a success body of the wrong shape raises while it is taken apart.
_SHAPE_ERRORS = (KeyError, IndexError, TypeError, AttributeError, ValueError)


def parse_completion(raw: bytes) -> Completion:
    """Parse a non-streamed success body; RowFailed(invalid_response) if it is not one."""
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
        )
    except (*_SHAPE_ERRORS, UnicodeDecodeError):
        snippet = raw[:120].decode("utf-8", "replace")
        raise RowFailed(
            "invalid_response", f"success status but not a chat completion: {snippet!r}"
        ) from None


class _StreamState:
    """Accumulates ``chat.completion.chunk`` deltas into one Completion."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] = {}
        self.model: str | None = None
        self.response_id: str | None = None
        self.done = False

    def feed(self, chunk: dict[str, Any]) -> None:
        """Merge one chunk; a chunk of the wrong shape raises one of _SHAPE_ERRORS."""
        self.model = _str_or_none(chunk.get("model")) or self.model
        self.response_id = _str_or_none(chunk.get("id")) or self.response_id
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text = _content_text(delta.get("content"))
            if text:
                self.parts.append(text)
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
        )


async def parse_sse(resp: aiohttp.ClientResponse) -> Completion:
    """Read a server-sent-events answer to the end and merge its chunks."""
    try:
        return await _read_sse(resp)
    except RequestFailed:
        raise
    except (*_SHAPE_ERRORS, HttpProcessingError) as exc:
        # A chunk of the wrong shape, or a line longer than aiohttp reads: the server
        # answered (and billed), but not in a form that can be read. Retrying would pay again.
        raise RowFailed(
            "invalid_response", f"stream is not a chat completion stream ({type(exc).__name__})"
        ) from None


async def _read_sse(resp: aiohttp.ClientResponse) -> Completion:
    state = _StreamState()
    async for raw_line in resp.content:
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
                "invalid_response", f"stream chunk is not JSON: {data[:120]!r}"
            ) from None
        if isinstance(chunk, dict) and "error" in chunk:
            raise Retryable("server_error", f"error inside the stream: {_error_message(data)}")
        if isinstance(chunk, dict):
            state.feed(chunk)
    if not state.done and state.finish_reason is None:
        raise Retryable("connection_error", "stream ended before it finished", definite=False)
    return state.result()


def monotonic_ms() -> float:
    return time.perf_counter() * 1000.0
