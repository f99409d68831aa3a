"""A local simulator of the AI/ML API gateway (OpenAI-shaped chat completions), aiohttp.web.

Users rehearse jobs with it offline; the demo, the end-to-end tests and the benchmarks run
against it. It answers like the documented API: ``POST /v1/chat/completions`` with a bearer
key, 400 with a JSON error naming the field on a bad request, **201** with a deterministic
completion and usage derived from the prompt, SSE (200, ``text/event-stream``) when
``stream`` is true. Faults are drawn from one seeded RNG so runs repeat.

Simulator-only endpoints: ``GET /_sim/stats`` (counters as JSON) and ``POST /_sim/reset``.

The requests-per-minute limit is a sliding-window log: at most
``rpm_limit * rpm_window_s / 60`` requests accepted in any window of ``rpm_window_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import math
import random
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from batchrun.pricing import PriceTable

MODELS = ("anthropic/claude-3-opus", "anthropic/claude-3-haiku", "gpt-4o-mini", "gpt-4o")
ROLES = frozenset({"system", "user", "assistant", "tool"})
_WORDS = [
    "amber",
    "delta",
    "river",
    "quiet",
    "lantern",
    "orbit",
    "maple",
    "cobalt",
    "harbor",
    "meadow",
    "signal",
    "paper",
    "velvet",
    "summit",
    "ember",
    "canyon",
    "willow",
    "pixel",
    "falcon",
    "garnet",
    "prairie",
    "tide",
    "beacon",
    "cedar",
]
_JSON = "application/json"


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """Behaviour of the simulator. Rates are fractions of requests (0..1); times as named."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    error_500_rate: float = 0.0
    rate_429: float = 0.0
    rate_429_no_retry_after: float = 0.0
    retry_after_s: float = 1.0
    rate_403: float = 0.0
    drop_rate: float = 0.0
    rpm_limit: int | None = None
    rpm_window_s: float = 10.0
    limit_sends_retry_after: bool = True
    ratelimit_headers: bool = False
    api_key: str | None = None
    honor_idempotency: bool = False
    stream_stall_rate: float = 0.0
    #: Send each answer's cost (bundled list prices, USD) in this response header.
    cost_header: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "error_500_rate",
            "rate_429",
            "rate_429_no_retry_after",
            "rate_403",
            "drop_rate",
            "stream_stall_rate",
        ):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.latency_ms < 0 or self.jitter_ms < 0 or self.retry_after_s < 0:
            raise ValueError("latency, jitter and retry-after must be >= 0")
        if self.rpm_limit is not None and self.rpm_limit < 1:
            raise ValueError("rpm_limit must be >= 1")
        if self.rpm_window_s <= 0:
            raise ValueError("rpm_window_s must be > 0")


@dataclass
class SimStats:
    """Live counters (see the module docstring for ``billed_twice``)."""

    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    dropped: int = 0
    ok: int = 0
    replayed: int = 0
    #: Fresh 2xx answers for an Idempotency-Key that already had one: the row was billed twice.
    billed_twice: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    rate_limited: int = 0
    #: The costs sent in the cost header, summed over fresh answers (replays not again).
    reported_cost_usd: float = 0.0
    bodies: list[dict[str, Any]] | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["by_status"] = {str(k): v for k, v in sorted(self.by_status.items())}
        d.pop("bodies")
        return d


# --- deterministic answers ----------------------------------------------------------------------


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _digest(*parts: str) -> int:
    h = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big")


def _claude(model: str) -> bool:
    return "claude" in model


