"""The other commands: report, compare (registered on the ``batchrun`` group)."""

from __future__ import annotations

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
