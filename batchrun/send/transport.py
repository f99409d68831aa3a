"""The transport: moves bytes. One aiohttp session per run, POST a body, hand back the reply.

It knows no wire format: the dialect encodes bodies and reads answers, the client maps
statuses to failure classes. What it owns is the connection and what can go wrong on it:
timeouts, dropped connections, replies that are not HTTP, and redirects. A POST is never
turned into a GET: a redirect is an error naming its ``Location``, except a 307/308 to the
same origin, which is followed with the same body.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from types import TracebackType
from typing import Protocol
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

from batchrun import __version__
from batchrun.errors import Retryable, RowFailed
from batchrun.send.redact import Redactor

USER_AGENT = f"batchrun/{__version__}"
#: Redirects followed (307/308 to the same origin) before the row fails.
MAX_REDIRECTS = 3
_TEXT_MAX = 300


#: A request body: bytes, or an async iterable of bytes streamed as it is produced.
Body = bytes | AsyncIterable[bytes]


def _streamed(body: Body | None) -> bool:
    return body is not None and not isinstance(body, bytes)


class Reply(Protocol):
    """An answer being received: status and headers now, the body on demand."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...  # case-insensitive

    @property
    def content_type(self) -> str: ...

    async def read(self, limit: int | None = None) -> bytes:
        """The body (at most ``limit`` bytes of it)."""
        ...

    def lines(self) -> AsyncIterator[bytes]:
        """The body line by line (server-sent events)."""
        ...


class Transport(Protocol):
    """What the client needs of a transport (see :class:`HttpTransport`; tests fake it)."""

    def post(
        self, path: str, body: bytes, headers: Mapping[str, str]
    ) -> contextlib.AbstractAsyncContextManager[Reply]: ...


class BatchTransport(Transport, Protocol):
    """What the Batch API client needs besides POST: streamed bodies and GET."""

    def post(
        self, path: str, body: Body, headers: Mapping[str, str]
    ) -> contextlib.AbstractAsyncContextManager[Reply]: ...

    def stream_get(
        self, path: str, headers: Mapping[str, str] | None = None
    ) -> contextlib.AbstractAsyncContextManager[Reply]: ...


class _AiohttpReply:
    # Plain attributes, not properties: they are read on every answer.
    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status: int = resp.status
        self.headers: Mapping[str, str] = resp.headers

    @property
    def content_type(self) -> str:
        return self._resp.content_type

    async def read(self, limit: int | None = None) -> bytes:
        if limit is None:
            return await self._resp.read()
        return await self._resp.content.read(limit)

    def lines(self) -> AsyncIterator[bytes]:
        return self._resp.content.__aiter__()


