"""The run summary: printed at the end of a run and written as JSON beside the output."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchrun.io.publish import write_text
from batchrun.io.remote import Location, RemotePath
from batchrun.io.writers import write_text_atomically


@dataclass
class Summary:
    """Numbers of one run; row counts and tokens cover the whole output (resumes included)."""

    output: str
    #: complete | partial (interrupted or stopped before every row was done)
    state: str
    rows_total: int
    rows_ok: int = 0
    rows_error: int = 0
    rows_pending: int = 0
    #: Rows already recorded by earlier runs when this one started.
    rows_resumed: int = 0
    requests_sent: int = 0
    retries: int = 0
    rate_limited: int = 0
    #: Invalid structured answers (--schema) asked again, in this run.
    reasks: int = 0
    #: Rows that were in flight when an earlier run died: the API may have billed them
    #: once already; they were sent again (with the same Idempotency-Key).
    rows_possibly_charged_twice: int = 0
    #: Tokens and estimated cost of the rows that paid for their answers (rows served by
    #: dedupe or the cache are counted under saved).
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    #: From the tokens at list prices; None when unknown (no price, or rows without usage).
    estimated_cost_usd: float | None = None
    #: Ok rows whose answer said no usage (tokens null): their tokens are not in the sums.
    rows_without_usage: int = 0
    #: Rows answered without a request: by a row with the same request (dedupe), by the
    #: response cache; the tokens their answers used and what those would have cost.
    rows_served_by_dedupe: int = 0
    rows_served_by_cache: int = 0
    tokens_saved: int = 0
    estimated_cost_saved_usd: float | None = None
    #: The sum of the costs the server reported (the gateway's cost headers or stream
    #: meta, or --cost-header), over the rows it reported.
    reported_cost_usd: float | None = None
    rows_cost_reported: int = 0
    #: The credits the gateway reported ($1 = 2,000,000), over the rows it reported.
    credits_used: int | None = None
    #: What --max-cost counts: reported where reported, estimated for the other rows.
    spent_usd: float | None = None
    wall_time_s: float = 0.0
    rows_per_s: float = 0.0
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    errors_by_type: dict[str, int] = field(default_factory=dict)
    finish_reasons: dict[str, int] = field(default_factory=dict)
    #: With grading: rows graded (ok rows with an expected answer), share correct, per group.
    graded_rows: int | None = None
    accuracy: float | None = None
    accuracy_by_group: dict[str, float] = field(default_factory=dict)
    stop_reason: str | None = None
    exit_code: int = 0
    #: live, or batch (the provider's Batch API: the cost above is at the batch rate).
    mode: str = "live"
    #: Batch mode: the job's batches by state (open ones with the provider's last state).
    batches: dict[str, int] = field(default_factory=dict)
    #: Batch mode: chunks whose create may have been answered without its id being
    #: recorded (a crash in that window); their rows are in rows_possibly_charged_twice.
    batches_in_doubt: list[str] = field(default_factory=list)
    #: Batch mode: result lines ignored (not a result, unknown or repeated custom_id).
    batch_results_ignored: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    def write(self, path: Location, staging: Path | None = None) -> None:
        """Write to ``path``; for an object, via the local file ``staging``."""
        if isinstance(path, RemotePath):
            if staging is None:
                raise ValueError("an object in storage is written via a local staging file")
            write_text(path, self.to_json(), staging)
        else:
            write_text_atomically(path, self.to_json())

    def _cost_line(self) -> str:
        """Reported and estimated spend side by side."""
        est = (
            f"${self.estimated_cost_usd:,.4f}" if self.estimated_cost_usd is not None else "unknown"
        )
        if self.rows_without_usage:
            # Never $0: those rows were paid for, and nothing says how much.
            est += f" ({self.rows_without_usage:,} rows without usage)"
        if self.reported_cost_usd is None:
            return f"  cost: estimated {est} (the API reported none)"
        credits = f", {self.credits_used:,} credits" if self.credits_used is not None else ""
        return (
            f"  cost: reported ${self.reported_cost_usd:,.4f} ({self.rows_cost_reported:,} of "
            f"{self.rows_ok + self.rows_error:,} rows{credits}), estimated {est}"
        )

    def lines(self) -> list[str]:
        """A short human summary."""
        lat = self.latency_ms
        out = [
            f"batchrun: {self.state} — {self.rows_ok:,} ok, {self.rows_error:,} error"
            + (f", {self.rows_pending:,} not done" if self.rows_pending else "")
            + f" of {self.rows_total:,} rows → {self.output}",
            f"  requests {self.requests_sent:,} (retries {self.retries:,}, 429s {self.rate_limited:,}"
            + (f", re-asks {self.reasks:,}" if self.reasks else "")
            + ")"
            f", resumed {self.rows_resumed:,} rows, possibly charged twice {self.rows_possibly_charged_twice:,}",
            f"  tokens {self.prompt_tokens:,} in + {self.completion_tokens:,} out = {self.total_tokens:,}"
            + (
                f" ({self.rows_without_usage:,} rows without usage, not counted)"
                if self.rows_without_usage
                else ""
            ),
            self._cost_line(),
            f"  wall {self.wall_time_s:.1f} s, {self.rows_per_s:,.1f} rows/s"
            + (
                f", latency p50 {lat['p50']:.0f} ms p95 {lat['p95']:.0f} ms p99 {lat['p99']:.0f} ms"
                if lat.get("p50") is not None
                and lat.get("p95") is not None
                and lat.get("p99") is not None
                else ""
            ),
        ]
        if self.rows_served_by_dedupe or self.rows_served_by_cache:
            out.append(
                f"  served without a request: {self.rows_served_by_dedupe:,} rows by dedupe, "
                f"{self.rows_served_by_cache:,} by the cache; saved {self.tokens_saved:,} tokens"
                + (
                    f", est. ${self.estimated_cost_saved_usd:,.4f}"
                    if self.estimated_cost_saved_usd is not None
                    else ""
                )
            )
        if self.errors_by_type:
            out.append(
                "  errors: "
                + ", ".join(f"{k} {v:,}" for k, v in sorted(self.errors_by_type.items()))
            )
        if self.finish_reasons:
            out.append(
                "  finish reasons: "
                + ", ".join(f"{k} {v:,}" for k, v in sorted(self.finish_reasons.items()))
            )
        if self.accuracy is not None:
            groups = ", ".join(f"{k} {v:.1%}" for k, v in self.accuracy_by_group.items())
            out.append(
                f"  accuracy {self.accuracy:.1%} of {self.graded_rows:,} graded rows"
                + (f" ({groups})" if groups else "")
            )
        if self.mode == "batch":
            out.append(
                "  batch mode: "
                + (", ".join(f"{k} {v:,}" for k, v in sorted(self.batches.items())) or "no batches")
                + ", cost at the batch rate"
                + (
                    f", {self.batch_results_ignored:,} result lines ignored"
                    if self.batch_results_ignored
                    else ""
                )
            )
            for name in self.batches_in_doubt:
                out.append(f"  possibly created twice (killed before its id was recorded): {name}")
        if self.stop_reason:
            out.append(f"  stopped: {self.stop_reason}")
        return out


def latency_percentiles(output: Path) -> dict[str, float | None]:
    """p50/p90/p95/p99/max of ``latency_ms`` read from the output file (one column only)."""
    try:
        col = pq.read_table(output, columns=["latency_ms"]).column("latency_ms")
    except (OSError, KeyError):
        return {}
    col = pc.drop_null(col)
    if len(col) == 0:
        return {"p50": None, "p90": None, "p95": None, "p99": None, "max": None}
    qs = pc.quantile(col, q=[0.5, 0.9, 0.95, 0.99]).to_pylist()
    result: dict[str, float | None] = {
        f"p{int(q * 100)}": round(v, 2) for q, v in zip((0.5, 0.9, 0.95, 0.99), qs, strict=True)
    }
    result["max"] = round(pc.max(col).as_py(), 2)
    return result


def load_summary(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data
