"""Summarize a run: the counts of the whole output from the journal, this run's counters,
latency from the output file, accuracy when graded."""

from __future__ import annotations

from batchrun.batchjournal import batch_summary
from batchrun.budget import recorded_cost, recorded_spend, unknown_usage
from batchrun.checkpoint import Checkpoint
from batchrun.events import Progress
from batchrun.grading import accuracy
from batchrun.job import Job
from batchrun.pricing import PriceTable
from batchrun.summary import Summary, latency_percentiles


def summarize(
    job: Job,
    ckpt: Checkpoint,
    progress: Progress,
    prices: PriceTable,
    *,
    total: int,
    resumed: int,
    possibly_charged_twice: int,
    wall_s: float,
    state: str,
    batch_ignored: int = 0,
) -> Summary:
    """The summary of a run over the first ``total`` rows of the output."""
    agg = ckpt.aggregate(total)
    without_usage = unknown_usage(ckpt, total, job.params.max_tokens)[0]
    # Rows whose usage is unknown make the estimate unknown: a sum over the others would
    # read as the run's cost (and as $0 when no row had usage).
    estimate = None if without_usage else recorded_cost(ckpt, prices, job.params.model, total)
    # The spend is known where the API reported it, whatever the usage said.
    unpriced = unknown_usage(ckpt, total, job.params.max_tokens, unpriced=True)[0]
    spent = None if unpriced else recorded_spend(ckpt, prices, job.params.model, total)
    p = progress
    output = job.local_output  # read for latency and grades; the summary names OUTPUT
    summary = Summary(
        output=str(job.output_path),
        state=state,
        rows_total=total,
        rows_ok=agg["ok"],
        rows_error=agg["error"],
        rows_pending=total - agg["rows"],
        rows_resumed=resumed,
        requests_sent=p.requests,
        retries=p.retries,
        rate_limited=p.rate_limited,
        reasks=p.reasks,
        rows_possibly_charged_twice=possibly_charged_twice,
        prompt_tokens=agg["prompt_tokens"],
        completion_tokens=agg["completion_tokens"],
        total_tokens=agg["total_tokens"],
        wall_time_s=round(wall_s, 3),
        rows_per_s=round(p.done / wall_s, 2) if wall_s > 0 else 0.0,
        latency_ms=latency_percentiles(output) if output.exists() else {},
        errors_by_type=agg["errors_by_type"],
        finish_reasons=agg["finish_reasons"],
        estimated_cost_usd=_round(estimate),
        rows_without_usage=without_usage,
        reported_cost_usd=_round(agg["reported_cost_usd"]),
        rows_cost_reported=agg["rows_cost_reported"],
        rows_served_by_dedupe=agg["rows_served_by_dedupe"],
        rows_served_by_cache=agg["rows_served_by_cache"],
        tokens_saved=agg["tokens_saved"],
        estimated_cost_saved_usd=_round(
            recorded_cost(ckpt, prices, job.params.model, total, saved=True)
        ),
        credits_used=agg["credits_used"],
        spent_usd=_round(spent),
    )
    if job.mode == "batch" or batch_ignored:
        summary.mode = job.mode
        info = batch_summary(ckpt)
        summary.batches, summary.batches_in_doubt = info["batches"], info["batches_in_doubt"]
        summary.batch_results_ignored = batch_ignored
    grading = job.grading
    if grading is not None and output.exists():
        summary.graded_rows, summary.accuracy, summary.accuracy_by_group = accuracy(
            output, grading.group_by
        )
    return summary


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
