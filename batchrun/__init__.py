"""batchrun: run large batches of prompts through chat-completion APIs, crash-safe, to Parquet."""

from __future__ import annotations

# Set before the imports below: the client reads it for its User-Agent.
__version__ = "0.1.0"

from batchrun.errors import (
    BatchrunError,
    CheckpointError,
    InputError,
    Interrupted,
    RunStopped,
    UsageError,
)
from batchrun.job import Job, Limits, RequestParams, RetryPolicy
from batchrun.runner import run_job
from batchrun.summary import Summary

__all__ = [
    "BatchrunError",
    "CheckpointError",
    "InputError",
    "Interrupted",
    "Job",
    "Limits",
    "RequestParams",
    "RetryPolicy",
    "RunStopped",
    "Summary",
    "UsageError",
    "__version__",
    "run_job",
]
