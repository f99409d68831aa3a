"""The simulator's HTTP side: the handlers, their routes (registered in ``_Simulator.routes``),
and the ways to run it (``make_app``, ``start_simulator``, ``serve``)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import random
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from batchrun.pricing import PriceTable
from batchrun.simulate.answers import Answer, answer_for
from batchrun.simulate.config import MODELS, SimConfig, SimStats
from batchrun.simulate.faults import DROP, Faults
from batchrun.simulate.graded import AnswerKey
from batchrun.simulate.validate import known_model, validate
from batchrun.simulate.wire import JSON, completion_body, error_response, sse_events


class _Simulator:
    def __init__(self, config: SimConfig, record_bodies: bool) -> None:
        self.config = config
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
        self.billed_keys: set[str] = set()
        self.twice_keys: set[str] = set()
        self.replies: dict[str, tuple[int, bytes, dict[str, str]]] = {}
        self.prices = PriceTable.default()
        # Response ids: unique per simulator run, counting up.
        self.seed_id = random.Random(config.seed).getrandbits(32)

    def routes(self) -> list[web.RouteDef]:
        """Every path the simulator serves: the API's, then its own under ``/_sim``."""
        return [
            web.post("/v1/chat/completions", self.handle),
            web.post("/chat/completions", self.handle),
            web.get("/v1/models", self.models),
            web.get("/_sim/stats", self.get_stats),
            web.get("/v1/_sim/stats", self.get_stats),
            web.post("/_sim/reset", self.reset),
        ]

    def _counted(self, response: web.Response) -> web.Response:
        self.stats.count(response.status)
        return response

    async def handle(self, request: web.Request) -> web.StreamResponse:
        st = self.stats
        st.requests += 1
        st.in_flight += 1
        st.max_in_flight = max(st.max_in_flight, st.in_flight)
        try:
            response = await self._handle(request)
        finally:
            st.in_flight -= 1
        return response

    def _record(self, request: web.Request, body: Any) -> None:
        if self.stats.bodies is None:
            return
        headers = {
            "Authorization": "Bearer ***",
            "Idempotency-Key": request.headers.get("Idempotency-Key"),
            "User-Agent": request.headers.get("User-Agent"),
        }
        self.stats.bodies.append({"body": body, "headers": headers})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        cfg, st = self.config, self.stats
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.startswith("Bearer ") else ""
        raw = await request.read()
        if not token or (cfg.api_key is not None and token != cfg.api_key):
            return self._counted(
                error_response(401, "invalid or missing API key", "authentication_error")
            )
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return self._counted(
                error_response(
                    400, "request body is not valid JSON", "invalid_request_error", "body"
                )
            )
        key = request.headers.get("Idempotency-Key")
        self._record(request, body)
        problem = validate(body)
        if problem is not None:
            return self._counted(
                error_response(400, problem[1], "invalid_request_error", problem[0])
            )
        if not known_model(body["model"]):
            message = f"model {body['model']!r} not found"
            return self._counted(error_response(404, message, "model_not_found", "model"))
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
        answer = answer_for(body, reasoning_rate=self.config.reasoning_rate, keyed=keyed)
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
        cost_headers = self._cost_headers(answer)
        headers = self.faults.ratelimit_headers() | cost_headers
        if body.get("stream"):
            st.count(200)
            return await self._stream(request, answer, rid, created, headers)
        payload = completion_body(answer, rid, created)
        if self.config.honor_idempotency and key:
            self.replies[key] = (201, payload, cost_headers)
        return self._counted(
            web.Response(status=201, body=payload, content_type=JSON, headers=headers)
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

    async def _stream(
        self,
        request: web.Request,
        answer: Answer,
        rid: str,
        created: int,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers},
        )
        await resp.prepare(request)
        for i, event in enumerate(sse_events(answer, rid, created)):
            await resp.write(event)
            if i == 0 and self.faults.stalls():
                await asyncio.sleep(3600)  # stalls until the client gives up and disconnects
        await resp.write_eof()
        return resp

    async def models(self, request: web.Request) -> web.Response:
        data = {"object": "list", "data": [{"id": m, "object": "model"} for m in MODELS]}
        return web.json_response(data)

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.as_dict())

    async def reset(self, request: web.Request) -> web.Response:
        bodies: list[dict[str, Any]] | None = [] if self.stats.bodies is not None else None
        self.stats = SimStats(bodies=bodies)
        self.billed_keys.clear()
        self.twice_keys.clear()
        self.replies.clear()
        self.faults.reset()
        return web.json_response({"reset": True})


_SIM_KEY = web.AppKey("simulator", _Simulator)


def make_app(config: SimConfig, *, record_bodies: bool = False) -> web.Application:
    """The simulator as an aiohttp application (its state at ``app[_SIM_KEY]``)."""
    sim = _Simulator(config, record_bodies)
    app = web.Application(client_max_size=64 * 1024**2)
    app[_SIM_KEY] = sim
    app.add_routes(sim.routes())
    return app


def _check_loopback(host: str) -> None:
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the simulator listens on loopback addresses only, not {host!r}")


class SimServer:
    """A running simulator: ``url`` (base URL ending in /v1), ``port``, live ``stats``."""

    def __init__(self, runner: web.AppRunner, app: web.Application, host: str, port: int) -> None:
        self._runner = runner
        self._app = app
        self.port = port
        self.url = f"http://{host}:{port}/v1"

    @property
    def stats(self) -> SimStats:
        return self._app[_SIM_KEY].stats


@contextlib.asynccontextmanager
async def start_simulator(
    config: SimConfig, host: str = "127.0.0.1", port: int = 0, *, record_bodies: bool = False
) -> AsyncIterator[SimServer]:
    """Serve the simulator until the block ends; port 0 picks a free port."""
    _check_loopback(host)
    app = make_app(config, record_bodies=record_bodies)
    # A stopping simulator does not wait for stalled answers (aiohttp's default is 60 s).
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    real_port = int(runner.addresses[0][1])
    try:
        yield SimServer(runner, app, host, real_port)
    finally:
        await runner.cleanup()


def serve(
    config: SimConfig,
    host: str = "127.0.0.1",
    port: int = 8089,
    *,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; ``ready(url)`` is called once listening."""
    _check_loopback(host)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with start_simulator(config, host, port) as sim:
            if ready is not None:
                ready(sim.url)
            await stop.wait()

    asyncio.run(main())
