"""Inline SVG charts with titled axes and round ticks: a histogram with percentile markers,
a line over time, horizontal bars of shares. No script and nothing fetched; every bar or
point carries its raw value in ``data-value`` and a ``<title>`` a pointer shows.

Sizes are in viewBox units; the page scales a chart to its box (``width: 100%``), and CSS
keeps it from shrinking below legibility (the box scrolls instead).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from batchrun.htmlkit import esc
from batchrun.scales import Scale

WIDTH = 640
#: Left room for the y tick labels and the y axis title; bottom for the x ticks and title.
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 18, 40, 52
_PLOT_H = 200
#: About how wide a character of a 12 px label is, to keep labels inside the chart.
_CHAR_W = 9.5
#: Characters of a bar label drawn (the whole label is in the bar's title).
LABEL_MAX = 24

CSS = (
    ".chart{display:block;width:100%;height:auto;min-width:20rem}"
    ".chart text{font-size:12px;fill:#59636e}.chart .axis-title{font-size:12.5px;fill:#1f2328}"
    ".chart .grid{stroke:#e6e9ed}.chart .frame{stroke:#8c959f}"
    ".chart .bar{fill:#3b6fc4}.chart .bar:hover{fill:#2a548f}"
    ".chart .line{fill:none;stroke:#3b6fc4;stroke-width:2}.chart .area{fill:#3b6fc4;opacity:.12}"
    ".chart .point{fill:#3b6fc4}"
    ".chart .marker{stroke:#b3261e;stroke-width:1.5;stroke-dasharray:4 3}"
    ".chart text.marker-label{fill:#b3261e;font-weight:600}"
    ".chart .value{fill:#1f2328;paint-order:stroke;stroke:#fff;stroke-width:3px}.chart .empty{fill:#c8ccd1}"
    # On a phone the chart is drawn at about half its size: larger type keeps it legible
    # (the layout leaves room for it: see _CHAR_W).
    "@media (max-width:40rem){.chart text,.chart .axis-title{font-size:19px}}"
)


@dataclass(frozen=True)
class Marker:
    """A vertical line at ``value`` (in the x scale's units) labelled ``label``."""

    label: str
    value: float


@dataclass(frozen=True)
class Bar:
    """One horizontal bar: ``value`` on the x scale (None: nothing to draw), ``text`` beside it."""

    label: str
    value: float | None
    text: str
    tip: str


def _open(ident: str, title: str, height: float) -> str:
    return (
        f'<svg id="{esc(ident)}" class="chart" role="img" aria-label="{esc(title)}" '
        f'viewBox="0 0 {WIDTH} {height:.0f}" preserveAspectRatio="xMinYMin meet">'
        f"<title>{esc(title)}</title>"
    )


def _x_axis(x: Scale, left: float, plot_w: float, base: float) -> list[str]:
    out = [f'<line class="frame" x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}"/>']
    for tick, label in zip(x.ticks, x.labels, strict=True):
        px = left + x.at(tick, plot_w)
        # A label centred on a tick at the right end would be cut by the chart's edge.
        anchor = "end" if px + _CHAR_W * len(label) / 2 > WIDTH else "middle"
        out.append(
            f'<line class="frame" x1="{px:.1f}" y1="{base}" x2="{px:.1f}" y2="{base + 4}"/>'
            f'<text class="tick x-tick" x="{px:.1f}" y="{base + 17}" text-anchor="{anchor}" '
            f'data-value="{tick:g}">{esc(label)}</text>'
        )
    out.append(
        f'<text class="axis-title" x="{left + plot_w / 2:.1f}" y="{base + 40}" '
        f'text-anchor="middle">{esc(x.title)}</text>'
    )
    return out


def _y_axis(y: Scale, left: float, plot_w: float, top: float, plot_h: float) -> list[str]:
    out = []
    for tick, label in zip(y.ticks, y.labels, strict=True):
        py = top + plot_h - y.at(tick, plot_h)
        out.append(
            f'<line class="grid" x1="{left}" y1="{py:.1f}" x2="{left + plot_w}" y2="{py:.1f}"/>'
            f'<text class="tick y-tick" x="{left - 6}" y="{py + 4:.1f}" text-anchor="end" '
            f'data-value="{tick:g}">{esc(label)}</text>'
        )
    mid = top + plot_h / 2
    out.append(
        f'<text class="axis-title" transform="translate(16 {mid:.1f}) rotate(-90)" '
        f'text-anchor="middle">{esc(y.title)}</text>'
    )
    return out


def histogram(
    ident: str,
    title: str,
    edges: Sequence[float],
    counts: Sequence[int],
    x: Scale,
    y: Scale,
    markers: Sequence[Marker] = (),
    tip: str = "{lo} to {hi}: {n} rows",
    tick_label: str = "{:,.4g}",
) -> str:
    """Bars over ``edges`` (one ``rect.bar`` a bucket), dashed markers (p50, p95 …).

    ``tip`` is formatted with the bucket's ``lo``, ``hi`` (through ``tick_label``) and ``n``.
    """
    plot_w, height = WIDTH - _LEFT - _RIGHT, _TOP + _PLOT_H + _BOTTOM
    base = _TOP + _PLOT_H
    out = [_open(ident, title, height)]
    out += _y_axis(y, _LEFT, plot_w, _TOP, _PLOT_H)
    for lo, hi, n in zip(edges, edges[1:], counts, strict=False):
        x0, x1 = _LEFT + x.at(lo, plot_w), _LEFT + x.at(hi, plot_w)
        bar_h = y.at(n, _PLOT_H)
        text = tip.format(lo=tick_label.format(lo), hi=tick_label.format(hi), n=f"{n:,}")
        out.append(
            f'<rect class="bar" data-value="{n}" x="{x0 + 0.5:.1f}" y="{base - bar_h:.1f}" '
            f'width="{max(x1 - x0 - 1, 0.5):.1f}" height="{bar_h:.1f}"><title>{esc(text)}</title></rect>'
        )
    out += _x_axis(x, _LEFT, plot_w, base)
    # The first marker's label sits left of its line, the others right, kept inside the
    # chart; a label that would overlap the one before it goes a line higher.
    placed: list[tuple[float, float]] = []
    for k, m in enumerate(markers):
        px = _LEFT + x.at(m.value, plot_w)
        width = 1.15 * _CHAR_W * len(m.label)  # bold
        start = px - 4 - width if k == 0 else px + 4
        start = min(max(start, 2.0), WIDTH - 2 - width)
        rise = 12 * sum(1 for a, b in placed if start < b + 6 and a < start + width + 6)
        placed.append((start, start + width))
        out.append(
            f'<line class="marker" data-value="{m.value:g}" x1="{px:.1f}" y1="{_TOP - 6 - rise}" '
            f'x2="{px:.1f}" y2="{base}"/>'
            f'<text class="marker-label" x="{start:.1f}" y="{_TOP - 10 - rise}">'
            f"{esc(m.label)}</text>"
        )
    out.append("</svg>")
    return "".join(out)


def line(
    ident: str,
    title: str,
    points: Sequence[tuple[float, float]],
    x: Scale,
    y: Scale,
    tips: Sequence[str] = (),
) -> str:
    """A line through ``points`` (x, y) with the area under it shaded; one ``circle.point``
    a point, its y in ``data-value`` and ``tips[i]`` as its title."""
    plot_w, height = WIDTH - _LEFT - _RIGHT, _TOP + _PLOT_H + _BOTTOM
    base = _TOP + _PLOT_H
    out = [_open(ident, title, height)]
    out += _y_axis(y, _LEFT, plot_w, _TOP, _PLOT_H)
    xy = [(_LEFT + x.at(px, plot_w), base - y.at(py, _PLOT_H)) for px, py in points]
    if xy:
        path = " ".join(f"{a:.1f},{b:.1f}" for a, b in xy)
        out.append(
            f'<path class="area" d="M{xy[0][0]:.1f},{base} L{path} L{xy[-1][0]:.1f},{base} Z"/>'
            f'<polyline class="line" points="{path}"/>'
        )
        radius = 2.5 if len(xy) <= 80 else 1.2
        for k, ((a, b), (_, value)) in enumerate(zip(xy, points, strict=True)):
            tip = f"<title>{esc(tips[k])}</title>" if k < len(tips) else ""
            out.append(
                f'<circle class="point" data-value="{value:g}" cx="{a:.1f}" cy="{b:.1f}" '
                f'r="{radius}">{tip}</circle>'
            )
    out += _x_axis(x, _LEFT, plot_w, base)
    out.append("</svg>")
    return "".join(out)


def hbars(
    ident: str, title: str, bars: Sequence[Bar], x: Scale, reference: Marker | None = None
) -> str:
    """One horizontal bar a row on the ``x`` scale, its label left and its text right; a
    dashed ``reference`` line (the overall figure) across them."""
    row_h, label_w, text_w = (
        28,
        10 + _CHAR_W * min(LABEL_MAX, max((len(b.label) for b in bars), default=4)),
        150,
    )
    left = max(label_w, 60)
    plot_w = WIDTH - left - text_w
    plot_h = row_h * len(bars)
    top = _TOP
    base = top + plot_h
    out = [_open(ident, title, top + plot_h + _BOTTOM)]
    for tick, label in zip(x.ticks, x.labels, strict=True):
        px = left + x.at(tick, plot_w)
        out.append(f'<line class="grid" x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{base}"/>')
        out.append(
            f'<text class="tick x-tick" x="{px:.1f}" y="{base + 17}" text-anchor="middle" '
            f'data-value="{tick:g}">{esc(label)}</text>'
        )
    if reference is not None:  # under the bars and their texts
        px = left + x.at(reference.value, plot_w)
        out.append(
            f'<line class="marker" data-value="{reference.value:g}" x1="{px:.1f}" y1="{top - 6}" '
            f'x2="{px:.1f}" y2="{base}"/><text class="marker-label" x="{px:.1f}" '
            f'y="{top - 10}" text-anchor="middle">{esc(reference.label)}</text>'
        )
    for k, b in enumerate(bars):
        y0 = top + k * row_h
        shown = b.label if len(b.label) <= LABEL_MAX else b.label[: LABEL_MAX - 1] + "…"
        out.append(
            f'<text class="bar-label" x="{left - 8}" y="{y0 + row_h / 2 + 4:.1f}" '
            f'text-anchor="end">{esc(shown)}<title>{esc(b.label)}</title></text>'
        )
        if b.value is None:
            out.append(
                f'<rect class="empty" data-value="" x="{left}" y="{y0 + 5}" width="2" '
                f'height="{row_h - 10}"><title>{esc(b.tip)}</title></rect>'
            )
            width = 2.0
        else:
            width = x.at(b.value, plot_w)
            out.append(
                f'<rect class="bar" data-value="{b.value:g}" x="{left}" y="{y0 + 5}" '
                f'width="{max(width, 0.5):.1f}" height="{row_h - 10}"><title>{esc(b.tip)}</title></rect>'
            )
        out.append(
            f'<text class="value" x="{left + width + 6:.1f}" y="{y0 + row_h / 2 + 4:.1f}">'
            f"{esc(b.text)}</text>"
        )
    out.append(f'<line class="frame" x1="{left}" y1="{top}" x2="{left}" y2="{base}"/>')
    out.append(f'<line class="frame" x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}"/>')
    out.append(
        f'<text class="axis-title" x="{left + plot_w / 2:.1f}" y="{base + 40}" '
        f'text-anchor="middle">{esc(x.title)}</text>'
    )
    out.append("</svg>")
    return "".join(out)
