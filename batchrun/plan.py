"""``--dry-run``: validate the whole input, show the first requests as they would be sent,
estimate the job's tokens. Sends nothing.
"""

from __future__ import annotations

import json
import os

from batchrun.cache import ResponseCache, cache_key
from batchrun.checks import check_api_key
from batchrun.dedupe import DigestCollector, find_followers, request_body
from batchrun.errors import InvalidInput, UsageError
from batchrun.finalize import final_schema
from batchrun.io.readers import InputBatch
from batchrun.job import Job
from batchrun.modelcheck import retired_warning
from batchrun.pricing import PriceTable
from batchrun.records import Request
from batchrun.scan import Scan, scan_input
from batchrun.send import USER_AGENT, ChatCompletions
from batchrun.send import batch_openai as openai
from batchrun.send.batch import MAX_REQUESTS, GatewayBatches, custom_id_for
from batchrun.send.batch_openai import OpenAIBatches

PREVIEW_REQUESTS = 3


def dry_run(job: Job) -> str:
    """The dry-run report; raises InvalidInput (exit 2) listing every invalid row found."""
    previews: list[Request] = []

    def keep(request: Request, batch: InputBatch, offset: int) -> None:
        if len(previews) < PREVIEW_REQUESTS:
            previews.append(request)

    savings = _Savings(job)

    def see(request: Request, batch: InputBatch, offset: int) -> None:
        keep(request, batch, offset)
        savings.add(request)

    scan = scan_input(job, on_request=see)
    savings.close()
    if scan.errors:
        raise InvalidInput(scan.errors, scan.invalid_rows)
    total = min(scan.total_rows, job.limit) if job.limit else scan.total_rows
    # Each row's own max_tokens (--params-column) is in its estimate.
    completion_max = scan.estimated_tokens - scan.estimated_prompt_tokens
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
        f" + up to {completion_max:,} completion"
        f" (max_tokens {job.params.max_tokens} a row)",
        _cost_line(job, scan.estimated_prompt_tokens, completion_max),
        # batchrun's own knowledge: the dry run asks no API, and need not for this.
        *filter(None, [retired_warning(job.params.model, "pass --model with a current one")]),
        *savings.lines(total),
        f"API key: ${job.api_key_env} is {key_state}",
        f"provider: {profile.name}"
        + (" (--provider)" if job.provider else " (from the base URL; --provider names another)")
        + f" — {profile.about}",
        *_typed_line(job, scan),
        "",
    ]
    if job.mode == "batch":
        lines += _batch_preview(job, previews, scan.total_rows)
        previews = []
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


def _typed_line(job: Job, scan: Scan) -> list[str]:
    """The typed columns a --schema job's output will have, as they will be named."""
    columns, schema = final_schema(job, scan)
    if not columns:
        return []
    typed = [f"{f.name} ({f.type})" for f in list(schema)[-len(columns) :]]
    return [
        f"structured output: {', '.join(typed)}; invalid answers asked again up to "
        f"{job.max_reasks} time(s)"
    ]