def completion_for(body: dict[str, Any]) -> tuple[str, str]:
    """(text, finish_reason) the simulator answers for a request body.

    Depends on the model, the system prompt and the messages only (and on ``max_tokens``
    and ``stop_sequences``, which cut the text). A last user message holding
    "one of: a, b, c" is answered with one of those options.
    """
    model = str(body.get("model", ""))
    messages = body.get("messages") or []
    system = str(body.get("system") or "")
    convo = "\x1e".join(f"{m.get('role')}:{_text(m.get('content'))}" for m in messages)
    seed = _digest(model, system, convo)
    last_user = next(
        (_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    lower = last_user.lower()
    if "one of:" in lower:
        tail = last_user[lower.index("one of:") + len("one of:") :].split("\n", 1)[0]
        options = [o.strip().strip(".!?;:").strip() for o in tail.split(",")]
        options = [o for o in options if o]
        words = [options[seed % len(options)]] if options else ["none"]
    else:
        n = 3 + seed % 10
        words = ["sim", "reply:"] + [_WORDS[(seed >> (4 * i)) % len(_WORDS)] for i in range(n)]
    claude = _claude(model)
    finish = "end_turn" if claude else "stop"
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and len(words) > max_tokens:
        words = words[:max_tokens]
        finish = "max_tokens" if claude else "length"
    text = " ".join(words)
    for stop in body.get("stop_sequences") or ():
        if stop and stop in text:
            text = text[: text.index(stop)]
            finish = "stop_sequence" if claude else "stop"
    return text, finish


def usage_for(body: dict[str, Any], text: str | None = None) -> dict[str, int]:
    """Usage the simulator reports: ~4 characters a prompt token + 3 a message; a word an
    answer token. ``text``: the answer, when already computed."""
    messages = body.get("messages") or []
    prompt = sum(-(-len(_text(m.get("content"))) // 4) + 3 for m in messages)
    if body.get("system"):
        prompt += -(-len(str(body["system"])) // 4) + 3
    if text is None:
        text = completion_for(body)[0]
    completion = max(1, text.count(" ") + 1 if text else 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _tool_call(body: dict[str, Any]) -> dict[str, Any] | None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not tools or not isinstance(choice, dict) or choice.get("type") not in ("required", "tool"):
        return None
    name = choice.get("name") if choice.get("type") == "tool" else tools[0]["name"]
    seed = _digest(json.dumps(body.get("messages"), sort_keys=True), str(name))
    return {
        "id": f"call_{seed:016x}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps({"query": _WORDS[seed % len(_WORDS)]})},
    }


# --- validation -------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def validate(body: Any) -> tuple[str, str] | None:
    """(param, message) of the first problem with a request body, as the API reports it."""
    if not isinstance(body, dict):
        return "body", "request body must be a JSON object"
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "model", "model is required and must be a non-empty string"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages", "messages is required and must be a non-empty list"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            return "messages", f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}"
        c = m.get("content")
        if not (isinstance(c, (str, list)) or (c is None and m.get("tool_calls"))):
            return "messages", f"messages[{i}].content must be a string or a list of content parts"
    checks: list[tuple[str, Callable[[Any], bool], str]] = [
        ("max_tokens", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        ("temperature", lambda v: _is_num(v) and 0 <= v <= 1, "a number between 0 and 1"),
        ("top_p", lambda v: _is_num(v) and 0 <= v <= 1, "a number between 0 and 1"),
        ("top_k", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        ("frequency_penalty", lambda v: _is_num(v) and -2 <= v <= 2, "a number between -2 and 2"),
        ("stop_sequences", lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), "a list of strings"),
        ("stream", lambda v: isinstance(v, bool), "a boolean"),
        ("system", lambda v: isinstance(v, str), "a string"),
        ("metadata", lambda v: isinstance(v, dict), "an object"),
        ("tools", lambda v: isinstance(v, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("input_schema"), dict) and isinstance(t.get("description", ""), str) for t in v), "a list of {name, description, input_schema}"),
    ]  # fmt: skip
    for name, ok, what in checks:
        if name in body and not ok(body[name]):
            return name, f"{name} must be {what}"
    if "tool_choice" in body:
        tc = body["tool_choice"]
        names = {t["name"] for t in body.get("tools") or ()}
        kind = tc.get("type") if isinstance(tc, dict) else None
        if not (
            kind in ("auto", "none", "required") or (kind == "tool" and tc.get("name") in names)
        ):
            return (
                "tool_choice",
                'tool_choice must be {"type": "auto"|"none"|"required"} or {"type": "tool", "name": <a tool>}',
            )
    return None


def _known_model(model: str) -> bool:
    return model in MODELS or "/" in model or model.startswith(("gpt-", "claude"))


# --- the server ---------------------------------------------------------------------------------


def _error(
    status: int,
    message: str,
    kind: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    err: dict[str, Any] = {"message": message, "type": kind}
    if param is not None:
        err["param"] = param
    return web.Response(
        status=status, body=json.dumps({"error": err}), content_type=_JSON, headers=headers
    )


class _Simulator:
    def __init__(self, config: SimConfig, record_bodies: bool) -> None:
        self.config = config
        self.stats = SimStats(bodies=[] if record_bodies else None)
        self.rng = random.Random(config.seed)
        self.accepted: deque[float] = deque()
        self.billed_keys: set[str] = set()
        self.replies: dict[str, tuple[int, bytes, dict[str, str]]] = {}
        self.prices = PriceTable.default()
        # Response ids: unique per simulator run, counting up.
        self.seed_id = random.Random(config.seed).getrandbits(32)
        self.window_cap = (
            math.floor(config.rpm_limit * config.rpm_window_s / 60) if config.rpm_limit else 0
        )

    def _count(self, status: int) -> None:
        self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1

    def _ratelimit_headers(self) -> dict[str, str]:
        if not self.config.ratelimit_headers or not self.config.rpm_limit:
            return {}
        remaining = max(0, self.window_cap - len(self.accepted))
        return {
            "x-ratelimit-limit-requests": str(self.config.rpm_limit),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": f"{self.config.rpm_window_s:g}s",
        }

    def _over_limit(self) -> float | None:
        """Seconds until the window frees a place, if the limit is hit (else admit)."""
        if not self.config.rpm_limit:
            return None
        now = time.monotonic()
        window = self.config.rpm_window_s
        while self.accepted and now - self.accepted[0] >= window:
            self.accepted.popleft()
        if len(self.accepted) >= self.window_cap:
            return window - (now - self.accepted[0])
        self.accepted.append(now)
        return None

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

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        cfg, st = self.config, self.stats
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.startswith("Bearer ") else ""
        raw = await request.read()
        if not token or (cfg.api_key is not None and token != cfg.api_key):
            self._count(401)
            return _error(401, "invalid or missing API key", "authentication_error")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            self._count(400)
            return _error(400, "request body is not valid JSON", "invalid_request_error", "body")
        key = request.headers.get("Idempotency-Key")
        if st.bodies is not None:
            st.bodies.append(
                {
                    "body": body,
                    "headers": {
                        "Authorization": "Bearer ***",
                        "Idempotency-Key": key,
                        "User-Agent": request.headers.get("User-Agent"),
                    },
                }
            )
        problem = validate(body)
        if problem is not None:
            self._count(400)
            return _error(400, problem[1], "invalid_request_error", problem[0])
        if not _known_model(body["model"]):
            self._count(404)
            return _error(404, f"model {body['model']!r} not found", "model_not_found", "model")
        if cfg.honor_idempotency and key and key in self.replies:
            st.replayed += 1
            status, payload, headers = self.replies[key]
            self._count(status)
            return web.Response(status=status, body=payload, content_type=_JSON, headers=headers)
        wait = self._over_limit()
        if wait is not None:
            st.rate_limited += 1
            self._count(429)
            headers = self._ratelimit_headers()
            if cfg.limit_sends_retry_after:
                headers["Retry-After"] = str(max(1, math.ceil(wait)))
                headers["retry-after-ms"] = str(int(wait * 1000))
            return _error(
                429, "rate limit reached for requests", "rate_limit_error", headers=headers
            )
        r = self.rng.random()
        edge = cfg.rate_403
        if r < edge:
            self._count(403)
            return _error(
                403, "Insufficient credits: top up your balance to continue", "insufficient_quota"
            )
        if r < (edge := edge + cfg.error_500_rate):
            self._count(500)
            return _error(500, "internal error (simulated)", "server_error")
        if r < (edge := edge + cfg.rate_429):
            self._count(429)
            s = cfg.retry_after_s
            return _error(
                429,
                "rate limited (simulated)",
                "rate_limit_error",
                headers={
                    "Retry-After": str(max(0, math.ceil(s))),
                    "retry-after-ms": str(int(s * 1000)),
                },
            )
        if r < (edge := edge + cfg.rate_429_no_retry_after):
            self._count(429)
            return _error(429, "rate limited (simulated)", "rate_limit_error")
        if r < edge + cfg.drop_rate:
            st.dropped += 1
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # aiohttp drops the request without an answer
        if cfg.latency_ms or cfg.jitter_ms:
            delay = cfg.latency_ms + self.rng.uniform(-cfg.jitter_ms, cfg.jitter_ms)
            if delay > 0:
                await asyncio.sleep(delay / 1000)
        return await self._answer(request, body, key)

    async def _answer(
        self, request: web.Request, body: dict[str, Any], key: str | None
    ) -> web.StreamResponse:
        st = self.stats
        text, finish = completion_for(body)
        usage = usage_for(body, text)
        call = _tool_call(body)
        model = body["model"]
        claude = _claude(model)
        if call is not None:
            finish = "tool_use" if claude else "tool_calls"
        st.ok += 1
        rid = f"chatcmpl-{self.seed_id:08x}{st.ok:012x}"
        st.prompt_tokens += usage["prompt_tokens"]
        st.completion_tokens += usage["completion_tokens"]
        if key:
            if key in self.billed_keys:
                st.billed_twice += 1
            else:
                self.billed_keys.add(key)
        created = int(time.time())
        # The cost header belongs to the answer (a replay repeats it); rate-limit headers
        # describe the moment.
        cost_headers: dict[str, str] = {}
        if self.config.cost_header:
            cost = self.prices.cost(model, usage["prompt_tokens"], usage["completion_tokens"])
            if cost is not None:
                st.reported_cost_usd += cost
                cost_headers[self.config.cost_header] = repr(cost)
        headers = self._ratelimit_headers() | cost_headers
        if body.get("stream"):
            self._count(200)
            return await self._stream(
                request, rid, model, created, text, finish, usage, call, headers
            )
        message: dict[str, Any] = {"role": "assistant", "content": None if call else text}
        if call is not None:
            message["tool_calls"] = [call]
        payload = json.dumps({
            "id": rid, "object": "chat.completion", "model": model, "created": created,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage,
        }).encode()  # fmt: skip
        if self.config.honor_idempotency and key:
            self.replies[key] = (201, payload, cost_headers)
        self._count(201)
        return web.Response(status=201, body=payload, content_type=_JSON, headers=headers)

    async def _stream(
        self, request: web.Request, rid: str, model: str, created: int, text: str, finish: str,
        usage: dict[str, int], call: dict[str, Any] | None, headers: dict[str, str],
    ) -> web.StreamResponse:  # fmt: skip
        resp = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers},
        )
        await resp.prepare(request)

        def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
            choices = (
                [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
                if delta is not None
                else []
            )
            data = {
                "id": rid,
                "object": "chat.completion.chunk",
                "model": model,
                "created": created,
                "choices": choices,
                **extra,
            }
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        await resp.write(chunk({"role": "assistant"}))
        if self.config.stream_stall_rate and self.rng.random() < self.config.stream_stall_rate:
            await asyncio.sleep(3600)  # stalls until the client gives up and disconnects
        if call is not None:
            fn = call["function"]
            await resp.write(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": call["id"],
                                "type": "function",
                                "function": {"name": fn["name"], "arguments": ""},
                            }
                        ]
                    }
                )
            )
            args = fn["arguments"]
            for i in range(0, len(args), 8):
                await resp.write(
                    chunk(
                        {"tool_calls": [{"index": 0, "function": {"arguments": args[i : i + 8]}}]}
                    )
                )
        else:
            words = text.split(" ")
            for i, w in enumerate(words):
                await resp.write(chunk({"content": w if i == 0 else " " + w}))
        await resp.write(chunk({}, finish))
        await resp.write(
            b"data: "
            + json.dumps(
                {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "model": model,
                    "created": created,
                    "choices": [],
                    "usage": usage,
                }
            ).encode()
            + b"\n\n"
        )
        await resp.write(b"data: [DONE]\n\n")
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
        self.replies.clear()
        self.accepted.clear()
        return web.json_response({"reset": True})


_SIM_KEY = web.AppKey("simulator", _Simulator)


def make_app(config: SimConfig, *, record_bodies: bool = False) -> web.Application:
    """The simulator as an aiohttp application (its state at ``app[_SIM_KEY]``)."""
    sim = _Simulator(config, record_bodies)
    app = web.Application(client_max_size=64 * 1024**2)
    app[_SIM_KEY] = sim
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/chat/completions", sim.handle)
    app.router.add_get("/v1/models", sim.models)
    app.router.add_get("/_sim/stats", sim.get_stats)
    app.router.add_get("/v1/_sim/stats", sim.get_stats)
    app.router.add_post("/_sim/reset", sim.reset)
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
