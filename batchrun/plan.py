"""``--dry-run``: validate the whole input, show the first requests as they would be sent,
estimate the job's tokens. Sends nothing.
"""

from __future__ import annotations

import json
import os

from batchrun.checks import check_api_key
from batchrun.errors import InvalidInput, UsageError
from batchrun.io.readers import InputBatch
from batchrun.job import Job
from batchrun.pricing import PriceTable
from batchrun.records import Request
from batchrun.scan import scan_input
from batchrun.send import USER_AGENT, ChatCompletions

PREVIEW_REQUESTS = 3


def dry_run(job: Job) -> str:
    """The dry-run report; raises InvalidInput (exit 2) listing every invalid row found."""
    previews: list[Request] = []

    def keep(request: Request, batch: InputBatch, offset: int) -> None:
        if len(previews) < PREVIEW_REQUESTS:
            previews.append(request)

    scan = scan_input(job, on_request=keep)
    if scan.errors:
        raise InvalidInput(scan.errors, scan.invalid_rows)
    total = min(scan.total_rows, job.limit) if job.limit else scan.total_rows
    valid = scan.total_rows - scan.invalid_rows
    profile = job.profile
    dialect = ChatCompletions(profile=profile, system_as_message=job.params.system_as_message)
    url = job.base_url.rstrip("/") + dialect.path
    key_state = _key_state(job.api_key_env)
    lines = [
        f"dry run: {job.input_path} — {scan.total_rows:,} rows, all valid"
        + (f" (--limit {job.limit:,}: {total:,} would be sent)" if job.limit else ""),
        f"prompt from: {scan.mode}"
        + (f" column {scan.column!r}" if scan.column else "")
        + f"; ids from: {scan.id_column or 'row position'}",
        f"estimated tokens (whole input): {scan.estimated_prompt_tokens:,} prompt"
        f" + up to {job.params.max_tokens * valid:,} completion"
        f" (max_tokens {job.params.max_tokens} a row)",
        _cost_line(job, scan.estimated_prompt_tokens, job.params.max_tokens * valid),
        f"API key: ${job.api_key_env} is {key_state}",
        f"provider: {profile.name}"
        + (" (--provider)" if job.provider else " (from the base URL; --provider names another)")
        + f" — {profile.about}",
        "",
    ]
    for r in previews:
        lines.append(f"POST {url}")
        lines.append(
            f"Authorization: Bearer ***\nUser-Agent: {USER_AGENT}\nIdempotency-Key: <per row>"
            f"\nX-Client-Request-Id: {r.client_request_id}"
        )
        lines.append(json.dumps(dialect.encode(r), ensure_ascii=False, indent=2))
        if r.images:
            # The bytes are read when the row is sent: the preview names them.
            shown = ", ".join(i.label for i in r.images)
            lines.append(f"+ {len(r.images)} image(s) first in the last user message: {shown}")
        lines.append("")
    lines.append("nothing was sent")
    return "\n".join(lines)


def _key_state(env_name: str) -> str:
    """Whether the key is there and usable as a header; never a character of it."""
    key = os.environ.get(env_name, "")
    if not key.strip():
        return "NOT SET"
    try:
        check_api_key(key, env_name)
    except UsageError as exc:
        return f"set, but unusable: {exc.message}"
    return "set"


def _cost_line(job: Job, prompt_tokens: int, max_completion_tokens: int) -> str:
    prices = PriceTable.load(job.prices_path) if job.prices_path else PriceTable.default()
    price = prices.get(job.params.model)
    if price is None:
        return f"estimated cost: unknown (no price for {job.params.model!r}; add one with --prices)"
    low = price.cost(prompt_tokens, 0)
    high = price.cost(prompt_tokens, max_completion_tokens)
    return (
        f"estimated cost: ${low:,.4f} for the prompts, at most ${high:,.4f} if every answer "
        f"uses max_tokens (list prices: ${price.input_per_mtok:g} in / "
        f"${price.output_per_mtok:g} out per million tokens)"
    )
