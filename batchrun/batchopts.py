"""Batch mode's settings (``--mode batch``): how the job is chunked and waited for, and
which job-level settings the Batch API's request shape cannot carry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from batchrun.checks import check, is_int, is_number

if TYPE_CHECKING:
    from batchrun.job import Budget, RequestParams

#: How a job is sent: request by request, or through the provider's Batch API.
MODES = ("live", "batch")
#: Batch API shapes: the gateway's (Anthropic Message Batches), and OpenAI's (JSONL files).
BATCH_APIS = ("gateway", "openai")
#: The most requests one batch may hold (the gateway's limit).
MAX_BATCH_SIZE = 100_000


@dataclass(frozen=True, kw_only=True)
class BatchOptions:
    """How ``--mode batch`` chunks the job and waits for it."""

    api: str = "gateway"
    #: Requests a batch (also bounded by the API's 256 MB a batch).
    size: int = MAX_BATCH_SIZE
    #: Seconds between polls of a running batch; doubled on poll errors up to 5 minutes.
    poll_interval_s: float = 30.0

    def __post_init__(self) -> None:
        check(
            self.api in BATCH_APIS,
            f"batch_api must be one of {', '.join(BATCH_APIS)}, got {self.api!r}",
        )
        check(
            is_int(self.size) and 1 <= self.size <= MAX_BATCH_SIZE,
            f"batch_size must be an integer from 1 to {MAX_BATCH_SIZE}, got {self.size!r}",
        )
        check(
            is_number(self.poll_interval_s) and 0 < self.poll_interval_s <= 3600,
            f"poll_interval must be a number of seconds from 0 to 3600, got {self.poll_interval_s!r}",
        )


def check_batchable(p: RequestParams, budget: Budget, api: str) -> None:
    """Job-level settings a batch request cannot carry (rows are checked by the scan)."""
    check(not p.stream, "--mode batch cannot stream answers (--stream)")
    check(
        budget.max_cost_usd is None and budget.max_tokens_total is None,
        "--max-cost and --max-tokens-total are not enforced in --mode batch yet (a batch is "
        "paid for as a whole); see the dry run's batch estimate instead",
    )
    if api != "gateway":
        return  # the OpenAI shape's bodies are the live endpoint's
    for name, bad in (
        ("frequency_penalty", p.frequency_penalty is not None),
        ("system_as_message", p.system_as_message),
    ):
        check(
            not bad,
            f"--mode batch cannot send {name}: the Batch API takes Anthropic Messages "
            "parameters (model, messages, system, max_tokens, stop_sequences, temperature, "
            "top_k, top_p, tools, tool_choice, metadata)",
        )
    # Imported here: the wire shape's module sits below the settings.
    from batchrun.send.batch import PARAMS

    extra = sorted(set(p.extra_body or ()) - set(PARAMS))
    check(
        not extra,
        f"--mode batch cannot send extra_body field {extra[0]!r}" if extra else "",
    )
