"""A :class:`~batchrun.compare.Comparison` as one self-contained HTML page: inline CSS and
SVG, no script, nothing fetched. Every figure is also in a table cell with an ``id`` (or a
class) and a ``data-value`` holding the raw value, so a script can read the page back.
"""

from __future__ import annotations

from batchrun.compare import RIGHT_TO_WRONG, WRONG_TO_RIGHT, Comparison, Flip, Paired
from batchrun.compare_render import (
    CHART_GROUPS,
    DIRECTIONS,
    answers_line,
    group_cells,
    metrics,
    tallies,
    verdict,
)
from batchrun.htmlkit import BASE_CSS, esc

#: Characters of a prompt or answer shown in a cell (the rest is cut, with an ellipsis).
CELL_TEXT_MAX = 600
_CSS = BASE_CSS + (
    "body{max-width:80em}.bad{color:#b3261e}.good{color:#1b7f3b}"
    ".verdict{padding:.5em .8em;border-radius:4px;display:inline-block;font-weight:bold}"
    ".verdict.pass{background:#e6f4ea}.verdict.fail{background:#fce8e6}"
    ".verdict.unchecked{background:#fef7e0}"
    "td.text{text-align:left;max-width:26em;white-space:pre-wrap;overflow-wrap:anywhere}"
    ".b-base{fill:#9aa5b1}.b-cur{fill:#4a78c2}.grid{stroke:#e3e3e3}.frame{stroke:#888}"
    ".label{font-size:12px;fill:#222}.title{font-size:13px;fill:#222;font-weight:bold}"
    "text.bad{fill:#b3261e}text.good{fill:#1b7f3b}"
)


def _cell(ident: str, value: object, text: str, cls: str = "", *, by_id: bool = True) -> str:
    attr = f'id="{esc(ident)}"' if by_id else f'class="{esc(ident)}"'
    extra = f' class="{cls}"' if cls and by_id else ""
    raw = "" if value is None else value
    return f'<td {attr}{extra} data-value="{esc(raw)}">{esc(text)}</td>'


def _text_cell(name: str, value: str | None) -> str:
    text = "" if value is None else value
    shown = text if len(text) <= CELL_TEXT_MAX else text[: CELL_TEXT_MAX - 1] + "…"
    return f'<td class="text {name}">{esc(shown)}</td>'


