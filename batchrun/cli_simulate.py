"""``batchrun simulate``: the local stand-in for the gateway (registered on the
``batchrun`` group); the server itself is :mod:`batchrun.simulate`."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from batchrun.cli_common import say
from batchrun.job import DEFAULT_COST_HEADER
from batchrun.simulate.toolargs import INVALID_KINDS


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
    "--invalid-rate",
    default=0.0,
    show_default=True,
    type=float,
    help="Fraction of forced tool calls answered with invalid arguments (which ones: by "
    "conversation, so a re-ask draws again).",
)
@click.option(
    "--invalid-kinds",
    default=",".join(INVALID_KINDS),
    show_default=True,
    help="Ways --invalid-rate spoils arguments, comma-separated.",
)
@click.option(
    "--seed", default=0, show_default=True, type=int, help="Seed of the simulated faults."
)
@click.option(
    "--batch-delay",
    "batch_delay_s",
    default=1.0,
    show_default=True,
    type=float,
    help="Batch API: seconds from a batch's creation to its end.",
)
@click.option(
    "--batch-errored-rate",
    default=0.0,
    show_default=True,
    type=float,
    help="Batch API: fraction of requests that end errored.",
)
@click.option(
    "--batch-expired-rate",
    default=0.0,
    show_default=True,
    type=float,
    help="Batch API: fraction of requests that end expired.",
)
@click.option(
    "--batch-poll-error-rate",
    "batch_poll_500_rate",
    default=0.0,
    show_default=True,
    type=float,
    help="Batch API: fraction of polls answered 500.",
)
@click.option(
    "--batch-shuffle/--no-batch-shuffle",
    default=True,
    show_default=True,
    help="Batch API: results in shuffled order.",
)
@click.option(
    "--batch-stray-results",
    is_flag=True,
    help="Batch API: add result lines of no request, a second result for one, and a non-JSON line.",
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
    kinds = options.pop("invalid_kinds")
    try:
        config = SimConfig(
            api_key=api_key,
            rpm_limit=rpm_limit,
            invalid_kinds=tuple(k.strip() for k in kinds.split(",") if k.strip()),
            **options,
        )
        serve(
            config,
            host=host,
            port=port,
            ready=lambda url: click.echo(f"simulator listening on {url}", err=True),
            log=lambda line: click.echo(f"simulator: {line}", err=True),
        )
    except ValueError as exc:
        click.echo(f"batchrun: error: {exc}", err=True)
        sys.exit(2)
    except (OSError, OverflowError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        say(f"batchrun: error: cannot listen on {host}:{port}: {reason}")
        sys.exit(2)
