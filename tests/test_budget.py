"""The budget gate: reservations at the worst case, settled by what was really used."""

from __future__ import annotations

import pytest

from batchrun.budget import BudgetGate
from batchrun.job import Budget
from batchrun.pricing import Price

PRICE = Price(input_per_mtok=10.0, output_per_mtok=30.0)


def _gate(**caps: float) -> BudgetGate:
    return BudgetGate(Budget(**caps), PRICE, model="m", spent_usd=0.0, spent_tokens=0)


@pytest.mark.parametrize(
    "answered, prompt, completion, tokens",
    [
        (True, 40, 10, 50),  # the usage reported
        (True, None, None, 100 + 50),  # answered without usage: the worst case was paid for
        (True, 40, None, 40),  # part of the usage: what is known
        (False, None, None, 0),  # failed: nothing
    ],
)
def test_settle(answered: bool, prompt: int | None, completion: int | None, tokens: int) -> None:
    gate = _gate(max_tokens_total=10_000)
    assert gate.admit(100, 50) is None
    assert gate.reserved_tokens == 150
    gate.settle(100, 50, answered, prompt, completion)
    assert gate.reserved_tokens == 0 and gate.reserved_usd == pytest.approx(0.0)
    assert gate.spent_tokens == tokens


def test_admission_stops_before_the_cap_counting_what_is_reserved() -> None:
    gate = _gate(max_tokens_total=400)
    assert gate.admit(100, 50) is None
    assert gate.admit(100, 50) is None
    assert gate.admit(100, 50) is not None  # 450 > 400 with two in flight
    gate.settle(100, 50, True, 10, 5)
    assert gate.admit(100, 50) is None  # 150 + 15 + 150 <= 400
