"""The simulator's Batch API, as the gateway documents it (Anthropic Message Batches shapes).

- ``POST /v1/batches`` ``{"requests": [{"custom_id", "params"}]}`` (1 to 100,000 requests,
  at most 256 MB, read as it streams in): every request is validated as the Messages API
  does (400 naming ``requests[i].params.field``); the answer is a batch object
  ``in_progress``. A repeated ``Idempotency-Key`` gets the same batch back when the
  simulator honours keys.
- ``GET /v1/batches?batch_id=ID``: the batch object while it runs (its ``request_counts``
  move on with time), then the results as JSONL, in shuffled order.
- ``POST /v1/batches/cancel/ID``: the requests not yet processed end ``canceled``.

The OpenAI shape (files, ``/v1/batches/{id}``) is served over the same batches
(``batches_openai.py``).

A batch ends ``batch_delay_s`` after it was created (the time scale: seconds, not hours).
Faults: a share of requests ``errored`` or ``expired``, a share of polls answered 500, and
(``batch_stray_results``) result lines that belong to no request, a second result for one
request and a line that is not JSON. Answers are the live endpoint's, for the same body.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from batchrun.simulate.answers import answer_for
from batchrun.simulate.batches_openai import OpenAIBatches
from batchrun.simulate.config import SimConfig, SimStats
from batchrun.simulate.validate import validate
from batchrun.simulate.wire import JSON, error_response

MAX_REQUESTS = 100_000
MAX_BYTES = 256 * 1024 * 1024
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_PARAMS = frozenset(
    ("model", "messages", "max_tokens", "system", "stop_sequences", "temperature", "top_k",
     "top_p", "tools", "tool_choice", "metadata")
)  # fmt: skip


def _iso(t: float) -> str:
    """A monotonic instant as an RFC 3339 time (wall clock now, shifted)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - time.monotonic() + t))


@dataclass
class _Batch:
    id: str
    created: float
    #: (custom_id, params as compact JSON, outcome drawn at creation) a request.
    requests: list[tuple[str, bytes, str]]
    delay_s: float
    canceled_at: float | None = None
    #: Requests processed before the cancel (the rest end canceled).
    processed_at_cancel: int = 0
    served: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def processed(self, now: float) -> int:
        if self.canceled_at is not None:
            return self.processed_at_cancel
        if self.delay_s <= 0:
            return len(self.requests)
        return min(
            len(self.requests), int(len(self.requests) * (now - self.created) / self.delay_s)
        )

    def ended(self, now: float) -> bool:
        return self.canceled_at is not None or now - self.created >= self.delay_s

    def counts(self, now: float) -> dict[str, int]:
        done = self.processed(now)
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        for i, (_, _, outcome) in enumerate(self.requests):
            if i < done:
                counts[outcome] += 1
            elif self.canceled_at is not None:
                counts["canceled"] += 1
            else:
                counts["processing"] += 1
        return counts

    def as_object(self, now: float) -> dict[str, Any]:
        ended = self.ended(now)
        status = "ended" if ended else ("canceling" if self.canceled_at else "in_progress")
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": self.counts(now),
            "created_at": _iso(self.created),
            "expires_at": _iso(self.created + 86400),
            "ended_at": _iso(self.created + self.delay_s) if ended else None,
            "cancel_initiated_at": _iso(self.canceled_at) if self.canceled_at else None,
            "results_url": None,
        }


def batch_error(message: str) -> web.Response:
    response: web.Response = error_response(400, message, "invalid_request_error")
    return response


def check_params(i: int, params: Any) -> str | None:
    """The first problem of one batch request's params (Anthropic Messages rules)."""
    where = f"requests[{i}].params"
    if not isinstance(params, dict):
        return f"{where} must be an object"
    unknown = sorted(set(params) - _PARAMS)
    if unknown:
        return f"{where}.{unknown[0]}: unknown parameter"
    if "max_tokens" not in params:
        return f"{where}.max_tokens: required"
    choice = params.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "any":
        params = {**params, "tool_choice": {**choice, "type": "required"}}
    problem = validate(params)
    if problem is not None:
        return f"{where}.{problem[0]}: {problem[1]}"
    for j, m in enumerate(params["messages"]):
        if m.get("role") not in ("user", "assistant"):
            return f"{where}.messages[{j}].role must be user or assistant"
    return None


