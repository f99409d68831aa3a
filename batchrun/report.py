"""A report on one output file: counts, tokens, estimated cost, latency, throughput, accuracy.

Built from the output (what ``report_read`` reads of it), so it works on a partial output
and on last month's file; the run figures only a summary holds (wall time, 429s, rows
possibly charged twice) come from the summary beside it when there is one. Rendered by
``report_render`` (terminal text) and ``report_html`` (one self-contained page).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from batchrun.errors import UsageError
from batchrun.pricing import PriceTable
from batchrun.report_read import RunFacts, non_null, read_columns, recorded_group_by, run_facts
from batchrun.scales import clock_step, nice_step

__all__ = ["Report", "build_report", "recorded_group_by"]

PERCENTILES = (0.5, 0.9, 0.95, 0.99)
#: Distinct (error type, message) pairs the report lists, the most frequent first.
TOP_ERRORS = 5
#: The server's request id a failed row's message ends with (see send/attempt.py): one per
#: row, so messages are counted without it, or every gateway error would be its own kind.
_REQUEST_ID = r" \(requestId [A-Za-z0-9._:-]{1,128}\)$"


@dataclass(frozen=True)
class Histogram:
    """``counts[i]`` values fell in ``[edges[i], edges[i + 1])``; both empty without values."""

    edges: list[float]
    counts: list[int]


@dataclass(frozen=True)
class GroupStats:
    """Rows of one group; ``graded`` rows have a non-null ``correct``, ``correct`` are true."""

    rows: int
    ok: int
    graded: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float | None:
        """correct / graded; None when no row was graded."""
        return self.correct / self.graded if self.graded else None


@dataclass(frozen=True)
class ErrorKind:
    """Rows that failed with one error type and message."""

    error_type: str
    message: str
    rows: int


@dataclass
class Report:
    """Everything ``batchrun report`` shows. Latency in ms, times in UTC, cost in USD."""

    path: str
    schema_version: str
    rows: int
    by_status: dict[str, int]  # always has "ok" and "error"
    by_finish_reason: dict[str, int]  # finish_reason_normalized; null counted as "unknown"
    by_error_type: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    #: Ok rows that paid for an answer that said no usage (tokens null): the token sums
    #: leave them out, and the estimated cost is unknown (None), never $0.
    rows_without_usage: int
    #: Over the models with a price; None when tokens were used but no model has a price,
    #: or when some answers said no usage.
    estimated_cost_usd: float | None
    cost_by_model: dict[str, float | None]  # models that used tokens; None: no price known
    #: Sum of the costs the server reported; None when no row has one.
    reported_cost_usd: float | None
    rows_cost_reported: int
    #: Credits the gateway reported (schema 4); None when no row has them.
    credits_used: int | None
    #: Rows whose answer carried the model's reasoning (schema 3; 0 in older files).
    rows_with_reasoning: int
    #: Rows answered without a request (schema 5; 0 in older files): by a row with the same
    #: request (dedupe), by the response cache; the tokens of their answers and what those
    #: would have cost. Tokens and costs above count only the rows that paid.
    rows_served_by_dedupe: int
    rows_served_by_cache: int
    tokens_saved: int
    estimated_cost_saved_usd: float | None
    #: Of ok rows: p50 p90 p95 p99 (linear interpolation) and max. Error answers are often
    #: instant (a 500 in 1 ms) and would drag the percentiles of real answers down.
    latency_ms: dict[str, float | None]
    latency_histogram: Histogram  # ok rows; edges in ms
    #: Of error rows with a latency: p50 and max (``rows``: how many had one).
    error_latency_ms: dict[str, float | None]
    #: Requests made for the rows (the ``attempts`` column) and those beyond each row's first.
    requests: int
    retries: int
    top_errors: list[ErrorKind]
    throughput: Histogram  # rows finished per bucket; edges in ms since the Unix epoch
    first_finished_at: datetime | None
    last_finished_at: datetime | None
    accuracy: GroupStats | None  # None: the file has no boolean `correct` column
    group_by: str | None = None
    groups: dict[str, GroupStats] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    run: RunFacts | None = None

    @property
    def wall_span_s(self) -> float | None:
        """Seconds from the first row finished to the last; None without timestamps."""
        if self.first_finished_at is None or self.last_finished_at is None:
            return None
        return (self.last_finished_at - self.first_finished_at).total_seconds()

    @property
    def rows_per_s(self) -> float | None:
        """Timestamped rows over the wall span; None when the span is zero or unknown."""
        span = self.wall_span_s
        return sum(self.throughput.counts) / span if span else None

    def throughput_rates(self) -> dict[int, float]:
        """Rows finished per second in each throughput bucket, by bucket index.

        The first and last buckets are only partly inside the run: their rate is over the
        part they cover, and a bucket less than half covered is left out (a row or two over
        a sliver of time would spike; over the whole bucket, the run would seem to start
        and end slowly).
        """
        tp = self.throughput
        if not tp.counts:
            return {}
        width = tp.edges[1] - tp.edges[0]
        if len(tp.counts) == 1:  # the whole run inside one bucket: over the bucket
            return {0: tp.counts[0] * 1000 / width}
        first, last = (
            edge if at is None else at.timestamp() * 1000
            for edge, at in (
                (tp.edges[0], self.first_finished_at),
                (tp.edges[-1], self.last_finished_at),
            )
        )
        rates = {}
        for k, (lo, hi) in enumerate(itertools.pairwise(tp.edges)):
            covered = min(hi, last) - max(lo, first)
            if covered >= width / 2:
                rates[k] = tp.counts[k] * 1000 / covered
        return rates

    @property
    def estimate_basis(self) -> str:
        """What the estimated cost rests on, or why there is none."""
        if self.estimated_cost_usd is not None:
            return "list prices"
        if self.rows_without_usage:
            return f"{self.rows_without_usage:,} rows without usage"
        return "no price known"


def _tally(col: Any, null_label: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in pc.value_counts(col).to_pylist():
        label = null_label if item["values"] is None else str(item["values"])
        if label is not None:
            out[label] = item["counts"]
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def _sum(col: Any) -> int:
    return int(pc.sum(col).as_py() or 0)


def _step(span: float, buckets: int, floor: float, clock: bool = False) -> float:
    """A round bucket width giving about ``buckets`` buckets over ``span`` (at least ``floor``)."""
    raw = max(span / buckets, floor)
    return clock_step(raw) if clock else nice_step(raw)


def _histogram(values: Any, buckets: int, floor: float, clock: bool = False) -> Histogram:
    """Round-width buckets from a multiple of the width at or below the minimum past the max."""
    values = pc.drop_null(values)
    if len(values) == 0:
        return Histogram([], [])
    lo, hi = (float(v.as_py()) for v in pc.min_max(values).values())
    step = _step(hi - lo, buckets, floor, clock)
    edges = [math.floor(lo / step) * step]
    while edges[-1] <= hi:
        edges.append(round(edges[0] + len(edges) * step, 9))
    # Counted by comparison with the edges themselves, so a value on an edge lands in the
    # bucket the edges say (float division could disagree with them by one ulp).
    at_least = [_sum(pc.greater_equal(values, e)) for e in edges]
    return Histogram(edges, [a - b for a, b in itertools.pairwise(at_least)])


def _costs(table: pa.Table, prices: PriceTable) -> dict[str, float | None]:
    """USD per model that used tokens; the model column names what was served, and billed."""
    usage = table.select(["model", "prompt_tokens", "completion_tokens"]).group_by("model")
    out: dict[str, float | None] = {}
    for r in usage.aggregate([("prompt_tokens", "sum"), ("completion_tokens", "sum")]).to_pylist():
        p, c = r["prompt_tokens_sum"] or 0, r["completion_tokens_sum"] or 0
        if p or c:
            out[r["model"] or "(unknown)"] = prices.cost(r["model"], p, c) if r["model"] else None
    return dict(sorted(out.items()))


def _accuracy(
    table: pa.Table, group_by: str | None, notes: list[str]
) -> tuple[GroupStats | None, dict[str, GroupStats]]:
    ok = pc.equal(table.column("status"), "ok")
    correct = table.column("correct") if "correct" in table.column_names else None
    if correct is not None and not pa.types.is_boolean(correct.type):
        notes.append(f"column `correct` is {correct.type}, not boolean: no accuracy")
        correct = None
    overall = None
    if correct is not None:
        overall = GroupStats(table.num_rows, _sum(ok), pc.count(correct).as_py(), _sum(correct))
    if group_by is None:
        return overall, {}
    parts = {"g": table.column(group_by), "ok": ok}
    aggs = [("ok", "count"), ("ok", "sum")]
    if correct is not None:
        parts["c"] = correct
        aggs += [("c", "count"), ("c", "sum")]
    try:
        grouped = pa.table(parts).group_by("g").aggregate(aggs).to_pylist()
    except pa.ArrowException as e:
        raise UsageError(f"cannot group by column {group_by!r}: {e}") from e
    groups = {}
    for r in sorted(grouped, key=lambda r: (r["g"] is None, str(r["g"]))):
        key = "(null)" if r["g"] is None else str(r["g"])
        groups[key] = GroupStats(
            r["ok_count"], r["ok_sum"] or 0, r.get("c_count") or 0, r.get("c_sum") or 0
        )
    return overall, groups


def _percentiles(values: Any, qs: tuple[float, ...]) -> dict[str, float | None]:
    """``p50``… (linear interpolation) and ``max`` of non-null values; None without any."""
    found = pc.quantile(values, q=list(qs)).to_pylist() if len(values) else []
    out: dict[str, float | None] = {f"p{round(q * 100)}": None for q in qs}
    out.update(zip(out, found, strict=False))
    out["max"] = pc.max(values).as_py() if len(values) else None
    return out


def _top_errors(table: pa.Table) -> list[ErrorKind]:
    """The most frequent (error type, message) pairs of the error rows."""
    failed = table.filter(pc.equal(table.column("status"), "error"))
    if failed.num_rows == 0:
        return []
    message = pc.replace_substring_regex(failed.column("error"), _REQUEST_ID, "")
    failed = failed.set_column(failed.schema.get_field_index("error"), "error", message)
    counts = (
        failed.select(["error_type", "error", "status"])
        .group_by(["error_type", "error"])
        .aggregate([("status", "count")])
        .to_pylist()
    )
    counts.sort(key=lambda r: (-r["status_count"], str(r["error_type"]), str(r["error"])))
    return [
        ErrorKind(str(r["error_type"] or "unknown"), str(r["error"] or ""), r["status_count"])
        for r in counts[:TOP_ERRORS]
    ]


def build_report(
    path: Path, *, prices: PriceTable | None = None, group_by: str | None = None
) -> Report:
    """Read the batchrun output at ``path`` and compute its report; UsageError if it is not one.

    ``prices`` defaults to the bundled table; ``group_by`` names a column to break
    row counts and accuracy down by.
    """
    table, version = read_columns(path, group_by)
    notes: list[str] = []
    prices = prices if prices is not None else PriceTable.default()
    served = pc.is_valid(table.column("served_by"))
    cached = pc.and_(
        pc.is_null(table.column("served_by")), pc.fill_null(table.column("cached"), False)
    )
    free = pc.or_(served, cached)
    paid, saved = table.filter(pc.invert(free)), table.filter(free)
    costs = _costs(paid, prices)
    saved_costs = _costs(saved, prices)
    priced = [v for v in costs.values() if v is not None]
    if unpriced := [k for k, v in costs.items() if v is None]:
        notes.append(f"no price known for {', '.join(unpriced)}; left out of the estimated cost")
    no_usage = _sum(
        pc.and_(pc.equal(paid.column("status"), "ok"), pc.is_null(paid.column("total_tokens")))
    )
    if no_usage:
        notes.append(
            f"{no_usage:,} ok rows came without usage: the token sums leave them out and the "
            "estimated cost is unknown"
        )
    reported = pc.drop_null(table.column("reported_cost_usd"))
    ok = pc.equal(table.column("status"), "ok")
    latency = pc.drop_null(pc.filter(table.column("latency_ms"), ok))
    failed = pc.drop_null(pc.filter(table.column("latency_ms"), pc.invert(ok)))
    attempts = pc.drop_null(table.column("attempts"))
    finished_ms = pc.cast(table.column("finished_at"), pa.int64())
    first, last = (s.as_py() for s in pc.min_max(finished_ms).values())
    accuracy, groups = _accuracy(table, group_by, notes)

    def when(ms: int | None) -> datetime | None:
        return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)

    return Report(
        path=str(path),
        schema_version=version,
        rows=table.num_rows,
        by_status={"ok": 0, "error": 0} | _tally(table.column("status"), None),
        by_finish_reason=_tally(table.column("finish_reason_normalized"), "unknown"),
        by_error_type=_tally(table.column("error_type"), None),
        prompt_tokens=_sum(paid.column("prompt_tokens")),
        completion_tokens=_sum(paid.column("completion_tokens")),
        total_tokens=_sum(paid.column("total_tokens")),
        rows_without_usage=no_usage,
        estimated_cost_usd=None
        if no_usage
        else (math.fsum(priced) if priced or not costs else None),
        cost_by_model=costs,
        reported_cost_usd=math.fsum(reported.to_pylist()) if len(reported) else None,
        rows_cost_reported=len(reported),
        credits_used=_sum(table.column("credits_used"))
        if table.column("credits_used").null_count < table.num_rows
        else None,
        rows_with_reasoning=non_null(Path(path), "reasoning_content"),
        rows_served_by_dedupe=_sum(served),
        rows_served_by_cache=_sum(cached),
        tokens_saved=_sum(saved.column("total_tokens")),
        estimated_cost_saved_usd=math.fsum(v for v in saved_costs.values() if v is not None),
        latency_ms=_percentiles(latency, PERCENTILES),
        latency_histogram=_histogram(latency, 20, 0.1),
        error_latency_ms=_percentiles(failed, (0.5,)),
        requests=_sum(attempts),
        # A row's attempts beyond its first; rows never sent (attempts 0) add nothing.
        retries=_sum(pc.max_element_wise(pc.subtract(attempts, 1), 0)) if len(attempts) else 0,
        top_errors=_top_errors(table),
        # Timestamps have ms resolution: no bucket narrower than 1 ms.
        throughput=_histogram(finished_ms, 60, 1.0, clock=True),
        first_finished_at=when(first),
        last_finished_at=when(last),
        accuracy=accuracy,
        group_by=group_by,
        groups=groups,
        notes=notes,
        run=run_facts(path, table.num_rows, notes),
    )
