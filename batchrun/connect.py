"""Connecting a run to its API: the key from the environment, the client for the job."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from batchrun.checks import check_api_key
from batchrun.errors import UsageError
from batchrun.job import Job
from batchrun.send import ApiClient, ChatCompletions, CompletionClient

#: Builds the run's client from (job, api_key); an async context manager.
ClientFactory = Callable[[Job, str], AbstractAsyncContextManager[CompletionClient]]


def default_client(job: Job, api_key: str) -> AbstractAsyncContextManager[CompletionClient]:
    return ApiClient(
        job.base_url,
        api_key,
        concurrency=job.limits.concurrency,
        timeout_s=job.retry.timeout_s,
        read_timeout_s=job.retry.read_timeout_s if job.params.stream else None,
        cost_header=job.read_cost_header,
        dialect=ChatCompletions(
            profile=job.profile, system_as_message=job.params.system_as_message
        ),
    )


def get_api_key(job: Job) -> str:
    key = os.environ.get(job.api_key_env, "").strip()
    if not key:
        raise UsageError(
            f"environment variable {job.api_key_env} is not set",
            hint=f"export {job.api_key_env}=<your key> (the key is never a flag), or name another with --api-key-env",
        )
    check_api_key(key, job.api_key_env)
    return key
