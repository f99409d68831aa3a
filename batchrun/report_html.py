"""A report as one self-contained HTML page: inline CSS and SVG, no script, nothing fetched.

Headline figures as a grid of cards, then panels that share the page width: latency of ok
rows (a histogram with p50 and p95 marked; error answers, often instant, apart), rows
finished per second over time, accuracy per group when graded, outcomes, errors (only when
rows failed), cost by model, and the remaining run details. Bucket tables are folded in
``<details>``. Every figure sits in an element with an ``id`` (or a class, in tables) and a
``data-value`` holding the raw value, so a script can read the page back.
"""

from __future__ import annotations

from batchrun import charts
from batchrun.htmlkit import BASE_CSS, esc
from batchrun.report import Histogram, Report
from batchrun.report_render import (
    Cell,
    Section,
    costs,
    error_messages,
    groups,
    latency,
    outcomes,
    overview,
    run_figure,
)
from batchrun.scales import (
    clock_label,
    count_scale,
    duration_scale,
    format_count,
    format_duration_ms,
    format_usd,
    percent_scale,
    time_scale,
)

#: Groups drawn as bars (the table below the chart lists them all).
CHART_GROUPS = 30
#: A groups table longer than this starts folded.
OPEN_GROUPS = 12

CSS = (
    BASE_CSS + charts.CSS + "header p{margin:.15rem 0}"
    ".cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(11.5rem,1fr));"
    "gap:.75rem;margin:1.1rem 0 1.25rem}"
    ".card{border:1px solid var(--line);border-radius:8px;padding:.65rem .85rem;min-width:0}"
    ".card .label{font-size:.78rem;color:var(--muted);text-transform:uppercase;"
    "letter-spacing:.03em}"
    ".card .value{font-size:1.55rem;font-weight:600;font-variant-numeric:tabular-nums;"
    "margin:.1rem 0;overflow-wrap:anywhere}"
    ".card .sub{font-size:.85rem;color:var(--muted)}"
    ".card.bad{border-color:#e8b4b0;background:#fdf3f2}.card.bad .value{color:var(--bad)}"
    ".card.warn{border-color:#ecd6a4;background:#fdf8ec}.card.warn .value{color:var(--warn)}"
    ".card.good .value{color:var(--good)}"
    ".panels{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,34rem),1fr));"
    "gap:1rem}"
    ".panel{border:1px solid var(--line);border-radius:8px;padding:1rem 1.1rem;min-width:0}"
    ".panel table{display:block;overflow-x:auto;max-width:100%}"
    ".scroll{overflow-x:auto}.caption{color:var(--muted);margin:.3rem 0 .6rem}"
    ".tables{display:flex;flex-wrap:wrap;gap:0 2.5rem;align-items:flex-start}"
    "details{margin-top:.4rem}summary{cursor:pointer;color:var(--accent)}"
    "h3{font-size:.9rem;margin:.4rem 0 .2rem}"
    "@media (max-width:40rem){.panel{padding:.75rem .6rem}th,td{padding:.2rem .35rem}"
    ".panel table{font-size:12.5px}}"
    "td.text,td.message{text-align:left;overflow-wrap:anywhere;max-width:34rem}"
)


class _Figures:
    """The overview's cells by name; each shown once on the page, as a card or a table row."""

    def __init__(self, section: Section) -> None:
        self.rows = section.rows
        self.cells: dict[str, Cell] = {c[0]: c for _, cells in section.rows for c in cells}
        self.used: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self.cells

    def raw(self, name: str) -> object:
        return self.cells[name][1]

    def show(self, name: str, text: str | None = None) -> str:
        """The figure in a span with its id and raw value; ``text`` replaces the table text."""
        self.used.add(name)
        ident, raw, shown = self.cells[name]
        value = "" if raw is None else raw
        return (
            f'<span id="{esc(ident)}" data-value="{esc(value)}">'
            f"{esc(shown if text is None else text)}</span>"
        )

    def rest(self) -> Section:
        """The figures no card showed, as the run-details table."""
        rows = [(k, cells) for k, cells in self.rows if cells[0][0] not in self.used]
        return Section("Run details", "overview", ["", "value"], rows, ids=True)


