from __future__ import annotations

import itertools
import random
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

from batchrun.errors import UsageError
from batchrun.io.writers import RESULT_FIELDS, output_schema
from batchrun.pricing import PriceTable
from batchrun.report import Report, build_report
from batchrun.report_render import render_html, render_text

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


class Page(HTMLParser):
    """The tables, charts and tags of a report page, as a test needs them."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[Cell] = []
        self.svgs: dict[str, int] = {}  # id -> number of bars
        self.tags: Counter[str] = Counter()
        self.attr_values: list[str] = []
        self._table: str | None = None
        self._key: str | None = None
        self._svg: str | None = None
        self._cell: Cell | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags[tag] += 1
        self.attr_values += a.values()
        if tag == "table":
            self._table = a.get("id")
        elif tag == "tr":
            self._key = a.get("data-key")
        elif tag == "td":
            self._cell = Cell(self._table, self._key, a)
            self.cells.append(self._cell)
        elif tag == "svg":
            self._svg = a["id"]
            self.svgs[self._svg] = 0
        elif tag == "rect" and self._svg and "bar" in a.get("class", ""):
            self.svgs[self._svg] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = None
        elif tag == "svg":
            self._svg = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.text += data

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


def check_self_contained(page: str, parsed: Page) -> None:
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and parsed.tags["script"] == 0
    assert parsed.tags["link"] == 0 and parsed.tags["img"] == 0
    assert not any("url(" in v for v in parsed.attr_values)
    assert set(parsed.svgs) == {"chart-latency-histogram", "chart-throughput"}


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
    latencies = [r["latency_ms"] for r in rows]
    for p in (50, 90, 95, 99):
        assert report.latency_ms[f"p{p}"] == pytest.approx(percentile(latencies, p))
    assert report.latency_ms["max"] == max(latencies)
    reported = [r["reported_cost_usd"] for r in ok if r["reported_cost_usd"] is not None]
    assert 0 < len(reported) < len(ok)
    assert report.reported_cost_usd == pytest.approx(sum(reported))
    assert report.rows_cost_reported == len(reported)
    assert report.schema_version == "4"
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
    check_histogram(latency.edges, latency.counts, [r["latency_ms"] for r in rows])
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
    rows = make_rows(6)
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
    assert f"${report.estimated_cost_usd:,.4f}" in text
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
    latencies = [r["latency_ms"] for r in rows]
    assert float(parsed.value("latency-p50")) == pytest.approx(percentile(latencies, 50))
    assert float(parsed.value("latency-p99")) == pytest.approx(percentile(latencies, 99))
    assert float(parsed.value("latency-max")) == max(latencies)
    assert parsed.value("schema-version") == "4"
    reported = [r["reported_cost_usd"] for r in ok if r["reported_cost_usd"] is not None]
    assert float(parsed.value("cost-reported")) == pytest.approx(sum(reported))
    assert int(parsed.value("cost-reported-rows")) == len(reported)
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
    assert hist == report.latency_histogram.counts and sum(hist) == 400
    lows = [float(v) for v in parsed.column("latency-histogram", "lo").values()]
    assert lows == report.latency_histogram.edges[:-1]
    assert parsed.svgs["chart-latency-histogram"] == len(hist)
    tp = [
        int(c.attrs["data-value"])
        for c in parsed.cells
        if c.table == "throughput" and c.attrs.get("class") == "count"
    ]
    assert sum(tp) == 400 and parsed.svgs["chart-throughput"] == len(tp)
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
    latencies = [r["latency_ms"] for r in rows if r["latency_ms"] is not None]
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
    check_self_contained(page, parsed)
    assert parsed.value("rows-total") == "0" and parsed.value("latency-p50") == ""
    assert parsed.svgs == {"chart-latency-histogram": 0, "chart-throughput": 0}
    assert page.count("no data") == 2


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
    check_self_contained(page, parsed)  # a URL among the labels stays inert text
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
    assert not {"prompt", "completion", "error", "tool_calls", "response_id"} & set(seen[0])


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
    report = build_report(write(tmp_path / "v4.parquet", rows))
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


def test_schema_3_output_has_no_served_rows(tmp_path: Path) -> None:
    old = pa.schema(
        [f for f in schema() if f.name not in ("served_by", "cached")],
        metadata={**(schema().metadata or {}), b"batchrun.schema_version": b"3"},
    )
    rows = make_rows(20)
    for r in rows:
        del r["served_by"], r["cached"]
    report = build_report(write(tmp_path / "v3.parquet", rows, old))
    assert report.schema_version == "3"
    assert report.rows_served_by_dedupe == report.rows_served_by_cache == report.tokens_saved == 0
    assert report.total_tokens == sum(r["total_tokens"] or 0 for r in rows)
