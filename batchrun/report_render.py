"""A report's tables, shared by both renderers, and its terminal text.

Every figure is a cell (name, raw value, text): the text renderer aligns the texts, the
HTML page puts the raw value in ``data-value``. A table with no rows is not drawn, and a
table that only says "no errors" is not made.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from batchrun.htmlkit import clean
from batchrun.report import Report
from batchrun.scales import format_usd

#: A table cell: (id or class, raw value for ``data-value``, text shown).
Cell = tuple[str, object, str]
#: Characters of an error message shown (error messages are bounded, not short).
MESSAGE_MAX = 120


@dataclass(frozen=True)
class Section:
    """One table of the report; ``ids``: cell names are page ids (one value a row)."""

    title: str
    ident: str
    head: list[str]
    rows: Sequence[tuple[str, Sequence[Cell]]]
    ids: bool = False


def num(value: float | None, spec: str = ",.1f") -> str:
    return "n/a" if value is None else format(value, spec)


def count(name: str, value: int) -> Cell:
    return (name, value, f"{value:,}")


def share(name: str, part: int, whole: int) -> Cell:
    return (name, part / whole if whole else None, f"{100 * part / whole:.1f}%" if whole else "n/a")


def usd(name: str, value: float | None) -> Cell:
    return (name, value, format_usd(value))


def when(name: str, value: datetime | None) -> Cell:
    text = "n/a" if value is None else value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return (name, None if value is None else value.isoformat(), text)


def run_figure(r: Report, key: str) -> float | None:
    """A figure of the summary beside the output; None without one."""
    return None if r.run is None else r.run.figures.get(key)


def _tally(r: Report, title: str, ident: str, what: str, counts: dict[str, int]) -> Section:
    rows = [(k, [count("count", v), share("share", v, r.rows)]) for k, v in counts.items()]
    return Section(title, ident, [what, "rows", "share"], rows)


def overview(r: Report) -> Section:
    """The one-value figures, in reading order; the HTML page shows them as cards."""
    tokens = {"prompt": r.prompt_tokens, "completion": r.completion_tokens, "total": r.total_tokens}
    rows: list[tuple[str, list[Cell]]] = [
        ("rows", [count("rows-total", r.rows)]),
        *[(k, [count(f"rows-{k}", r.by_status[k])]) for k in ("ok", "error")],
        *[(f"{k} tokens", [count(f"tokens-{k}", v)]) for k, v in tokens.items()],
        ("estimated cost (USD, list prices)", [usd("cost-total", r.estimated_cost_usd)]),
        ("cost reported by the API (USD)", [usd("cost-reported", r.reported_cost_usd)]),
        ("rows with a reported cost", [count("cost-reported-rows", r.rows_cost_reported)]),
        (
            "credits reported by the API",
            [("credits-reported", r.credits_used, num(r.credits_used, ",d"))],
        ),
        # Outputs before schema 3 cannot say which answers carried reasoning.
        *(
            [("rows with reasoning", [count("rows-reasoning", r.rows_with_reasoning)])]
            if r.schema_version not in ("1", "2")
            else []
        ),
        # Only where dedupe or the cache served rows (and in schema 5 outputs at all).
        *(
            [
                (
                    "rows served by dedupe (no request)",
                    [count("rows-dedupe", r.rows_served_by_dedupe)],
                ),
                (
                    "rows served by the cache (no request)",
                    [count("rows-cached", r.rows_served_by_cache)],
                ),
                ("tokens saved", [count("tokens-saved", r.tokens_saved)]),
                ("estimated cost saved (USD)", [usd("cost-saved", r.estimated_cost_saved_usd)]),
            ]
            if r.rows_served_by_dedupe or r.rows_served_by_cache
            else []
        ),
        ("requests (attempts of the rows)", [count("requests", r.requests)]),
        ("retries (attempts beyond the first)", [count("retries", r.retries)]),
        ("first finished (UTC)", [when("wall-first", r.first_finished_at)]),
        ("last finished (UTC)", [when("wall-last", r.last_finished_at)]),
        ("wall span (s)", [("wall-span-s", r.wall_span_s, num(r.wall_span_s, ",.3f"))]),
        ("rows per second", [("rows-per-s", r.rows_per_s, num(r.rows_per_s))]),
        ("schema version", [("schema-version", r.schema_version, r.schema_version)]),
    ]
    if r.run is not None:
        for label, key, spec in (
            ("wall time of the last run (s)", "wall_time_s", ",.1f"),
            ("429 answers in the last run", "rate_limited", ",.0f"),
            ("rows possibly charged twice", "rows_possibly_charged_twice", ",.0f"),
            ("rows resumed from earlier runs", "rows_resumed", ",.0f"),
        ):
            value = run_figure(r, key)
            rows.append((label, [(f"run-{key.replace('_', '-')}", value, num(value, spec))]))
    if (a := r.accuracy) is not None:
        rows += [("accuracy", [share("accuracy-overall", a.correct, a.graded)])]
        rows += [("graded rows", [count("accuracy-graded", a.graded)])]
        rows += [("correct rows", [count("accuracy-correct", a.correct)])]
    return Section("Overview", "overview", ["", "value"], rows, ids=True)


def latency(r: Report) -> Section:
    """Percentiles of ok rows; of error rows beside them when some error has a latency."""
    errors = r.error_latency_ms if r.error_latency_ms.get("max") is not None else {}
    head = ["", "ok rows (ms)", *(["error rows (ms)"] if errors else [])]
    rows = []
    for k, v in r.latency_ms.items():
        cells: list[Cell] = [(f"latency-{k}", v, num(v))]
        if errors:
            e = errors.get(k)
            cells.append((f"error-latency-{k}", e, num(e) if k in errors else ""))
        rows.append((k, cells))
    return Section("Latency", "latency", head, rows, ids=True)


def outcomes(r: Report) -> list[Section]:
    """Status and finish reasons; error types and the commonest messages when rows failed."""
    out = [
        _tally(r, "Status", "by-status", "status", r.by_status),
        _tally(r, "Finish reasons", "by-finish-reason", "reason", r.by_finish_reason),
    ]
    if r.by_error_type:
        out.append(_tally(r, "Errors", "by-error-type", "error type", r.by_error_type))
    return out


def error_messages(r: Report) -> Section | None:
    if not r.top_errors:
        return None
    rows = [
        (
            e.error_type,
            [("message", e.message, clean(e.message, limit=MESSAGE_MAX)), count("count", e.rows)],
        )
        for e in r.top_errors
    ]
    return Section(
        "Commonest error messages", "error-messages", ["error type", "message", "rows"], rows
    )


def costs(r: Report) -> Section | None:
    if not r.cost_by_model:
        return None
    rows = [(m, [usd("cost", c)]) for m, c in r.cost_by_model.items()]
    return Section("Estimated cost by model", "cost-by-model", ["model", "USD"], rows)


def groups(r: Report) -> Section | None:
    if r.group_by is None:
        return None
    fields = ("rows", "ok", "graded", "correct")
    rows = [
        (k, [*(count(f, getattr(g, f)) for f in fields), share("accuracy", g.correct, g.graded)])
        for k, g in r.groups.items()
    ]
    return Section(f"By {r.group_by}", "groups", [r.group_by, *fields, "accuracy"], rows)


def sections(r: Report) -> list[Section]:
    """Every table of the report, in page order, none empty."""
    found = [overview(r), *outcomes(r), error_messages(r), costs(r), latency(r), groups(r)]
    return [s for s in found if s is not None and s.rows]


def render_text(report: Report) -> str:
    """A terminal summary: one block per table, labels left, numbers right-aligned.

    Every label and value is cleaned of control characters: a model name or an error message
    from a server must not move the cursor or recolour the terminal.
    """
    blocks = [
        (s, [(clean(k), [clean(c[2]) for c in cells]) for k, cells in s.rows])
        for s in sections(report)
    ]
    width = max(len(key) for _, rows in blocks for key, _ in rows)
    lines = [f"batchrun report: {clean(report.path)}"]
    for s, rows in blocks:
        cols = [
            max(len(t) for t in [h, *(texts[i] for _, texts in rows)])
            for i, h in enumerate(s.head[1:])
        ]
        title = clean(s.title)
        head = "  ".join(f"{h:>{w}}" for h, w in zip(s.head[1:], cols, strict=True))
        lines += ["", f"{title:<{width + 4}}{clean(head)}".rstrip()]
        lines += [
            (
                f"  {key:<{width}}  "
                + "  ".join(f"{t:>{w}}" for t, w in zip(texts, cols, strict=True))
            ).rstrip()
            for key, texts in rows
        ]
    return "\n".join(lines + [f"note: {clean(n)}" for n in report.notes]) + "\n"
