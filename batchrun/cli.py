"""The command line: click options → Job → one library call → exit code."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shlex
import sys
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
import pyarrow as pa

from batchrun import __version__
from batchrun.compare import compare_outputs
from batchrun.compare_gates import Thresholds
from batchrun.compare_html import render_html as compare_html
from batchrun.compare_render import render_text as compare_text
from batchrun.compare_render import to_json as compare_json
from batchrun.errors import BatchrunError, Interrupted, InvalidInput, UsageError
from batchrun.io.files import why_unwritable
from batchrun.io.writers import write_text_atomically
from batchrun.job import (
    DEFAULT_API_KEY_ENV,
    DEFAULT_COST_HEADER,
    ERROR_TYPES,
    Job,
)
from batchrun.plan import dry_run
from batchrun.pricing import PriceTable
from batchrun.progress import ProgressView
from batchrun.report import build_report, render_html, render_text
from batchrun.runner import run_job
from batchrun.settings import job_from_settings, resolve_settings

#: Set to 1 to see the traceback of unexpected errors.
DEBUG_ENV = "BATCHRUN_DEBUG"

T = TypeVar("T")


#: ``asyncio`` runs on the standard library's event loop even where uvloop is installed.
EVENT_LOOP_ENV = "BATCHRUN_EVENT_LOOP"


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where it is installed: its C transports cut the client's CPU per
    request (measured in ``make bench``). ``BATCHRUN_EVENT_LOOP=asyncio`` opts out."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if os.environ.get(EVENT_LOOP_ENV, "").lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def use_system_allocator() -> None:
    """Give Arrow the C library's allocator unless ARROW_DEFAULT_MEMORY_POOL chooses one.

    Arrow's default (mimalloc) keeps what it once held: reading a 1,000,000-row Parquet
    input batch by batch left the process 45 MB larger than a 100,000-row one, against
    14 MB with the system allocator (measured; see ``make bench``, scenario E)."""
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        pa.set_memory_pool(pa.system_memory_pool())


class _Stdout:
    """What the commands print on stdout. A closed stdout (``batchrun run … | head``) is no
    failure of the run, whose exit code stays the run's; another write error (a full disk)
    is said once on stderr. Either way the rest of stdout goes nowhere, and no traceback."""

    def __init__(self) -> None:
        self.closed = False
        self.error: str | None = None

    def echo(self, text: str) -> None:
        if self.closed:
            return
        try:
            click.echo(text)
        except OSError as exc:
            self.closed = True
            _stdout_to_devnull()  # the interpreter's last flush must not fail again
            if exc.errno != errno.EPIPE:
                self.error = exc.strerror or str(exc)
                _say(f"batchrun: cannot write to standard output: {self.error}")


def _stdout_to_devnull() -> None:
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(fd, sys.stdout.fileno())
        finally:
            os.close(fd)
    except (OSError, ValueError):  # no real descriptor (a test runner's buffer)
        pass


def _say(line: str) -> None:
    """One line on stderr; a stderr that cannot take it is not worth a traceback."""
    with contextlib.suppress(OSError):
        click.echo(line, err=True)


def _fail(error: BatchrunError, *, every_row: bool = False, resume: str | None = None) -> None:
    """One clear line (and, for a dry run, every invalid row found), then the exit code."""
    if isinstance(error, InvalidInput) and every_row:
        for e in error.errors:
            _say(f"batchrun: invalid: {e}")
        shown = len(error.errors)
        more = (
            f" ({error.total_invalid - shown:,} more not listed)"
            if error.total_invalid > shown
            else ""
        )
        _say(f"batchrun: error: {error.total_invalid:,} invalid rows{more}; nothing was sent")
    else:
        # One line, whatever a library or a server put into the message.
        _say(f"batchrun: error: {' '.join(str(error).splitlines())}")
    if resume is not None:
        _say(f"batchrun: to resume: {resume}")
    sys.exit(error.exit_code)


def resume_command(argv: list[str], restarted: bool) -> str:
    """The command that resumes an interrupted run: the same one, without starting over
    (which would throw away what this run recorded), whether --restart was a flag or a
    job-file setting."""
    args = [a for a in argv[1:] if a != "--restart"]
    if restarted:
        args.append("--no-restart")
    return shlex.join(["batchrun", *args])


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="batchrun")
def main() -> None:
    """Run large batches of prompts through a chat-completions API into one Parquet file.

    Crash-safe and resumable: rerun the same command after any stop and only the rows not
    yet recorded are sent.
    """


@main.command()
@click.argument("job_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--input",
    "input_",
    type=click.Path(dir_okay=False),
    help="Input file: .jsonl/.ndjson (one JSON object a line) or .parquet.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    help="Output Parquet file (default: INPUT stem + .out.parquet). The checkpoint and summary go beside it.",
)
@click.option("--model", help="Model name, e.g. anthropic/claude-3-opus.")
@click.option(
    "--base-url",
    help="API base URL; requests go to BASE_URL/chat/completions. [default: https://api.aimlapi.com/v1]",
)
@click.option(
    "--api-key-env",
    help=f"Environment variable holding the API key. [default: {DEFAULT_API_KEY_ENV}]",
)
@click.option("--prompt-column", help="Column with the prompt text (default: 'prompt' if present).")
@click.option(
    "--messages-column",
    help="Column with a [{role, content}] list (default: 'messages' if present).",
)
@click.option(
    "--template", help="Prompt template with {column} placeholders, e.g. 'Classify: {text}'."
)
@click.option("--system", help="System prompt sent with every row.")
@click.option(
    "--system-as-message/--system-as-field",
    "system_as_message",
    default=None,
    help="Send --system as a leading system message instead of the 'system' body field.",
)
@click.option(
    "--id-column",
    help="Column with unique row ids (default: 'id' if present, else the row position).",
)
@click.option("--concurrency", type=int, help="Most requests in flight at once. [default: 16]")
@click.option(
    "--rpm",
    type=float,
    help="Requests per minute, spread evenly. Without it the rate adapts to 429s.",
)
@click.option(
    "--tpm",
    type=float,
    help="Tokens per minute (estimated before sending, corrected by real usage).",
)
@click.option("--max-attempts", type=int, help="Attempts per row, first one included. [default: 6]")
@click.option(
    "--timeout", type=float, help="Seconds per request, reading the answer included. [default: 120]"
)
@click.option(
    "--read-timeout",
    type=float,
    help="Seconds a streamed answer may stay silent (the wait for its first byte included) before the request counts as timed out. [default: 60]",
)
@click.option(
    "--max-retry-after",
    type=float,
    help="Longest Retry-After (s) to wait; a longer one stops the run resumably. [default: 600]",
)
@click.option("--max-tokens", type=int, help="max_tokens per request (>= 1). [default: 512]")
@click.option("--temperature", type=float, help="Sampling temperature, 0..1.")
@click.option("--top-p", type=float, help="Nucleus sampling, 0..1.")
@click.option("--top-k", type=int, help="Top-k sampling (>= 0).")
@click.option("--frequency-penalty", type=float, help="Frequency penalty, -2..2.")
@click.option("--stop", multiple=True, help="Stop sequence (repeatable); sent as stop_sequences.")
@click.option("--stream/--no-stream", default=None, help="Stream answers (server-sent events).")
@click.option("--tools", help="Tools as JSON: [{name, description, input_schema}].")
@click.option("--tool-choice", help='Tool choice as JSON, e.g. \'{"type": "auto"}\'.')
@click.option("--metadata", help="Metadata object as JSON, sent with every request.")
@click.option(
    "--retry-failed",
    is_flag=True,
    default=None,
    help="Re-send only the rows whose status is error; successful rows are never re-sent.",
)
@click.option(
    "--only",
    help=f"With --retry-failed: comma-separated error types to retry ({', '.join(ERROR_TYPES)}).",
)
@click.option(
    "--restart/--no-restart",
    default=None,
    help="Discard the checkpoint and start over (every row is sent again).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    default=None,
    help="Validate the input and show the first requests; send nothing.",
)
@click.option("--limit", type=int, help="Process only the first N rows.")
@click.option(
    "--max-failure-rate",
    type=float,
    help="Fraction of rows allowed to fail before exit code 3. [default: 0]",
)
@click.option(
    "--max-cost",
    type=float,
    help="Cost cap in USD over the whole output: stop starting requests before it (exit 4, resumable).",
)
@click.option(
    "--max-tokens-total",
    type=int,
    help="Token cap over the whole output: stop starting requests before it (exit 4, resumable).",
)
@click.option(
    "--prices",
    type=click.Path(dir_okay=False),
    help='TOML price file merged over the bundled prices: [models."NAME"] input = .., output = .. (USD per million tokens).',
)
@click.option(
    "--cost-header",
    help=f"Response header with the cost the server charged (USD), recorded per row; '' reads none. [default: {DEFAULT_COST_HEADER}]",
)
@click.option(
    "--expected-column",
    help="Grade completions against this column; adds a `correct` column and an accuracy.",
)
@click.option(
    "--match",
    type=click.Choice(["exact", "ignore_case", "contains", "regex"]),
    help="How --expected-column is compared. [default: exact]",
)
@click.option("--group-by", help="With --expected-column: accuracy per value of this column too.")
@click.option("--quiet", "-q", is_flag=True, default=None, help="No progress display.")
def run(job_file: Path | None, input_: str | None, **flags: Any) -> None:
    """Run a job: JOB_FILE (TOML) and/or flags; flags override the file.

    \b
    Exit codes: 0 every row ok; 2 bad usage or input (nothing sent); 3 more rows failed
    than --max-failure-rate; 4 stopped by the API (resumable); 5 checkpoint conflict;
    130/143 interrupted (resumable); 1 unexpected error.
    """
    flags["input"] = input_
    flags["stop"] = flags["stop"] or None
    dry = bool(flags.get("dry_run"))
    use_system_allocator()
    job: Job | None = None
    out = _Stdout()
    try:
        settings = resolve_settings(job_file, flags)
        dry = bool(settings.get("dry_run"))
        quiet = bool(settings.get("quiet"))
        job = job_from_settings(settings)
        if job.dry_run:
            out.echo(dry_run(job))
            return
        view = ProgressView(quiet=quiet)
        summary = run_async(run_job(job, on_event=view, handle_signals=True))
    except BatchrunError as exc:
        if exc.summary is not None:
            for line in exc.summary.lines():
                out.echo(line)
        # A stop (budget, API refusal) says in its hint what to change before rerunning;
        # an interruption is resumed by the same command.
        resume = (
            resume_command(sys.argv, job.restart)
            if isinstance(exc, Interrupted) and job is not None
            else None
        )
        _fail(exc, every_row=dry, resume=resume)
    except Exception:
        if os.environ.get(DEBUG_ENV):
            raise
        _say(f"batchrun: unexpected error (a bug): {traceback.format_exc(limit=0).strip()}")
        _say(f"batchrun: set {DEBUG_ENV}=1 to see the traceback")
        sys.exit(1)
    view.close()
    for line in summary.lines():
        out.echo(line)
    assert job is not None
    out.echo(f"  summary: {job.summary_path}")
    sys.exit(summary.exit_code)


@main.command()
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a self-contained HTML page with charts.",
)
@click.option("--group-by", help="Accuracy per value of this column (graded outputs).")
@click.option(
    "--prices",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML price file merged over the bundled prices.",
)
def report(output: Path, html_path: Path | None, group_by: str | None, prices: Path | None) -> None:
    """Summarize a finished (or partial) OUTPUT.parquet: counts, tokens, cost, latency."""
    out = _Stdout()
    try:
        table = PriceTable.load(prices) if prices else PriceTable.default()
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
        _fail(exc)
    if out.error is not None:
        sys.exit(1)  # the report is what stdout was for


@main.command()
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
    out = _Stdout()  # the exit code is the verdict, whatever became of stdout
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
        _fail(exc)
    for reason in result.unchecked:
        _say(f"batchrun: error: {reason}")
    if result.failures:
        _say(f"batchrun: regression: {'; '.join(result.failures)}")
    sys.exit(result.exit_code)


@main.command()
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
def simulate(
    host: str, port: int, require_key_env: str | None, rpm_limit: int | None, **options: Any
) -> None:
    """Serve a local OpenAI-compatible simulator of the API on a loopback address.

    Rehearse a job offline: point `batchrun run --base-url http://127.0.0.1:PORT/v1` at it.
    """
    from batchrun.simulate import SimConfig, serve

    if not 0 <= port <= 65535:
        _say(f"batchrun: error: --port must be from 0 to 65535 (0 = any free port), got {port}")
        sys.exit(2)
    api_key = os.environ.get(require_key_env) if require_key_env else None
    if require_key_env and not api_key:
        click.echo(f"batchrun: error: environment variable {require_key_env} is not set", err=True)
        sys.exit(2)
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
        _say(f"batchrun: error: cannot listen on {host}:{port}: {reason}")
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
