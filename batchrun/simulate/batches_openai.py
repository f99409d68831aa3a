"""The simulator's OpenAI Batch API: ``POST /v1/files`` (multipart, ``purpose=batch``),
``POST /v1/batches`` with an ``input_file_id``, ``GET /v1/batches/{id}``,
``GET /v1/files/{id}/content`` and ``POST /v1/batches/{id}/cancel``.

The batches keep the gateway shape's clock, faults and answers (see ``batches.py``): a
batch is ``in_progress`` until ``batch_delay_s`` has passed, then ``completed`` (or
``cancelled``) with an output file of the live endpoint's answers (``chat.completion``
bodies) and an error file of the errored, expired and cancelled requests, both in
shuffled order.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import BodyPartReader, web

from batchrun.simulate.answers import answer_for
from batchrun.simulate.validate import validate
from batchrun.simulate.wire import JSON, completion_body, error_response

if TYPE_CHECKING:
    from batchrun.simulate.batches import BatchService, _Batch

MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1024 * 1024
ENDPOINT = "/v1/chat/completions"


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(obj), content_type=JSON)


def _bad(message: str, status: int = 400) -> web.Response:
    response: web.Response = error_response(status, message, "invalid_request_error")
    return response


class OpenAIBatches:
    """The OpenAI-shaped routes over the same batches and stats as the gateway shape."""

    def __init__(self, service: BatchService) -> None:
        self.service = service
        self.files: dict[str, bytes] = {}
        #: batch id → its input file id.
        self.inputs: dict[str, str] = {}

    def routes(self) -> list[web.RouteDef]:
        out = []
        for prefix in ("/v1", ""):
            out += [
                web.post(f"{prefix}/files", self.upload),
                web.get(f"{prefix}/files/{{file_id}}/content", self.content),
                web.get(f"{prefix}/batches/{{batch_id}}", self.get),
                web.post(f"{prefix}/batches/{{batch_id}}/cancel", self.cancel),
            ]
        return out

    async def upload(self, request: web.Request) -> web.Response:
        denied = self.service.authorized(request)
        if denied is not None:
            return denied
        purpose, data = None, bytearray()
        async for part in await request.multipart():
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "purpose":
                purpose = (await part.read()).decode()
            elif part.name == "file":
                while chunk := await part.read_chunk(1 << 20):
                    data += chunk
                    if len(data) > MAX_BYTES:
                        return _bad("a batch file holds at most 200 MB", 413)
        if purpose != "batch" or not data:
            return _bad("upload a file with purpose=batch")
        fid = f"file-{self.service.rng.getrandbits(64):016x}"
        self.files[fid] = bytes(data)
        return _json({"id": fid, "object": "file", "purpose": "batch", "bytes": len(data)})

    async def create(self, request: web.Request, body: dict[str, Any]) -> web.Response:
        svc = self.service
        if body.get("endpoint") != ENDPOINT or body.get("completion_window") != "24h":
            return _bad(f"endpoint must be {ENDPOINT} and completion_window 24h")
        data = self.files.get(str(body.get("input_file_id")))
        if data is None:
            return _bad("input_file_id names no uploaded file", 404)
        reqs = []
        ids: set[str] = set()
        for i, line in enumerate(data.splitlines()):
            if not line.strip():
                continue
            try:
                r = orjson.loads(line)
            except orjson.JSONDecodeError:
                return _bad(f"line {i + 1} of the input file is not JSON")
            cid = r.get("custom_id") if isinstance(r, dict) else None
            if not isinstance(cid, str) or not cid or cid in ids:
                return _bad(f"line {i + 1}: custom_id missing or not unique")
            ids.add(cid)
            if r.get("method") != "POST" or r.get("url") != ENDPOINT:
                return _bad(f"line {i + 1}: method must be POST and url {ENDPOINT}")
            problem = validate(r.get("body"))
            if problem is not None or r["body"].get("stream"):
                return _bad(f"line {i + 1}: body.{problem[0] if problem else 'stream'}: invalid")
            reqs.append({"custom_id": cid, "params": r["body"]})
        if not 1 <= len(reqs) <= MAX_REQUESTS:
            return _bad(f"a batch holds 1 to {MAX_REQUESTS} requests")
        made = svc.make(reqs, request.headers.get("Idempotency-Key"))
        self.inputs[made.id] = str(body["input_file_id"])
        return _json(self.as_object(made, time.monotonic()))

    def as_object(self, batch: _Batch, now: float) -> dict[str, Any]:
        counts = batch.counts(now)
        ended = batch.ended(now)
        failed = counts["errored"] + counts["expired"] + counts["canceled"]
        status = (
            ("cancelled" if batch.canceled_at is not None else "completed")
            if ended
            else ("cancelling" if batch.canceled_at is not None else "in_progress")
        )
        obj: dict[str, Any] = {
            "id": batch.id, "object": "batch", "endpoint": ENDPOINT,
            "input_file_id": self.inputs.get(batch.id), "completion_window": "24h",
            "status": status, "created_at": int(time.time()),
            "request_counts": {
                "total": len(batch.requests),
                "completed": counts["succeeded"],
                "failed": failed if ended else counts["errored"] + counts["expired"],
            },
            "output_file_id": f"{batch.id}-output" if ended else None,
            "error_file_id": f"{batch.id}-errors" if ended and failed else None,
        }  # fmt: skip
        return obj

    async def get(self, request: web.Request) -> web.Response:
        svc = self.service
        denied = svc.authorized(request)
        if denied is not None:
            return denied
        svc.stats.batch_polls += 1
        if svc.rng.random() < svc.config.batch_poll_500_rate:
            response: web.Response = error_response(500, "simulated poll failure", "api_error")
            return response
        batch = svc.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _bad("batch not found", 404)
        return _json(self.as_object(batch, time.monotonic()))

    async def cancel(self, request: web.Request) -> web.Response:
        svc = self.service
        denied = svc.authorized(request)
        if denied is not None:
            return denied
        batch = svc.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _bad("batch not found", 404)
        svc.cancel_batch(batch)
        obj = self.as_object(batch, time.monotonic())
        obj["status"] = "cancelling"
        return _json(obj)

    async def content(self, request: web.Request) -> web.StreamResponse:
        svc = self.service
        denied = svc.authorized(request)
        if denied is not None:
            return denied
        fid = request.match_info["file_id"]
        batch_id, _, kind = fid.rpartition("-")
        batch = svc.batches.get(batch_id)
        if batch is None or kind not in ("output", "errors") or not batch.ended(time.monotonic()):
            return _bad("file not found", 404)
        if kind == "output" and not batch.served:
            batch.served = True
            svc.stats.batch_results_served += len(batch.requests)
        now = time.monotonic()
        done = batch.processed(now)
        order = list(range(len(batch.requests)))
        if svc.config.batch_shuffle:
            random.Random(batch.id + kind).shuffle(order)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/jsonl"})
        await resp.prepare(request)
        buf = bytearray()
        for i in order:
            cid, params, outcome = batch.requests[i]
            if i >= done:
                outcome = "canceled"
            if (outcome == "succeeded") != (kind == "output"):
                continue
            buf += self._line(cid, orjson.loads(params), outcome, i) + b"\n"
            if len(buf) >= 1 << 20:
                await resp.write(bytes(buf))
                buf.clear()
        await resp.write(bytes(buf))
        await resp.write_eof()
        return resp

    def _line(self, cid: str, body: dict[str, Any], outcome: str, i: int) -> bytes:
        rid = f"batch_req_{i:08d}"
        if outcome == "succeeded":
            answer = answer_for(body)
            chat = orjson.loads(completion_body(answer, f"chatcmpl-b{i:08d}", int(time.time())))
            line: dict[str, Any] = {
                "id": rid, "custom_id": cid, "error": None,
                "response": {"status_code": 200, "request_id": rid, "body": chat},
            }  # fmt: skip
        else:
            code = {"expired": "batch_expired", "canceled": "batch_cancelled"}.get(
                outcome, "server_error"
            )
            line = {
                "id": rid, "custom_id": cid, "response": None,
                "error": {"code": code, "message": f"simulated {outcome}"},
            }  # fmt: skip
        return orjson.dumps(line)
