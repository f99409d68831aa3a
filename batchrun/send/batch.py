"""The Batch API: the gateway's Message Batches shape (Anthropic's request and result shapes).

- ``POST {base}/batches`` with ``{"requests": [{"custom_id", "params"}]}`` (1 to 100,000
  requests, at most 256 MB): the body is streamed from an async iterable of request lines,
  never built whole. The answer is a batch object.
- ``GET {base}/batches?batch_id=ID``: the batch object while it runs; once it has ended, the
  results as JSONL, one ``{"custom_id", "result": {"type", "message" | "error"}}`` a line,
  in any order. Read in bounded pieces, a line at a time.
- ``POST {base}/batches/cancel/{ID}``.

Like the rest of :mod:`batchrun.send` this knows nothing of the journal or the CLI: it turns
requests into lines and answers into :class:`BatchStatus` and :class:`BatchResult`. Every
text that came from the server is redacted and cut before it leaves this module.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from batchrun import fastjson
from batchrun.errors import BadLine, RowFailed, SendFailed
from batchrun.records import Completion, Request
from batchrun.send.dialect import ERROR_BODY_MAX, SHAPE_ERRORS, TEXT_MAX, ChatCompletions
from batchrun.send.redact import Redactor
from batchrun.send.replies import MAX_LINE, read_up_to, split_lines
from batchrun.send.retrying import classify_status, error_type_for_status, parse_retry_after
from batchrun.send.transport import BatchTransport, Reply

#: What a ``custom_id`` may be (Anthropic's rule; the gateway passes it on).
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
#: What a batch id may be (bounded and printable: it goes into a URL, a journal, a summary).
BATCH_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
#: The most requests and bytes one batch may hold.
MAX_REQUESTS = 100_000
MAX_BYTES = 256 * 1024 * 1024
#: The envelope around the request lines: ``{"requests":[`` … ``]}``.
_HEAD, _SEP, _TAIL = b'{"requests":[', b",", b"]}"
ENVELOPE_BYTES = len(_HEAD) + len(_TAIL)
#: Request parameters the Batch API takes (Anthropic Messages), in the order sent.
PARAMS = (
    "model",
    "max_tokens",
    "system",
    "stop_sequences",
    "temperature",
    "top_k",
    "top_p",
    "tools",
    "tool_choice",
    "metadata",
)
#: The batch states and result types the shape knows.
ENDED = "ended"
RESULT_TYPES = ("succeeded", "errored", "canceled", "expired")
COUNT_KEYS = ("processing", "succeeded", "errored", "canceled", "expired")
#: The OpenAI shape's request counts (:mod:`batchrun.send.batch_openai` reads them).
OPENAI_COUNT_KEYS = ("total", "completed", "failed")
_READ = 1 << 20


def batch_problem(request: Request, api: str = "gateway") -> str | None:
    """Why a request cannot go in a batch (None if it can): no images in either shape (the
    gateway documents none; the OpenAI shape's file would hold every image's bytes), and
    the gateway's one ``user`` message with string content."""
    if request.images:
        return "images are not sent in batch mode (use --mode live for rows with images)"
    if api != "gateway":
        return None
    messages = request.messages
    if len(messages) != 1:
        return f"a batch request holds one user message, this row has {len(messages)} (multi-turn rows need --mode live or --batch-api openai)"
    m = messages[0]
    if m.get("role") != "user":
        return f"a batch request holds one user message, this row's is {m.get('role')!r}"
    if not isinstance(m.get("content"), str):
        return "a batch request's message content must be text (no content parts or images)"
    return None


def custom_id_for(position: int) -> str:
    """The ``custom_id`` of the row at ``position`` (a batch maps it back through the journal)."""
    return f"r{position}"


@dataclass(slots=True)
class BatchStatus:
    """What a batch object says (ids and states redacted and bounded)."""

    id: str
    processing_status: str
    request_counts: dict[str, int] = field(default_factory=dict)
    #: Once ended, how, where the shape says (OpenAI's completed, failed, expired, cancelled;
    #: the gateway's ended batch answers with its results instead).
    final: str | None = None

    @property
    def ended(self) -> bool:
        return self.processing_status == ENDED

    def counts_text(self) -> str:
        return counts_text(self.request_counts)


def counts_text(counts: dict[str, int]) -> str:
    """``processing 10, succeeded 90``: the request counts of either shape (a job uses one,
    and its journal keeps what the shape sent)."""
    return ", ".join(f"{k} {counts[k]:,}" for k in (*COUNT_KEYS, *OPENAI_COUNT_KEYS) if k in counts)


