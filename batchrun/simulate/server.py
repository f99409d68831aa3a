"""The simulator's HTTP side: the handlers and their routes (registered in
``_Simulator.routes``), as an aiohttp application (``make_app``); :mod:`.serving` runs it."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

from aiohttp import web

from batchrun.pricing import PriceTable
from batchrun.send.spend import CREDITS_PER_USD, GATEWAY_CREDITS_HEADER, GATEWAY_USD_HEADER
from batchrun.send.tracing import CLIENT_REQUEST_ID_HEADER, INFERENCE_ID_HEADER, is_valid_id
from batchrun.simulate.answers import Answer, answer_for, neutral_body
from batchrun.simulate.batches import BatchService
from batchrun.simulate.config import SimConfig, SimStats
from batchrun.simulate.faults import DROP, Faults
from batchrun.simulate.graded import AnswerKey
from batchrun.simulate.toolargs import followup_of
from batchrun.simulate.validate import content_problem, known_model, strict_problem, validate
from batchrun.simulate.wire import JSON, completion_body, error_body, error_response, sse_events

#: Where the simulator keeps a request's tracing headers while it is answered.
_TRACE = "batchrun.trace"


class _Simulator:
    def __init__(
        self, config: SimConfig, record_bodies: bool, log: Callable[[str], None] | None = None
    ) -> None:
        self.config = config
        self.log = log
        self.stats = SimStats(bodies=[] if record_bodies else None)
        self.faults = Faults(config)
        self.answer_key = (
            None
            if config.answers_file is None
            else AnswerKey.load(
                Path(config.answers_file),
                config.answers_column,
                correct_rate=config.correct_rate,
                seed=config.answers_seed,
            )
        )
        self.openai = config.flavor == "openai"
        #: The status of a fresh answer: the gateway's 201, OpenAI's 200.
        self.ok_status = 200 if self.openai else 201
        self.billed_keys: set[str] = set()
        self.twice_keys: set[str] = set()
        self.replies: dict[str, tuple[int, bytes, dict[str, str]]] = {}
        self.prices = PriceTable.default()
        #: The exact sum of the USD amounts reported (stats.usd_spent is it, rounded once).
        self.usd_total = Fraction(0)
        # Response ids: unique per simulator run, counting up.
        self.seed_id = random.Random(config.seed).getrandbits(32)
        self.batches = BatchService(config, self.stats, self.denied)

    def routes(self) -> list[web.RouteDef]:
        """Every path the simulator serves: the API's, then its own under ``/_sim``."""
        return [
            web.post("/v1/chat/completions", self.handle),
            web.post("/chat/completions", self.handle),
            web.get("/v1/models", self.models),
            web.get("/_sim/stats", self.get_stats),
            web.get("/v1/_sim/stats", self.get_stats),
            web.post("/_sim/reset", self.reset),
            *self.batches.routes(),
        ]

    def _error(
        self, status: int, message: str, kind: str, param: str | None = None
    ) -> web.Response:
        return error_response(status, message, kind, param, openai=self.openai)

    def denied(self, request: web.Request) -> web.Response | None:
        """401 for a missing or wrong key, else None."""
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.startswith("Bearer ") else ""
        if not token or (self.config.api_key is not None and token != self.config.api_key):
            return self._error(401, "invalid or missing API key", "authentication_error")
        return None

    def _counted(self, response: web.Response) -> web.Response:
        self.stats.count(response.status)
        return response

    async def handle(self, request: web.Request) -> web.StreamResponse:
        st = self.stats
        st.requests += 1
        st.in_flight += 1
        st.max_in_flight = max(st.max_in_flight, st.in_flight)
        request[_TRACE] = self._trace_headers(request)
        try:
            response = await self._handle(request)
        finally:
            st.in_flight -= 1
        if not response.prepared:
            response.headers.update(request[_TRACE])
        return response

    def _trace_headers(self, request: web.Request) -> dict[str, str]:
        """``x-inference-id`` on every answer; the client's request id echoed only when
        the gateway would keep it (1-128 of A-Z a-z 0-9 . _ : -), else dropped silently."""
        headers = {INFERENCE_ID_HEADER: str(uuid.uuid4())}
        cid = request.headers.get(CLIENT_REQUEST_ID_HEADER)
        if cid is not None:
            if is_valid_id(cid):
                self.stats.client_request_ids += 1
                headers[CLIENT_REQUEST_ID_HEADER.lower()] = cid
            else:
                self.stats.client_request_ids_invalid += 1
        return headers

    def _record(self, request: web.Request, body: Any) -> None:
        if self.stats.bodies is None:
            return
        headers = {
            "Authorization": "Bearer ***",
            "Idempotency-Key": request.headers.get("Idempotency-Key"),
            "User-Agent": request.headers.get("User-Agent"),
            "X-Client-Request-Id": request.headers.get(CLIENT_REQUEST_ID_HEADER),
        }
        # When it arrived (monotonic s): what a test of a retry's wait measures.
        self.stats.bodies.append({"body": body, "headers": headers, "at": time.monotonic()})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        cfg, st = self.config, self.stats
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.startswith("Bearer ") else ""
        raw = await request.read()
        if not token or (cfg.api_key is not None and token != cfg.api_key):
            return self._counted(
                self.faults.error(401, "invalid or missing API key", "authentication_error")
            )
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return self._counted(
                self._error(400, "request body is not valid JSON", "invalid_request_error", "body")
            )
        key = request.headers.get("Idempotency-Key")
        self._record(request, body)
        problem = validate(body, cfg.flavor)
        if problem is not None:
            return self._counted(self._error(400, problem[1], "invalid_request_error", problem[0]))
        # OpenAI's own checks refuse unknown fields already (validate).
        strict = cfg.strict and not self.openai
        refusal = (strict_problem(body) if strict else None) or content_problem(body)
        if refusal is not None:
            return self._counted(self._error(400, refusal, "invalid_request_error"))
        if not known_model(body["model"]):
            message = f"model {body['model']!r} not found"
            return self._counted(self._error(404, message, "model_not_found", "model"))
        if cfg.honor_idempotency and key and key in self.replies:
            st.replayed += 1
            status, payload, headers = self.replies[key]
            return self._counted(
                web.Response(status=status, body=payload, content_type=JSON, headers=headers)
            )
        limited = self.faults.rate_limit()
        if limited is not None:
            st.rate_limited += 1
            return self._counted(limited)
        fault = self.faults.draw()
        if fault == DROP:
            st.dropped += 1
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # aiohttp drops the request without an answer
        if fault is not None:
            return self._counted(fault)
        delay = self.faults.delay_s()
        if delay > 0:
            await asyncio.sleep(delay)
        return await self._answer(request, body, key)

    async def _answer(
        self, request: web.Request, body: dict[str, Any], key: str | None
    ) -> web.StreamResponse:
        st = self.stats
        keyed = None if self.answer_key is None else self.answer_key.answer(body)
        if self.openai:
            body = neutral_body(body)
        cfg = self.config
        answer = answer_for(
            body,
            reasoning_rate=cfg.reasoning_rate,
            keyed=keyed,
            invalid_rate=cfg.invalid_rate,
            invalid_kinds=cfg.invalid_kinds,
            seed=cfg.seed,
        )
        followup = followup_of(body) if body.get("tools") else None
        if followup is not None:
            st.followups += 1
            if self.log is not None:
                self.log(f"follow-up #{st.followups}: {followup[:200]}")
        if answer.invalid is not None:
            st.invalid_answers[answer.invalid] = st.invalid_answers.get(answer.invalid, 0) + 1
        st.ok += 1
        rid = f"chatcmpl-{self.seed_id:08x}{st.ok:012x}"
        st.prompt_tokens += answer.usage["prompt_tokens"]
        st.completion_tokens += answer.usage["completion_tokens"]
        if key:
            if key in self.billed_keys:
                st.billed_twice += 1
                if key not in self.twice_keys:
                    self.twice_keys.add(key)
                    st.keys_billed_twice += 1
            else:
                self.billed_keys.add(key)
        created = int(time.time())
        # The cost header belongs to the answer (a replay repeats it); rate-limit headers
        # describe the moment.
        streamed = bool(body.get("stream"))
        # OpenAI reports no spend (neither headers nor a meta event).
        spent = None if self.openai else self._gateway_spend(answer)
        cost_headers = self._cost_headers(answer)
        if spent is not None and not streamed:
            cost_headers[GATEWAY_USD_HEADER] = repr(spent[0])
            cost_headers[GATEWAY_CREDITS_HEADER] = str(spent[1])
        headers = self.faults.ratelimit_headers() | cost_headers
        if streamed:
            st.count(200)
            # The gateway sends usage in every stream; OpenAI only when asked.
            options = body.get("stream_options") or {}
            usage = not self.openai or options.get("include_usage") is True
            return await self._stream(request, answer, rid, created, headers, spent, usage)
        payload = completion_body(answer, rid, created)
        if self.config.honor_idempotency and key:
            self.replies[key] = (self.ok_status, payload, cost_headers)
        return self._counted(
            web.Response(status=self.ok_status, body=payload, content_type=JSON, headers=headers)
        )

    def _cost_headers(self, answer: Answer) -> dict[str, str]:
        name = self.config.cost_header
        if not name:
            return {}
        usage = answer.usage
        cost = self.prices.cost(answer.model, usage["prompt_tokens"], usage["completion_tokens"])
        if cost is None:
            return {}
        self.stats.reported_cost_usd += cost
        return {name: repr(cost)}

    def _gateway_spend(self, answer: Answer) -> tuple[float, int] | None:
        """(USD, credits) the gateway reports for an answer: list price in credits ($1 =
        2,000,000, at least 1), the USD those credits are; counted once per fresh answer."""
        if not self.config.gateway_cost:
            return None
        usage = answer.usage
        cost = self.prices.cost(answer.model, usage["prompt_tokens"], usage["completion_tokens"])
        if cost is None:
            cost = 0.0
        credits = max(1, round(cost * CREDITS_PER_USD))
        usd = credits / CREDITS_PER_USD
        self.stats.credits_used += credits
        self.usd_total += Fraction(usd)
        self.stats.usd_spent = float(self.usd_total)
        return usd, credits

    async def _stream(
        self,
        request: web.Request,
        answer: Answer,
        rid: str,
        created: int,
        headers: dict[str, str],
        spent: tuple[float, int] | None,
        usage: bool,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                **headers,
                **request[_TRACE],
            },
        )
        await resp.prepare(request)
        for i, event in enumerate(sse_events(answer, rid, created, spent, usage=usage)):
            await resp.write(event)
            if i == 0 and self.faults.stalls():
                await asyncio.sleep(3600)  # stalls until the client gives up and disconnects
        await resp.write_eof()
        return resp

    async def models(self, request: web.Request) -> web.Response:
        self.stats.model_lists += 1
        listed = self.config.models
        if listed is None:
            return web.json_response(
                error_body(404, "Cannot GET /v1/models", "/v1/models"), status=404
            )
        data = {"object": "list", "data": [{"id": m, "object": "model"} for m in listed]}
        return web.json_response(data)

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.as_dict())

    async def reset(self, request: web.Request) -> web.Response:
        bodies: list[dict[str, Any]] | None = [] if self.stats.bodies is not None else None
        self.stats = SimStats(bodies=bodies)
        self.billed_keys.clear()
        self.twice_keys.clear()
        self.replies.clear()
        self.usd_total = Fraction(0)
        self.faults.reset()
        self.batches.reset(self.stats)
        return web.json_response({"reset": True})


SIM_KEY = web.AppKey("simulator", _Simulator)


def make_app(
    config: SimConfig, *, record_bodies: bool = False, log: Callable[[str], None] | None = None
) -> web.Application:
    """The simulator as an aiohttp application (its state at ``app[SIM_KEY]``); ``log``
    hears a line for each follow-up (a re-ask) it answers."""
    sim = _Simulator(config, record_bodies, log)
    app = web.Application(client_max_size=64 * 1024**2)
    app[SIM_KEY] = sim
    app.add_routes(sim.routes())
    return app