def _int_text(value: object) -> str:
    """A count from the summary (read as a number) as an integer."""
    return f"{value:,.0f}" if isinstance(value, float) else "n/a"


def _card(label: str, value: str, sub: str = "", tone: str = "") -> str:
    cls = f"card {tone}".strip()
    return (
        f'<div class="{cls}"><div class="label">{esc(label)}</div>'
        f'<div class="value">{value}</div><div class="sub">{sub}</div></div>'
    )


def _cards(r: Report, f: _Figures) -> str:
    ok, errors = r.by_status["ok"], r.by_status["error"]
    share = f"{100 * errors / r.rows:.1f}% of rows" if r.rows else "no rows"
    out = [
        _card("Rows", f.show("rows-total"), f"{f.show('rows-ok')} ok"),
        _card(
            "Errors",
            f.show("rows-error"),
            esc(share) + (f" · {esc(next(iter(r.by_error_type)))}" if r.by_error_type else ""),
            "bad" if errors else ("good" if ok else ""),
        ),
    ]
    if r.accuracy is not None:
        out.append(
            _card(
                "Accuracy",
                f.show("accuracy-overall"),
                f"{f.show('accuracy-correct')} of {f.show('accuracy-graded')} graded rows",
            )
        )
    out.append(
        _card(
            "Tokens",
            f.show("tokens-total", format_count(r.total_tokens)),
            f"{f.show('tokens-prompt')} in · {f.show('tokens-completion')} out",
        )
    )
    out.append(_card("Estimated cost", f.show("cost-total"), esc(r.estimate_basis)))
    if r.reported_cost_usd is None:  # the cost panel says so; no row of n/a and 0
        f.used |= {"cost-reported", "cost-reported-rows"}
    else:
        credits = "" if r.credits_used is None else f" · {f.show('credits-reported')} credits"
        reported_sub = f"reported on {f.show('cost-reported-rows')} rows{credits}"
        out.append(_card("Reported cost", f.show("cost-reported"), reported_sub))
    if r.run is not None and "run-wall-time-s" in f and (wall := run_figure(r, "wall_time_s")):
        span = f.show("wall-span-s", format_duration_ms(1000 * (r.wall_span_s or 0)))
        out.append(
            _card(
                "Wall time",
                f.show("run-wall-time-s", format_duration_ms(1000 * wall)),
                f"last run; rows finished over {span}",
            )
        )
    elif r.wall_span_s is not None:
        span_text = format_duration_ms(1000 * r.wall_span_s)
        out.append(
            _card("Wall time", f.show("wall-span-s", span_text), "first to last row finished")
        )
    if r.rows_per_s is not None:
        out.append(
            _card(
                "Throughput",
                f.show("rows-per-s", f"{r.rows_per_s:,.1f}/s"),
                "rows finished per second",
            )
        )
    if (p50 := r.latency_ms.get("p50")) is not None:
        p95 = r.latency_ms.get("p95")
        out.append(
            _card(
                "Latency p50",
                f'<span class="latency-p50" data-value="{p50}">{esc(format_duration_ms(p50))}</span>',
                f"p95 {esc(format_duration_ms(p95))} · ok rows",
            )
        )
    retry_sub = f"{f.show('requests')} requests"
    if "run-rate-limited" in f:
        retry_sub += f" · 429s: {f.show('run-rate-limited', _int_text(f.raw('run-rate-limited')))}"
    out.append(_card("Retries", f.show("retries"), retry_sub, "warn" if r.retries else ""))
    if "run-rows-possibly-charged-twice" in f:
        twice = run_figure(r, "rows_possibly_charged_twice")
        out.append(
            _card(
                "Possibly charged twice",
                f.show("run-rows-possibly-charged-twice"),
                "rows in flight when a run died",
                "warn" if twice else "",
            )
        )
    if r.rows_with_reasoning:
        out.append(_card("With reasoning", f.show("rows-reasoning"), "rows whose answer had it"))
    return f'<section id="headline" class="cards">{"".join(out)}</section>'


