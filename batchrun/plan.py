"""``--dry-run``: validate the whole input, show the first requests as they would be sent,
estimate the job's tokens. Sends nothing.
"""

from __future__ import annotations

import json
import os

from batchrun.client import USER_AGENT
from batchrun.errors import InvalidInput
from batchrun.io.readers import InputBatch
from batchrun.job import Job
from batchrun.records import Request
from batchrun.scan import scan_input

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
    url = job.base_url.rstrip("/") + "/chat/completions"
    key_state = "set" if os.environ.get(job.api_key_env) else "NOT SET"
    lines = [
        f"dry run: {job.input_path} — {scan.total_rows:,} rows, all valid"
        + (f" (--limit {job.limit:,}: {total:,} would be sent)" if job.limit else ""),
        f"prompt from: {scan.mode}"
        + (f" column {scan.column!r}" if scan.column else "")
        + f"; ids from: {scan.id_column or 'row position'}",
        f"estimated tokens (whole input): {scan.estimated_prompt_tokens:,} prompt"
        f" + up to {job.params.max_tokens * (scan.total_rows - scan.invalid_rows):,} completion"
        f" (max_tokens {job.params.max_tokens} a row)",
        f"API key: ${job.api_key_env} is {key_state}",
        "",
    ]
    for r in previews:
        lines.append(f"POST {url}")
        lines.append(
            f"Authorization: Bearer ***\nUser-Agent: {USER_AGENT}\nIdempotency-Key: <per row>"
        )
        lines.append(json.dumps(r.body, ensure_ascii=False, indent=2))
        lines.append("")
    lines.append("nothing was sent")
    return "\n".join(lines)