def result_line(custom_id: str, params: dict[str, Any], outcome: str) -> bytes:
    """One results line: the live endpoint's answer in the Messages shape, or the outcome."""
    if outcome == "errored":
        result: dict[str, Any] = {
            "type": "errored",
            "error": {
                "type": "error",
                "error": {"type": "api_error", "message": "simulated failure"},
            },
        }
    elif outcome != "succeeded":
        result = {"type": outcome}
    else:
        body = dict(params)
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") == "any":
            body["tool_choice"] = {**choice, "type": "required"}
        answer = answer_for(body)
        if answer.tool_call is not None:
            fn = answer.tool_call["function"]
            content: list[dict[str, Any]] = [
                {"type": "tool_use", "id": answer.tool_call["id"], "name": fn["name"],
                 "input": json.loads(fn["arguments"])}
            ]  # fmt: skip
        else:
            content = [{"type": "text", "text": answer.text}]
        digest = hashlib.blake2b(custom_id.encode() + orjson.dumps(params), digest_size=12)
        result = {
            "type": "succeeded",
            "message": {
                "id": f"msg_{digest.hexdigest()}", "type": "message", "role": "assistant",
                "model": answer.model, "content": content, "stop_reason": answer.finish,
                "stop_sequence": None,
                "usage": {"input_tokens": answer.usage["prompt_tokens"],
                          "output_tokens": answer.usage["completion_tokens"]},
            },
        }  # fmt: skip
    return orjson.dumps({"custom_id": custom_id, "result": result})