def _metrics_table(c: Comparison) -> str:
    rows = []
    for m in metrics(c):
        before = "n/a" if m.before is None else m.show(m.before)
        after = "n/a" if m.after is None else m.show(m.after)
        rows.append(
            f'<tr data-key="{m.ident}"><th>{esc(m.label)}</th>'
            + _cell(f"{m.ident}-baseline", m.before, before)
            + _cell(f"{m.ident}-current", m.after, after)
            + _cell(f"{m.ident}-delta", m.change, m.delta_text(), m.tone())
            + "</tr>"
        )
    head = "<tr><th></th><th>baseline</th><th>current</th><th>delta</th></tr>"
    return f'<table id="metrics"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _chart(c: Comparison) -> str:
    """Horizontal grouped bars: per group, baseline and current accuracy on a 0-100 % axis."""
    groups = [(k, g) for k, g in c.groups.items() if g.rows][:CHART_GROUPS]
    left, plot_w, right, top, row_h, bottom = 170, 480, 90, 40, 36, 56
    w, h = left + plot_w + right, top + row_h * len(groups) + bottom
    out = [
        f'<svg id="chart-groups" role="img" width="{w}" height="{h}" viewBox="0 0 {w} {h}"">',
        f"<title>{esc(f'Accuracy by {c.group_by}, baseline and current')}</title>",
        f'<rect class="b-base" x="{left}" y="12" width="12" height="12"/>'
        f'<text class="label" x="{left + 18}" y="22">baseline</text>'
        f'<rect class="b-cur" x="{left + 100}" y="12" width="12" height="12"/>'
        f'<text class="label" x="{left + 118}" y="22">current</text>',
    ]
    axis_y = top + row_h * len(groups)
    for pct in range(0, 101, 20):
        x = left + plot_w * pct / 100
        out.append(
            f'<line class="grid" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{axis_y}"/>'
            f'<text class="label" x="{x:.1f}" y="{axis_y + 16}" text-anchor="middle">{pct}%</text>'
        )
    for i, (name, g) in enumerate(groups):
        y = top + i * row_h
        label = name if len(name) <= 22 else name[:21] + "…"
        out.append(
            f'<text class="label" x="{left - 8}" y="{y + row_h / 2 + 4:.1f}" '
            f'text-anchor="end">{esc(label)}<title>{esc(name)}</title></text>'
        )
        for j, (cls, acc, n) in enumerate(
            (
                ("b-base", g.baseline_accuracy, g.baseline_correct),
                ("b-cur", g.current_accuracy, g.current_correct),
            )
        ):
            value = acc or 0.0
            tip = (
                f"{name}, {'baseline' if j == 0 else 'current'}: {value:.1%} ({n:,} of {g.rows:,})"
            )
            out.append(
                f'<rect class="{cls}" data-group="{esc(name)}" data-value="{value}" x="{left}" '
                f'y="{y + 5 + j * 13}" width="{plot_w * value:.1f}" height="12">'
                f"<title>{esc(tip)}</title></rect>"
            )
        d = g.delta_points
        tone = "" if not d else ("bad" if d < 0 else "good")
        text = "n/a" if d is None else f"{float(d):+.1f} pts"
        out.append(
            f'<text class="label {tone}" x="{left + plot_w + 8}" y="{y + row_h / 2 + 4:.1f}">'
            f"{esc(text)}</text>"
        )
    out += [
        f'<line class="frame" x1="{left}" y1="{top}" x2="{left}" y2="{axis_y}"/>',
        f'<line class="frame" x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}"/>',
        f'<text class="title" x="{left + plot_w / 2}" y="{axis_y + 40}" text-anchor="middle">'
        "accuracy on the rows graded in both runs (%)</text>",
        f'<text class="title" transform="translate(16 {top + row_h * len(groups) / 2:.1f}) '
        f'rotate(-90)" text-anchor="middle">{esc(c.group_by)}</text>',
        "</svg>",
    ]
    return "".join(out)


def _groups_table(c: Comparison) -> str:
    head = ["paired rows", "baseline", "current", "delta", "right → wrong", "wrong → right", "p"]
    names = ["rows", "baseline", "current", "delta", "right-to-wrong", "wrong-to-right", "p-value"]
    rows = []
    for key, g in c.groups.items():
        raw = _raw(g)
        cells = "".join(
            _cell(n, r, t, by_id=False) for n, r, t in zip(names, raw, group_cells(g), strict=True)
        )
        rows.append(f'<tr data-key="{esc(key)}"><th>{esc(key)}</th>{cells}</tr>')
    th = "".join(f"<th>{esc(h)}</th>" for h in [c.group_by, *head])
    return f'<table id="groups"><thead><tr>{th}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _raw(g: Paired) -> tuple[object, ...]:
    d = g.delta_points
    return (
        g.rows,
        g.baseline_accuracy,
        g.current_accuracy,
        None if d is None else float(d),
        g.right_to_wrong,
        g.wrong_to_right,
        g.p_value,
    )


def _rows_table(ident: str, title: str, total: int, rows: list[Flip], key: str) -> str:
    shown = len(rows)
    more = (
        f"Showing the first {shown:,}; {total - shown:,} more not shown." if total > shown else ""
    )
    head = [key, "group", "prompt", "expected", "baseline answer", "current answer"]
    body = "".join(
        f'<tr data-key="{esc(f.key)}"><th>{esc(f.key)}</th>'
        + _text_cell("group", f.group)
        + _text_cell("prompt", f.prompt)
        + _text_cell("expected", f.expected)
        + _text_cell("baseline", f.baseline)
        + _text_cell("current", f.current)
        + "</tr>"
        for f in rows
    )
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    count = f'<span id="{ident}-count" data-value="{total}">({total:,})</span>'
    return (
        f"<h2>{esc(title)} {count}</h2>"
        + (f'<p class="note">{esc(more)}</p>' if more else "")
        + f'<table id="{ident}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'
    )


