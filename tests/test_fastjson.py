"""JSON on the hot path: orjson's speed, the standard library's acceptance and errors."""

from __future__ import annotations

import json
import math

import pytest

from batchrun import fastjson


@pytest.mark.parametrize(
    "text, expected",
    [
        (b'{"a": 1, "b": "\xc3\xa9"}', {"a": 1, "b": "é"}),
        (b'{"a": [1, 2.5, null, true]}', {"a": [1, 2.5, None, True]}),
        # orjson would read these as floats; json keeps them whole.
        (b'{"id": 18446744073709551617}', {"id": 2**64 + 1}),
        (b'{"id": -123456789012345678901234567890}', {"id": -123456789012345678901234567890}),
        (b'{"id": 18446744073709551615}', {"id": 2**64 - 1}),
        (b'{"id": -9223372036854775809}', {"id": -(2**63) - 1}),
        (b'{"id": -9223372036854775808}', {"id": -(2**63)}),
        (b'{"t": "call 01234567890123456789"}', {"t": "call 01234567890123456789"}),
        # orjson refuses this; json accepts it, so batchrun does too.
        (b'{"x": Infinity}', {"x": math.inf}),
    ],
)
def test_loads_accepts_what_json_accepts(text: bytes, expected: object) -> None:
    assert fastjson.loads(text) == expected


def test_loads_nan_falls_back_to_json() -> None:
    assert math.isnan(fastjson.loads(b'{"x": NaN}')["x"])


@pytest.mark.parametrize("text", [b'{"a": 1,,}', b'{"a": ', b"[1, 2", b'{"a": tru}'])
def test_loads_errors_are_jsons_with_line_and_column(text: bytes) -> None:
    with pytest.raises(json.JSONDecodeError) as got:
        fastjson.loads(text)
    with pytest.raises(json.JSONDecodeError) as want:
        json.loads(text)
    assert (got.value.msg, got.value.lineno, got.value.colno) == (
        want.value.msg,
        want.value.lineno,
        want.value.colno,
    )


@pytest.mark.parametrize(
    "obj",
    [
        {"model": "m", "messages": [{"role": "user", "content": "héllo \u2603"}]},
        {"n": 1, "f": 0.5, "none": None, "nested": {"list": [True, False]}},
        {"big": 2**70},  # beyond orjson's 64-bit integers
    ],
)
def test_dumps_is_compact_utf8_json_equal_to_jsons(obj: object) -> None:
    out = fastjson.dumps(obj)
    assert isinstance(out, bytes)
    assert out == json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    assert json.loads(out) == obj


def test_answers_may_skip_the_exact_integer_search_but_not_the_stdlib_fallback() -> None:
    # Without the search a huge integer comes back as orjson reads it (a float) ...
    assert fastjson.loads(b'{"n": 18446744073709551617}', exact_ints=False)["n"] == float(2**64 + 1)
    # ... but what orjson refuses is still parsed, and errors are still json's.
    assert math.isnan(fastjson.loads(b'{"x": NaN}', exact_ints=False)["x"])
    with pytest.raises(json.JSONDecodeError):
        fastjson.loads(b'{"a": ', exact_ints=False)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (b'{"a": "\\ud800"}', ["a"]),
        (b'{"a": [1, {"b": "x\\udfff"}]}', ["a", 1, "b"]),
        (b'{"a": "x", "\\udc00": 1}', ["\\udc00"]),
        (b'"\\ud83d"', []),
        # a long integer takes the line straight to json: the check still applies
        (b'{"n": 123456789012345678901234, "s": "\\ud800"}', ["s"]),
        (b'{"x": NaN, "s": "\\ud800"}', ["s"]),
    ],
)
def test_loads_refuses_unpaired_surrogates_as_orjson_does(text: bytes, path: list[object]) -> None:
    with pytest.raises(fastjson.UnpairedSurrogate) as info:
        fastjson.loads(text)
    assert info.value.path == [json.loads(f'"{p}"') if isinstance(p, str) else p for p in path]
    assert isinstance(info.value, ValueError)  # answers: handled as unparseable bodies


@pytest.mark.parametrize(
    "text", [b'{"a": "\\ud83d\\ude00"}', b'{"a": "\\\\ud800"}', b'{"n": 123456789012345678901234}']
)
def test_loads_keeps_surrogate_pairs_and_escaped_backslashes(text: bytes) -> None:
    assert fastjson.loads(text) == json.loads(text)


def test_loads_nesting_beyond_the_stack_is_a_value_error() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for exact_ints in (True, False):
        with pytest.raises(fastjson.NestingTooDeep):
            fastjson.loads(deep, exact_ints=exact_ints)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 0), ("s", 0), ([], 1), ({"a": [1, [2]]}, 3), ([{}, [[[]]]], 4)],
)
def test_depth(value: object, expected: int) -> None:
    assert fastjson.depth(value) == expected


def test_depth_and_path_walks_do_not_recurse() -> None:
    value: list[object] = []
    inner = value
    for _ in range(50_000):
        nxt: list[object] = []
        inner.append(nxt)
        inner = nxt
    assert fastjson.depth(value) == 50_001
    assert fastjson.unencodable_path(value) is None
