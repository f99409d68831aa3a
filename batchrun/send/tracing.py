"""Request tracing: the id a row is sent under, and the ids the gateway answers with.

The AI/ML API gateway stores an ``X-Client-Request-Id`` header and reports it as
``client_request_id`` in its usage logs, but only a value of 1-128 characters of
``A-Z a-z 0-9 . _ : -``: anything else is dropped without a word. So the id is built from
safe parts only: ``br:<job tag>:<row part>``, where the job tag is a digest of what makes
the job (its fingerprint and its output), and the row part is the row id itself when it is
a short integer or a short string of safe characters, else a digest of it. The same row of
the same job gets the same id on every attempt and every resume; two rows, or two jobs,
never share one (the row part's first letter says which form it is, so a digest cannot
look like an id).

What the server sends back (``x-inference-id``, a ``requestId`` in an error body) is
untrusted: kept only when it is a bounded string of the same safe characters.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

CLIENT_REQUEST_ID_HEADER = "X-Client-Request-Id"
INFERENCE_ID_HEADER = "x-inference-id"
#: What the gateway accepts as a client request id (and what batchrun keeps of its ids).
MAX_ID_CHARS = 128
_SAFE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: A string row id longer than this is named by a digest (the id stays well under 128).
_ROW_ID_CHARS = 96


def is_valid_id(value: object) -> bool:
    """1-128 characters of A-Z a-z 0-9 . _ : - (what the gateway keeps)."""
    return isinstance(value, str) and _SAFE.fullmatch(value) is not None


def job_tag(fingerprint: dict[str, Any], output: str) -> str:
    """12 hex digits naming a job: its fingerprint (how rows become requests, where they
    go) and its output. The same on every resume; another job or output, another tag."""
    text = json.dumps(fingerprint, sort_keys=True, ensure_ascii=False, default=str)
    digest = hashlib.blake2b(f"{text}\x1f{output}".encode("utf-8", "surrogatepass"), digest_size=6)
    return digest.hexdigest()


def client_request_id(tag: str, row_id: Any) -> str:
    """The row's ``X-Client-Request-Id``: ``br:<tag>:i<int>``, ``br:<tag>:s<text>`` for a
    short string id of safe characters, else ``br:<tag>:h<digest of the id>``."""
    if isinstance(row_id, int) and not isinstance(row_id, bool) and -(10**30) < row_id < 10**30:
        part = f"i{row_id}"
    elif isinstance(row_id, str) and len(row_id) <= _ROW_ID_CHARS and is_valid_id(row_id):
        part = f"s{row_id}"
    else:
        raw = repr(row_id).encode("utf-8", "surrogatepass")
        part = "h" + hashlib.blake2b(raw, digest_size=16).hexdigest()
    return f"br:{tag}:{part}"


def server_id(value: object) -> str | None:
    """An id the server sent (header or body), if it is one batchrun can keep: a string
    of 1-128 safe characters, surrounding whitespace aside. Anything else is dropped."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**30:
        value = str(value)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if is_valid_id(value) else None
