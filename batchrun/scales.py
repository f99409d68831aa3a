"""Axis scales for the report's charts: round tick values and the labels a reader expects.

Ticks step by 1, 2 or 5 times a power of ten (clock steps for instants: 15 s, 5 min, 6 h …),
so an axis reads 0, 50, 100, 150 rather than 0 and 163. Labels name their unit once, in the
axis title, and show no more decimals than the step needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

_SECOND_MS = 1000
_MINUTE_MS = 60_000
_HOUR_MS = 3_600_000
DAY_MS = 86_400_000
#: Steps above one second between instants that a reader of clocks recognises (ms).
CLOCK_STEPS_MS = (
    *(_SECOND_MS * s for s in (1, 2, 5, 10, 15, 30)),
    *(_MINUTE_MS * m for m in (1, 2, 5, 10, 15, 30)),
    *(_HOUR_MS * h for h in (1, 2, 3, 6, 12, 24)),
)


@dataclass(frozen=True)
class Scale:
    """An axis from ``lo`` to ``hi`` with ticks at ``ticks`` (inside it), labelled ``labels``;
    ``title`` names the quantity and its unit."""

    lo: float
    hi: float
    ticks: list[float]
    labels: list[str]
    title: str

    def at(self, value: float, length: float) -> float:
        """Where ``value`` falls along an axis ``length`` long (0 at ``lo``)."""
        span = self.hi - self.lo
        return length * (value - self.lo) / span if span else 0.0


def nice_step(raw: float) -> float:
    """The smallest 1, 2 or 5 times 10^k at least ``raw`` (> 0)."""
    base = 10.0 ** math.floor(math.log10(raw))
    return next(m * base for m in (1, 2, 5, 10) if m * base >= raw * (1 - 1e-12))


def step_near(span: float, target: int) -> float:
    """The 1-2-5 step whose tick count over ``span`` is nearest ``target`` (the fewer ticks
    on a tie): 330 over 6 ticks steps by 50, not by 100 as rounding up would."""
    raw = span / target
    low = nice_step(raw / 2.5)
    candidates = [low, nice_step(low * 1.01), nice_step(nice_step(low * 1.01) * 1.01)]
    candidates.append(nice_step(candidates[-1] * 1.01))
    return min(candidates, key=lambda s: (abs(span / s - target), -s))


def clock_step(raw_ms: float) -> float:
    """A step between instants of at least ``raw_ms``: 1-2-5 below a second, clock steps
    above (15 s, 5 min, 6 h …), whole days beyond a day."""
    if raw_ms <= _SECOND_MS:
        return nice_step(max(raw_ms, 1.0))  # timestamps have ms resolution
    step = next((s for s in CLOCK_STEPS_MS if s >= raw_ms), None)
    return float(step if step is not None else DAY_MS * nice_step(raw_ms / DAY_MS))


def ticks_between(lo: float, hi: float, step: float) -> list[float]:
    """Multiples of ``step`` from ``lo`` to ``hi`` inclusive (within float noise)."""
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    # Rounded so 0.1 + 0.2 shows as 0.3; the step's own decimals are enough.
    digits = max(0, 12 - math.floor(math.log10(step))) if step < 1 else 0
    return [round(k * step, digits) for k in range(first, last + 1)]


def _decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step) + 1e-9))


def number_label(step: float) -> Callable[[float], str]:
    """Labels with thousands separators and as many decimals as ``step`` has."""
    places = _decimals(step)
    return lambda v: f"{v:,.{places}f}"


def count_scale(peak: float, title: str, target: int = 5) -> Scale:
    """0 to a round value at or above ``peak`` (a count or a rate), about ``target`` ticks."""
    if peak <= 0:
        return Scale(0.0, 1.0, [0.0, 1.0], ["0", "1"], title)
    step = nice_step(peak / target)
    if step < 1 and float(peak).is_integer():  # counts: no tick at half a row
        step = 1.0
    hi = math.ceil(peak / step - 1e-9) * step
    ticks = ticks_between(0.0, hi, step)
    label = number_label(step)
    return Scale(0.0, hi, ticks, [label(t) for t in ticks], title)


def duration_unit(hi_ms: float) -> tuple[float, str]:
    """(ms per unit, unit) for an axis reaching ``hi_ms``: ms below 10 s, s below 10 min, min."""
    if hi_ms < 10 * _SECOND_MS:
        return 1.0, "ms"
    if hi_ms < 10 * _MINUTE_MS:
        return float(_SECOND_MS), "s"
    return float(_MINUTE_MS), "min"


def duration_scale(lo_ms: float, hi_ms: float, title: str, target: int = 6) -> Scale:
    """Round ticks over a span of milliseconds, labelled in ms, s or min (named in the title)."""
    per, unit = duration_unit(hi_ms)
    lo, hi = lo_ms / per, hi_ms / per
    step = step_near(hi - lo, target) if hi > lo else nice_step(max(hi, 1.0))
    ticks = ticks_between(lo, hi, step)
    label = number_label(step)
    return Scale(
        lo_ms, hi_ms, [t * per for t in ticks], [label(t) for t in ticks], f"{title} ({unit})"
    )


def format_duration_ms(ms: float | None) -> str:
    """A duration for a reader: 850 ms, 12.3 s, 4 min 05 s, 2 h 07 min."""
    if ms is None:
        return "n/a"
    if ms < 10:
        return f"{ms:.2f} ms"
    if ms < _SECOND_MS:
        return f"{ms:,.0f} ms"
    if ms < _MINUTE_MS:
        return f"{ms / _SECOND_MS:.1f} s"
    if ms < _HOUR_MS:
        minutes, seconds = divmod(round(ms / _SECOND_MS), 60)
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(round(ms / _MINUTE_MS), 60)
    return f"{hours:,} h {minutes:02d} min"


def clock_label(step_ms: float, span_days: bool) -> Callable[[float], str]:
    """UTC labels of instants (epoch ms) as fine as ``step_ms``; with the date when the span
    crosses midnight or the step is a day or more."""
    if step_ms >= DAY_MS:
        pattern = "%m-%d"
    elif step_ms >= _MINUTE_MS:
        pattern = "%H:%M"
    else:
        pattern = "%H:%M:%S"
    if span_days and step_ms < DAY_MS:
        pattern = "%m-%d " + pattern

    def label(ms: float) -> str:
        when = datetime.fromtimestamp(ms / 1000, UTC)
        text = when.strftime(pattern)
        return f"{text}.{round(ms) % 1000:03d}" if step_ms < _SECOND_MS else text

    return label


def time_scale(lo_ms: float, hi_ms: float, title: str, target: int = 6) -> Scale:
    """Ticks at round UTC clock instants between two instants (epoch ms)."""
    step = clock_step(max(hi_ms - lo_ms, 1.0) / target)
    ticks = ticks_between(lo_ms, hi_ms, step)
    # A round step can leave three ticks or fewer (106 s in 30 s steps): the next finer
    # clock step then, so the axis still reads.
    finer = [s for s in CLOCK_STEPS_MS if s < step]
    if len(ticks) < 4 and finer and step <= DAY_MS:
        step = float(finer[-1])
        ticks = ticks_between(lo_ms, hi_ms, step)
    first, last = (datetime.fromtimestamp(v / 1000, UTC).date() for v in (lo_ms, hi_ms))
    label = clock_label(step, first != last)
    day = first.isoformat() if first == last else f"{first.isoformat()} to {last.isoformat()}"
    return Scale(lo_ms, hi_ms, ticks, [label(t) for t in ticks], f"{title} (UTC, {day})")


def percent_scale(title: str) -> Scale:
    """0 to 100 % in steps of 20."""
    ticks = [i / 5 for i in range(6)]
    return Scale(0.0, 1.0, ticks, [f"{round(t * 100)}%" for t in ticks], title)


def format_usd(value: float | None) -> str:
    """Dollars with the decimals a small spend needs: $1,234.57, $0.1302, $0.000042."""
    if value is None:
        return "n/a"
    if value == 0 or abs(value) >= 1:
        return f"${value:,.2f}"
    if abs(value) >= 0.0001:
        return f"${value:,.4f}"
    return f"${value:.2g}" if abs(value) < 1e-6 else f"${value:.6f}"


def format_count(value: float) -> str:
    """A count in a card: 1,234 up to a million, then 1.23M."""
    if abs(value) >= 1_000_000:
        return f"{value / 1_000_000:,.2f}M"
    return f"{value:,.0f}"