class BatchService:
    """The batch routes of one simulator (its config and stats are the simulator's)."""

    def __init__(
        self,
        config: SimConfig,
        stats: SimStats,
        authorized: Callable[[web.Request], web.Response | None],
    ) -> None:
        self.config = config
        self.stats = stats
        self.authorized = authorized
        self.openai = OpenAIBatches(self)
        self.batches: dict[str, _Batch] = {}
        self.by_key: dict[str, str] = {}
        self.rng = random.Random(config.seed)

    def routes(self) -> list[web.RouteDef]:
        out = []
        for prefix in ("/v1", ""):
            out += [
                web.post(f"{prefix}/batches", self.create),
                web.get(f"{prefix}/batches", self.get),
                web.post(f"{prefix}/batches/cancel/{{batch_id}}", self.cancel),
            ]
        return out + self.openai.routes()

    def reset(self, stats: SimStats) -> None:
        self.stats = stats
        self.batches.clear()
        self.by_key.clear()

    async def create(self, request: web.Request) -> web.Response:
        denied = self.authorized(request)
        if denied is not None:
            return denied
        raw = bytearray()
        async for piece in request.content.iter_chunked(1 << 20):
            raw += piece
            if len(raw) > MAX_BYTES:
                return error_response(413, "a batch holds at most 256 MB", "request_too_large")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return batch_error("request body is not valid JSON")
        del raw
        if isinstance(body, dict) and "input_file_id" in body:  # the OpenAI shape
            return await self.openai.create(request, body)
        reqs = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(reqs, list) or not 1 <= len(reqs) <= MAX_REQUESTS:
            return batch_error(f"requests must be a list of 1 to {MAX_REQUESTS} requests")
        ids: set[str] = set()
        for i, r in enumerate(reqs):
            cid = r.get("custom_id") if isinstance(r, dict) else None
            if not isinstance(cid, str) or not _CUSTOM_ID.match(cid):
                return batch_error(f"requests[{i}].custom_id must match ^[a-zA-Z0-9_-]{{1,64}}$")
            if cid in ids:
                return batch_error(f"requests[{i}].custom_id {cid!r} is not unique")
            ids.add(cid)
            problem = check_params(i, r.get("params"))
            if problem is not None:
                return batch_error(problem)
        batch = self.make(reqs, request.headers.get("Idempotency-Key"))
        return self._object(batch, time.monotonic())

    def make(self, reqs: list[dict[str, Any]], key: str | None) -> _Batch:
        """A new batch of validated requests, or the one a repeated key already made."""
        if self.config.honor_idempotency and key and key in self.by_key:
            self.stats.batch_creates_replayed += 1
            return self.batches[self.by_key[key]]
        cfg = self.config
        entries = []
        for r in reqs:
            x = self.rng.random()
            outcome = (
                "errored" if x < cfg.batch_errored_rate
                else "expired" if x < cfg.batch_errored_rate + cfg.batch_expired_rate
                else "succeeded"
            )  # fmt: skip
            entries.append((r["custom_id"], orjson.dumps(r["params"]), outcome))
        self.stats.batches_created += 1
        self.stats.batch_requests += len(entries)
        bid = f"msgbatch_{self.rng.getrandbits(64):016x}{self.stats.batches_created:04d}"
        batch = _Batch(bid, time.monotonic(), entries, cfg.batch_delay_s)
        self.batches[bid] = batch
        if key:
            self.by_key[key] = bid
        return batch

    def cancel_batch(self, batch: _Batch) -> bool:
        """Cancel a running batch; False if it had ended already."""
        now = time.monotonic()
        if batch.ended(now):
            return False
        batch.processed_at_cancel = batch.processed(now)
        batch.canceled_at = now
        self.stats.batch_cancels += 1
        return True

    def _object(self, batch: _Batch, now: float) -> web.Response:
        return web.Response(status=200, body=orjson.dumps(batch.as_object(now)), content_type=JSON)

    def _find(self, batch_id: str | None) -> _Batch | web.Response:
        batch = self.batches.get(batch_id or "")
        if batch is None:
            return error_response(404, f"batch {batch_id!r} not found", "not_found_error")
        return batch

    async def get(self, request: web.Request) -> web.StreamResponse:
        denied = self.authorized(request)
        if denied is not None:
            return denied
        self.stats.batch_polls += 1
        if self.rng.random() < self.config.batch_poll_500_rate:
            return error_response(500, "simulated poll failure", "api_error")
        found = self._find(request.query.get("batch_id"))
        if isinstance(found, web.Response):
            return found
        now = time.monotonic()
        if not found.ended(now):
            return self._object(found, now)
        if not found.served:
            found.served = True
            self.stats.batch_results_served += len(found.requests)
        return await self._results(request, found, now)

    async def _results(self, request: web.Request, batch: _Batch, now: float) -> web.StreamResponse:
        done = batch.processed(now)
        order = list(range(len(batch.requests)))
        if self.config.batch_shuffle:
            random.Random(batch.id).shuffle(order)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/x-jsonl"})
        await resp.prepare(request)
        buf = bytearray()
        for n, i in enumerate(order):
            cid, params, outcome = batch.requests[i]
            if i >= done:
                outcome = "canceled"
            buf += result_line(cid, orjson.loads(params), outcome) + b"\n"
            if self.config.batch_stray_results and n == 0:
                buf += result_line("zz-no-such-request", orjson.loads(params), "succeeded") + b"\n"
                buf += b"this line is not JSON\n"
                # A second result for this request, with another request's answer.
                other = batch.requests[order[-1]]
                buf += result_line(cid, orjson.loads(other[1]), "succeeded") + b"\n"
            if len(buf) >= 1 << 20:
                await resp.write(bytes(buf))
                buf.clear()
        await resp.write(bytes(buf))
        await resp.write_eof()
        return resp

    async def cancel(self, request: web.Request) -> web.Response:
        denied = self.authorized(request)
        if denied is not None:
            return denied
        found = self._find(request.match_info["batch_id"])
        if isinstance(found, web.Response):
            return found
        canceled = self.cancel_batch(found)
        obj = found.as_object(time.monotonic())
        if canceled:  # the answer to the cancel itself: its end is on the way
            obj["processing_status"] = "canceling"
        return web.Response(status=200, body=orjson.dumps(obj), content_type=JSON)
