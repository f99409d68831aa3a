"""Axis scales and charts: round ticks, labels with their unit, markers kept readable."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from batchrun import charts
from batchrun.htmlkit import REPLACEMENT, clean, esc
from batchrun.scales import (
    clock_step,
    count_scale,
    duration_scale,
    format_duration_ms,
    format_usd,
    nice_step,
    percent_scale,
    step_near,
    time_scale,
)

T0 = datetime(2026, 12, 2, 16, 44, 7, 490000, tzinfo=UTC).timestamp() * 1000


@pytest.mark.parametrize(
    ("raw", "step"),
    [(0.3, 0.5), (1, 1), (1.01, 2), (3, 5), (7, 10), (55, 100), (0.0042, 0.005), (2e6, 2e6)],
)
def test_nice_step_is_1_2_or_5_times_a_power_of_ten(raw: float, step: float) -> None:
    assert nice_step(raw) == pytest.approx(step)


def test_step_near_picks_the_tick_count_nearest_the_target() -> None:
    assert step_near(330, 6) == 50  # rounding up would give 100: four ticks
    assert step_near(61, 6) == 10
    assert step_near(0.8, 5) == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("peak", "ticks", "labels"),
    [
        (32, [0, 10, 20, 30, 40], ["0", "10", "20", "30", "40"]),
        (7, [0, 2, 4, 6, 8], ["0", "2", "4", "6", "8"]),
        (3, [0, 1, 2, 3], ["0", "1", "2", "3"]),  # counts: no tick at half a row
        (2.4, [0, 0.5, 1, 1.5, 2, 2.5], ["0.0", "0.5", "1.0", "1.5", "2.0", "2.5"]),
        (41_000, [0, 10_000, 20_000, 30_000, 40_000, 50_000], None),
    ],
)
def test_count_scale_starts_at_zero_and_ends_on_a_tick(
    peak: float, ticks: list[float], labels: list[str] | None
) -> None:
    scale = count_scale(peak, "rows")
    assert scale.ticks == pytest.approx(ticks)
    assert scale.lo == 0 and scale.hi == ticks[-1] >= peak
    if labels is not None:
        assert scale.labels == labels
    else:
        assert scale.labels[1] == "10,000"


def test_duration_scale_names_its_unit() -> None:
    ms = duration_scale(30, 360, "latency")
    assert ms.title == "latency (ms)"
    assert ms.ticks == [50, 100, 150, 200, 250, 300, 350]
    seconds = duration_scale(0, 61_000, "latency")
    assert seconds.title == "latency (s)"
    assert seconds.labels == ["0", "10", "20", "30", "40", "50", "60"]
    assert seconds.ticks[1] == 10_000  # positions stay in ms
    assert duration_scale(0, 45 * 60_000, "latency").title == "latency (min)"


def test_time_scale_ticks_at_round_clock_instants() -> None:
    short = time_scale(T0, T0 + 20_700, "time finished")
    assert short.labels == ["16:44:10", "16:44:15", "16:44:20", "16:44:25"]
    assert short.title == "time finished (UTC, 2026-12-02)"
    # 106 s: 30 s steps leave three ticks; the next finer clock step instead
    minute = time_scale(T0, T0 + 106_000, "t")
    assert {t % 15_000 for t in minute.ticks} == {0} and len(minute.ticks) >= 6
    hours = time_scale(T0, T0 + 3 * 3_600_000, "t")
    assert hours.labels[:2] == ["17:00", "17:30"]
    sub_second = time_scale(T0, T0 + 500, "t")
    assert sub_second.labels[0] == "16:44:07.500"
    across = time_scale(T0, T0 + 86_400_000, "t")
    assert re.fullmatch(r"\d\d-\d\d \d\d:\d\d", across.labels[0])
    assert "2026-12-02 to 2026-12-03" in across.title
    for scale in (short, minute, hours, sub_second, across):
        assert all(scale.lo <= t <= scale.hi for t in scale.ticks)


@pytest.mark.parametrize(
    ("raw", "step"),
    [(345, 500), (1001, 2000), (2300, 5000), (45_000, 60_000), (4 * 3_600_000, 6 * 3_600_000)],
)
def test_clock_steps(raw: float, step: float) -> None:
    assert clock_step(raw) == step


def test_labels_of_money_and_durations() -> None:
    assert format_usd(0.127755) == "$0.1278"
    assert format_usd(1234.5) == "$1,234.50"
    assert format_usd(0.00004) == "$0.000040"
    assert format_usd(None) == "n/a"
    assert [format_duration_ms(v) for v in (3.2, 250, 12_300, 245_000, 8e6)] == [
        "3.20 ms",
        "250 ms",
        "12.3 s",
        "4 min 05 s",
        "2 h 13 min",
    ]
    assert percent_scale("a").labels == ["0%", "20%", "40%", "60%", "80%", "100%"]


def test_clean_and_esc() -> None:
    hostile = "a\x1b[31m\x07b\u202ec\r\nd\te"
    assert clean(hostile) == f"a{REPLACEMENT}[31m{REPLACEMENT}b{REPLACEMENT}c  d e"
    assert clean(hostile, one_line=False).endswith("c\nd\te")
    assert clean("x" * 50, limit=10) == "x" * 9 + "…"
    assert esc('<b a="1">https://x</b>') == "&lt;b a=&quot;1&quot;&gt;https&#58;//x&lt;/b&gt;"


def test_histogram_markers_stay_inside_and_apart() -> None:
    x = duration_scale(0, 400, "latency")
    y = count_scale(10, "rows")
    edges = [0.0, 100.0, 200.0, 300.0, 400.0]
    svg = charts.histogram(
        "h",
        "t",
        edges,
        [1, 2, 3, 4],
        x,
        y,
        [charts.Marker("p50 398 ms", 398), charts.Marker("p95 399 ms", 399)],
    )
    assert svg.count('class="bar"') == 4
    labels = re.findall(r'<text class="marker-label" x="([\d.]+)" y="([\d.]+)">([^<]+)<', svg)
    assert [t for _, _, t in labels] == ["p50 398 ms", "p95 399 ms"]
    for left, _, text in labels:  # inside the chart, at the width allowed for a character
        assert float(left) >= 0 and float(left) + 1.15 * 9.5 * len(text) <= charts.WIDTH
    # the second label would overlap the first: it goes a line higher
    assert float(labels[1][1]) < float(labels[0][1])
