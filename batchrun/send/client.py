"""The client: one attempt of one request over a transport, in a dialect.

``complete(request, key)`` returns a :class:`Completion` or raises a :class:`SendFailed`
subclass (:mod:`batchrun.errors`); retrying is the caller's business (:mod:`.attempt`).
Everything the server sent is redacted before it is kept: texts of the answer, error
messages, headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Protocol

from batchrun import fastjson
from batchrun.errors import EmbeddedError, SendFailed
from batchrun.records import Completion, Request
from batchrun.send import spend
from batchrun.send.dialect import ERROR_BODY_MAX, TEXT_MAX, ChatCompletions
from batchrun.send.images import ImageLoader
from batchrun.send.redact import Redactor
from batchrun.send.retrying import classify_status, error_type_for_status, parse_retry_after
from batchrun.send.tracing import CLIENT_REQUEST_ID_HEADER, INFERENCE_ID_HEADER, server_id
from batchrun.send.transport import HttpTransport, Reply, Transport

#: Bytes of a model list read, and models looked at (a gateway lists a few hundred).
MODELS_BODY_MAX = 4 * 1024 * 1024
MODELS_MAX = 20_000


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
        cost_header: str | None = spend.GATEWAY_USD_HEADER,
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
        self.images = ImageLoader(timeout_s=timeout_s, redactor=self.redact)

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
        await self.images.close()
        if self._own_transport and isinstance(self.transport, HttpTransport):
            await self.transport.__aexit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return (
            f"ApiClient(url={self.url!r}, transport={self.transport!r}, dialect={self.dialect!r})"
        )

    async def complete(self, request: Request, idempotency_key: str) -> Completion:
        """Send one request; return the parsed answer or raise a SendFailed subclass."""
        # A row's images are read (or fetched) now, and dropped with the body.
        images = await self.images.load(request) if request.images else ()
        data = fastjson.dumps(self.dialect.encode(request, images))
        del images
        headers = {"Idempotency-Key": idempotency_key}
        if request.client_request_id is not None:
            headers[CLIENT_REQUEST_ID_HEADER] = request.client_request_id
        async with self.transport.post(self.dialect.path, data, headers) as reply:
            # On every answer of the gateway, streamed or not, errors too: the id the
            # charge is recorded under. Untrusted: kept only as a short safe string.
            inference_id = server_id(reply.headers.get(INFERENCE_ID_HEADER))
            if not 200 <= reply.status < 300:
                raise await self._failure(reply, inference_id)
            try:
                if reply.content_type == "text/event-stream":
                    completion = await self.dialect.decode_stream(reply.lines())
                else:
                    completion = self.dialect.decode(await reply.read())
            except SendFailed as exc:
                exc.inference_id = self._clean_id(inference_id)
                raise self._redacted(exc) from None
            except EmbeddedError as exc:
                raise self._failed(
                    exc.status, exc.message, exc.request_id, inference_id, {}
                ) from None
            # A header wins over what the body says (a stream's meta event, usage.cost): a
            # proxy may add its own.
            reported = spend.from_headers(reply.headers, self._cost_header)
            if reported.usd is not None:
                completion.reported_cost_usd = reported.usd
            if reported.credits is not None:
                completion.credits_used = reported.credits
            completion.inference_id = inference_id
            return self.redact.fields(completion)

    async def list_models(self) -> list[str]:
        """The model ids ``GET {base}/models`` lists; SendFailed when it lists none (a
        missing endpoint, an error, a body that is no model list)."""
        get = getattr(self.transport, "get", None)
        if get is None:
            raise SendFailed("not_found", "this transport cannot list models")
        status, raw = await get("/models", MODELS_BODY_MAX)
        if status != 200:
            message, _ = self.dialect.error_info(raw[:ERROR_BODY_MAX])
            raise SendFailed(
                error_type_for_status(status),
                self.redact.clean(f"HTTP {status}: {message}", TEXT_MAX),
                status=status,
            )
        try:
            data = fastjson.loads(raw, exact_ints=False)["data"]
            ids = [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
        except (KeyError, TypeError, ValueError, UnicodeDecodeError):
            raise SendFailed("invalid_response", "the model list is not {data: [{id}]}") from None
        # Untrusted: names are shown in messages, so bounded and redacted.
        return [self.redact.clean(i, 200) for i in ids[:MODELS_MAX]]

    async def _failure(self, reply: Reply, inference_id: str | None) -> SendFailed:
        raw = await reply.read(ERROR_BODY_MAX)
        message, request_id = self.dialect.error_info(raw)
        return self._failed(reply.status, message, request_id, inference_id, reply.headers)

    def _failed(
        self,
        status: int,
        message: str,
        request_id: str | None,
        inference_id: str | None,
        headers: Mapping[str, str],
    ) -> SendFailed:
        """The failure for an error answer; the error row keeps the message and the
        server's request id (the gateway's ``requestId``: what its support asks for)."""
        # The request id stays out of the message: the same error on row after row must
        # read the same (it stops the run); the error row adds it (see attempt.py).
        exc = classify_status(status)(
            error_type_for_status(status),
            self.redact.clean(f"HTTP {status}: {message}", TEXT_MAX),
            status=status,
            retry_after_s=parse_retry_after(headers, names=self.dialect.profile.retry_headers),
            request_id=self._clean_id(request_id),
        )
        exc.inference_id = self._clean_id(inference_id)
        return exc

    def _clean_id(self, value: str | None) -> str | None:
        return None if value is None else self.redact(value)

    def _redacted(self, exc: SendFailed) -> SendFailed:
        exc.message = self.redact.clean(exc.message, TEXT_MAX)
        exc.args = (exc.message,)
        return exc