class _Exchange:
    """One request and its reply, as ``async with``: the reply on entry (redirects
    followed), released on exit; failures of the connection, on entry or while the body is
    read inside the block, raised as :class:`Retryable`.

    A class rather than an ``asynccontextmanager``: that makes an async generator per
    request, and asyncio's bookkeeping of each one (a weak set entry, a finalizer) was a
    measurable share of the client's time on fast answers."""

    __slots__ = ("_body", "_headers", "_method", "_path", "_resp", "_session", "_transport")

    def __init__(
        self,
        transport: HttpTransport,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        body: Body | None,
        headers: Mapping[str, str],
    ) -> None:
        self._transport = transport
        self._session = session
        self._method = method
        self._path = path
        self._body = body
        self._headers = headers
        self._resp: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> Reply:
        t = self._transport
        url = t.base_url + self._path
        try:
            for _ in range(MAX_REDIRECTS + 1):
                resp = await self._session.request(
                    self._method, url, data=self._body, headers=self._headers,
                    allow_redirects=False,
                )  # fmt: skip
                if not 300 <= resp.status < 400:
                    self._resp = resp
                    return _AiohttpReply(resp)
                resp.release()
                url = t._redirect_target(url, resp, replayable=not _streamed(self._body))
        except Exception as exc:
            mapped = t.connection_failure(exc)
            if mapped is None:
                raise
            raise mapped from None
        raise RowFailed(
            "redirect",
            f"more than {MAX_REDIRECTS} redirects; point --base-url at the final address",
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        resp, self._resp = self._resp, None
        try:
            if resp is not None:
                await resp.__aexit__(exc_type, exc, tb)  # release it, wait for the writer
        except Exception as late:
            raise self._transport.connection_failure(late) or late from None
        if exc is not None and (mapped := self._transport.connection_failure(exc)) is not None:
            raise mapped from None


class HttpTransport:
    """Owns the aiohttp session; use as ``async with HttpTransport(...) as transport``."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        concurrency: int,
        timeout_s: float,
        read_timeout_s: float | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._concurrency = concurrency
        # A read timeout re-arms a timer on every chunk received: worth it for streams (a
        # stalled stream), pure cost for answers that arrive whole.
        self.timeout = aiohttp.ClientTimeout(
            total=timeout_s,
            sock_read=min(read_timeout_s, timeout_s) if read_timeout_s is not None else None,
        )
        self._redact = redactor or Redactor([api_key])
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpTransport:
        # The pool must fit the concurrency: aiohttp's default caps at 100 connections.
        connector = aiohttp.TCPConnector(limit=self._concurrency, limit_per_host=self._concurrency)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self.timeout,
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
        return f"HttpTransport(base_url={self.base_url!r}, concurrency={self._concurrency})"

    def post(self, path: str, body: Body, headers: Mapping[str, str]) -> _Exchange:
        """POST ``body`` to ``base_url + path``; yields the reply while it is read.

        Failures of the connection, inside this block too (while the body is read), are
        raised as :class:`Retryable` with ``definite=False``: the server may have done
        (and billed) the work. ``body`` may be an async iterable of bytes: it is streamed
        (chunked), never held whole, and so cannot follow a redirect."""
        return self.request("POST", path, body, headers)

    def stream_get(self, path: str, headers: Mapping[str, str] | None = None) -> _Exchange:
        """GET ``base_url + path`` (``path`` may hold a query), the reply read on demand;
        failures as for :meth:`post`."""
        return self.request("GET", path, None, headers or {})

    def request(
        self, method: str, path: str, body: Body | None, headers: Mapping[str, str]
    ) -> _Exchange:
        assert self._session is not None, "use HttpTransport as an async context manager"
        return _Exchange(self, self._session, method, path, body, headers)

    def connection_failure(self, exc: BaseException) -> Retryable | None:
        """The Retryable a failure of the connection is (None: not one of those)."""
        if isinstance(exc, aiohttp.ClientConnectorError):
            # No connection was made: the server never saw the request.
            return Retryable(
                "connection_error",
                f"cannot connect: {self._clean(str(exc)) or type(exc).__name__}",
                sent=False,
            )
        if isinstance(exc, TimeoutError):
            # aiohttp's timeouts are TimeoutError, not ClientError.
            t = self.timeout
            within = f"within {t.total:g} s" + (
                f" (or silent for {t.sock_read:g} s)" if t.sock_read is not None else ""
            )
            return Retryable("timeout", f"no complete answer {within}", definite=False)
        if isinstance(exc, aiohttp.ClientPayloadError):
            return Retryable(
                "connection_error", f"answer cut off: {self._clean(str(exc))}", definite=False
            )
        if isinstance(exc, aiohttp.ClientConnectionError):
            return Retryable(
                "connection_error",
                f"connection failed: {self._clean(str(exc)) or type(exc).__name__}",
                definite=False,
            )
        if isinstance(exc, (aiohttp.ClientError, HttpProcessingError)):
            # A reply that is not HTTP as aiohttp reads it (a malformed status line or
            # headers, say): whatever the server did with the request is unknown.
            return Retryable(
                "connection_error",
                f"unreadable answer ({type(exc).__name__}): {self._clean(str(exc)) or 'no detail'}",
                definite=False,
            )
        return None

    async def get(self, path: str, limit: int) -> tuple[int, bytes]:
        """GET ``base_url + path`` (no redirects followed): status and at most ``limit``
        bytes of the body. Connection failures raise :class:`Retryable`."""
        assert self._session is not None, "use HttpTransport as an async context manager"
        try:
            async with self._session.get(self.base_url + path, allow_redirects=False) as resp:
                return resp.status, await resp.content.read(limit)
        except TimeoutError:
            raise Retryable("timeout", "no answer in time", sent=False) from None
        except (aiohttp.ClientError, HttpProcessingError) as exc:
            raise Retryable(
                "connection_error", self._clean(str(exc)) or type(exc).__name__, sent=False
            ) from None

    def _redirect_target(
        self, url: str, resp: aiohttp.ClientResponse, *, replayable: bool = True
    ) -> str:
        """Where a 307/308 to the same origin leads; any other redirect fails the row (so
        does any redirect of a streamed body, which cannot be sent twice)."""
        location = resp.headers.get("Location")
        shown = self._clean(location) if location else "(no Location)"
        if location and replayable and resp.status in (307, 308):
            target = urljoin(url, location)
            a, b = urlsplit(url), urlsplit(target)
            if (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port):
                return target
        raise RowFailed(
            "redirect",
            f"HTTP {resp.status} redirect to {shown}: a POST is not re-sent elsewhere; "
            "point --base-url at that address if it is the API",
            status=resp.status,
        )

    def _clean(self, text: str) -> str:
        return self._redact.clean(text, _TEXT_MAX)
