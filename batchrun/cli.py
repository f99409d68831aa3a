"""The command line: click options → Job → one library call → exit code."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from batchrun import __version__
from batchrun.cli_batch import cancel
from batchrun.cli_cache import cache
from batchrun.cli_common import (
    DEBUG_ENV,
    Stdout,
    fail,
    resume_command,
    run_async,
    say,
    use_system_allocator,
)
from batchrun.cli_simulate import simulate
from batchrun.cli_tools import compare, report
from batchrun.cluster.options import pop_engine_options
from batchrun.errors import BatchrunError, Interrupted
from batchrun.job import (
    DEFAULT_API_KEY_ENV,
    DEFAULT_COST_HEADER,
    ERROR_TYPES,
    Job,
)
from batchrun.plan import dry_run
from batchrun.profiles import PROFILES
from batchrun.progress import ProgressView
from batchrun.runner import run_job
from batchrun.settings import job_from_settings, resolve_settings


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
    help="Input file: .jsonl/.ndjson (one JSON object a line) or .parquet; or an object, s3://bucket/key (endpoint, region and credentials from the AWS_* environment).",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    help="Output Parquet file (default: INPUT stem + .out.parquet), or s3://bucket/key (published whole, in one copy). The checkpoint and summary go beside it; for an object, the checkpoint goes to $BATCHRUN_STATE_DIR (default ~/.local/state/batchrun).",
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
@click.option(
    "--stop",
    multiple=True,
    help="Stop sequence (repeatable); sent as stop_sequences (gateway) or stop (OpenAI-compatible providers).",
)
@click.option("--stream/--no-stream", default=None, help="Stream answers (server-sent events).")
@click.option(
    "--tools",
    help='Tools as JSON: [{name, description, input_schema}] or [{"type": "function", "function": {name, description, parameters}}]; sent in the shape the provider takes.',
)
@click.option(
    "--tool-choice",
    help='auto, none, required, or JSON: {"type": "tool", "name": T}, {"type": "function", "function": {"name": T}}, {"type": "auto"} …',
)
@click.option(
    "--schema",
    help="JSON Schema of an object (a file, or inline JSON): sent as the one forced tool; "
    "each answer's arguments are validated and written as one typed column per property.",
)
@click.option(
    "--choices",
    help="Shortcut for a schema with one enum property `label`, e.g. positive,negative,neutral.",
)
@click.option(
    "--max-reasks",
    type=int,
    help="With --schema/--choices: times an invalid answer is asked again (with the "
    "violation) before the row fails as invalid_output. [default: 2]",
)
@click.option(
    "--params-column",
    help="Column with each row's own parameters: an object with any of max_tokens, "
    "temperature, top_p, top_k, frequency_penalty, stop_sequences, system, metadata.",
)
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
    help=f"Response header with the cost the server charged (USD), recorded per row; '' reads none. The gateway's credits header, a stream's meta.usage and a usage.cost are read too. [default: the provider's; gateway: {DEFAULT_COST_HEADER}, litellm: x-litellm-response-cost, openai and vllm: none]",
)
@click.option(
    "--provider",
    type=click.Choice(list(PROFILES)),
    help="What the server takes and sends (stream usage, tool shapes, stop field, system, retry and cost headers). [default: from the base URL: api.openai.com → openai, port 4000 → litellm, else gateway]",
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
@click.option(
    "--dedupe/--no-dedupe",
    default=None,
    help="Send a request repeated in the input once and write its answer to every such row "
    "(served_by names the row that paid). [default: on when --temperature is 0, else off]",
)
@click.option(
    "--cache",
    type=click.Path(file_okay=False),
    help="Response cache folder shared across runs: an identical request (same base URL and "
    "body) already answered is served from it at no cost (the `cached` column).",
)
@click.option(
    "--cache-mode",
    type=click.Choice(["read-write", "read-only", "refresh"]),
    help="read-write: use and fill the cache; read-only: use it, add nothing; refresh: send "
    "every request and replace what it holds. [default: read-write]",
)
@click.option(
    "--image-column",
    "image_columns",
    multiple=True,
    help="Column with the row's images (repeatable): a path relative to the input file, an http(s) or data: URL, bytes, or a list of these. Claude models get base64 image blocks (URLs fetched by batchrun), others image_url parts.",
)
@click.option(
    "--extra-body",
    help="JSON object merged into every request body on purpose (batchrun sends only the model's documented fields).",
)
@click.option(
    "--model-check/--no-model-check",
    default=None,
    help="Before sending, ask GET BASE_URL/models whether the model is served (exit 2 naming the closest names if not; a warning if the list cannot be had). [default: on]",
)
@click.option(
    "--mode",
    type=click.Choice(["live", "batch"]),
    help="live: a request a row; batch: the provider's Batch API (half the price, answers "
    "within hours; rerun the same command after any stop). [default: live]",
)
@click.option(
    "--batch-api",
    type=click.Choice(["gateway", "openai"]),
    help="Batch API shape: the gateway's Message Batches, or OpenAI's (JSONL files; OpenAI, "
    "vLLM, LiteLLM). [default: gateway]",
)
@click.option(
    "--batch-size",
    type=int,
    help="Requests a batch (at most 100000; a batch also stays under 256 MB). [default: 100000]",
)
@click.option(
    "--poll-interval",
    type=float,
    help="Seconds between polls of a running batch; doubled on errors up to 300. [default: 30]",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    help="local: this process; ray: K shards, each an ordinary run, on a Ray cluster, with "
    "--concurrency/--rpm/--tpm and --max-cost/--max-tokens-total held as cluster totals "
    "(needs batchrun[ray]). [default: local]",
)
@click.option(
    "--ray-address",
    help="A running Ray cluster (e.g. ray://head:10001 or auto); without it a local Ray is "
    "started and stopped. Workers read the API key from their own environment.",
)
@click.option(
    "--shards", type=int, help="Row ranges the input is cut into (--engine ray). [default: 8]"
)
@click.option("--workers", type=int, help="Shards running at once (--engine ray). [default: 2]")
@click.option(
    "--output-dataset/--no-output-dataset",
    default=None,
    help="--engine ray: keep the shards' parts as a Parquet dataset folder at OUTPUT instead "
    "of merging them into one file.",
)
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
    flags["image_columns"] = flags["image_columns"] or None
    dry = bool(flags.get("dry_run"))
    use_system_allocator()
    job: Job | None = None
    out = Stdout()
    try:
        settings = resolve_settings(job_file, flags)
        dry = bool(settings.get("dry_run"))
        quiet = bool(settings.get("quiet"))
        engine = pop_engine_options(settings)
        job = job_from_settings(settings)
        if job.dry_run:
            out.echo(dry_run(job))
            return
        view = ProgressView(quiet=quiet)
        if engine.engine == "ray":
            from batchrun.cluster.driver import run_on_ray  # Ray is imported only here

            summary = run_on_ray(job, engine, say, quiet)
        else:
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
        fail(exc, every_row=dry, resume=resume)
    except Exception:
        if os.environ.get(DEBUG_ENV):
            raise
        say(f"batchrun: unexpected error (a bug): {traceback.format_exc(limit=0).strip()}")
        say(f"batchrun: set {DEBUG_ENV}=1 to see the traceback")
        sys.exit(1)
    view.close()
    for line in summary.lines():
        out.echo(line)
    assert job is not None
    out.echo(f"  summary: {job.summary_path}")
    sys.exit(summary.exit_code)


main.add_command(cancel)
main.add_command(report)
main.add_command(compare)
main.add_command(simulate)
main.add_command(cache)


if __name__ == "__main__":  # pragma: no cover
    main()
