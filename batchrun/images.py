"""Images of a row (``--image-column``): what a value may be, and what is checked before
anything is sent.

A value is a local path (relative to the input file), an ``http(s)`` URL, raw bytes (a
Parquet binary column), a ``data:`` URL, or a list of these; null is no image. The
validation pass checks each one without reading it whole: a file must exist and be
readable, its media type (from the bytes, never the name) one of JPEG, PNG, GIF and WebP,
its size within the provider's limit. A URL is only checked for its form here: it is
fetched when its row is sent (:mod:`batchrun.send.images`). Image tokens are estimated
from the dimensions in the header, as Anthropic counts them (width * height / 750, at most
about 1,600 a picture), or at that most when the dimensions are not known.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Defined with the package's other exceptions; the name stays importable from here, where
# the builder looks for it.
from batchrun.errors import ImageProblem as ImageProblem
from batchrun.errors import UsageError
from batchrun.io.files import open_regular

MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
#: Anthropic's limit for one image; OpenAI-shaped servers take more.
MAX_BYTES_CLAUDE = 5 * 1024 * 1024
MAX_BYTES_OTHER = 20 * 1024 * 1024
#: Tokens an image is estimated at when its dimensions are not known (Anthropic's most).
MAX_IMAGE_TOKENS = 1600
#: Bytes of a file read to learn its type and dimensions.
HEAD_BYTES = 64 * 1024
#: Images one row may carry.
MAX_IMAGES_PER_ROW = 20


def is_claude(model: str) -> bool:
    """Claude models take only Anthropic image blocks (base64) through the gateway."""
    return model.startswith(("anthropic/", "claude"))


def max_image_bytes(model: str) -> int:
    return MAX_BYTES_CLAUDE if is_claude(model) else MAX_BYTES_OTHER


def sniff(data: bytes) -> str | None:
    """The media type the bytes are (one of :data:`MEDIA_TYPES`), or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an image's header, where it says so early enough."""
    try:
        kind = sniff(data)
        if kind == "image/png" and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return w, h
        if kind == "image/gif":
            w, h = struct.unpack("<HH", data[6:10])
            return w, h
        if kind == "image/webp":
            chunk = data[12:16]
            if chunk == b"VP8 ":
                w, h = struct.unpack("<HH", data[26:30])
                return w & 0x3FFF, h & 0x3FFF
            if chunk == b"VP8L":
                b = data[21:25]
                w = 1 + (((b[1] & 0x3F) << 8) | b[0])
                h = 1 + (((b[3] & 0xF) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6))
                return w, h
            if chunk == b"VP8X":
                w = 1 + int.from_bytes(data[24:27], "little")
                h = 1 + int.from_bytes(data[27:30], "little")
                return w, h
        if kind == "image/jpeg":
            return _jpeg_dimensions(data)
    except (struct.error, IndexError):
        return None
    return None


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        i += 2 + length
    return None


def image_tokens(dims: tuple[int, int] | None) -> int:
    if dims is None or dims[0] <= 0 or dims[1] <= 0:
        return MAX_IMAGE_TOKENS
    return max(1, min(MAX_IMAGE_TOKENS, -(-dims[0] * dims[1] // 750)))


@dataclass(frozen=True, slots=True)
class ImageRef:
    """One image of a row, by reference: ``kind`` is path, url, bytes or data."""

    kind: str
    #: The resolved path, the URL, the bytes, or the data URL.
    value: str | bytes
    #: How messages name it (the path as given, the URL; never the bytes).
    label: str


def refs_of(value: Any, base_dir: Path) -> list[ImageRef]:
    """The images of a column value (null: none); ImageProblem for anything else."""
    if value is None:
        return []
    items = value if isinstance(value, list | tuple) else [value]
    if len(items) > MAX_IMAGES_PER_ROW:
        raise ImageProblem(f"{len(items)} images; at most {MAX_IMAGES_PER_ROW} a row are sent")
    return [_ref(item, base_dir) for item in items if item is not None]


def _ref(item: Any, base_dir: Path) -> ImageRef:
    if isinstance(item, bytes | bytearray | memoryview):
        return ImageRef("bytes", bytes(item), f"{len(item):,} bytes")
    if not isinstance(item, str) or not item.strip():
        raise ImageProblem(
            f"an image must be a path, an http(s) or data: URL, or bytes, not {type(item).__name__}"
        )
    text = item.strip()
    lower = text[:8].lower()
    if lower.startswith("data:"):
        return ImageRef("data", text, "data: URL")
    if lower.startswith(("http://", "https://")):
        if any(c.isspace() or ord(c) < 32 for c in text) or len(text) > 8192:
            raise ImageProblem(f"image URL {text[:80]!r} is not a valid URL")
        return ImageRef("url", text, text[:200])
    if "://" in text[:16]:
        raise ImageProblem(f"image {text[:80]!r}: only http(s) and data: URLs are fetched")
    path = Path(text)
    return ImageRef("path", str(path if path.is_absolute() else base_dir / path), text[:200])


def decode_data_url(url: str) -> tuple[str, bytes]:
    """(declared media type, bytes) of a ``data:<type>;base64,<data>`` URL."""
    head, sep, data = url.partition(",")
    if not sep or not head.lower().endswith(";base64"):
        raise ImageProblem("a data: URL must be base64 (data:image/png;base64,...)")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ImageProblem("the data: URL is not valid base64") from None
    return head[5:-7].lower(), raw


def check_bytes(data: bytes, size: int, label: str, max_bytes: int, declared: str = "") -> str:
    """The media type of an image's bytes (its head, for a file); ImageProblem when it is
    none of the four, not what a data: URL declares, or larger than ``max_bytes``."""
    media = sniff(data)
    if media is None:
        raise ImageProblem(
            f"image {label} is not a JPEG, PNG, GIF or WebP image (judged by its bytes)"
        )
    if declared and declared != media:
        raise ImageProblem(f"image {label} says {declared} but its bytes are {media}")
    if size > max_bytes:
        raise ImageProblem(
            f"image {label} is {size:,} bytes; the limit for this model is {max_bytes:,}"
        )
    return media


def read_file(path: str, label: str, limit: int | None) -> tuple[bytes, int]:
    """(the first ``limit`` bytes, or all, and the file's size); ImageProblem if it is no
    readable regular file (a FIFO would block the run)."""
    try:
        with open_regular(Path(path), "image file") as f:
            size = os.fstat(f.fileno()).st_size
            return f.read(limit if limit is not None else -1), size
    except UsageError as exc:
        # The message names the resolved path; the label is the value as the row gave it.
        raise ImageProblem(exc.message.replace(path, label, 1)) from None
    except OSError as exc:
        raise ImageProblem(f"image file {label} cannot be read ({exc.strerror})") from None


def check_ref(ref: ImageRef, max_bytes: int) -> int:
    """Check one image before anything is sent; return its token estimate."""
    if ref.kind == "url":
        return MAX_IMAGE_TOKENS
    if ref.kind == "path":
        assert isinstance(ref.value, str)
        head, size = read_file(ref.value, ref.label, HEAD_BYTES)
        check_bytes(head, size, ref.label, max_bytes)
        return image_tokens(dimensions(head))
    if ref.kind == "data":
        assert isinstance(ref.value, str)
        declared, data = decode_data_url(ref.value)
    else:
        assert isinstance(ref.value, bytes)
        declared, data = "", ref.value
    check_bytes(data, len(data), ref.label, max_bytes, declared)
    return image_tokens(dimensions(data))
