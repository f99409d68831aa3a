"""Rendering a report: the terminal text and one self-contained HTML page."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from batchrun.report import Histogram, Report

#: A table cell: (id or class, raw value for ``data-value``, text shown).
_Cell = tuple[str, object, str]


@dataclass(frozen=True)
class _Section:
    """One table of the report, drawn by both renderers; ``ids``: cell names are page ids."""

    title: str
    ident: str
    head: list[str]
    rows: Sequence[tuple[str, Sequence[_Cell]]]
    ids: bool = False
    chart: Histogram | None = None  # drawn as SVG in HTML; too long for a terminal
    label: Callable[[float], str] = str


def _num(value: float | None, spec: str = ",.1f") -> str:
    return "n/a" if value is None else format(value, spec)


def _int(name: str, value: int) -> _Cell:
    return (name, value, f"{value:,}")


def _share(name: str, part: int, whole: int) -> _Cell:
    return (name, part / whole if whole else None, f"{100 * part / whole:.1f}%" if whole else "n/a")


def _usd(name: str, value: float | None) -> _Cell:
    return (name, value, "n/a" if value is None else f"${value:,.4f}")


def _when(name: str, value: datetime | None) -> _Cell:
    text = "n/a" if value is None else value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return (name, None if value is None else value.isoformat(), text)


def _clock(ms: float) -> str:
    """UTC time of day of an epoch-ms instant (milliseconds shown only when not whole)."""
    frac = int(ms) % 1000
    text = datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S")
    return f"{text}.{frac:03d}" if frac else text


def _bucket_rows(hist: Histogram, label: Callable[[float], str]) -> list[tuple[str, list[_Cell]]]:
    pairs = zip(hist.edges, hist.edges[1:], hist.counts, strict=False)
    return [
        (label(lo), [("lo", lo, label(lo)), ("hi", hi, label(hi)), _int("count", c)])
        for lo, hi, c in pairs
    ]


def _sections(r: Report) -> list[_Section]:
    """The report as tables, in page order; both renderers draw these."""

    def tally(title: str, ident: str, what: str, counts: dict[str, int]) -> _Section:
        rows = [(k, [_int("count", v), _share("share", v, r.rows)]) for k, v in counts.items()]
        return _Section(title, ident, [what, "rows", "share"], rows)

    tokens = {"prompt": r.prompt_tokens, "completion": r.completion_tokens, "total": r.total_tokens}
    overview: list[tuple[str, list[_Cell]]] = [
        ("rows", [_int("rows-total", r.rows)]),
        *[(k, [_int(f"rows-{k}", r.by_status[k])]) for k in ("ok", "error")],
        *[(f"{k} tokens", [_int(f"tokens-{k}", v)]) for k, v in tokens.items()],
        ("estimated cost (USD, list prices)", [_usd("cost-total", r.estimated_cost_usd)]),
        ("cost reported by the API (USD)", [_usd("cost-reported", r.reported_cost_usd)]),
        ("rows with a reported cost", [_int("cost-reported-rows", r.rows_cost_reported)]),
        ("rows with reasoning", [_int("rows-reasoning", r.rows_with_reasoning)]),
        ("rows served by dedupe (no request)", [_int("rows-dedupe", r.rows_served_by_dedupe)]),
        ("rows served by the cache (no request)", [_int("rows-cached", r.rows_served_by_cache)]),
        ("tokens saved", [_int("tokens-saved", r.tokens_saved)]),
        ("estimated cost saved (USD)", [_usd("cost-saved", r.estimated_cost_saved_usd)]),
        ("first finished (UTC)", [_when("wall-first", r.first_finished_at)]),
        ("last finished (UTC)", [_when("wall-last", r.last_finished_at)]),
        ("wall span (s)", [("wall-span-s", r.wall_span_s, _num(r.wall_span_s, ",.3f"))]),
        ("rows per second", [("rows-per-s", r.rows_per_s, _num(r.rows_per_s))]),
        ("schema version", [("schema-version", r.schema_version, r.schema_version)]),
    ]
    if (a := r.accuracy) is not None:
        overview += [("accuracy", [_share("accuracy-overall", a.correct, a.graded)])]
        overview += [("graded rows", [_int("accuracy-graded", a.graded)])]
        overview += [("correct rows", [_int("accuracy-correct", a.correct)])]
    costs = [(m, [_usd("cost", c)]) for m, c in r.cost_by_model.items()]
    latency = [(k, [(f"latency-{k}", v, _num(v))]) for k, v in r.latency_ms.items()]
    fmt, hist, tp = "{:,.4g}".format, r.latency_histogram, r.throughput
    sections = [
        _Section("Overview", "overview", ["", "value"], overview, ids=True),
        tally("Status", "by-status", "status", r.by_status),
        tally("Finish reasons", "by-finish-reason", "reason", r.by_finish_reason),
        tally("Errors", "by-error-type", "error type", r.by_error_type),
        _Section("Estimated cost by model", "cost-by-model", ["model", "USD"], costs),
        _Section("Latency (ms)", "latency", ["", "ms"], latency, ids=True),
        _Section(
            "Latency histogram (ms)",
            "latency-histogram",
            ["bucket", "from", "to", "rows"],
            _bucket_rows(hist, fmt),
            chart=hist,
            label=fmt,
        ),
        _Section(
            "Rows finished over time (UTC)",
            "throughput",
            ["bucket", "from", "to", "rows"],
            _bucket_rows(tp, _clock),
            chart=tp,
            label=_clock,
        ),
    ]
    if r.group_by is not None:
        fields = ("rows", "ok", "graded", "correct")
        rows = [
            (
                k,
                [
                    *(_int(f, getattr(g, f)) for f in fields),
                    _share("accuracy", g.correct, g.graded),
                ],
            )
            for k, g in r.groups.items()
        ]
        sections.append(
            _Section(f"By {r.group_by}", "groups", [r.group_by, *fields, "accuracy"], rows)
        )
    return sections


def render_text(report: Report) -> str:
    """A terminal summary: one block per table, labels left, numbers right-aligned."""
    sections = [s for s in _sections(report) if s.rows and s.chart is None]
    width = max(len(key) for s in sections for key, _ in s.rows)
    lines = [f"batchrun report: {report.path}"]
    for s in sections:
        cols = [
            max(len(t) for t in [h, *(cells[i][2] for _, cells in s.rows)])
            for i, h in enumerate(s.head[1:])
        ]
        lines += [
            "",
            f"{s.title:<{width + 2}}"
            + "  ".join(f"{h:>{w}}" for h, w in zip(s.head[1:], cols, strict=True)).rstrip(),
        ]
        lines += [
            f"  {key:<{width}}"
            + "  ".join(f"{c[2]:>{w}}" for c, w in zip(cells, cols, strict=True))
            for key, cells in s.rows
        ]
    return "\n".join(lines + [f"note: {n}" for n in report.notes]) + "\n"


CSS = (
    "body{font:14px system-ui,sans-serif;color:#222;margin:2em;max-width:60em}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{padding:.15em .8em;"
    "border-bottom:1px solid #e3e3e3}th{text-align:left;font-weight:normal}"
    "td{text-align:right;font-variant-numeric:tabular-nums}thead th{font-weight:bold}"
    ".bar{fill:#4a78c2}.axis{font-size:11px;fill:#555}.note{color:#8a5a00}"
)


def esc(value: object) -> str:
    # A URL in the data (a model name, a group value) stays inert text: the page holds no
    # "://" at all, so nothing in it can be mistaken for a fetch.
    return html.escape(str(value)).replace("://", "&#58;//")


def _svg(s: _Section, hist: Histogram) -> str:
    """A bar chart of a histogram, in px; one ``<rect class="bar" data-value>`` per bucket."""
    w, h, left, top, bottom = 640, 180, 48, 10, 22
    plot_h, bars = h - top - bottom, []
    texts = [(w / 2, h / 2, "middle", "no data")]
    if hist.counts:
        peak, bar_w = max(hist.counts) or 1, (w - left) / len(hist.counts)
        for i, count in enumerate(hist.counts):
            bar_h = plot_h * count / peak
            tip = f"{s.label(hist.edges[i])} to {s.label(hist.edges[i + 1])}: {count:,}"
            bars.append(
                f'<rect class="bar" data-value="{count}" x="{left + i * bar_w:.1f}" '
                f'y="{top + plot_h - bar_h:.1f}" width="{max(bar_w - 1, 0.5):.1f}" '
                f'height="{bar_h:.1f}"><title>{esc(tip)}</title></rect>'
            )
        texts = [(left - 4, top + 8, "end", f"{peak:,}"), (left - 4, top + plot_h, "end", "0")]
        texts += [
            (left, h - 6, "start", s.label(hist.edges[0])),
            (w, h - 6, "end", s.label(hist.edges[-1])),
        ]
    labels = "".join(
        f'<text class="axis" x="{x}" y="{y}" text-anchor="{a}">{esc(t)}</text>'
        for x, y, a, t in texts
    )
    return (
        f'<svg id="chart-{s.ident}" role="img" width="{w}" height="{h}" viewBox="0 0 {w} {h}">'
        f"<title>{esc(s.title)}</title>{''.join(bars)}{labels}</svg>"
    )


def _table(s: _Section) -> str:
    """Keyed rows (``<tr data-key>``); each cell has an id or a class, and ``data-value``."""
    attr = "id" if s.ids else "class"
    rows = "".join(
        f'<tr data-key="{esc(key)}"><th>{esc(key)}</th>'
        + "".join(
            f'<td {attr}="{n}" data-value="{esc("" if v is None else v)}">{esc(t)}</td>'
            for n, v, t in cells
        )
        + "</tr>"
        for key, cells in s.rows
    )
    head = "".join(f"<th>{esc(h)}</th>" for h in s.head)
    return f'<table id="{s.ident}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def render_html(report: Report) -> str:
    """One self-contained HTML page: inline CSS and SVG, no script, no external reference."""
    body = [f"<h1>batchrun report</h1><p>{esc(report.path)}</p>"]
    body += [f'<p class="note">{esc(n)}</p>' for n in report.notes]
    for s in _sections(report):
        body += [
            f"<h2>{esc(s.title)}</h2>",
            "" if s.chart is None else _svg(s, s.chart),
            _table(s),
        ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>batchrun report: {esc(report.path)}</title><style>{CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
