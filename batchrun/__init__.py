"""batchrun: run large batches of prompts through chat-completion APIs, crash-safe, to Parquet."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Set before anything imports a submodule: the client reads it for its User-Agent.
__version__ = "0.1.0"

# The errors are cheap (they import nothing of the package) and every stage needs them.
from batchrun.errors import (
    BatchrunError,
    CheckpointError,
    InputError,
    Interrupted,
    RunStopped,
    UsageError,
)

# The rest is loaded on first use: `import batchrun.send` runs this file, and a worker that
# only sends must not pay for the runner, the journal and the CLI's dependencies.
_LAZY = {
    "Job": "batchrun.job",
    "RequestParams": "batchrun.job",
    "Limits": "batchrun.pacing",
    "RetryPolicy": "batchrun.pacing",
    "Summary": "batchrun.summary",
    "run_job": "batchrun.runner",
}

if TYPE_CHECKING:  # mypy sees the names as if imported eagerly
    from batchrun.job import Job, RequestParams
    from batchrun.pacing import Limits, RetryPolicy
    from batchrun.runner import run_job
    from batchrun.summary import Summary


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        # Also the path `from batchrun import fastjson` takes before importing the submodule.
        raise AttributeError(f"module 'batchrun' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, no more __getattr__ calls for it
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