def _batch_preview(job: Job, previews: list[Request], rows: int) -> list[str]:
    """The first request lines of the first batch, as the create would send them."""
    base = job.base_url.rstrip("/")
    if job.batch.api == "openai":
        dialect: GatewayBatches | OpenAIBatches = OpenAIBatches(
            system_as_message=job.params.system_as_message, profile=job.profile
        )
        size, head, tail = min(job.batch.size, openai.MAX_REQUESTS), "batch.jsonl:", []
        post = f"POST {base}/files (purpose=batch), then POST {base}/batches"
        limit = "200 MB"
    else:
        dialect, size, head, tail = (
            GatewayBatches(),
            min(job.batch.size, MAX_REQUESTS),
            '{"requests": [',
            ["]}"],
        )
        post, limit = f"POST {base}{GatewayBatches.path}", "256 MB"
    out = [
        f"{post}  ({-(-rows // size):,} batches of up to {size:,} requests and {limit}; "
        f"polled every {job.batch.poll_interval_s:g} s)",
        "Authorization: Bearer ***",
        f"User-Agent: {USER_AGENT}",
        "Idempotency-Key: <per batch>",
        head,
    ]
    for r in previews:
        line = json.loads(dialect.line(custom_id_for(r.position), r))
        out.append("  " + json.dumps(line, ensure_ascii=False) + ("," if tail else ""))
    out += ["  ...", *tail, ""]
    return out


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
    batch = price.batch()
    b_low, b_high = batch.cost(prompt_tokens, 0), batch.cost(prompt_tokens, max_completion_tokens)
    chosen = " (this job)"
    return (
        f"estimated cost: live{chosen if job.mode == 'live' else ''} ${low:,.4f} for the "
        f"prompts, at most ${high:,.4f} if every answer uses max_tokens (list prices: "
        f"${price.input_per_mtok:g} in / ${price.output_per_mtok:g} out per million tokens)"
        f"\n                batch{chosen if job.mode == 'batch' else ''} ${b_low:,.4f} for the "
        f"prompts, at most ${b_high:,.4f} (Batch API: ${batch.input_per_mtok:g} in / "
        f"${batch.output_per_mtok:g} out; answers within 24 hours)"
    )


class _Savings:
    """What dedupe and the cache would serve in a run of this job, and what that saves.
    The cache is only read, and only if it exists."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.prices = PriceTable.load(job.prices_path) if job.prices_path else PriceTable.default()
        self.digests = DigestCollector(job) if job.dedupe_enabled else None
        if self.digests is not None:
            self.digests.keep_estimates = True
        self.cache: ResponseCache | None = None
        if job.cache_dir is not None and job.cache_mode != "refresh":
            cache = ResponseCache(job.cache_dir, job.cache_mode)
            if cache.open(create=False):
                self.cache = cache
        self.cache_missing = job.cache_dir is not None and self.cache is None
        self.dialect = ChatCompletions(system_as_message=job.params.system_as_message)
        #: Rows whose answer the cache holds → (model, prompt tokens, completion tokens).
        self.hits: dict[int, tuple[str | None, int, int]] = {}

    def add(self, request: Request) -> None:
        if self.digests is not None:
            self.digests.add(request)
        if self.cache is not None:
            usage = self.cache.usage(
                cache_key(self.job.base_url, request_body(self.dialect, request))
            )
            if usage is not None:
                self.hits[request.position] = usage

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    def lines(self, total: int) -> list[str]:
        job, out = self.job, []
        followers: set[int] = set()
        if self.digests is not None:
            found, _ = find_followers(self.digests.digests, self.digests.rows)
            followers = {f for f in found if f < total}
            price = self.prices.get(job.params.model)
            prompts = sum(self.digests.prompt_tokens[f] for f in followers)
            cost = (
                ""
                if price is None
                else f": saves ${price.cost(prompts, 0):,.4f} for the prompts, up to "
                f"${price.cost(prompts, job.params.max_tokens * len(followers)):,.4f} with the answers"
            )
            out.append(
                f"dedupe: on; {len(followers):,} rows repeat an earlier row's request and would "
                f"be served by it{cost}"
            )
        elif job.mode == "batch":
            # Job refuses --dedupe and --cache in batch mode: naming the flag would mislead.
            out.append(
                "dedupe and the cache: not used in --mode batch (a batch sends every row it holds)"
            )
        else:
            out.append("dedupe: off (on by default at temperature 0; --dedupe forces it)")
        if job.cache_dir is not None:
            hits = {p: u for p, u in self.hits.items() if p < total and p not in followers}
            saved = 0.0
            for model, prompt, completion in hits.values():
                saved += self.prices.cost(model or job.params.model, prompt, completion) or 0.0
            if job.cache_mode == "refresh":
                out.append(f"cache {job.cache_dir}: refresh mode: every request is sent")
            elif self.cache_missing:
                out.append(f"cache {job.cache_dir}: empty (made by the first run)")
            else:
                out.append(
                    f"cache {job.cache_dir}: would serve {len(hits):,} rows "
                    f"(${saved:,.4f} at list prices)"
                )
        return out