@dataclass(slots=True)
class BatchResult:
    """One results line: the row's answer, or why there is none."""

    custom_id: str
    completion: Completion | None
    #: batch_errored / batch_canceled / batch_expired (None with a completion).
    error_type: str | None = None
    error: str | None = None


class GatewayBatches:
    """The wire shapes of the gateway's Batch API."""

    path = "/batches"

    def line(self, custom_id: str, request: Request) -> bytes:
        """One element of ``requests``: ``{"custom_id", "params"}`` as JSON bytes."""
        p = request.params
        params: dict[str, Any] = {k: p[k] for k in PARAMS if k in p}
        choice = params.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") == "required":
            params["tool_choice"] = {**choice, "type": "any"}  # Anthropic's name for it
        params["messages"] = request.messages
        return fastjson.dumps({"custom_id": custom_id, "params": params})

    async def body(self, lines: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """The create body around ``lines``, in pieces of about 1 MB."""
        buf = bytearray(_HEAD)
        first = True
        async for line in lines:
            if not first:
                buf += _SEP
            buf += line
            first = False
            if len(buf) >= _READ:
                yield bytes(buf)
                buf.clear()
        buf += _TAIL
        yield bytes(buf)

    def status(self, payload: Any, redact: Redactor) -> BatchStatus:
        """A batch object; RowFailed(invalid_response) if it is not one."""
        try:
            bid = payload["id"]
            state = payload["processing_status"]
            if not isinstance(bid, str) or not BATCH_ID.match(bid):
                raise ValueError("batch id")
            counts = payload.get("request_counts") or {}
            return BatchStatus(
                id=bid,
                processing_status=redact.clean(str(state), 40),
                request_counts={k: int(counts[k]) for k in COUNT_KEYS if _count(counts.get(k))},
            )
        except (*SHAPE_ERRORS, UnicodeDecodeError):
            shown = redact.clean(json.dumps(payload)[:ERROR_BODY_MAX], TEXT_MAX)
            raise RowFailed("invalid_response", f"not a batch object: {shown}") from None

    def result(self, raw: bytes, redact: Redactor) -> BatchResult:
        """One results line; BadLine if it is not a result."""
        try:
            obj = fastjson.loads(raw, exact_ints=False)
            cid = obj["custom_id"]
            result = obj["result"]
            kind = result["type"]
        except (*SHAPE_ERRORS, UnicodeDecodeError):
            raise BadLine("not a result line") from None
        if not isinstance(cid, str) or not CUSTOM_ID.match(cid) or kind not in RESULT_TYPES:
            raise BadLine("not a result line")
        if kind != "succeeded":
            detail = _error_text(result.get("error")) if kind == "errored" else None
            message = f"the batch {'request ' if kind == 'errored' else ''}{kind}" + (
                f": {detail}" if detail else ""
            )
            return BatchResult(cid, None, f"batch_{kind}", redact.clean(message, TEXT_MAX))
        try:
            return BatchResult(cid, redact.fields(_message(result["message"])))
        except SHAPE_ERRORS:
            return BatchResult(cid, None, "invalid_response", "the batch result is not a message")


def _json_or_none(raw: bytes) -> Any:
    try:
        return fastjson.loads(raw, exact_ints=False)
    except (ValueError, UnicodeDecodeError):
        return None


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63


def _error_text(err: Any) -> str | None:
    """The message inside Anthropic's nested ``{"type": "error", "error": {"message"}}``."""
    for _ in range(4):
        if not isinstance(err, dict):
            break
        if isinstance(err.get("message"), str):
            return str(err["message"])
        err = err.get("error")
    return err if isinstance(err, str) else None


def _message(m: Any) -> Completion:
    """An Anthropic message as a Completion: text blocks joined, ``tool_use`` blocks as
    OpenAI-style tool calls (the live output's shape)."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in m.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": json.dumps(block.get("input"), ensure_ascii=False),
                    },
                }
            )
    usage = m.get("usage") or {}
    prompt = _int(usage.get("input_tokens"))
    completion = _int(usage.get("output_tokens"))
    return Completion(
        text="".join(texts) if texts or not calls else None,
        finish_reason=_str(m.get("stop_reason")),
        tool_calls=json.dumps(calls, ensure_ascii=False) if calls else None,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=None if prompt is None or completion is None else prompt + completion,
        model=_str(m.get("model")),
        response_id=_str(m.get("id")),
    )


def _int(v: Any) -> int | None:
    return v if _count(v) else None


def _str(v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    return json.dumps(v, ensure_ascii=False)


class BatchClient:
    """Create, poll, cancel and read batches over a transport (which owns the session)."""

    def __init__(
        self,
        transport: BatchTransport,
        api_key: str,
        dialect: GatewayBatches | None = None,
    ) -> None:
        self.transport = transport
        self.dialect = dialect or GatewayBatches()
        self.redact = Redactor([api_key])
        self._errors = ChatCompletions()

    async def create(self, lines: AsyncIterable[bytes], key: str) -> BatchStatus:
        """Create a batch from ``lines`` (streamed); ``key`` is its Idempotency-Key, the same
        on every attempt at this chunk, so a server that honours it creates it once."""
        body = self.dialect.body(lines)
        async with self.transport.post(self.dialect.path, body, {"Idempotency-Key": key}) as r:
            return self.dialect.status(await self._json(r), self.redact)

    async def cancel(self, batch_id: str) -> BatchStatus:
        path = f"{self.dialect.path}/cancel/{quote(batch_id, safe='')}"
        async with self.transport.post(path, b"", {}) as r:
            return self.dialect.status(await self._json(r), self.redact)

    def poll(self, batch_id: str) -> _Poll:
        """``async with client.poll(id) as p``: ``p.status`` while the batch runs, else
        ``p.results()`` yields its results line by line."""
        return _Poll(self, batch_id)

    async def _json(self, reply: Reply) -> Any:
        if not 200 <= reply.status < 300:
            raise await self.failure(reply)
        raw = await read_up_to(reply, ERROR_BODY_MAX)
        try:
            return fastjson.loads(raw, exact_ints=False)
        except (ValueError, UnicodeDecodeError):
            shown = self.redact.clean(raw.decode("utf-8", "replace"), TEXT_MAX)
            raise RowFailed("invalid_response", f"not JSON: {shown!r}") from None

    async def failure(self, reply: Reply) -> SendFailed:
        raw = await read_up_to(reply, ERROR_BODY_MAX)
        cls = classify_status(reply.status)
        return cls(
            error_type_for_status(reply.status),
            self.redact.clean(f"HTTP {reply.status}: {self._errors.error_message(raw)}", TEXT_MAX),
            status=reply.status,
            retry_after_s=parse_retry_after(reply.headers),
        )


class _Poll:
    def __init__(self, client: BatchClient, batch_id: str) -> None:
        self._client = client
        self._path = f"{client.dialect.path}?batch_id={quote(batch_id, safe='')}"
        self._cm: Any = None
        self._reply: Reply | None = None
        self._head = b""
        self.status: BatchStatus | None = None
        #: The batch object as it ended: never here (an ended batch answers with its results).
        self.ended: BatchStatus | None = None
        #: Lines of the results that were not results (skipped, never attributed).
        self.bad_lines = 0

    async def __aenter__(self) -> _Poll:
        client = self._client
        self._cm = client.transport.stream_get(self._path)
        reply = self._reply = await self._cm.__aenter__()
        if not 200 <= reply.status < 300:
            raise await client.failure(reply)
        # A batch object while it runs, JSONL results once it has ended: the first line
        # tells them apart (a result line has a custom_id; a batch object has none).
        buf = bytearray()
        while b"\n" not in buf and len(buf) <= MAX_LINE:
            piece = await reply.read(_READ)
            if not piece:
                break
            buf += piece
        self._head = bytes(buf)
        first = _json_or_none(self._head.split(b"\n", 1)[0])
        if isinstance(first, dict) and "custom_id" in first:
            return self
        if len(self._head) < ERROR_BODY_MAX:  # a batch object, perhaps over several lines
            self._head += await read_up_to(reply, ERROR_BODY_MAX - len(self._head))
        whole = _json_or_none(self._head[:ERROR_BODY_MAX])
        if not isinstance(whole, dict):
            shown = client.redact.clean(self._head[:TEXT_MAX].decode("utf-8", "replace"), TEXT_MAX)
            raise RowFailed("invalid_response", f"neither a batch nor its results: {shown!r}")
        self.status = client.dialect.status(whole, client.redact)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._cm is not None:
            await self._cm.__aexit__(*exc)

    async def results(self) -> AsyncIterator[BatchResult]:
        """The results, line by line as they arrive (bad lines counted in ``bad_lines``)."""
        assert self._reply is not None and self.status is None
        dialect, redact = self._client.dialect, self._client.redact
        async for raw in split_lines(self._head, self._reply):
            try:
                yield dialect.result(raw, redact)
            except BadLine:
                self.bad_lines += 1
