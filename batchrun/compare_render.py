"""Drawing a :class:`~batchrun.compare.Comparison`: aligned terminal text, JSON for machines,
and one self-contained HTML page (inline CSS and SVG, no script, nothing fetched).

Prompts and answers came from the input and the server: in the terminal they are cut short
and stripped of control characters (no escape sequence reaches the terminal), in the page
they are escaped, in JSON they are cut at :data:`JSON_TEXT_MAX` characters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchrun.compare import RIGHT_TO_WRONG, WRONG_TO_RIGHT, Comparison, Flip, Paired
from batchrun.report import Report

#: Rows of each kind the terminal lists (the page lists what the comparison holds).
TEXT_ROWS = 10
JSON_TEXT_MAX = 2000
#: Groups the chart draws (the table below it lists every group).
CHART_GROUPS = 40
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]+")
DIRECTIONS = {RIGHT_TO_WRONG: "right → wrong", WRONG_TO_RIGHT: "wrong → right"}


def clip(value: object, limit: int) -> str:
    """One line of at most ``limit`` characters, control and direction characters blanked."""
    text = _UNSAFE.sub(" ", "" if value is None else str(value)).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class _Metric:
    """One line of the before/after table; raw values for JSON and ``data-value``."""

    ident: str
    label: str
    before: float | None
    after: float | None
    show: Callable[[float], str]
    #: How the delta is shown: "pts" (percentage points of a share), "rel" (relative change).
    delta: str
    #: Whether a rise is bad (red) or good (green); None: neither.
    rise_is_bad: bool | None = True
    #: The change when known exactly (accuracy: a fraction of counts over one denominator).
    exact_change: float | None = None

    @property
    def change(self) -> float | None:
        if self.exact_change is not None:
            return self.exact_change
        if self.before is None or self.after is None:
            return None
        if self.delta == "pts":
            return 100 * (self.after - self.before)
        return (self.after - self.before) / self.before if self.before else None

    def delta_text(self) -> str:
        d = self.change
        if d is None:
            return "n/a" if self.before is None or self.after is None else "new"
        return f"{d:+.2f} pts" if self.delta == "pts" else f"{d:+.1%}"

    def tone(self) -> str:
        d = self.change
        if d is None or abs(d) < 1e-12 or self.rise_is_bad is None:
            return ""
        return "bad" if (d > 0) == self.rise_is_bad else "good"


def _pct(v: float) -> str:
    return f"{v:.2%}"


def _count(v: float) -> str:
    return f"{v:,.0f}"


def _usd(v: float) -> str:
    return f"${v:,.4f}"


def _ms(v: float) -> str:
    return f"{v:,.1f}"


def _error_rate(r: Report) -> float | None:
    return r.by_status.get("error", 0) / r.rows if r.rows else None


#: The per-run lines: (ident, label, figure of a report, format, delta kind).
_RUN_METRICS: tuple[
    tuple[str, str, Callable[[Report], float | None], Callable[[float], str], str], ...
] = (
    ("rows", "rows", lambda r: r.rows, _count, "rel"),
    ("error-rate", "error rate", _error_rate, _pct, "pts"),
    ("prompt-tokens", "prompt tokens", lambda r: r.prompt_tokens, _count, "rel"),
    ("completion-tokens", "completion tokens", lambda r: r.completion_tokens, _count, "rel"),
    ("total-tokens", "total tokens", lambda r: r.total_tokens, _count, "rel"),
    (
        "cost-estimated",
        "estimated cost (USD, list prices)",
        lambda r: r.estimated_cost_usd,
        _usd,
        "rel",
    ),
    ("cost-reported", "cost reported by the API (USD)", lambda r: r.reported_cost_usd, _usd, "rel"),
    ("latency-p50", "latency p50 (ms)", lambda r: r.latency_ms.get("p50"), _ms, "rel"),
    ("latency-p95", "latency p95 (ms)", lambda r: r.latency_ms.get("p95"), _ms, "rel"),
)


def metrics(c: Comparison) -> list[_Metric]:
    """The before/after lines, in page order: accuracy (graded), then the per-run figures."""
    out = []
    if (acc := c.accuracy) is not None:
        label = f"accuracy ({acc.rows:,} paired rows)"
        before, after = acc.baseline_accuracy, acc.current_accuracy
        exact = None if acc.delta_points is None else float(acc.delta_points)
        out.append(_Metric("accuracy", label, before, after, _pct, "pts", False, exact))
    for ident, label, get, show, delta in _RUN_METRICS:
        rise_is_bad = None if ident == "rows" else True
        out.append(_Metric(ident, label, get(c.baseline), get(c.current), show, delta, rise_is_bad))
    return out


def tallies(c: Comparison) -> list[tuple[str, str, dict[str, tuple[int, int]]]]:
    """(title, ident, {label: (baseline count, current count)}) for finish reasons and errors."""

    def pair(before: dict[str, int], after: dict[str, int]) -> dict[str, tuple[int, int]]:
        keys = sorted(set(before) | set(after), key=lambda k: (-after.get(k, 0), k))
        return {k: (before.get(k, 0), after.get(k, 0)) for k in keys}

    b, a = c.baseline, c.current
    return [
        ("Finish reasons", "finish-reasons", pair(b.by_finish_reason, a.by_finish_reason)),
        ("Error types", "error-types", pair(b.by_error_type, a.by_error_type)),
    ]


def verdict(c: Comparison) -> str:
    if c.unchecked:
        return "cannot check: " + "; ".join(c.unchecked)
    if c.failures:
        return "FAIL: " + "; ".join(c.failures)
    return "pass"


def answers_line(c: Comparison) -> str:
    """Ungraded outputs: how many answers changed."""
    n, changed = c.answers_compared or 0, c.answers_changed or 0
    share = f" ({changed / n:.1%})" if n else ""
    return f"answers changed: {changed:,} of the {n:,} rows ok in both runs{share}"


def _p(p: Paired) -> str:
    return f"{p.p_value:.3g}"


# --- terminal -------------------------------------------------------------------------------


def render_text(c: Comparison) -> str:
    """The comparison as aligned terminal text (listing up to TEXT_ROWS rows of each kind)."""
    lines = [
        f"batchrun compare: {clip(c.baseline.path, 200)} → {clip(c.current.path, 200)}",
        f"rows joined by {c.key!r}: {c.paired_rows:,} in both, {c.only_baseline:,} only in "
        f"the baseline, {c.only_current:,} only in the current run",
        "",
    ]
    ms = metrics(c)
    width = max(len(m.label) for m in ms)
    cols = [
        max(len(t) for t in [h, *(f(m) for m in ms)])
        for h, f in (
            ("baseline", lambda m: _val(m, m.before)),
            ("current", lambda m: _val(m, m.after)),
            ("delta", _Metric.delta_text),
        )
    ]
    lines.append(
        " " * width
        + "".join(
            f"  {h:>{w}}" for h, w in zip(("baseline", "current", "delta"), cols, strict=True)
        )
    )
    for m in ms:
        cells = (_val(m, m.before), _val(m, m.after), m.delta_text())
        lines.append(
            f"{m.label:<{width}}" + "".join(f"  {t:>{w}}" for t, w in zip(cells, cols, strict=True))
        )
    if (acc := c.accuracy) is not None:
        lines += [
            "",
            f"significance: p = {_p(acc)}, {c.test}; {acc.right_to_wrong:,} right → wrong, "
            f"{acc.wrong_to_right:,} wrong → right",
        ]
    if c.answers_compared is not None:
        lines += ["", answers_line(c)]
    if c.groups:
        lines += ["", _group_text(c)]
    for title, _, rows in tallies(c):
        if rows:
            w = max(len(title) - 2, *(len(clip(k, 60)) for k in rows))
            lines += ["", f"{title:<{w + 2}}{'baseline':>10}{'current':>10}{'delta':>10}"]
            lines += [
                f"  {clip(k, 60):<{w}}{x:>10,}{y:>10,}{y - x:>+10,}" for k, (x, y) in rows.items()
            ]
    for direction in (RIGHT_TO_WRONG, WRONG_TO_RIGHT):
        lines += _rows_text(
            DIRECTIONS[direction],
            c.flip_count(direction),
            [f for f in c.flips if f.direction == direction],
        )
    if c.answers_changed:
        lines += _rows_text("answers changed", c.answers_changed, c.changes)
    for which, n, keys in (
        ("baseline", c.only_baseline, c.only_baseline_keys),
        ("current run", c.only_current, c.only_current_keys),
    ):
        if n:
            shown = ", ".join(clip(k, 40) for k in keys[:TEXT_ROWS])
            more = f" … and {n - min(n, TEXT_ROWS):,} more" if n > TEXT_ROWS else ""
            lines += ["", f"only in the {which} ({n:,}): {shown}{more}"]
    lines += [""] + [f"note: different jobs, compared anyway: {m}" for m in c.mismatches]
    lines += [f"note: {clip(n, 300)}" for n in c.notes]
    lines.append(f"result: {verdict(c)}")
    return "\n".join(lines) + "\n"


def _val(m: _Metric, v: float | None) -> str:
    return "n/a" if v is None else m.show(v)


def _group_text(c: Comparison) -> str:
    head = ("paired", "baseline", "current", "delta", "r→w", "w→r", "p")
    rows = {clip(k, 40): group_cells(g) for k, g in c.groups.items()}
    w = max(len(k) for k in [f"by {c.group_by}", *rows])
    cols = [max(len(h), *(len(r[i]) for r in rows.values())) for i, h in enumerate(head)]
    out = [
        f"{'by ' + str(c.group_by):<{w}}"
        + "".join(f"  {h:>{n}}" for h, n in zip(head, cols, strict=True))
    ]
    out += [
        f"  {k:<{w - 2}}" + "".join(f"  {t:>{n}}" for t, n in zip(r, cols, strict=True))
        for k, r in rows.items()
    ]
    return "\n".join(out)


def group_cells(g: Paired) -> tuple[str, ...]:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1%}"

    d = g.delta_points
    return (
        f"{g.rows:,}",
        pct(g.baseline_accuracy),
        pct(g.current_accuracy),
        "n/a" if d is None else f"{float(d):+.1f} pts",
        f"{g.right_to_wrong:,}",
        f"{g.wrong_to_right:,}",
        _p(g),
    )


def _rows_text(title: str, total: int, rows: list[Flip]) -> list[str]:
    if not total:
        return []
    out = ["", f"{title} ({total:,}{f'; first {TEXT_ROWS}' if total > TEXT_ROWS else ''}):"]
    for f in rows[:TEXT_ROWS]:
        group = f" [{clip(f.group, 30)}]" if f.group is not None else ""
        out.append(f"  {clip(f.key, 40)}{group}: {clip(f.prompt, 100)}")
        expected = f"expected {clip(f.expected, 40)!r}; " if f.expected is not None else ""
        out.append(
            f"      {expected}baseline {clip(f.baseline, 60)!r}; current {clip(f.current, 60)!r}"
        )
    return out


# --- JSON -----------------------------------------------------------------------------------


def _paired_json(p: Paired) -> dict[str, Any]:
    d = p.delta_points
    return {
        "rows": p.rows,
        "baseline_correct": p.baseline_correct,
        "current_correct": p.current_correct,
        "baseline": p.baseline_accuracy,
        "current": p.current_accuracy,
        "delta_points": None if d is None else float(d),
        "right_to_wrong": p.right_to_wrong,
        "wrong_to_right": p.wrong_to_right,
        "p_value": p.p_value,
    }


def _flip_json(f: Flip) -> dict[str, Any]:
    def cut(v: str | None) -> str | None:
        return None if v is None else v[:JSON_TEXT_MAX]

    return {
        "key": f.key,
        "direction": f.direction,
        "group": f.group,
        "prompt": cut(f.prompt),
        "expected": cut(f.expected),
        "baseline": cut(f.baseline),
        "current": cut(f.current),
    }


def to_json(c: Comparison) -> str:
    """The comparison for machines: every figure raw (shares as fractions, deltas of shares
    in percentage points, other deltas as fractions), the listed rows, the verdict."""
    doc = {
        "baseline": {"path": c.baseline.path, "schema_version": c.baseline.schema_version},
        "current": {"path": c.current.path, "schema_version": c.current.schema_version},
        "key": c.key,
        "rows_in_both": c.paired_rows,
        "only_in_baseline": {"count": c.only_baseline, "keys": c.only_baseline_keys},
        "only_in_current": {"count": c.only_current, "keys": c.only_current_keys},
        "test": c.test if c.accuracy is not None else None,
        "accuracy": None if c.accuracy is None else _paired_json(c.accuracy),
        "group_by": c.group_by,
        "groups": {k: _paired_json(g) for k, g in c.groups.items()},
        "flips": [_flip_json(f) for f in c.flips],
        "answers": None
        if c.answers_compared is None
        else {"compared": c.answers_compared, "changed": c.answers_changed},
        "changes": [_flip_json(f) for f in c.changes],
        "metrics": {
            m.ident.replace("-", "_"): {"baseline": m.before, "current": m.after, "delta": m.change}
            for m in metrics(c)
        },
        **{
            ident.replace("-", "_"): {
                k: {"baseline": x, "current": y} for k, (x, y) in rows.items()
            }
            for _, ident, rows in tallies(c)
        },
        "models": {"baseline": c.baseline.cost_by_model, "current": c.current.cost_by_model},
        "cost_basis": c.cost_basis,
        "mismatches": c.mismatches,
        "failures": c.failures,
        "unchecked": c.unchecked,
        "notes": c.notes,
        "exit_code": c.exit_code,
    }
    return json.dumps(doc, indent=2, default=str, ensure_ascii=False) + "\n"
