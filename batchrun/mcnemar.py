"""McNemar's exact test: is a change in paired right/wrong outcomes more than noise?"""

from __future__ import annotations

import math
from fractions import Fraction

TEST_NAME = "McNemar's exact test (two-sided binomial test on the flipped rows)"
# Past this many flipped rows the exact tail is summed in log space (same test, float sums):
# big integers would take seconds.
_EXACT_MAX = 20_000


def mcnemar_exact(right_to_wrong: int, wrong_to_right: int) -> float:
    """Two-sided p-value of McNemar's exact test.

    Under "nothing changed" each of the n = b + c discordant pairs flipped either way with
    probability 1/2, so min(b, c) is Binomial(n, 1/2): p = min(1, 2·P(X ≤ min(b, c))).
    """
    n, k = right_to_wrong + wrong_to_right, min(right_to_wrong, wrong_to_right)
    if n == 0:
        return 1.0
    if n <= _EXACT_MAX:
        term = tail = math.comb(n, k)
        for i in range(k, 0, -1):  # C(n, i-1) = C(n, i) * i / (n - i + 1), exactly
            term = term * i // (n - i + 1)
            tail += term
        return min(1.0, float(Fraction(2 * tail, 2**n)))

    def log_term(i: int) -> float:
        return math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)

    top, total = log_term(k), 0.0
    for i in range(k, -1, -1):  # the largest term first; stop once the rest cannot count
        t = math.exp(log_term(i) - top)
        total += t
        if t < 1e-17 * total:
            break
    return min(1.0, 2 * math.exp(top) * total)
