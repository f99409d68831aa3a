"""Scenario H: images and memory. The same 10,000 rows run twice against the simulator,
without images and with a 100 KB PNG a row (``--image-column``, 100 distinct files cycled,
each read when its row is sent and sent as a base64 block to a Claude model): the peak RSS
of the second may exceed the first's by at most 60 MB.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

#: What a row's image may add to the run's peak memory, at most.
TARGET_MB = 60


def png_of_size(size: int, seed: int) -> bytes:
    """A valid PNG of about ``size`` bytes (incompressible pixels)."""
    width = 256
    height = max(1, size // (width * 3))
    rng = seed * 2654435761 % 2**32
    raw = bytearray()
    for _ in range(height):
        raw.append(0)
        for _ in range(width * 3):
            rng = (rng * 1103515245 + 12345) % 2**31
            raw.append(rng >> 23)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(raw), 1)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def make_input(tmp: Path, rows: int, files: int = 100) -> Path:
    folder = tmp / "H-images"
    folder.mkdir(exist_ok=True)
    for k in range(files):
        (folder / f"{k}.png").write_bytes(png_of_size(100 * 1024, k))
    src = tmp / "H.jsonl"
    with src.open("w") as f:
        for i in range(rows):
            row = {"id": i, "prompt": f"describe picture {i}", "img": f"H-images/{i % files}.png"}
            f.write(json.dumps(row) + "\n")
    return src


def scenario(tmp: Path, rows: int) -> list[str]:
    """The two runs; Markdown lines for bench/latest.md."""
    from bench.harness import Simulator, run_client

    src = make_input(tmp, rows)
    size = (tmp / "H-images" / "0.png").stat().st_size
    results = []
    for label, extra in (("without images", []), ("with images", ["--image-column", "img"])):
        sim = Simulator()
        try:
            out = tmp / f"H-{len(extra)}.out.parquet"
            base = ["--input", str(src), "--base-url", sim.url, "--concurrency", "64"]
            results.append((label, run_client([*base, *extra], out), sim.stats()))
        finally:
            sim.close()
    (_, plain, _), (_, images, stats) = results
    delta = images.max_rss_mb - plain.max_rss_mb
    ok = "within" if delta <= TARGET_MB else "OVER"
    return [
        f"- H: {rows:,} rows, a {size / 1024:,.0f} KB PNG a row (base64 blocks to a Claude model): "
        f"peak RSS {images.max_rss_mb:.0f} MB with images, {plain.max_rss_mb:.0f} MB without "
        f"(+{delta:.0f} MB; target ≤ +{TARGET_MB} MB: {ok}); {rows / images.wall_s:,.0f} rows/s "
        f"with images, {rows / plain.wall_s:,.0f} without; exit {plain.exit_code} / "
        f"{images.exit_code}; simulator answered {stats.get('ok', 0):,}."
    ]
