"""The client: one attempt of one request over a transport, in a dialect.

``complete(request, key)`` returns a :class:`Completion` or raises a :class:`SendFailed`
subclass (:mod:`batchrun.errors`); retrying is the caller's business (:mod:`.attempt`).
Everything the server sent is redacted before it is kept: texts of the answer, error
messages, headers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import TracebackType
from typing import Protocol

from batchrun import fastjson
from batchrun.errors import SendFailed
from batchrun.records import Completion, Request
from batchrun.send.dialect import ERROR_BODY_MAX, TEXT_MAX, ChatCompletions
from batchrun.send.redact import Redactor
from batchrun.send.retrying import classify_status, error_type_for_status, parse_retry_after
from batchrun.send.transport import HttpTransport, Reply, Transport

#: Rate-limit headers kept (x-ratelimit-*), each value bounded.
_HEADER_MAX = 100


class CompletionClient(Protocol):
    """What the send path needs of a client: one attempt per call."""

    async def complete(self, request: Request, idempotency_key: str) -> Completion: ...


class ApiClient:
    """Transport + dialect + redaction; use as ``async with ApiClient(...) as client``."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        concurrency: int,
        timeout_s: float,
        read_timeout_s: float | None = None,
        cost_header: str | None = None,
        dialect: ChatCompletions | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.redact = Redactor([api_key])
        self.dialect = dialect or ChatCompletions()
        self._own_transport = transport is None
        self.transport: Transport = transport or HttpTransport(
            base_url,
            api_key,
            concurrency=concurrency,
            timeout_s=timeout_s,
            read_timeout_s=read_timeout_s,
            redactor=self.redact,
        )
        self.url = base_url.rstrip("/") + self.dialect.path
        self._cost_header = cost_header
        #: Last rate-limit headers seen (x-ratelimit-*), for the limiter and the progress line.
        self.ratelimit: dict[str, str] = {}

    async def __aenter__(self) -> ApiClient:
        if self._own_transport and isinstance(self.transport, HttpTransport):
            await self.transport.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._own_transport and isinstance(self.transport, HttpTransport):
            await self.transport.__aexit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return (
            f"ApiClient(url={self.url!r}, transport={self.transport!r}, dialect={self.dialect!r})"
        )

    async def complete(self, request: Request, idempotency_key: str) -> Completion:
        """Send one request; return the parsed answer or raise a SendFailed subclass."""
        data = fastjson.dumps(self.dialect.encode(request))
        async with self.transport.post(
            self.dialect.path, data, {"Idempotency-Key": idempotency_key}
        ) as reply:
            self._remember_ratelimit(reply.headers)
            if not 200 <= reply.status < 300:
                raise await self._failure(reply)
            try:
                if reply.content_type == "text/event-stream":
                    completion = await self.dialect.decode_stream(reply.lines())
                else:
                    completion = self.dialect.decode(await reply.read())
            except SendFailed as exc:
                raise self._redacted(exc) from None
            if self._cost_header is not None:
                completion.reported_cost_usd = parse_cost(reply.headers.get(self._cost_header))
            return self.redact.fields(completion)

    def _remember_ratelimit(self, headers: Mapping[str, str]) -> None:
        if any(h.lower().startswith("x-ratelimit") for h in headers):
            self.ratelimit = {
                k.lower()[:_HEADER_MAX]: self.redact.clean(v, _HEADER_MAX)
                for k, v in headers.items()
                if k.lower().startswith("x-ratelimit")
            }

    async def _failure(self, reply: Reply) -> SendFailed:
        raw = await reply.read(ERROR_BODY_MAX)
        message = self.dialect.error_message(raw)
        cls = classify_status(reply.status)
        return cls(
            error_type_for_status(reply.status),
            self.redact.clean(f"HTTP {reply.status}: {message}", TEXT_MAX),
            status=reply.status,
            retry_after_s=parse_retry_after(reply.headers),
        )

    def _redacted(self, exc: SendFailed) -> SendFailed:
        exc.message = self.redact.clean(exc.message, TEXT_MAX)
        exc.args = (exc.message,)
        return exc


def parse_cost(value: str | None) -> float | None:
    """A cost header's value in USD ("0.0012", "$0.0012"); None if absent or not a number."""
    if value is None:
        return None
    try:
        cost = float(value.strip().removeprefix("$"))
    except ValueError:
        return None
    return cost if math.isfinite(cost) and cost >= 0 else None
