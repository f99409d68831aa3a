"""The OpenAI Batch API shape (``--batch-api openai``), which OpenAI, vLLM and LiteLLM speak.

- ``POST {base}/files`` (multipart, ``purpose=batch``): a JSONL file of
  ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}`` lines, at most
  50,000 requests and 200 MB, streamed as it is built; then ``POST {base}/batches`` with
  ``{"input_file_id", "endpoint": "/v1/chat/completions", "completion_window": "24h"}``.
- ``GET {base}/batches/{id}``: the batch (``status``, ``request_counts``, and once it has
  ended ``output_file_id`` / ``error_file_id``); ``GET {base}/files/{id}/content`` the
  results, one ``{"custom_id", "response": {"status_code", "body"}, "error"}`` a line.
- ``POST {base}/batches/{id}/cancel``.

The bodies are the live endpoint's (:class:`ChatCompletions`), and so are the answers.
Same interface as :class:`batchrun.send.batch.BatchClient`.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any
from urllib.parse import quote

from batchrun import fastjson
from batchrun.errors import BadLine, RowFailed, SendFailed
from batchrun.profiles import OPENAI, Profile
from batchrun.records import Request
from batchrun.send.batch import (
    BATCH_ID,
    OPENAI_COUNT_KEYS,
    BatchClient,
    BatchResult,
    BatchStatus,
)
from batchrun.send.dialect import SHAPE_ERRORS, TEXT_MAX, ChatCompletions
from batchrun.send.redact import Redactor
from batchrun.send.replies import read_up_to, split_lines
from batchrun.send.transport import BatchTransport

MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1024 * 1024
#: The multipart parts around the JSONL file (bounded above).
ENVELOPE_BYTES = 1024
ENDPOINT = "/v1/chat/completions"
#: The states after which a batch changes no more.
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_READ = 1 << 20


class OpenAIBatches:
    """The wire shapes of the OpenAI Batch API."""

    def __init__(self, *, system_as_message: bool = False, profile: Profile | None = None) -> None:
        # Its lines are the live endpoint's bodies in OpenAI's shapes (tools, tool choice,
        # stop, system as a message), whatever profile the base URL implies.
        shapes = profile if profile is not None and profile.tool_shape == "openai" else OPENAI
        self.chat = ChatCompletions(profile=shapes, system_as_message=system_as_message)

    def line(self, custom_id: str, request: Request) -> bytes:
        body = self.chat.encode(request)
        return fastjson.dumps(
            {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}
        )

    async def body(self, lines: AsyncIterable[bytes], boundary: str) -> AsyncIterator[bytes]:
        """The multipart upload: ``purpose=batch`` and the JSONL file, in ~1 MB pieces."""
        b = boundary.encode()
        yield (
            b"--" + b + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            b"--" + b + b'\r\nContent-Disposition: form-data; name="file"; filename="batch.jsonl"'
            b"\r\nContent-Type: application/jsonl\r\n\r\n"
        )
        buf = bytearray()
        async for line in lines:
            buf += line + b"\n"
            if len(buf) >= _READ:
                yield bytes(buf)
                buf.clear()
        buf += b"\r\n--" + b + b"--\r\n"
        yield bytes(buf)

    def status(self, payload: Any, redact: Redactor) -> tuple[BatchStatus, dict[str, str]]:
        """A batch object, and its output and error file ids once it has them."""
        try:
            bid, state = payload["id"], payload["status"]
            if not isinstance(bid, str) or not BATCH_ID.match(bid) or not isinstance(state, str):
                raise ValueError("batch")
            counts = payload.get("request_counts") or {}
            done = {k: counts[k] for k in OPENAI_COUNT_KEYS if _count(counts.get(k))}
            files = {
                k: payload[k]
                for k in ("output_file_id", "error_file_id")
                if isinstance(payload.get(k), str) and BATCH_ID.match(payload[k])
            }
        except (*SHAPE_ERRORS, UnicodeDecodeError):
            shown = redact.clean(json.dumps(payload)[:TEXT_MAX], TEXT_MAX)
            raise RowFailed("invalid_response", f"not a batch object: {shown}") from None
        if state in TERMINAL:
            return BatchStatus(bid, "ended", done, final=state), files
        return BatchStatus(bid, redact.clean(state, 40), done), files

    def result(self, raw: bytes, redact: Redactor) -> BatchResult:
        try:
            obj = fastjson.loads(raw, exact_ints=False)
            cid = obj["custom_id"]
            if not isinstance(cid, str):
                raise TypeError("custom_id")
        except (*SHAPE_ERRORS, UnicodeDecodeError):
            raise BadLine("not a result line") from None
        response = obj.get("response") or {}
        error = obj.get("error")
        status = response.get("status_code") if isinstance(response, dict) else None
        if error or status != 200:
            code = str(error.get("code") or "") if isinstance(error, dict) else ""
            kind = {"batch_expired": "batch_expired", "batch_cancelled": "batch_canceled"}.get(
                code, "batch_errored"
            )
            message = _error_text(error) or _error_text((response or {}).get("body")) or code
            text = f"the batch request {kind.removeprefix('batch_')}" + (
                f": {message}" if message else ""
            )
            return BatchResult(cid, None, kind, redact.clean(text, TEXT_MAX))
        try:
            raw_body = fastjson.dumps(response["body"])
            return BatchResult(cid, redact.fields(self.chat.decode(raw_body)))
        except (*SHAPE_ERRORS, SendFailed):
            return BatchResult(
                cid, None, "invalid_response", "the batch result is not a chat completion"
            )


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63


def _error_text(err: Any) -> str | None:
    if isinstance(err, dict):
        inner = err.get("error", err)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
        if isinstance(err.get("message"), str):
            return str(err["message"])
    return None


class OpenAIBatchClient(BatchClient):
    """Upload, create, poll, cancel and download over a transport."""

    def __init__(self, transport: BatchTransport, api_key: str) -> None:
        super().__init__(transport, api_key)
        self.shape = OpenAIBatches()

    async def create(self, lines: AsyncIterable[bytes], key: str) -> BatchStatus:
        boundary = "batchrun-" + os.urandom(12).hex()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        body = self.shape.body(lines, boundary)
        async with self.transport.post("/files", body, headers) as r:
            uploaded = await self._json(r)
        file_id = uploaded.get("id") if isinstance(uploaded, dict) else None
        if not isinstance(file_id, str) or not BATCH_ID.match(file_id):
            raise RowFailed("invalid_response", "the file upload answered without a file id")
        request = {"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h"}
        async with self.transport.post(
            "/batches", fastjson.dumps(request), {"Idempotency-Key": key}
        ) as r:
            return self.shape.status(await self._json(r), self.redact)[0]

    async def cancel(self, batch_id: str) -> BatchStatus:
        async with self.transport.post(f"/batches/{quote(batch_id, safe='')}/cancel", b"", {}) as r:
            status = self.shape.status(await self._json(r), self.redact)[0]
        if status.ended:
            status.processing_status = "cancelling"
        return status

    def poll(self, batch_id: str) -> _OpenAIPoll:  # type: ignore[override]
        return _OpenAIPoll(self, batch_id)


class _OpenAIPoll:
    def __init__(self, client: OpenAIBatchClient, batch_id: str) -> None:
        self._client = client
        self._id = batch_id
        self.status: BatchStatus | None = None
        #: The batch object as it ended (its final request counts), once it has.
        self.ended: BatchStatus | None = None
        self._files: dict[str, str] = {}
        self.bad_lines = 0

    async def __aenter__(self) -> _OpenAIPoll:
        c = self._client
        async with c.transport.stream_get(f"/batches/{quote(self._id, safe='')}") as r:
            status, self._files = c.shape.status(await c._json(r), c.redact)
        if status.ended:
            self.ended = status
        else:
            self.status = status
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None

    async def results(self) -> AsyncIterator[BatchResult]:
        """The output file's lines, then the error file's."""
        c = self._client
        for key in ("output_file_id", "error_file_id"):
            file_id = self._files.get(key)
            if file_id is None:
                continue
            async with c.transport.stream_get(f"/files/{quote(file_id, safe='')}/content") as r:
                if not 200 <= r.status < 300:
                    raise await c.failure(r)
                async for raw in split_lines(await read_up_to(r, 0), r):
                    try:
                        yield c.shape.result(raw, c.redact)
                    except BadLine:
                        self.bad_lines += 1