def render_html(c: Comparison) -> str:
    """One self-contained page: verdict, deltas, per-group chart, flips and changed rows."""
    kind = "unchecked" if c.unchecked else "fail" if c.failures else "pass"
    body = [
        "<h1>batchrun compare</h1>",
        f'<p>baseline <b id="baseline-path">{esc(c.baseline.path)}</b> → current '
        f'<b id="current-path">{esc(c.current.path)}</b></p>',
        f'<p id="verdict" class="verdict {kind}" data-exit-code="{c.exit_code}">{esc(verdict(c))}</p>',
        f'<p id="rows-joined" data-value="{c.paired_rows}">rows joined by {esc(c.key)}: '
        f"{c.paired_rows:,} in both, {c.only_baseline:,} only in the baseline, "
        f"{c.only_current:,} only in the current run</p>",
    ]
    body += [f'<p class="note">{esc(n)}</p>' for n in c.mismatches + c.notes]
    body += ["<h2>Before and after</h2>", _metrics_table(c)]
    if (acc := c.accuracy) is not None:
        body.append(
            f'<p id="significance" data-value="{acc.p_value}">p = {acc.p_value:.3g} '
            f"({esc(c.test)}): {acc.right_to_wrong:,} rows went right → wrong, "
            f"{acc.wrong_to_right:,} wrong → right.</p>"
        )
    if c.answers_compared is not None:
        body.append(
            f'<p id="answers-changed" data-value="{c.answers_changed}">{esc(answers_line(c))}</p>'
        )
    if c.groups:
        drawn = min(CHART_GROUPS, sum(1 for g in c.groups.values() if g.rows))
        body += [f"<h2>Accuracy by {esc(c.group_by)}</h2>", _chart(c)]
        if len(c.groups) > drawn:
            body.append(f"<p>The chart draws the first {drawn} groups; the table lists all.</p>")
        body.append(_groups_table(c))
    for direction in (RIGHT_TO_WRONG, WRONG_TO_RIGHT):
        if c.accuracy is not None:
            rows = [f for f in c.flips if f.direction == direction]
            title = f"Flipped {DIRECTIONS[direction]}"
            body.append(
                _rows_table(
                    f"flips-{direction.replace('_', '-')}",
                    title,
                    c.flip_count(direction),
                    rows,
                    c.key,
                )
            )
    if c.answers_compared is not None:
        body.append(
            _rows_table("changes", "Answers changed", c.answers_changed or 0, c.changes, c.key)
        )
    for title, ident, counts in tallies(c):
        trs = "".join(
            f'<tr data-key="{esc(k)}"><th>{esc(k)}</th>'
            + _cell("baseline", x, f"{x:,}", by_id=False)
            + _cell("current", y, f"{y:,}", by_id=False)
            + _cell("delta", y - x, f"{y - x:+,}", by_id=False)
            + "</tr>"
            for k, (x, y) in counts.items()
        )
        head = "<tr><th></th><th>baseline</th><th>current</th><th>delta</th></tr>"
        body += [
            f"<h2>{esc(title)}</h2>",
            f'<table id="{ident}"><thead>{head}</thead><tbody>{trs or ""}</tbody></table>',
        ]
    for which, n, keys in (
        ("baseline", c.only_baseline, c.only_baseline_keys),
        ("current", c.only_current, c.only_current_keys),
    ):
        listed = ", ".join(esc(k) for k in keys)
        more = f" … and {n - len(keys):,} more" if n > len(keys) else ""
        body.append(
            f'<h2>Only in the {which} <span id="only-{which}-count" data-value="{n}">({n:,})</span></h2>'
            + (f"<p>{listed}{more}</p>" if n else "<p>none</p>")
        )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>batchrun compare: {esc(c.current.path)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
