"""Hostile servers over real sockets on 127.0.0.1: one mode per misbehaviour, the real CLI.

A small aiohttp.web server (one catch-all handler, its ``mode`` chosen per test) echoes the
API key everywhere a server can put text, redirects, drops connections; each test runs
``batchrun run`` against it and checks what was stored and printed.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from aiohttp import web

from tests.conftest import run_cli, write_jsonl

KEY = "sk-canary-7f3a9c1e5b2d4f6a8c0e"
ROWS = 10
#: Padding put before the echoed key, one a row: the key straddles the 120- and
#: 300-character cuts of stored texts (with the few characters of prefix a message gets).
PADS = (0, 95, 100, 105, 110, 115, 275, 280, 285, 290)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Hostile:
    """What the server does (``mode``) and what it saw."""

    mode: str = "ok"
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    echoed: int = 0
    dropped: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def _completion(
    prompt: str, *, model: str = "m", rid: str = "r", content: str = "fine"
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "model": model,
        "created": 0,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


def _sse(*chunks: str) -> web.Response:
    text = "".join(f"data: {c}\n\n" for c in chunks)
    return web.Response(body=text.encode(), content_type="text/event-stream")


def _echo(h: Hostile, request: web.Request, prompt: str) -> str:
    """The Authorization header's key, with the row's padding before it."""
    h.echoed += 1
    key = request.headers.get("Authorization", "").removeprefix("Bearer ")
    pad = PADS[int(prompt.split()[-1]) % len(PADS)]
    return "x" * pad + key


def _json_error(status: int, **headers: str) -> Callable[[Hostile, web.Request, str], web.Response]:
    def reply(h: Hostile, request: web.Request, prompt: str) -> web.Response:
        return web.json_response(
            {"error": {"message": _echo(h, request, prompt)}}, status=status, headers=headers
        )

    return reply


def _tool_calls(h: Hostile, request: web.Request, prompt: str) -> web.Response:
    body = _completion(prompt)
    body["choices"][0]["message"]["tool_calls"] = [
        {
            "id": "c1",
            "type": "function",
            "function": {"name": "f", "arguments": json.dumps({"a": _echo(h, request, prompt)})},
        }
    ]
    body["choices"][0]["finish_reason"] = "tool_calls"
    return web.json_response(body, status=201)


def _model_and_id(h: Hostile, request: web.Request, prompt: str) -> web.Response:
    echo = _echo(h, request, prompt)
    return web.json_response(_completion(prompt, model=echo, rid=echo), status=201)


def _headers(h: Hostile, request: web.Request, prompt: str) -> web.Response:
    echo = _echo(h, request, prompt)
    return web.json_response(
        _completion(prompt),
        status=201,
        headers={"x-ratelimit-remaining-requests": echo, "x-litellm-response-cost": echo},
    )


#: Canary modes: each echoes the key (after the row's padding) in one place.
ECHO_MODES: dict[str, Callable[[Hostile, web.Request, str], web.Response]] = {
    "json_400": _json_error(400),
    "json_404": _json_error(404),
    "json_422": _json_error(422),
    "json_500": _json_error(500, **{"Retry-After": "0"}),
    "json_429": _json_error(429, **{"Retry-After": "0"}),
    "text_error": lambda h, r, p: web.Response(status=400, text=_echo(h, r, p)),
    "not_completion_201": lambda h, r, p: web.json_response({"echo": _echo(h, r, p)}, status=201),
    "stream_not_json": lambda h, r, p: _sse("{not json " + _echo(h, r, p)),
    "stream_error": lambda h, r, p: _sse(json.dumps({"error": {"message": _echo(h, r, p)}})),
    "model_and_id": _model_and_id,
    "tool_calls": _tool_calls,
    "content": lambda h, r, p: web.json_response(
        _completion(p, content=_echo(h, r, p)), status=201
    ),
    "headers": _headers,
}


async def _handle(h: Hostile, request: web.Request) -> web.StreamResponse:
    body = await request.read()
    h.seen.append(Seen(request.method, request.path, dict(request.headers), body))
    if request.method != "POST":
        return web.Response(status=405, text="POST only")
    prompt = json.loads(body)["messages"][-1]["content"] if body else ""
    mode = h.mode
    if mode in ECHO_MODES:
        return ECHO_MODES[mode](h, request, prompt)
    if mode == "redirect_302":
        raise web.HTTPFound(f"http://127.0.0.1:{h.port}/elsewhere")
    if mode == "redirect_307":
        if request.path == "/v1/chat/completions":
            raise web.HTTPTemporaryRedirect("/v2/chat/completions")
        return web.json_response(_completion(prompt), status=201)
    if mode == "redirect_loop":
        raise web.HTTPTemporaryRedirect(request.path)
    if mode == "drop_once":
        if prompt not in h.dropped:
            h.dropped.add(prompt)
            # The request was read in full: the server may have done (and billed) the work.
            assert request.transport is not None
            request.transport.abort()
            await asyncio.sleep(0.5)
        return web.json_response(_completion(prompt), status=201)
    return web.json_response(_completion(prompt), status=201)


class HostileThread:
    """The hostile server in its own thread and event loop."""

    def __init__(self) -> None:
        self.state = Hostile()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()

        async def handler(request: web.Request) -> web.StreamResponse:
            return await _handle(self.state, request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.state.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def start(self) -> Hostile:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("hostile server did not start in 10 s")
        return self.state

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def server() -> Iterator[Hostile]:
    t = HostileThread()
    yield t.start()
    t.stop()


def _run(tmp_path: Path, base_url: str, *extra: str, key: str = KEY) -> tuple[Any, Path]:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "prompt": f"row {i}"} for i in range(ROWS)])
    out = tmp_path / "out" / "labels.parquet"
    proc = run_cli(
        "run",
        "--input",
        str(inp),
        "--output",
        str(out),
        "--model",
        "m",
        "--base-url",
        base_url,
        "--max-attempts",
        "2",
        "--timeout",
        "5",
        "--concurrency",
        "4",
        "--quiet",
        # These servers answer every path with the same hostility; the model check's GET
        # is tested on its own (test_gateway.py).
        "--no-model-check",
        *extra,
        key=key,
        timeout=60,
    )
    return proc, out


def _rows(out: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = pq.read_table(out).to_pylist()
    return rows


def _summary(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(out.with_name("labels.summary.json").read_text())
    return data


def _leaks(secret: str, blobs: dict[str, bytes]) -> list[str]:
    """Where the secret, or any 12-character run of it, appears."""
    runs = {secret[i : i + 12] for i in range(len(secret) - 11)}
    return [
        f"{name}: {run!r}"
        for name, blob in blobs.items()
        for run in sorted(runs)
        if run.encode() in blob
    ]


_RUN_FLAGS: dict[str, tuple[str, ...]] = {
    "stream_not_json": ("--stream",),
    "stream_error": ("--stream",),
    "headers": ("--cost-header", "x-litellm-response-cost"),
}


@pytest.mark.parametrize("mode", sorted(ECHO_MODES))
def test_the_key_is_stored_and_printed_nowhere(server: Hostile, tmp_path: Path, mode: str) -> None:
    server.mode = mode
    proc, _out = _run(tmp_path, server.url, *_RUN_FLAGS.get(mode, ()))
    assert proc.returncode in (0, 3, 4), proc.stderr
    assert server.echoed >= 1, "the server never echoed the key: the test proves nothing"
    blobs = {str(p): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert any(name.endswith(".parquet") for name in blobs)
    # Parquet pages are compressed: search the values too, not only the bytes.
    for name in [n for n in blobs if n.endswith(".parquet")]:
        blobs[name + " (values)"] = repr(pq.read_table(name).to_pylist()).encode()
    blobs["stdout"] = proc.stdout.encode()
    blobs["stderr"] = proc.stderr.encode()
    assert _leaks(KEY, blobs) == []


def test_a_302_is_an_error_row_naming_the_location_and_never_a_get(
    server: Hostile, tmp_path: Path
) -> None:
    server.mode = "redirect_302"
    proc, out = _run(tmp_path, server.url)
    assert proc.returncode in (3, 4), proc.stderr
    rows = _rows(out)
    assert len(rows) == ROWS
    for row in rows:
        assert row["status"] == "error"
        assert row["error_type"] == "redirect"
        assert f"http://127.0.0.1:{server.port}/elsewhere" in row["error"]
    assert [s for s in server.seen if s.method != "POST"] == []
    assert all(s.path == "/v1/chat/completions" for s in server.seen)


def test_a_307_to_the_same_origin_is_followed_with_the_same_body(
    server: Hostile, tmp_path: Path
) -> None:
    server.mode = "redirect_307"
    proc, out = _run(tmp_path, server.url)
    assert proc.returncode == 0, proc.stderr
    assert [r["status"] for r in _rows(out)] == ["ok"] * ROWS
    assert all(s.method == "POST" for s in server.seen)
    first = {s.body for s in server.seen if s.path == "/v1/chat/completions"}
    followed = {s.body for s in server.seen if s.path == "/v2/chat/completions"}
    assert len(first) == ROWS
    assert followed == first


def test_a_redirect_loop_says_too_many_redirects(server: Hostile, tmp_path: Path) -> None:
    server.mode = "redirect_loop"
    proc, out = _run(tmp_path, server.url)
    assert proc.returncode in (3, 4), proc.stderr
    for row in _rows(out):
        assert row["status"] == "error"
        assert row["error_type"] == "redirect"
        assert "redirects" in row["error"]
        assert "unreadable answer" not in row["error"]


def test_a_dropped_connection_is_resent_with_the_same_key_and_counted(
    server: Hostile, tmp_path: Path
) -> None:
    server.mode = "drop_once"
    proc, out = _run(tmp_path, server.url)
    assert proc.returncode == 0, proc.stderr
    assert [r["status"] for r in _rows(out)] == ["ok"] * ROWS
    keys: dict[bytes, list[str]] = {}
    for s in server.seen:
        keys.setdefault(s.body, []).append(s.headers["Idempotency-Key"])
    assert len(keys) == ROWS
    resent = [k for k in keys.values() if len(k) > 1]
    assert len(resent) == ROWS
    assert all(len(k) == 2 and k[0] == k[1] for k in resent), keys
    assert _summary(out)["rows_possibly_charged_twice"] == len(resent)


def test_nothing_listening_counts_no_request(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Closed now: connections to the port are refused.
    proc, out = _run(tmp_path, f"http://127.0.0.1:{port}/v1")
    assert proc.returncode in (3, 4), proc.stderr
    assert _summary(out)["requests_sent"] == 0


def test_credentials_in_the_base_url_are_refused(server: Hostile, tmp_path: Path) -> None:
    proc, _out = _run(tmp_path, f"http://user:secret@127.0.0.1:{server.port}/v1")
    assert proc.returncode == 2, proc.stderr
    assert "secret" not in proc.stderr and "secret" not in proc.stdout
    assert "--base-url" in proc.stderr or "base_url" in proc.stderr
    assert server.seen == []
