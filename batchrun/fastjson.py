"""JSON on the hot path: orjson where it can, the standard library where it cannot.

orjson parses and serialises several times faster than :mod:`json`, which shows in the
per-row cost of a run (request bodies, answers, JSONL input). It refuses a few things the
standard library accepts (NaN and Infinity, integers beyond 64 bits on output), and it
reads integers beyond 64 bits as floats, silently changing them (a long numeric id, say).
Those cases go to :mod:`json`, so what batchrun reads and sends does not depend on which
library ran. A parse error is raised by :mod:`json` too, for its line and column.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

# 2**64 has 20 digits: a run of 20 digits may be an integer orjson would turn into a float.
# (Digits inside strings match too; they only cost the slower parser.)
# Spelled out: faster to search for than \d{20}.
_LONG_DIGITS = re.compile(rb"\d" * 20)


def loads(data: bytes) -> Any:
    """Parse JSON; raises ``json.JSONDecodeError`` (or ``UnicodeDecodeError``) as json does."""
    if _LONG_DIGITS.search(data) is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON (no spaces, non-ASCII kept), as bytes."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
