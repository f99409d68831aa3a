"""JSON on the hot path: orjson where it can, the standard library where it cannot.

orjson parses and serialises several times faster than :mod:`json`, which shows in the
per-row cost of a run (request bodies, answers, JSONL input). Where the two differ, the
standard library decides, so what batchrun reads and sends does not depend on which ran:

- orjson reads integers beyond 64 bits as floats, silently changing them (a long numeric
  id, say), and refuses NaN and Infinity: such input is parsed by :mod:`json`;
- orjson cannot write integers beyond 64 bits: :mod:`json` writes them. (NaN and Infinity,
  which orjson would write as null, never reach a body: the job's JSON settings are
  checked for them.)

Two things :mod:`json` accepts are refused all the same, as orjson refuses them, because
nothing after the parse could use them: an unpaired surrogate escape (``"\\ud800"``: no
UTF-8 text, hence no request body, journal or Parquet file, can hold it), raised as
:class:`UnpairedSurrogate`, and nesting deeper than the interpreter's stack
(:class:`NestingTooDeep`, where :mod:`json` would raise ``RecursionError``).

A parse error is raised by :mod:`json` too, for its line and column.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

# Defined with the package's other exceptions; the names stay importable from here, where
# the parser's callers look for them. (errors.py imports nothing of the package.)
from batchrun.errors import NestingTooDeep as NestingTooDeep
from batchrun.errors import UnpairedSurrogate as UnpairedSurrogate
from batchrun.errors import format_path as format_path

# Integers orjson keeps exactly lie in -2**63 .. 2**64-1; anything outside has at least 19
# digits (-9223372036854775809). Digits inside strings match too: they only cost the
# slower parser. Spelled out: faster to search for than \d{19}.
_LONG_DIGITS = re.compile(rb"\d" * 19)
# A \uD800-\uDFFF escape: the text may hold a surrogate, paired or not. (An escaped
# backslash before "u" matches too: it only costs the walk that looks.)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def loads(data: bytes, *, exact_ints: bool = True) -> Any:
    """Parse JSON; raises ``json.JSONDecodeError`` (or ``UnicodeDecodeError``) as json does,
    :class:`UnpairedSurrogate` or :class:`NestingTooDeep` (all ValueErrors).

    ``exact_ints=False`` skips the search for integers beyond 64 bits, for API answers: the
    only numbers batchrun keeps from them are token counts, and the search cost more than
    the parse itself (measured on scenario A)."""
    if not exact_ints or _LONG_DIGITS.search(data) is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    try:
        value = json.loads(data)
    except RecursionError:
        raise NestingTooDeep("arrays and objects nested too deeply to read") from None
    if _SURROGATE_ESCAPE.search(data) is not None:
        path = unencodable_path(value)
        if path is not None:
            raise UnpairedSurrogate(path)
    return value


def unencodable_path(value: Any) -> list[str | int] | None:
    """Where the first string or key that UTF-8 cannot encode stands in ``value``; None if
    there is none. Iterative: the value may nest as deep as json could read."""
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if not encodes(item):
                return path
        elif isinstance(item, dict):
            for k, v in reversed(item.items()):
                if isinstance(k, str) and not encodes(k):
                    return [*path, k]
                stack.append((v, [*path, k]))
        elif isinstance(item, list):
            stack.extend((v, [*path, i]) for i, v in reversed(list(enumerate(item))))
    return None


def encodes(text: str) -> bool:
    """Whether UTF-8 can carry ``text`` (it holds no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def depth(value: Any) -> int:
    """How deep arrays and objects nest in ``value`` (a scalar: 0, ``[[]]``: 2). Iterative."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            level += 1
            deepest = max(deepest, level)
            stack.extend((v, level) for v in item if isinstance(v, dict | list))
    return deepest


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON (no spaces, non-ASCII kept), as bytes."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
