"""Images when their row is sent: read the file, decode the data URL, fetch the URL.

Nothing is held longer than its request: a row's images are read as it is sent and
dropped with its body. A URL is fetched by batchrun only where the model needs the bytes
(Claude models take base64 blocks only); otherwise it is passed on as it is. The fetch uses
a session of its own that carries no ``Authorization``: the API key goes to the API and
nowhere else. What comes back is bounded (the provider's size limit) and checked like a
local file (the media type from the bytes).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp

from batchrun import __version__
from batchrun.errors import ImageProblem, Retryable, RowFailed
from batchrun.images import (
    ImageRef,
    check_bytes,
    decode_data_url,
    is_claude,
    max_image_bytes,
    read_file,
)
from batchrun.records import Request
from batchrun.send.redact import Redactor

#: The error type of a row whose image cannot be sent (changed since the check, a URL
#: that does not give an image).
IMAGE_ERROR = "invalid_image"
_TEXT_MAX = 300


@dataclass(frozen=True, slots=True)
class LoadedImage:
    """An image ready for the dialect: its bytes and type, or a URL passed on."""

    media_type: str | None
    data: bytes | None
    url: str | None = None


class ImageLoader:
    """Loads a request's images; owns the session that fetches URLs (made on first use)."""

    def __init__(self, *, timeout_s: float, redactor: Redactor | None = None) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._redact = redactor or Redactor([])
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"ImageLoader(timeout={self.timeout.total})"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def load(self, request: Request) -> list[LoadedImage]:
        model = str(request.params.get("model", ""))
        inline_urls, limit = is_claude(model), max_image_bytes(model)
        out = []
        for ref in request.images:
            try:
                out.append(await self._one(ref, inline_urls, limit))
            except ImageProblem as exc:
                # Found before the request left: nothing was sent, nothing can be billed.
                message = self._redact.clean(str(exc), _TEXT_MAX)
                raise RowFailed(IMAGE_ERROR, message, sent=False) from None
        return out

    async def _one(self, ref: ImageRef, inline_urls: bool, limit: int) -> LoadedImage:
        if ref.kind == "url":
            assert isinstance(ref.value, str)
            if not inline_urls:
                return LoadedImage(None, None, ref.value)
            data = await self._fetch(ref.value, ref.label, limit)
            return LoadedImage(check_bytes(data, len(data), ref.label, limit), data)
        if ref.kind == "path":
            assert isinstance(ref.value, str)
            # The file may have changed since the validation pass: checked again.
            data, size = await asyncio.to_thread(read_file, ref.value, ref.label, limit + 1)
            return LoadedImage(check_bytes(data, max(size, len(data)), ref.label, limit), data)
        if ref.kind == "data":
            assert isinstance(ref.value, str)
            declared, data = decode_data_url(ref.value)
            return LoadedImage(check_bytes(data, len(data), ref.label, limit, declared), data)
        assert isinstance(ref.value, bytes)
        return LoadedImage(check_bytes(ref.value, len(ref.value), ref.label, limit), ref.value)

    async def _fetch(self, url: str, label: str, limit: int) -> bytes:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self.timeout,
                headers={"User-Agent": f"batchrun/{__version__}"},
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        try:
            async with self._session.get(url, max_redirects=5) as resp:
                if resp.status >= 500 or resp.status == 429:
                    # The API has seen nothing yet: a wait and another try cost nothing.
                    raise Retryable(
                        "connection_error", f"image {label}: HTTP {resp.status}", sent=False
                    )
                if resp.status != 200:
                    raise ImageProblem(f"image {label} could not be fetched: HTTP {resp.status}")
                data = await resp.content.read(limit + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Retryable(
                "connection_error",
                self._redact.clean(
                    f"image {label} could not be fetched ({type(exc).__name__})", _TEXT_MAX
                ),
                sent=False,
            ) from None
        if len(data) > limit:
            raise ImageProblem(f"image {label} is larger than {limit:,} bytes, the model's limit")
        return data
