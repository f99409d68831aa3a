"""Small real images for the tests, made without an imaging library: a PNG (zlib-encoded
scanlines), a JPEG and a WebP whose headers say their size."""

from __future__ import annotations

import struct
import zlib


def png(width: int = 4, height: int = 3, seed: int = 0) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = b"".join(
        b"\x00" + bytes((x * 40 + y * 7 + seed) % 256 for x in range(width * 3))
        for y in range(height)
    )
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def jpeg(width: int = 8, height: int = 6, seed: int = 0) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof0 + bytes([seed % 256]) * 16 + b"\xff\xd9"


def webp(width: int = 5, height: int = 7, seed: int = 0) -> bytes:
    bits = (width - 1) | ((height - 1) << 14)
    body = b"\x2f" + struct.pack("<I", bits) + bytes([seed % 256]) * 8
    chunk = b"VP8L" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def padded_png(size: int) -> bytes:
    """A PNG of at least ``size`` bytes (an ancillary chunk of padding)."""
    base = png()
    pad = max(0, size - len(base))
    extra = struct.pack(">I", pad) + b"teXt" + b"\x00" * pad + b"\x00\x00\x00\x00"
    return base[:33] + extra + base[33:]
