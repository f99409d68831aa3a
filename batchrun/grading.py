"""Grading completions against an expected-answer column, for evaluation jobs."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def _exact(completion: str, expected: str) -> bool:
    return completion.strip() == expected.strip()


def _ignore_case(completion: str, expected: str) -> bool:
    return completion.strip().casefold() == expected.strip().casefold()


def _contains(completion: str, expected: str) -> bool:
    return expected.strip().casefold() in completion.casefold()


@lru_cache(maxsize=1024)
def _pattern(expected: str) -> re.Pattern[str]:
    return re.compile(expected)


def _regex(completion: str, expected: str) -> bool | None:
    try:
        pattern = _pattern(expected)
    except re.error:
        return None  # an expected value that is no pattern grades nothing, not a crash
    return pattern.search(completion) is not None


def pattern_error(expected: object) -> str | None:
    """Why ``expected`` (as :func:`grade` reads it) is no regular expression; None if it is
    one, or null. The validation pass asks before anything is sent."""
    if expected is None:
        return None
    try:
        _pattern(expected if isinstance(expected, str) else str(expected))
    except re.error as exc:
        return str(exc)
    return None


RULES: dict[str, Callable[[str, str], bool | None]] = {
    "exact": _exact,
    "ignore_case": _ignore_case,
    "contains": _contains,
    "regex": _regex,
}


def grade(completions: pa.Array, expected: pa.Array, match: str) -> pa.Array:
    """A boolean array: whether each completion matches; null where either side is null."""
    rule = RULES[match]
    out: list[bool | None] = []
    for c, e in zip(completions.to_pylist(), expected.to_pylist(), strict=True):
        out.append(None if c is None or e is None else rule(c, e if isinstance(e, str) else str(e)))
    return pa.array(out, type=pa.bool_())


def accuracy(output: Path, group_by: str | None) -> tuple[int, float | None, dict[str, float]]:
    """(graded rows, accuracy, accuracy per group) from an output file's ``correct`` column."""
    columns = ["correct"] + ([group_by] if group_by else [])
    table = pq.read_table(output, columns=columns)
    graded = table.filter(pc.is_valid(table.column("correct")))
    n = graded.num_rows
    if n == 0:
        return 0, None, {}
    overall = pc.sum(graded.column("correct").cast(pa.int64())).as_py() / n
    groups: dict[str, float] = {}
    if group_by:
        agg = graded.group_by(group_by).aggregate([("correct", "mean")])
        for key, mean in zip(
            agg.column(group_by).to_pylist(), agg.column("correct_mean").to_pylist(), strict=True
        ):
            groups[str(key)] = round(mean, 6)
    return n, round(overall, 6), dict(sorted(groups.items()))