def _table(s: Section) -> str:
    """Keyed rows (``<tr data-key>``); each cell has an id or a class, and ``data-value``."""
    attr = "id" if s.ids else "class"
    rows = "".join(
        f'<tr data-key="{esc(key)}"><th>{esc(key, one_line=True)}</th>'
        + "".join(
            f'<td {attr}="{esc(n)}" data-value="{esc("" if v is None else v)}">{esc(t)}</td>'
            for n, v, t in cells
        )
        + "</tr>"
        for key, cells in s.rows
    )
    head = "".join(f"<th>{esc(h)}</th>" for h in s.head)
    return f'<table id="{s.ident}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _titled(s: Section) -> str:
    return f'<div><h3 class="muted">{esc(s.title)}</h3>{_table(s)}</div>'


def _buckets(ident: str, hist: Histogram, label: object, what: str) -> str:
    """The bucket table of a chart, folded: the chart is the reading, the table the record."""
    fmt = label if callable(label) else str
    rows = [
        (
            f"{fmt(lo)}",
            [("lo", lo, fmt(lo)), ("hi", hi, fmt(hi)), ("count", n, f"{n:,}")],
        )
        for lo, hi, n in zip(hist.edges, hist.edges[1:], hist.counts, strict=False)
    ]
    table = _table(Section(what, ident, ["bucket", "from", "to", "rows"], rows))
    return f"<details><summary>{len(rows):,} buckets as a table</summary>{table}</details>"


def _panel(ident: str, title: str, *parts: str) -> str:
    return f'<section id="{ident}" class="panel"><h2>{esc(title)}</h2>{"".join(parts)}</section>'


def _latency_panel(r: Report) -> str | None:
    hist = r.latency_histogram
    if not hist.counts:
        return None
    x = duration_scale(hist.edges[0], hist.edges[-1], "latency of the last attempt")
    y = count_scale(max(hist.counts), "rows")
    markers = [
        charts.Marker(f"{k} {format_duration_ms(v)}", v)
        for k in ("p50", "p95")
        if (v := r.latency_ms.get(k)) is not None
    ]
    chart = charts.histogram(
        "chart-latency-histogram",
        "Latency of ok rows",
        hist.edges,
        hist.counts,
        x,
        y,
        markers,
        tip="{lo} to {hi} ms: {n} rows",
    )
    caption = f"{sum(hist.counts):,} ok rows."
    failed = r.error_latency_ms
    if failed.get("max") is not None:
        caption += (
            f" Error rows are left out (p50 {format_duration_ms(failed.get('p50'))}, max "
            f"{format_duration_ms(failed['max'])}): a failure answered at once would pull the "
            "percentiles of real answers down."
        )
    return _panel(
        "latency-panel",
        "Latency of ok rows",
        f'<div class="scroll">{chart}</div><p class="caption">{esc(caption)}</p>',
        _table(latency(r)),
        _buckets("latency-histogram", hist, "{:,.4g}".format, "Latency buckets (ms)"),
    )


def _throughput_panel(r: Report) -> str | None:
    tp = r.throughput
    if not tp.counts:
        return None
    width_ms = tp.edges[1] - tp.edges[0]
    rates = r.throughput_rates()
    drawn = list(rates)
    points = [(tp.edges[k] + width_ms / 2, rates[k]) for k in drawn]
    label = clock_label(width_ms, False)
    tips = [f"{label(tp.edges[k])}: {tp.counts[k]:,} rows ({rates[k]:,.3g}/s)" for k in drawn]
    x = time_scale(tp.edges[0], tp.edges[-1], "time finished")
    y = count_scale(max(rates.values(), default=0.0), "rows per second")
    chart = charts.line("chart-throughput", "Rows finished per second", points, x, y, tips)
    bucket = format_duration_ms(width_ms)
    return _panel(
        "throughput-panel",
        "Throughput over time",
        f'<div class="scroll">{chart}</div>',
        f'<p class="caption">Rows finished in each {esc(bucket)} bucket, per second (the first '
        "and last buckets over the part the run covered, left off when under half).</p>",
        _buckets("throughput", tp, label, "Rows finished per bucket (UTC)"),
    )


