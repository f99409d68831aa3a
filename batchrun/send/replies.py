"""Reading a batch reply's body in bounded pieces: a JSON answer's first bytes, and a results
file line by line (whatever its size, a line at a time; an overlong line skipped whole).

Both Batch API shapes (:mod:`batchrun.send.batch`, :mod:`batchrun.send.batch_openai`) read
their answers through these.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from batchrun.send.transport import Reply

#: A results line longer than this is not a result (bounded against a hostile server).
MAX_LINE = 16 * 1024 * 1024
_READ = 1 << 20


async def read_up_to(reply: Reply, limit: int) -> bytes:
    """The body, or its first ``limit`` bytes (a read may hand back less than it was asked)."""
    buf = bytearray()
    while len(buf) < limit:
        piece = await reply.read(limit - len(buf))
        if not piece:
            break
        buf += piece
    return bytes(buf)


async def split_lines(head: bytes, reply: Reply) -> AsyncIterator[bytes]:
    """Non-empty lines of ``head`` + the rest of the body; an overlong line is skipped
    whole (yielded as an empty line, which is no result)."""
    buf = bytearray(head)
    skipping = False
    while True:
        while (nl := buf.find(b"\n")) >= 0:
            line = bytes(buf[:nl]).strip()
            del buf[: nl + 1]
            if skipping:
                skipping = False
                yield b"-"  # the tail of an overlong line: counted as a bad line
            elif line:
                yield line
        if len(buf) > MAX_LINE:
            buf.clear()
            skipping = True
        piece = await reply.read(_READ)
        if not piece:
            break
        buf += piece
    tail = bytes(buf).strip()
    if tail and not skipping:
        yield tail
    elif skipping:
        yield b"-"
