"""The validation pass's uniqueness check on id keys (sort-based, compact)."""

from __future__ import annotations

import random
from array import array

import pytest

from batchrun.scan import _repeated_keys


@pytest.mark.parametrize(
    "keys, repeated",
    [
        ([], set()),
        ([7], set()),
        ([1, 2, 3], set()),
        ([3, 1, 3], {3}),
        ([5, 5, 5, 5], {5}),
        ([-(2**63), 2**63 - 1, -(2**63)], {-(2**63)}),
        ([0, -1, 1, -1, 0, 2], {0, -1}),
    ],
)
def test_repeated_keys(keys: list[int], repeated: set[int]) -> None:
    assert _repeated_keys(array("q", keys)) == repeated


def test_repeated_keys_agrees_with_counting_on_many_keys() -> None:
    rng = random.Random(4)
    keys = [rng.randrange(-(10**6), 10**6) for _ in range(50_000)]
    counts: dict[int, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    assert _repeated_keys(array("q", keys)) == {k for k, c in counts.items() if c > 1}
