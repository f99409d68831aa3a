"""The other commands: report, compare, simulate (registered on the ``batchrun`` group)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from batchrun.cli_common import Stdout, fail, say, use_system_allocator
from batchrun.compare import compare_outputs
from batchrun.compare_gates import Thresholds
from batchrun.compare_html import render_html as compare_html
from batchrun.compare_render import render_text as compare_text
from batchrun.compare_render import to_json as compare_json
from batchrun.errors import BatchrunError, UsageError
from batchrun.io.files import why_unwritable
from batchrun.io.writers import write_text_atomically
from batchrun.job import (
    DEFAULT_COST_HEADER,
)
from batchrun.pricing import PriceTable
from batchrun.report import build_report, recorded_group_by
from batchrun.report_html import render_html
from batchrun.report_render import render_text


@click.command()
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a self-contained HTML page with charts.",
)
@click.option(
    "--group-by",
    help="Accuracy per value of this column (graded outputs). [default: the job's group]",
)
@click.option(
    "--prices",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML price file merged over the bundled prices.",
)
def report(output: Path, html_path: Path | None, group_by: str | None, prices: Path | None) -> None:
    """Summarize a finished (or partial) OUTPUT.parquet: counts, tokens, cost, latency."""
    out = Stdout()
    try:
        table = PriceTable.load(prices) if prices else PriceTable.default()
        if group_by is None:  # the job graded by a group: show it, as `compare` does
            group_by = recorded_group_by(output)
        rep = build_report(output, prices=table, group_by=group_by)
        out.echo(render_text(rep))
        if html_path is not None:
            try:
                write_text_atomically(html_path, render_html(rep))
            except OSError as exc:
                raise UsageError(
                    f"cannot write the HTML report {html_path}: {why_unwritable(html_path, exc)}",
                    hint="give --html a path in a folder you can write to",
                ) from None
            out.echo(f"HTML report: {html_path}")
    except BatchrunError as exc:
        fail(exc)
    if out.error is not None:
        sys.exit(1)  # the report is what stdout was for


@click.command()
@click.argument("baseline", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("current", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--key", default="id", show_default=True, help="Column pairing the rows of the runs.")
@click.option("--group-by", help="Accuracy per value of this column. [default: the job's group]")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the comparison as JSON.",
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a self-contained HTML page (deltas, chart per group, flipped rows).",
)
@click.option(
    "--fail-if-accuracy-drops",
    "accuracy_drop_points",
    type=float,
    metavar="POINTS",
    help="Exit 3 if accuracy on the rows graded in both runs falls by more than POINTS "
    "percentage points (2: from 80% to below 78%).",
)
@click.option(
    "--fail-if-error-rate-above",
    "error_rate_above",
    type=float,
    metavar="FRACTION",
    help="Exit 3 if more than FRACTION of the current run's rows failed (0.02: 2%).",
)
@click.option(
    "--fail-if-cost-rises",
    "cost_rise",
    type=float,
    metavar="FRACTION",
    help="Exit 3 if the cost rose by more than FRACTION of the baseline's (0.1: 10%); "
    "the cost the API reported when both runs have one, else the estimate.",
)
@click.option("--force", is_flag=True, help="Compare outputs that look like two different jobs.")
@click.option(
    "--prices",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML price file merged over the bundled prices.",
)
def compare(
    baseline: Path,
    current: Path,
    json_path: Path | None,
    html_path: Path | None,
    prices: Path | None,
    **options: Any,
) -> None:
    """Compare two outputs of one job: BASELINE (last night's) and CURRENT (tonight's).

    Rows are paired by --key. Accuracy (graded outputs) is compared on the rows graded in
    both, with McNemar's exact test; the accuracy threshold is in percentage points, the
    error-rate and cost thresholds are fractions.

    \b
    Exit codes: 0 no threshold passed; 3 a --fail-if-... threshold passed (one line says
    which); 2 an unreadable output, outputs of different jobs (see --force), or a
    threshold that cannot be checked; 1 unexpected error.
    """
    use_system_allocator()
    gates = {k: options.pop(k) for k in ("accuracy_drop_points", "error_rate_above", "cost_rise")}
    out = Stdout()  # the exit code is the verdict, whatever became of stdout
    try:
        table = PriceTable.load(prices) if prices else PriceTable.default()
        result = compare_outputs(
            baseline, current, prices=table, thresholds=Thresholds(**gates), **options
        )
        out.echo(compare_text(result).rstrip("\n"))
        for flag, path, text in (
            ("--json", json_path, compare_json),
            ("--html", html_path, compare_html),
        ):
            if path is not None:
                try:
                    write_text_atomically(path, text(result))
                except OSError as exc:
                    raise UsageError(
                        f"cannot write {path}: {why_unwritable(path, exc)}",
                        hint=f"give {flag} a path in a folder you can write to",
                    ) from None
    except BatchrunError as exc:
        fail(exc)
    for reason in result.unchecked:
        say(f"batchrun: error: {reason}")
    if result.failures:
        say(f"batchrun: regression: {'; '.join(result.failures)}")
    sys.exit(result.exit_code)


@click.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Loopback address to listen on."
)
@click.option("--port", default=8089, show_default=True, type=int, help="Port (0 = any free port).")
@click.option(
    "--latency-ms",
    default=0.0,
    show_default=True,
    type=float,
    help="Mean added latency per request.",
)
@click.option(
    "--jitter-ms",
    default=0.0,
    show_default=True,
    type=float,
    help="Uniform ± jitter around the mean latency.",
)
@click.option(
    "--error-rate",
    "error_500_rate",
    default=0.0,
    show_default=True,
    type=float,
    help="Fraction of requests answered 500.",
)
@click.option(
    "--rate-429",
    default=0.0,
    show_default=True,
    type=float,
    help="Fraction answered 429 with Retry-After.",
)
@click.option(
    "--rate-429-no-retry-after",
    default=0.0,
    show_default=True,
    type=float,
    help="Fraction answered 429 without Retry-After.",
)
@click.option(
    "--retry-after",
    "retry_after_s",
    default=1.0,
    show_default=True,
    type=float,
    help="Retry-After seconds on simulated 429s.",
)
@click.option(
    "--first-429s",
    default=0,
    show_default=True,
    type=int,
    help="Answer the first N requests 429 with --retry-after (then as configured).",
)
@click.option(
    "--rate-403",
    default=0.0,
    show_default=True,
    type=float,
    help="Fraction answered 403 out of credits (1 = all).",
)
@click.option(
    "--drop-rate",
    default=0.0,
    show_default=True,
    type=float,
    help="Fraction of connections dropped without an answer.",
)
@click.option(
    "--rpm-limit", type=int, help="Requests per minute the simulator accepts; beyond it, 429s."
)
@click.option(
    "--rpm-window",
    "rpm_window_s",
    default=10.0,
    show_default=True,
    type=float,
    help="Seconds over which --rpm-limit is enforced.",
)
@click.option(
    "--limit-retry-after/--no-limit-retry-after",
    "limit_sends_retry_after",
    default=True,
    show_default=True,
    help="Whether 429s from --rpm-limit carry Retry-After.",
)
@click.option("--ratelimit-headers", is_flag=True, help="Send x-ratelimit-* headers.")
@click.option(
    "--require-key-env",
    help="Accept only the key held in this environment variable (default: any non-empty key).",
)
@click.option(
    "--honor-idempotency",
    is_flag=True,
    help="Replay the stored answer for a repeated Idempotency-Key.",
)
@click.option(
    "--stream-stall-rate",
    default=0.0,
    show_default=True,
    type=float,
    help="Fraction of streamed answers that stall mid-stream.",
)
@click.option(
    "--cost-header",
    help="Report each answer's cost (bundled list prices) in this response header, "
    f"e.g. {DEFAULT_COST_HEADER}.",
)
@click.option(
    "--gateway-cost/--no-gateway-cost",
    default=True,
    show_default=True,
    help="Report spend as the gateway does: x-aimlapi-usd-spent and x-aimlapi-credits-used "
    "headers, a final meta.usage event on streams.",
)
@click.option(
    "--strict/--no-strict",
    default=True,
    show_default=True,
    help="Refuse body fields a Claude model's schema lacks (400 Body validation error!).",
)
@click.option(
    "--models",
    "models_list",
    help="Comma-separated names GET /v1/models lists ('' answers 404). [default: the seed's "
    "four claude-3-opus aliases and a few others]",
)
@click.option(
    "--reasoning-rate",
    default=0.25,
    show_default=True,
    type=float,
    help="Fraction of answers that carry reasoning_content (which ones: by prompt).",
)
@click.option(
    "--answers-file",
    type=click.Path(dir_okay=False),
    help="Answer key: a JSONL/Parquet eval file; prompts found in it (messages or prompt) are "
    "answered with their --answers-column value, or wrongly (see --correct-rate).",
)
@click.option(
    "--answers-column", default="answer", show_default=True, help="Expected-answer column."
)
@click.option(
    "--correct-rate",
    default=1.0,
    show_default=True,
    type=float,
    help="Fraction of keyed prompts answered correctly (which ones: by prompt and --answers-seed).",
)
@click.option(
    "--answers-seed", default=0, show_default=True, type=int, help="Seed of --correct-rate."
)
@click.option(
    "--seed", default=0, show_default=True, type=int, help="Seed of the simulated faults."
)
@click.option(
    "--flavor",
    type=click.Choice(["gateway", "openai"]),
    default="gateway",
    show_default=True,
    help="The server it stands in for. gateway: HTTP 201, usage in every stream, "
    "{name, description, input_schema} tools, unknown fields refused. openai: HTTP 200, "
    "stream usage only with stream_options.include_usage, function tools and string "
    "tool choices, stop, no system or top_k, OpenAI's error objects.",
)
def simulate(
    host: str,
    port: int,
    require_key_env: str | None,
    rpm_limit: int | None,
    models_list: str | None,
    **options: Any,
) -> None:
    """Serve a local OpenAI-compatible simulator of the API on a loopback address.

    Rehearse a job offline: point `batchrun run --base-url http://127.0.0.1:PORT/v1` at it.
    """
    from batchrun.simulate import SimConfig, serve

    if not 0 <= port <= 65535:
        say(f"batchrun: error: --port must be from 0 to 65535 (0 = any free port), got {port}")
        sys.exit(2)
    api_key = os.environ.get(require_key_env) if require_key_env else None
    if require_key_env and not api_key:
        click.echo(f"batchrun: error: environment variable {require_key_env} is not set", err=True)
        sys.exit(2)
    if models_list is not None:
        names = tuple(m.strip() for m in models_list.split(",") if m.strip())
        options["models"] = names or None
    try:
        config = SimConfig(api_key=api_key, rpm_limit=rpm_limit, **options)
        serve(
            config,
            host=host,
            port=port,
            ready=lambda url: click.echo(f"simulator listening on {url}", err=True),
        )
    except ValueError as exc:
        click.echo(f"batchrun: error: {exc}", err=True)
        sys.exit(2)
    except (OSError, OverflowError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        say(f"batchrun: error: cannot listen on {host}:{port}: {reason}")
        sys.exit(2)
