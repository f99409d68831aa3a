"""The regression gates of ``batchrun compare``: thresholds a scheduler turns into exit 3."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

from batchrun.errors import UsageError

if TYPE_CHECKING:
    from batchrun.compare import Comparison


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """Regression gates (None: not checked). Units as named."""

    #: Largest drop of paired accuracy allowed, in percentage points (2 = 80 % → 78 %).
    accuracy_drop_points: float | None = None
    #: Largest share of the current run's rows allowed to fail (0.02 = 2 %).
    error_rate_above: float | None = None
    #: Largest cost rise allowed, as a fraction of the baseline's cost (0.1 = 10 %).
    cost_rise: float | None = None

    def __post_init__(self) -> None:
        for name, flag, hi in _GATES:
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or v < 0 or (hi is not None and v > hi)):
                span = f"between 0 and {hi}" if hi is not None else "a number >= 0"
                raise UsageError(f"--fail-if-{flag} must be {span}, got {v}")


#: (Thresholds field, flag after --fail-if-, largest value).
_GATES = (
    ("accuracy_drop_points", "accuracy-drops", 100),
    ("error_rate_above", "error-rate-above", 1),
    ("cost_rise", "cost-rises", None),
)


def check_gates(cmp: Comparison, t: Thresholds) -> None:
    """Add to ``cmp.failures`` each gate passed, to ``cmp.unchecked`` each that cannot be
    checked. Compared exactly (fractions), so a drop of exactly the threshold passes."""
    a = cmp.accuracy
    if t.accuracy_drop_points is not None:
        if a is None or a.delta_points is None:
            cmp.unchecked.append(
                "cannot check --fail-if-accuracy-drops: no row is graded in both outputs"
            )
        elif -a.delta_points > Fraction(str(t.accuracy_drop_points)):
            assert a.baseline_accuracy is not None and a.current_accuracy is not None
            cmp.failures.append(
                f"accuracy dropped {float(-a.delta_points):.2f} points "
                f"({a.baseline_accuracy:.2%} → {a.current_accuracy:.2%} over {a.rows:,} paired rows), "
                f"more than the {t.accuracy_drop_points:g} allowed"
            )
    cur = cmp.current
    if t.error_rate_above is not None:
        errors = cur.by_status.get("error", 0)
        if cur.rows == 0:
            cmp.unchecked.append(
                "cannot check --fail-if-error-rate-above: the current output is empty"
            )
        elif Fraction(errors, cur.rows) > Fraction(str(t.error_rate_above)):
            cmp.failures.append(
                f"error rate {errors / cur.rows:.2%} ({errors:,} of {cur.rows:,} rows) "
                f"is above {t.error_rate_above:.2%}"
            )
    if t.cost_rise is not None:
        before, after = cmp.cost(cmp.baseline), cmp.cost(cur)
        if before is None or after is None:
            cmp.unchecked.append(
                f"cannot check --fail-if-cost-rises: no {cmp.cost_basis} cost for "
                f"{'the baseline' if before is None else 'the current run'} "
                "(a model without a price: give --prices)"
            )
        elif (before == 0 and after > 0) or (
            before > 0 and (after - before) / before > t.cost_rise
        ):
            rise = f"+{(after - before) / before:.1%}" if before else "from nothing"
            cmp.failures.append(
                f"{cmp.cost_basis} cost rose {rise} (${before:,.4f} → ${after:,.4f}), "
                f"more than the {t.cost_rise:.1%} allowed"
            )
