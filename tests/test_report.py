from __future__ import annotations

import itertools
import json
import random
import re
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from batchrun.cli import main
from batchrun.errors import UsageError
from batchrun.io.writers import RESULT_FIELDS, SCHEMA_VERSION, output_schema
from batchrun.pricing import PriceTable
from batchrun.report import Report, build_report, recorded_group_by
from batchrun.report_html import render_html
from batchrun.report_render import render_text

INPUT = pa.schema([("prompt", pa.string())])
START = datetime(2026, 11, 3, 2, 0, 0, tzinfo=UTC)
# USD per million tokens, written out here rather than read from the price table.
PRICES = {"claude-3-opus-20240229": (15.0, 75.0), "gpt-4o-mini": (0.15, 0.6)}
ERROR_TYPES = ["timeout", "server_error", "bad_request"]
BOOL = pa.bool_()


def schema(extra: list[pa.Field] | None = None) -> pa.Schema:
    """The real output schema (id, prompt, RESULT_FIELDS), plus columns added after a run."""
    base = output_schema(INPUT, None)
    return pa.schema([*base, *(extra or [])], metadata=base.metadata)


def result_row(i: int, rng: random.Random, *, ok: bool, model: str, at: datetime) -> dict[str, Any]:
    """One output row, with every result column set the way a run would set it."""
    p, c = rng.randint(20, 900), rng.randint(1, 60)
    row: dict[str, Any] = {f.name: None for f in RESULT_FIELDS}
    row |= {
        "cached": False,
        "id": i,
        "prompt": f"prompt {i}",
        "attempts": rng.randint(1, 3),
        "finished_at": at,
    }
    row["latency_ms"] = round(rng.uniform(40.0, 4000.0), 3)
    if ok:
        finish = rng.choice([("end_turn", "stop"), ("max_tokens", "length"), ("stop", "stop")])
        row |= {
            "status": "ok",
            "completion": "positive",
            "finish_reason": finish[0],
            "finish_reason_normalized": finish[1],
            "prompt_tokens": p,
            "completion_tokens": c,
            "total_tokens": p + c,
            "model": model,
            "response_id": f"resp-{i}",
            # Some servers report the cost of some answers (the --cost-header).
            "reported_cost_usd": round(rng.uniform(0.0001, 0.01), 6) if i % 3 == 0 else None,
        }
        # The gateway reports credits ($1 = 2,000,000) beside the USD spend.
        row["credits_used"] = (
            None if row["reported_cost_usd"] is None else round(row["reported_cost_usd"] * 2e6)
        )
    else:
        row |= {
            "status": "error",
            "finish_reason_normalized": "error",
            "error_type": ERROR_TYPES[i % len(ERROR_TYPES)],
            "error": "boom",
        }
    return row


def make_rows(n: int, *, seed: int = 7, spacing_ms: int = 700) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    at, rows = START, []
    for i in range(n):
        at += timedelta(milliseconds=rng.randint(0, 2 * spacing_ms))
        model = list(PRICES)[i % 2]
        rows.append(result_row(i, rng, ok=rng.random() > 0.2, model=model, at=at))
    return rows


def write(path: Path, rows: list[dict[str, Any]], sch: pa.Schema | None = None) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=sch or schema()), path)
    return path


def percentile(values: list[float], p: int) -> float:
    # Linear interpolation between closest ranks (numpy's default, and Arrow's).
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def check_histogram(edges: list[float], counts: list[int], values: list[float]) -> None:
    """Counts match the values, bucket by bucket, and the buckets are evenly wide."""
    assert len(edges) == len(counts) + 1
    assert edges[0] <= min(values) and edges[-1] > max(values)
    widths = {round(b - a, 6) for a, b in itertools.pairwise(edges)}
    assert len(widths) == 1
    expected = [sum(lo <= v < hi for v in values) for lo, hi in itertools.pairwise(edges)]
    assert counts == expected
    assert sum(counts) == len(values)


@dataclass
class Cell:
    table: str | None
    key: str | None
    attrs: dict[str, str]
    text: str = ""
    details: bool = False  # inside a <details> (folded)


_VOID = {"meta", "br", "hr", "img", "input", "link", "line", "path", "polyline"}


