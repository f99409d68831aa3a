"""JSON on the hot path: orjson where it can, the standard library where it cannot.

orjson parses and serialises several times faster than :mod:`json`, which shows in the
per-row cost of a run (request bodies, answers, JSONL input). Where the two differ, the
standard library decides, so what batchrun reads and sends does not depend on which ran:

- orjson reads integers beyond 64 bits as floats, silently changing them (a long numeric
  id, say), and refuses NaN and Infinity: such input is parsed by :mod:`json`;
- orjson cannot write integers beyond 64 bits: :mod:`json` writes them. (NaN and Infinity,
  which orjson would write as null, never reach a body: the job's JSON settings are
  checked for them.)

A parse error is raised by :mod:`json` too, for its line and column.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

# Integers orjson keeps exactly lie in -2**63 .. 2**64-1; anything outside has at least 19
# digits (-9223372036854775809). Digits inside strings match too: they only cost the
# slower parser. Spelled out: faster to search for than \d{19}.
_LONG_DIGITS = re.compile(rb"\d" * 19)


def loads(data: bytes, *, exact_ints: bool = True) -> Any:
    """Parse JSON; raises ``json.JSONDecodeError`` (or ``UnicodeDecodeError``) as json does.

    ``exact_ints=False`` skips the search for integers beyond 64 bits, for API answers: the
    only numbers batchrun keeps from them are token counts, and the search cost more than
    the parse itself (measured on scenario A)."""
    if not exact_ints or _LONG_DIGITS.search(data) is None:
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