def _groups_panel(r: Report) -> str | None:
    table = groups(r)
    if table is None or not table.rows:
        return None
    parts = []
    if r.accuracy is not None:
        drawn = list(r.groups.items())[:CHART_GROUPS]
        bars = [
            charts.Bar(
                name,
                g.accuracy,
                "not graded"
                if g.accuracy is None
                else f"{g.accuracy:.1%} ({g.correct:,}/{g.graded:,})",
                f"{name}: {g.correct:,} correct of {g.graded:,} graded ({g.rows:,} rows)",
            )
            for name, g in drawn
        ]
        overall = r.accuracy.accuracy
        ref = None if overall is None else charts.Marker(f"all {overall:.1%}", overall)
        x = percent_scale("accuracy: share of graded rows correct")
        title = f"Accuracy by {r.group_by}"
        parts.append(
            f'<div class="scroll">{charts.hbars("chart-groups", title, bars, x, ref)}</div>'
        )
        if len(r.groups) > len(drawn):
            parts.append(
                f'<p class="caption">The chart draws the first {len(drawn)} of '
                f"{len(r.groups):,} groups; the table lists them all.</p>"
            )
    opened = " open" if len(table.rows) <= OPEN_GROUPS or r.accuracy is None else ""
    parts.append(
        f"<details{opened}><summary>{len(table.rows):,} groups as a table</summary>"
        f"{_table(table)}</details>"
    )
    heading = f"Accuracy by {r.group_by}" if r.accuracy is not None else f"Rows by {r.group_by}"
    return _panel("groups-panel", heading, *parts)


def _errors_panel(r: Report) -> str | None:
    tallies = [s for s in outcomes(r) if s.ident == "by-error-type"]
    messages = error_messages(r)
    if not tallies:
        return None
    parts = [f'<div class="tables">{_titled(tallies[0])}</div>']
    if messages is not None:
        parts.append(_titled(messages))
    return _panel("errors-panel", f"Errors ({r.by_status['error']:,} rows)", *parts)


def render_html(r: Report) -> str:
    """One self-contained page: cards, then panels; a section only when it has something."""
    f = _Figures(overview(r))
    span = ""
    if r.first_finished_at is not None and r.last_finished_at is not None:
        span = (
            f" · rows finished {r.first_finished_at:%Y-%m-%d %H:%M:%S} to "
            f"{r.last_finished_at:%Y-%m-%d %H:%M:%S} UTC"
        )
    state = "" if r.run is None or r.run.state is None else f" · last run {r.run.state}"
    stopped = "" if r.run is None or not r.run.stop_reason else f" (stopped: {r.run.stop_reason})"
    header = (
        "<header><h1>batchrun report</h1>"
        f'<p class="muted"><b>{esc(r.path, one_line=True)}</b> · schema {esc(r.schema_version)}'
        f"{esc(span)}{esc(state)}{esc(stopped)}</p>"
        + "".join(f'<p class="note">{esc(n, one_line=True)}</p>' for n in r.notes)
        + ('<p class="note">The output has no rows.</p>' if not r.rows else "")
        + "</header>"
    )
    cards = _cards(r, f)
    status = [s for s in outcomes(r) if s.ident != "by-error-type"]
    cost = costs(r)
    panels = [
        _latency_panel(r),
        _throughput_panel(r),
        _groups_panel(r),
        _errors_panel(r),
        _panel(
            "outcomes-panel",
            "Outcomes",
            f'<div class="tables">{"".join(map(_titled, status))}</div>',
        )
        if r.rows
        else None,
        None if cost is None else _panel("cost-panel", "Cost", _table(cost), _reported(r)),
        _panel("details-panel", "Run details", _table(f.rest())),
    ]
    body = header + cards + f'<div class="panels">{"".join(p for p in panels if p)}</div>'
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>batchrun report: {esc(r.path, one_line=True)}</title><style>{CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def _reported(r: Report) -> str:
    if r.reported_cost_usd is None:
        return '<p class="caption">The API reported no cost (no cost header on any answer).</p>'
    return (
        f'<p class="caption">The API reported {esc(format_usd(r.reported_cost_usd))} on '
        f"{r.rows_cost_reported:,} of {r.by_status['ok']:,} ok rows.</p>"
    )
