"""The budget gate: reservations at the worst case, settled by what was really used."""

from __future__ import annotations

import pytest

from batchrun.budget import BudgetGate, output_estimate
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


@pytest.mark.parametrize(
    "texts, hit_cap, tokens",
    [
        (("sim reply: a b",), False, 6),  # 14 bytes: ceil(14 / 3) + 1
        (("",), False, 1),
        ((None, None), False, 1),
        (("x" * 300,), False, 50),  # at most max_tokens
        (("short",), True, 50),  # stopped for length: it used max_tokens
        (("日本語",), False, 4),  # 9 bytes: a token a character, and one
        (("ab", '[{"id": 1}]', "why"), False, 7),  # text, tool calls and reasoning: 16 bytes
    ],
)
def test_output_estimate_of_an_answer_without_usage(
    texts: tuple[str | None, ...], hit_cap: bool, tokens: int
) -> None:
    assert output_estimate(texts, 50, hit_cap) == tokens


def test_an_answer_without_usage_is_booked_at_the_estimate_not_the_worst_case() -> None:
    gate = _gate(max_tokens_total=10_000)
    assert gate.admit(100, 50) is None
    gate.settle(100, 50, True, None, None, output=("sim reply: a b",), hit_cap=False)
    assert gate.spent_tokens == 100 + 6
    assert gate.spent_usd == pytest.approx(PRICE.cost(100, 6))
