"""The transport over real sockets on 127.0.0.1: what goes wrong on a connection, on the
way in and while the body is read inside ``async with transport.post(...)``, comes out as
the right Retryable; anything else passes through untouched; the connection is given back."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from batchrun.errors import Retryable, RowFailed
from batchrun.send.transport import HttpTransport

#: A raw server's handler: reads the request, writes what it likes on the stream.
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"


async def _read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        0,
    )  # fmt: skip
    await reader.readexactly(length)


async def _cut_off(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(HEAD + b'{"choices": ')  # 12 of the 100 bytes promised
    await writer.drain()
    writer.close()


async def _stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await _read_request(reader)
        writer.write(HEAD + b'{"choices": ')
        await writer.drain()
        await asyncio.sleep(5)
    finally:
        writer.close()


async def _whole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            await _read_request(reader)
            writer.write(HEAD + b"x" * 100)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _post(
    handler: Handler,
    inside: Callable[..., Awaitable[object]],
    *,
    read_timeout_s: float | None = None,
) -> BaseException | None:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = HttpTransport(
        f"http://127.0.0.1:{port}", "k", concurrency=2, timeout_s=3, read_timeout_s=read_timeout_s
    )
    caught: BaseException | None = None
    try:
        async with transport:
            try:
                async with transport.post("/chat/completions", b"{}", {}) as reply:
                    await inside(reply)
            except Exception as exc:
                caught = exc
            session = transport._session
            assert session is not None
            connector = session.connector
            assert connector is not None
            # Whatever happened inside, the connection is not held any more.
            assert not connector._acquired
    finally:
        server.close()
        await server.wait_closed()
    return caught


async def _read(reply: object) -> object:
    return await reply.read()  # type: ignore[attr-defined]


def test_a_body_cut_off_while_read_inside_the_block_is_retryable_with_unknown_outcome() -> None:
    exc = asyncio.run(_post(_cut_off, _read))
    assert type(exc) is Retryable
    assert exc.error_type == "connection_error"
    assert exc.message.startswith("answer cut off")
    assert exc.sent and not exc.definite  # the server may have done (and billed) the work


def test_a_body_that_stalls_past_the_read_timeout_is_a_timeout() -> None:
    exc = asyncio.run(_post(_stall, _read, read_timeout_s=0.3))
    assert type(exc) is Retryable
    assert exc.error_type == "timeout"
    assert "silent for 0.3 s" in exc.message
    assert not exc.definite


def test_the_callers_own_failure_inside_the_block_passes_through_untouched() -> None:
    mine = RowFailed("invalid_response", "not a completion")

    async def refuse(reply: object) -> None:
        await _read(reply)
        raise mine

    exc = asyncio.run(_post(_whole, refuse))
    assert exc is mine


def test_a_whole_answer_is_read_and_the_connection_given_back() -> None:
    got: list[object] = []

    async def keep(reply: object) -> None:
        got.append((reply.status, await _read(reply)))  # type: ignore[attr-defined]

    exc = asyncio.run(_post(_whole, keep))
    assert exc is None
    assert got == [(200, b"x" * 100)]


def test_nothing_listening_is_retryable_and_never_sent() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def go() -> BaseException | None:
        async with HttpTransport(f"http://127.0.0.1:{port}", "k", concurrency=1, timeout_s=3) as t:
            try:
                async with t.post("/x", b"{}", {}):
                    pass
            except Retryable as exc:
                return exc
        return None

    exc = asyncio.run(go())
    assert isinstance(exc, Retryable)
    assert exc.message.startswith("cannot connect")
    assert not exc.sent