class Page(HTMLParser):
    """The figures (elements with a data-value), tables, charts and tags of a report page."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[Cell] = []
        self.svgs: dict[str, int] = {}  # id -> bars (rect.bar) or points (circle.point)
        self.ticks: dict[str, list[float]] = {}  # svg id -> x tick values
        self.markers: dict[str, list[float]] = {}  # svg id -> marker values
        self.tables: dict[str, bool] = {}  # table id -> folded in a <details>
        self.ids: list[str] = []
        self.tags: Counter[str] = Counter()
        self.attr_values: list[str] = []
        self.text = ""
        self._table: str | None = None
        self._key: str | None = None
        self._svg: str | None = None
        self._open: list[tuple[str, Cell | None]] = []
        self._details = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags[tag] += 1
        self.attr_values += a.values()
        classes = a.get("class", "").split()
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "details":
            self._details += 1
        elif tag == "table":
            self._table = a.get("id")
            self.tables[self._table or ""] = self._details > 0
        elif tag == "tr":
            self._key = a.get("data-key")
        elif tag == "svg":
            self._svg = a["id"]
            self.svgs[self._svg] = 0
            self.ticks[self._svg], self.markers[self._svg] = [], []
        elif self._svg and ("bar" in classes or "point" in classes):
            self.svgs[self._svg] += 1
        elif self._svg and "x-tick" in classes:
            self.ticks[self._svg].append(float(a["data-value"]))
        elif self._svg and "marker" in classes:
            self.markers[self._svg].append(float(a["data-value"]))
        cell = None
        if "data-value" in a and self._svg is None and tag in ("td", "span"):
            cell = Cell(self._table if tag == "td" else None, self._key, a, "", self._details > 0)
            self.cells.append(cell)
        if tag not in _VOID:
            self._open.append((tag, cell))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            name, _ = self._open.pop()
            if name == tag:
                break
        if tag == "svg":
            self._svg = None
        elif tag == "details":
            self._details -= 1
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        self.text += data
        for _, cell in self._open:
            if cell is not None:
                cell.text += data

    def by_id(self, ident: str) -> Cell:
        (cell,) = [c for c in self.cells if c.attrs.get("id") == ident]
        return cell

    def value(self, ident: str) -> str:
        return self.by_id(ident).attrs["data-value"]

    def column(self, table: str, cls: str) -> dict[str, str]:
        """key -> data-value of the cells of one class in one table."""
        return {
            c.key or "": c.attrs["data-value"]
            for c in self.cells
            if c.table == table and c.attrs.get("class") == cls
        }


def parse(report: Report) -> tuple[str, Page]:
    page = render_html(report)
    parser = Page()
    parser.feed(page)
    parser.close()
    return page, parser


CHARTS = {"chart-latency-histogram", "chart-throughput"}


def check_self_contained(page: str, parsed: Page, charts: set[str] = CHARTS) -> None:
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and parsed.tags["script"] == 0
    assert parsed.tags["link"] == 0 and parsed.tags["img"] == 0
    assert not any("url(" in v for v in parsed.attr_values)
    assert set(parsed.svgs) == charts
    assert len(parsed.ids) == len(set(parsed.ids)), "every id once"


@pytest.fixture
def full(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    rows = make_rows(400)
    return write(tmp_path / "out.parquet", rows), rows


def test_counts_tokens_cost_latency(full: tuple[Path, list[dict[str, Any]]]) -> None:
    path, rows = full
    report = build_report(path)
    ok = [r for r in rows if r["status"] == "ok"]
    assert 0 < len(ok) < len(rows)  # the data has both kinds
    assert report.rows == 400
    assert report.by_status == {"ok": len(ok), "error": 400 - len(ok)}
    assert report.by_error_type == Counter(r["error_type"] for r in rows if r["error_type"])
    assert report.by_finish_reason == Counter(r["finish_reason_normalized"] for r in rows)
    assert report.prompt_tokens == sum(r["prompt_tokens"] for r in ok)
    assert report.completion_tokens == sum(r["completion_tokens"] for r in ok)
    assert report.total_tokens == report.prompt_tokens + report.completion_tokens
    cost = {m: 0.0 for m in PRICES}
    for r in ok:
        i, o = PRICES[r["model"]]
        cost[r["model"]] += (r["prompt_tokens"] * i + r["completion_tokens"] * o) / 1e6
    assert report.cost_by_model == pytest.approx(cost)
    assert report.estimated_cost_usd == pytest.approx(sum(cost.values()))
    # latency of the ok rows: error answers are apart
    latencies = [r["latency_ms"] for r in ok]
    for p in (50, 90, 95, 99):
        assert report.latency_ms[f"p{p}"] == pytest.approx(percentile(latencies, p))
    assert report.latency_ms["max"] == max(latencies)
    failed = [r["latency_ms"] for r in rows if r["status"] == "error"]
    assert report.error_latency_ms["p50"] == pytest.approx(statistics.median(failed))
    assert report.error_latency_ms["max"] == max(failed)
    assert report.requests == sum(r["attempts"] for r in rows)
    assert report.retries == sum(r["attempts"] - 1 for r in rows) > 0
    reported = [r["reported_cost_usd"] for r in ok if r["reported_cost_usd"] is not None]
    assert 0 < len(reported) < len(ok)
    assert report.reported_cost_usd == pytest.approx(sum(reported))
    assert report.rows_cost_reported == len(reported)
    assert report.schema_version == SCHEMA_VERSION
    assert report.first_finished_at == rows[0]["finished_at"]
    assert report.last_finished_at == rows[-1]["finished_at"]
    span = (rows[-1]["finished_at"] - rows[0]["finished_at"]).total_seconds()
    assert report.wall_span_s == pytest.approx(span)
    assert report.rows_per_s == pytest.approx(400 / span)
    assert report.accuracy is None and report.groups == {} and report.notes == []


def test_histograms(full: tuple[Path, list[dict[str, Any]]]) -> None:
    path, rows = full
    report = build_report(path)
    latency = report.latency_histogram
    ok = [r["latency_ms"] for r in rows if r["status"] == "ok"]
    check_histogram(latency.edges, latency.counts, ok)
    assert 5 <= len(latency.counts) <= 21
    stamps = [r["finished_at"].timestamp() * 1000 for r in rows]
    check_histogram(report.throughput.edges, report.throughput.counts, stamps)
    # ~140 s of finishes in buckets of a clock-friendly width
    assert report.throughput.edges[1] - report.throughput.edges[0] in (2000, 5000)


def evenly_finished(n: int, span: timedelta) -> list[dict[str, Any]]:
    rows = make_rows(n)
    for k, r in enumerate(rows):
        r["finished_at"] = START + span * k / (n - 1)
    return rows


@pytest.mark.parametrize(
    ("span", "width_ms"),
    [
        (timedelta(milliseconds=500), 10),  # 8.3 ms a bucket -> 10 ms
        (timedelta(seconds=140), 5_000),  # 2.3 s -> 5 s
        (timedelta(minutes=45), 60_000),  # 45 s -> a minute
        (timedelta(hours=3), 300_000),  # 3 min -> 5 min
        (timedelta(days=90), 2 * 86_400_000),  # 1.5 days -> 2 days
    ],
)
def test_throughput_bucket_width(tmp_path: Path, span: timedelta, width_ms: int) -> None:
    rows = evenly_finished(61, span)
    tp = build_report(write(tmp_path / "out.parquet", rows)).throughput
    assert {b - a for a, b in itertools.pairwise(tp.edges)} == {width_ms}
    check_histogram(tp.edges, tp.counts, [r["finished_at"].timestamp() * 1000 for r in rows])


def test_latency_on_a_bucket_edge_counts_in_the_bucket_it_starts(tmp_path: Path) -> None:
    rng = random.Random(1)
    rows = [result_row(i, rng, ok=True, model="gpt-4o-mini", at=START) for i in range(6)]
    for r, ms in zip(rows, [100.0, 200.0, 200.0, 300.0, 400.0, 140.0], strict=True):
        r["latency_ms"] = ms
    hist = build_report(write(tmp_path / "out.parquet", rows)).latency_histogram
    # 300 ms over ~20 buckets: 20 ms wide, from 100 to past 400
    assert hist.edges == [100.0 + 20 * k for k in range(17)]
    assert hist.counts == [1, 0, 1, 0, 0, 2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]


def test_render_text_has_the_numbers_aligned(full: tuple[Path, list[dict[str, Any]]]) -> None:
    path, _ = full
    report = build_report(path)
    text = render_text(report)
    assert str(path) in text
    for number in (report.rows, report.by_status["ok"], report.by_status["error"]):
        assert f"{number:,}" in text
    assert f"{report.total_tokens:,}" in text and "," in f"{report.total_tokens:,}"
    assert report.estimated_cost_usd is not None and report.estimated_cost_usd > 1
    assert f"${report.estimated_cost_usd:,.2f}" in text  # cents above a dollar
    assert f"{report.latency_ms['p95']:,.1f}" in text
    assert all(t in text for t in report.by_error_type)
    # right-aligned: every line of the one-value overview block ends at the same column
    block = text.split("\n\n")[1].splitlines()
    assert block[0].startswith("Overview") and len(block) > 10
    assert len({len(line) for line in block}) == 1
    assert not any(line.endswith(" ") for line in block)
    status = text.split("\n\n")[2].splitlines()
    assert status[0].split() == ["Status", "rows", "share"]
    assert len({len(line) for line in status}) == 1
    assert not any(line.endswith(" ") for line in status)


def test_render_html_numbers_match_the_file(full: tuple[Path, list[dict[str, Any]]]) -> None:
    path, rows = full
    report = build_report(path)
    page, parsed = parse(report)
    check_self_contained(page, parsed)
    ok = [r for r in rows if r["status"] == "ok"]
    assert parsed.value("rows-total") == "400"
    assert parsed.by_id("rows-total").text == "400"
    assert int(parsed.value("rows-ok")) == len(ok)
    assert int(parsed.value("rows-error")) == 400 - len(ok)
    prompt = sum(r["prompt_tokens"] for r in ok)
    assert int(parsed.value("tokens-prompt")) == prompt
    assert parsed.by_id("tokens-prompt").text == f"{prompt:,}"
    assert int(parsed.value("tokens-total")) == prompt + sum(r["completion_tokens"] for r in ok)
    assert float(parsed.value("cost-total")) == pytest.approx(report.estimated_cost_usd)
    latencies = [r["latency_ms"] for r in ok]
    assert float(parsed.value("latency-p50")) == pytest.approx(percentile(latencies, 50))
    assert float(parsed.value("latency-p99")) == pytest.approx(percentile(latencies, 99))
    assert float(parsed.value("latency-max")) == max(latencies)
    assert parsed.value("schema-version") == SCHEMA_VERSION
    reported = [r["reported_cost_usd"] for r in ok if r["reported_cost_usd"] is not None]
    assert float(parsed.value("cost-reported")) == pytest.approx(sum(reported))
    assert int(parsed.value("cost-reported-rows")) == len(reported)
    credits = sum(r["credits_used"] for r in ok if r["credits_used"] is not None)
    assert credits > 0 and int(parsed.value("credits-reported")) == credits
    assert parsed.by_id("credits-reported").text == f"{credits:,}"
    assert f"{credits:,}</span> credits" in page  # on the reported-cost card
    errors = Counter(r["error_type"] for r in rows if r["error_type"])
    assert {k: int(v) for k, v in parsed.column("by-error-type", "count").items()} == errors
    finish = parsed.column("by-finish-reason", "count")
    assert {k: int(v) for k, v in finish.items()} == Counter(
        r["finish_reason_normalized"] for r in rows
    )
    costs = {k: float(v) for k, v in parsed.column("cost-by-model", "cost").items()}
    assert costs == pytest.approx(report.cost_by_model)
    # histogram tables and bars agree with the report, which agrees with the file (above)
    hist = [int(v) for v in parsed.column("latency-histogram", "count").values()]
    assert hist == report.latency_histogram.counts and sum(hist) == len(ok)
    lows = [float(v) for v in parsed.column("latency-histogram", "lo").values()]
    assert lows == report.latency_histogram.edges[:-1]
    assert parsed.svgs["chart-latency-histogram"] == len(hist)
    tp = [
        int(c.attrs["data-value"])
        for c in parsed.cells
        if c.table == "throughput" and c.attrs.get("class") == "count"
    ]
    assert sum(tp) == 400 and parsed.svgs["chart-throughput"] == len(tp)
    # the bucket tables are folded under their charts
    assert parsed.tables["latency-histogram"] and parsed.tables["throughput"]
    assert not parsed.tables["latency"] and not parsed.tables["by-status"]
    span = (rows[-1]["finished_at"] - rows[0]["finished_at"]).total_seconds()
    assert float(parsed.value("wall-span-s")) == pytest.approx(span)


def test_partial_output_with_nulls(tmp_path: Path) -> None:
    """A run stopped part-way: some ids missing, errors without latency or timestamp."""
    rows = [r for r in make_rows(60) if r["id"] % 3 != 1]
    for r in rows[::5]:
        if r["status"] == "error":
            r["latency_ms"] = r["finished_at"] = None
    rows[0] |= {"status": "ok", "finish_reason_normalized": None}  # an unknown finish reason
    report = build_report(write(tmp_path / "partial.parquet", rows))
    assert report.rows == len(rows) == 40
    assert sum(report.by_status.values()) == 40
    assert report.by_finish_reason["unknown"] == 1
    latencies = [
        r["latency_ms"] for r in rows if r["latency_ms"] is not None and r["status"] == "ok"
    ]
    assert report.latency_ms["p90"] == pytest.approx(percentile(latencies, 90))
    assert sum(report.latency_histogram.counts) == len(latencies)
    assert sum(report.throughput.counts) == sum(r["finished_at"] is not None for r in rows)
    _, parsed = parse(report)
    assert int(parsed.value("rows-total")) == 40


def test_empty_file(tmp_path: Path) -> None:
    report = build_report(write(tmp_path / "empty.parquet", []))
    assert report.rows == 0
    assert report.by_status == {"ok": 0, "error": 0}
    assert (report.prompt_tokens, report.completion_tokens, report.total_tokens) == (0, 0, 0)
    assert report.estimated_cost_usd == 0.0 and report.cost_by_model == {}
    assert set(report.latency_ms.values()) == {None}
    assert report.latency_histogram.counts == [] and report.throughput.counts == []
    assert report.wall_span_s is None and report.rows_per_s is None
    assert "n/a" in render_text(report)
    page, parsed = parse(report)
    # no chart, no empty table: the cards say what there is, and a note that there are no rows
    check_self_contained(page, parsed, charts=set())
    assert parsed.value("rows-total") == "0" and "latency-p50" not in parsed.ids
    assert "The output has no rows." in parsed.text
    for absent in ("latency-panel", "throughput-panel", "errors-panel", "outcomes-panel"):
        assert absent not in parsed.ids
    assert set(parsed.tables) == {"overview"}


def test_unpriced_models_and_price_overrides(tmp_path: Path) -> None:
    rows = make_rows(30)
    ok = [r for r in rows if r["status"] == "ok"]
    for r in ok:
        r["model"] = "acme/secret-model"
    path = write(tmp_path / "out.parquet", rows)
    report = build_report(path)
    assert report.estimated_cost_usd is None
    assert report.cost_by_model == {"acme/secret-model": None}
    assert "acme/secret-model" in report.notes[0]
    assert "acme/secret-model" in render_text(report)
    assert parse(report)[1].value("cost-total") == ""
    prices = PriceTable.default().with_overrides({"secret-model": {"input": 1.0, "output": 2.0}})
    priced = build_report(path, prices=prices)
    expected = sum(r["prompt_tokens"] * 1.0 + r["completion_tokens"] * 2.0 for r in ok) / 1e6
    assert priced.estimated_cost_usd == pytest.approx(expected)
    assert priced.notes == []


def labeled(tmp_path: Path, correct_type: pa.DataType = BOOL) -> tuple[Path, list[dict[str, Any]]]:
    """An evaluation output: a `label` input column and a `correct` column added after the run."""
    rows = make_rows(120)
    rng = random.Random(3)
    for r in rows:
        r["label"] = rng.choice(["positive", "negative", "https://example.com/neutral"])
        r["correct"] = rng.random() > 0.3 if r["status"] == "ok" else None
    sch = output_schema(pa.schema([("prompt", pa.string()), ("label", pa.string())]), None)
    sch = pa.schema([*sch, pa.field("correct", correct_type)], metadata=sch.metadata)
    if correct_type != BOOL:
        for r in rows:
            r["correct"] = None if r["correct"] is None else str(r["correct"])
    return write(tmp_path / "eval.parquet", rows, sch), rows


def test_accuracy_overall_and_by_group(tmp_path: Path) -> None:
    path, rows = labeled(tmp_path)
    report = build_report(path, group_by="label")
    graded = [r for r in rows if r["correct"] is not None]
    assert report.accuracy is not None
    assert report.accuracy.graded == len(graded)
    assert report.accuracy.correct == sum(r["correct"] for r in graded)
    assert report.accuracy.accuracy == pytest.approx(
        sum(r["correct"] for r in graded) / len(graded)
    )
    assert set(report.groups) == {r["label"] for r in rows}
    for label, g in report.groups.items():
        mine = [r for r in rows if r["label"] == label]
        marks = [r["correct"] for r in mine if r["correct"] is not None]
        assert (g.rows, g.ok, g.graded, g.correct) == (
            len(mine),
            sum(r["status"] == "ok" for r in mine),
            len(marks),
            sum(marks),
        )
        assert g.accuracy == pytest.approx(sum(marks) / len(marks))
    page, parsed = parse(report)
    # a URL among the labels stays inert text
    check_self_contained(page, parsed, charts=CHARTS | {"chart-groups"})
    assert float(parsed.value("accuracy-overall")) == pytest.approx(report.accuracy.accuracy)
    assert int(parsed.value("accuracy-graded")) == len(graded)
    by_label = {k: float(v) for k, v in parsed.column("groups", "accuracy").items()}
    assert by_label == pytest.approx({k: g.accuracy for k, g in report.groups.items()})
    assert "https://example.com/neutral" in by_label  # unescaped back by the parser
    text = render_text(report)
    assert f"{100 * report.accuracy.correct / len(graded):.1f}%" in text
    assert "By label" in text


def test_accuracy_without_group_and_group_without_accuracy(tmp_path: Path) -> None:
    path, _ = labeled(tmp_path)
    report = build_report(path)
    assert report.accuracy is not None and report.groups == {}
    assert not [c for c in parse(report)[1].cells if c.table == "groups"]
    plain = build_report(write(tmp_path / "plain.parquet", make_rows(20)), group_by="status")
    assert plain.accuracy is None
    assert {k: g.rows for k, g in plain.groups.items()} == {
        k: v for k, v in plain.by_status.items() if v
    }
    assert all(g.graded == 0 and g.accuracy is None for g in plain.groups.values())
    _, parsed = parse(plain)
    assert not [c for c in parsed.cells if c.attrs.get("id") == "accuracy-overall"]
    assert parsed.column("groups", "accuracy") == {k: "" for k in plain.groups}


def test_non_boolean_correct_is_noted_not_scored(tmp_path: Path) -> None:
    path, _ = labeled(tmp_path, pa.string())
    report = build_report(path)
    assert report.accuracy is None
    assert any("correct" in n and "boolean" in n for n in report.notes)


def missing(path: Path) -> Path:
    return path


def csv_file(path: Path) -> Path:
    path.write_text("id,status\n1,ok\n", encoding="utf-8")
    return path


def unversioned(path: Path) -> Path:
    pq.write_table(pa.table({"status": ["ok"]}), path)
    return path


def no_status(path: Path) -> Path:
    table = pa.table({"x": [1]}).replace_schema_metadata({b"batchrun.schema_version": b"1"})
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (missing, "not found"),
        (csv_file, "not a Parquet file"),
        (unversioned, "not a batchrun output"),
        (no_status, "not a batchrun output"),
    ],
)
def test_not_a_batchrun_output(tmp_path: Path, make: Callable[[Path], Path], message: str) -> None:
    path = make(tmp_path / "x.parquet")
    with pytest.raises(UsageError) as info:
        build_report(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_unknown_group_column_lists_columns(full: tuple[Path, list[dict[str, Any]]]) -> None:
    path, _ = full
    with pytest.raises(UsageError, match="no column 'lable' to group by") as info:
        build_report(path, group_by="lable")
    assert "columns are: id, prompt, status" in str(info.value)


def test_reads_only_the_needed_columns(
    full: tuple[Path, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = full
    seen: list[list[str]] = []
    real = pq.read_table

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["columns"])
        return real(*args, **kwargs)

    monkeypatch.setattr(pq, "read_table", spy)
    build_report(path)
    assert len(seen) == 1
    # `error` is read (the commonest messages): null on ok rows and bounded on the others.
    assert not {"prompt", "completion", "reasoning_content", "tool_calls", "response_id"} & set(
        seen[0]
    )


def test_schema_1_output_without_a_reported_cost_column(tmp_path: Path) -> None:
    """Outputs written before schema 2 have no reported_cost_usd: no cost reported, no crash."""
    old = pa.schema(
        [f for f in schema() if f.name != "reported_cost_usd"],
        metadata={**(schema().metadata or {}), b"batchrun.schema_version": b"1"},
    )
    rows = make_rows(30)
    for r in rows:
        del r["reported_cost_usd"]
    report = build_report(write(tmp_path / "v1.parquet", rows, old))
    assert report.schema_version == "1"
    assert report.reported_cost_usd is None and report.rows_cost_reported == 0
    assert report.rows == 30


def test_rows_with_reasoning_are_counted_and_shown(tmp_path: Path) -> None:
    rows = make_rows(40)
    for i, r in enumerate(rows):
        r["reasoning_content"] = f"because {i}" if r["status"] == "ok" and i % 4 == 0 else None
    report = build_report(write(tmp_path / "v3.parquet", rows))
    expected = sum(1 for r in rows if r["reasoning_content"] is not None)
    assert expected > 0 and report.rows_with_reasoning == expected
    _, parsed = parse(report)
    assert int(parsed.value("rows-reasoning")) == expected
    assert f"rows with reasoning {expected}" in " ".join(render_text(report).split())


def test_schema_2_output_has_no_reasoning(tmp_path: Path) -> None:
    old = pa.schema(
        [f for f in schema() if f.name != "reasoning_content"],
        metadata={**(schema().metadata or {}), b"batchrun.schema_version": b"2"},
    )
    rows = make_rows(20)
    for r in rows:
        del r["reasoning_content"]
    report = build_report(write(tmp_path / "v2.parquet", rows, old))
    assert report.schema_version == "2" and report.rows_with_reasoning == 0


def test_rows_served_by_dedupe_and_the_cache_are_counted_apart_from_paid_tokens(
    tmp_path: Path,
) -> None:
    rows = make_rows(40)
    for i, r in enumerate(rows):
        r["served_by"] = 0 if i % 5 == 1 else None
        r["cached"] = i % 5 == 2
    report = build_report(write(tmp_path / "v5.parquet", rows))
    dedupe = [r for r in rows if r["served_by"] is not None]
    cached = [r for r in rows if r["cached"]]
    paid = [r for r in rows if r["served_by"] is None and not r["cached"]]
    assert report.rows_served_by_dedupe == len(dedupe) == 8
    assert report.rows_served_by_cache == len(cached) == 8
    assert report.total_tokens == sum(r["total_tokens"] or 0 for r in paid)
    assert report.tokens_saved == sum(r["total_tokens"] or 0 for r in dedupe + cached)
    assert report.estimated_cost_saved_usd is not None and report.estimated_cost_saved_usd > 0
    _, parsed = parse(report)
    assert int(parsed.value("rows-dedupe")) == 8 and int(parsed.value("rows-cached")) == 8


def test_schema_4_output_has_no_served_rows(tmp_path: Path) -> None:
    old = pa.schema(
        [f for f in schema() if f.name not in ("served_by", "cached")],
        metadata={**(schema().metadata or {}), b"batchrun.schema_version": b"4"},
    )
    rows = make_rows(20)
    for r in rows:
        del r["served_by"], r["cached"]
    report = build_report(write(tmp_path / "v4.parquet", rows, old))
    assert report.schema_version == "4"
    assert report.rows_served_by_dedupe == report.rows_served_by_cache == report.tokens_saved == 0
    assert report.total_tokens == sum(r["total_tokens"] or 0 for r in rows)


def rows_ok_and_instant_errors() -> list[dict[str, Any]]:
    """Answers of 200 to 400 ms, and failures answered in 1 ms (a 500 at once)."""
    rng = random.Random(11)
    rows = []
    for i in range(80):
        at = START + timedelta(milliseconds=250 * i)
        row = result_row(i, rng, ok=i % 8 != 0, model="gpt-4o-mini", at=at)
        row["latency_ms"] = 1.0 if row["status"] == "error" else 200.0 + 2.5 * (i % 81)
        rows.append(row)
    return rows


def test_latency_of_ok_rows_with_the_errors_apart(tmp_path: Path) -> None:
    rows = rows_ok_and_instant_errors()
    report = build_report(write(tmp_path / "out.parquet", rows))
    ok = [r["latency_ms"] for r in rows if r["status"] == "ok"]
    assert report.latency_ms["p50"] == pytest.approx(percentile(ok, 50))
    assert report.latency_ms["p50"] > 200  # ten instant errors would pull it to ~190
    assert report.error_latency_ms == {"p50": 1.0, "max": 1.0}
    assert sum(report.latency_histogram.counts) == len(ok) == 70
    _page, parsed = parse(report)
    # p50 and p95 marked on the histogram, at their values
    assert parsed.markers["chart-latency-histogram"] == pytest.approx(
        [report.latency_ms["p50"], report.latency_ms["p95"]]
    )
    assert "Error rows are left out (p50 1.00 ms, max 1.00 ms)" in parsed.text
    assert parsed.value("error-latency-p50") == "1.0"
    # x ticks: round values 50 ms apart inside the buckets' span, labelled in ms
    ticks = parsed.ticks["chart-latency-histogram"]
    edges = report.latency_histogram.edges
    assert ticks == [200.0 + 50 * k for k in range(len(ticks))] and len(ticks) >= 4
    assert edges[0] <= ticks[0] and ticks[-1] <= edges[-1]
    assert "latency of the last attempt (ms)" in parsed.text
    text = render_text(report)
    assert "error rows (ms)" in text and "ok rows (ms)" in text


def test_clean_run_shows_no_errors_section(tmp_path: Path) -> None:
    rng = random.Random(2)
    rows = [
        result_row(i, rng, ok=True, model="gpt-4o-mini", at=START + timedelta(seconds=i))
        for i in range(30)
    ]
    report = build_report(write(tmp_path / "clean.parquet", rows))
    _, parsed = parse(report)
    assert "errors-panel" not in parsed.ids
    assert not {"by-error-type", "error-messages"} & set(parsed.tables)
    assert parsed.value("rows-error") == "0"
    assert "error-latency-p50" not in parsed.ids
    text = render_text(report)
    assert "\nErrors" not in text and "Commonest" not in text and "error rows" not in text

    failing = rows_ok_and_instant_errors()
    failing[8]["error"] = "HTTP 400: bad field"
    failing[8]["error_type"] = "bad_request"
    report = build_report(write(tmp_path / "errors.parquet", failing))
    _, parsed = parse(report)
    assert "errors-panel" in parsed.ids
    messages = {c.key: c.text for c in parsed.cells if c.table == "error-messages"}
    assert set(messages) == {"timeout", "server_error", "bad_request"}
    counts = [
        int(c.attrs["data-value"])
        for c in parsed.cells
        if c.table == "error-messages" and c.attrs.get("class") == "count"
    ]
    assert sum(counts) == report.by_status["error"] == 10 and len(counts) == 4
    assert [e.rows for e in report.top_errors] == sorted(
        (e.rows for e in report.top_errors), reverse=True
    )
    assert any(e.message == "HTTP 400: bad field" and e.rows == 1 for e in report.top_errors)


def test_commonest_messages_count_a_gateway_error_once_whatever_its_request_ids(
    tmp_path: Path,
) -> None:
    # Each failed row keeps the gateway's own requestId in its message (for its support);
    # the commonest messages group the rows by the message, not by that id.
    rows = rows_ok_and_instant_errors()
    failed = [r for r in rows if r["status"] == "error"]
    for k, r in enumerate(failed):
        r["error_type"] = "server_error"
        after = " (after 6 attempts)" if k % 2 else ""
        r["error"] = f"HTTP 500: internal error{after} (requestId 0a1b-{k}:c.d_e)"
    failed[0]["error"] = "HTTP 500: internal error (requestId is down)"  # no id: kept as is
    report = build_report(write(tmp_path / "out.parquet", rows))
    assert [(e.message, e.rows) for e in report.top_errors] == [
        ("HTTP 500: internal error (after 6 attempts)", 5),
        ("HTTP 500: internal error", 4),
        ("HTTP 500: internal error (requestId is down)", 1),
    ]


HOSTILE_MODEL = "<script>alert(1)</script>\x1b[31mred\x07\u202egnp.exe"
HOSTILE_ERROR = "boom\x1b]0;pwned\x07 <img src=x onerror=alert(1)>\r\nnext\x00"
HOSTILE_GROUP = '</table><script>x</script>"\x1b[2J'


def test_hostile_values_are_escaped_and_stripped(tmp_path: Path) -> None:
    """Model names and error messages come from servers, group values from input files."""
    rows = rows_ok_and_instant_errors()
    for r in rows:
        r["label"] = HOSTILE_GROUP if r["id"] % 2 else "plain"
        r["correct"] = r["id"] % 3 == 0 if r["status"] == "ok" else None
        if r["status"] == "ok":
            r["model"] = HOSTILE_MODEL
        else:
            r["error"] = HOSTILE_ERROR
    sch = output_schema(pa.schema([("prompt", pa.string()), ("label", pa.string())]), None)
    sch = pa.schema([*sch, pa.field("correct", BOOL)], metadata=sch.metadata)
    report = build_report(write(tmp_path / "evil.parquet", rows, sch), group_by="label")
    assert HOSTILE_MODEL in report.cost_by_model  # the data keeps it; the page must not run it
    page, parsed = parse(report)
    check_self_contained(page, parsed, charts=CHARTS | {"chart-groups"})
    assert parsed.tags["img"] == 0 and parsed.tags["table"] == len(parsed.tables)
    for char in "\x1b\x07\x00\r\u202e":
        assert char not in page
    # shown as text, the controls replaced
    assert "<script>alert(1)</script>\ufffd[31mred\ufffd\ufffdgnp.exe" in parsed.text
    assert "<img src=x onerror=alert(1)>" in parsed.text
    assert '</table><script>x</script>"\ufffd[2J' in parsed.column("groups", "accuracy")
    text = render_text(report)
    for char in "\x1b\x07\x00\r\u202e":
        assert char not in text
    assert "\ufffd" in text
    # one line per table row: a newline in a message does not break the alignment
    block = next(b for b in text.split("\n\n") if b.startswith("Commonest")).splitlines()
    assert len(block) == 1 + len(report.top_errors)


def old_schema(version: str, dropped: set[str]) -> pa.Schema:
    return pa.schema(
        [f for f in schema() if f.name not in dropped],
        metadata={**(schema().metadata or {}), b"batchrun.schema_version": version.encode()},
    )


@pytest.mark.parametrize(
    ("version", "dropped"),
    [
        ("1", {"reported_cost_usd", "reasoning_content"}),
        ("2", {"reasoning_content"}),
        ("3", set()),
    ],
)
def test_every_schema_version_renders(tmp_path: Path, version: str, dropped: set[str]) -> None:
    rows = make_rows(50)
    for i, r in enumerate(rows):
        r["reasoning_content"] = "why" if i % 5 == 0 and r["status"] == "ok" else None
        for name in dropped:
            del r[name]
    report = build_report(
        write(tmp_path / f"v{version}.parquet", rows, old_schema(version, dropped))
    )
    page, parsed = parse(report)
    check_self_contained(page, parsed)
    assert parsed.value("schema-version") == version
    assert parsed.value("rows-total") == "50"
    assert ("rows-reasoning" in parsed.ids) == (version == "3")
    reported = "reported_cost_usd" not in dropped
    assert ("Reported cost" in parsed.text) == reported
    assert ("The API reported no cost" in parsed.text) == (not reported)
    assert "batchrun report" in render_text(report)


def write_summary(path: Path, **figures: Any) -> None:
    path.with_suffix(".summary.json").write_text(json.dumps(figures), encoding="utf-8")


def test_run_figures_come_from_the_summary_beside_the_output(tmp_path: Path) -> None:
    rows = make_rows(40)
    path = write(tmp_path / "out.parquet", rows)
    bare = build_report(path)
    _, parsed = parse(bare)
    assert bare.run is None and not [i for i in parsed.ids if i.startswith("run-")]
    assert "Possibly charged twice" not in parsed.text

    write_summary(
        path, rows_total=40, state="complete", wall_time_s=12.5, rate_limited=3,
        rows_possibly_charged_twice=2, rows_resumed="lots", retries=True,
    )  # fmt: skip
    report = build_report(path)
    assert report.run is not None and report.run.state == "complete"
    assert report.run.figures == {
        "wall_time_s": 12.5,
        "rate_limited": 3,
        "rows_possibly_charged_twice": 2,
    }
    _, parsed = parse(report)
    assert (
        parsed.value("run-wall-time-s") == "12.5"
        and parsed.by_id("run-wall-time-s").text == "12.5 s"
    )
    assert parsed.value("run-rows-possibly-charged-twice") == "2.0"
    assert parsed.value("run-rate-limited") == "3.0"
    assert parsed.value("run-rows-resumed") == ""  # a hand-edited value is not a number
    assert "last run complete" in parsed.text
    assert "rows possibly charged twice" in render_text(report)

    write_summary(path, rows_total=41, wall_time_s=1.0)
    other = build_report(path)
    assert other.run is None and any("summary of another run" in n for n in other.notes)
    path.with_suffix(".summary.json").write_text("{not json", encoding="utf-8")
    assert build_report(path).run is None


def graded_with_job(tmp_path: Path, job: dict[str, Any] | None, columns: list[str]) -> Path:
    rows = make_rows(40)
    for r in rows:
        for c in columns:
            r[c] = f"g{r['id'] % 4}"
        r["correct"] = r["id"] % 2 == 0 if r["status"] == "ok" else None
    inputs = pa.schema([("prompt", pa.string()), *((c, pa.string()) for c in columns)])
    sch = output_schema(inputs, None, graded=True, job=job)
    return write(tmp_path / "graded.parquet", rows, sch)


def test_the_group_the_job_recorded_is_the_default(tmp_path: Path) -> None:
    path = graded_with_job(tmp_path, {"grading": {"group_by": "topic"}}, ["topic"])
    assert recorded_group_by(path) == "topic"
    result = CliRunner().invoke(main, ["report", str(path)])
    assert result.exit_code == 0, result.output
    assert "By topic" in result.output and "g3" in result.output
    # an input column named like a result column is carried as input_<name>
    renamed = graded_with_job(tmp_path, {"grading": {"group_by": "status"}}, ["status"])
    assert recorded_group_by(renamed) == "input_status"
    assert recorded_group_by(graded_with_job(tmp_path, None, ["topic"])) is None
    gone = graded_with_job(tmp_path, {"grading": {"group_by": "nope"}}, ["topic"])
    assert recorded_group_by(gone) is None
    assert recorded_group_by(tmp_path / "missing.parquet") is None


def test_accuracy_bars_per_group(tmp_path: Path) -> None:
    path, _rows = labeled(tmp_path)
    report = build_report(path, group_by="label")
    page, parsed = parse(report)
    assert report.accuracy is not None
    assert parsed.svgs["chart-groups"] == len(report.groups) == 3
    assert parsed.markers["chart-groups"] == pytest.approx([report.accuracy.accuracy])
    assert parsed.ticks["chart-groups"] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert "<details open><summary>3 groups as a table" in page  # a short table shows

    many = make_rows(200)
    for r in many:
        r["label"] = f"group {r['id'] % 40:02d}"
        r["correct"] = r["id"] % 3 == 0 if r["status"] == "ok" else None
    sch = output_schema(pa.schema([("prompt", pa.string()), ("label", pa.string())]), None)
    sch = pa.schema([*sch, pa.field("correct", BOOL)], metadata=sch.metadata)
    big = build_report(write(tmp_path / "many.parquet", many, sch), group_by="label")
    page, parsed = parse(big)
    assert parsed.svgs["chart-groups"] == 30 and "<details><summary>40 groups" in page
    assert "The chart draws the first 30 of 40 groups" in parsed.text
    assert len(parsed.column("groups", "accuracy")) == 40 and parsed.tables["groups"]


def test_throughput_line_in_rows_per_second(tmp_path: Path) -> None:
    rows = evenly_finished(121, timedelta(seconds=120))  # a row a second
    report = build_report(write(tmp_path / "out.parquet", rows))
    tp = report.throughput
    width_s = (tp.edges[1] - tp.edges[0]) / 1000
    page, parsed = parse(report)
    # the last bucket starts at the last finish (it covers none of the run): off the line
    assert tp.edges[-2] == rows[-1]["finished_at"].timestamp() * 1000
    assert parsed.svgs["chart-throughput"] == len(tp.counts) - 1
    points = re.findall(r'<circle class="point" data-value="([\d.]+)"', page)
    assert {float(v) for v in points} == {1.0}  # a row a second, first bucket included
    rates = [
        float(c.attrs["data-value"])
        for c in parsed.cells
        if c.table == "throughput" and c.attrs.get("class") == "count"
    ]
    assert rates == tp.counts
    # the round clock ticks: every 15 s, on the quarter minute
    ticks = parsed.ticks["chart-throughput"]
    assert len(ticks) >= 4 and {t % 15_000 for t in ticks} == {0}
    assert "time finished (UTC, 2026-11-03)" in parsed.text
    assert width_s == 2 and tp.counts[1] == 2  # interior buckets: 2 rows in 2 s, 1 row/s


def test_throughput_rates_of_partial_buckets(tmp_path: Path) -> None:
    # 10 rows a second from 0.35 s to 59.15 s: 1 s buckets; the first is 65 % inside the
    # run, the last 15 %
    rows = make_rows(589)
    for k, r in enumerate(rows):
        r["finished_at"] = START + timedelta(milliseconds=350 + 100 * k)
    report = build_report(write(tmp_path / "out.parquet", rows))
    start = START.timestamp() * 1000
    assert report.throughput.edges[:2] == [start, start + 1000]
    rates = report.throughput_rates()
    last = len(report.throughput.counts) - 1
    assert report.throughput.edges[last] == start + 59_000
    assert last not in rates  # 59.0 to 59.15 s: a sliver, left out
    assert rates[0] == pytest.approx(7 / 0.65)  # 7 rows over the 0.65 s the run covered
    assert all(rates[k] == pytest.approx(10) for k in range(1, last))
    one = build_report(write(tmp_path / "one.parquet", make_rows(1)))
    assert one.throughput_rates() == {0: pytest.approx(1000)}  # a row in a 1 ms bucket


def test_answers_without_usage_make_the_estimate_unknown_never_zero(tmp_path: Path) -> None:
    # A stream not asked for usage: ok rows with null tokens. Their cost is not $0.
    rows = make_rows(30)
    for r in rows:
        if r["status"] == "ok":
            r["prompt_tokens"] = r["completion_tokens"] = r["total_tokens"] = None
            r["reported_cost_usd"] = r["credits_used"] = None
    n_ok = sum(r["status"] == "ok" for r in rows)
    report = build_report(write(tmp_path / "nousage.parquet", rows))
    assert report.rows_without_usage == n_ok > 0
    assert report.estimated_cost_usd is None and report.total_tokens == 0
    assert report.estimate_basis == f"{n_ok:,} rows without usage"
    assert any("without usage" in note for note in report.notes)
    page, parsed = parse(report)
    assert parsed.value("cost-total") == "" and f"{n_ok:,} rows without usage" in page
    assert "$0.0000" not in render_text(report)  # the estimate line says unknown
    # With usage, the estimate is there as before.
    assert build_report(write(tmp_path / "usage.parquet", make_rows(30))).rows_without_usage == 0
