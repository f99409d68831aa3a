"""The engine settings (``engine``, ``ray_address``, ``shards``, ``workers``,
``output_dataset``): where a job runs, not what it sends — outside the Job and its
fingerprint, so one job file runs on either engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batchrun.errors import UsageError

if TYPE_CHECKING:
    from batchrun.job import Job

ENGINES = ("local", "ray")
#: Shards a Ray run is cut into unless told: a few per worker, so finished workers take
#: the rest rather than wait for the slowest.
DEFAULT_SHARDS = 8
DEFAULT_WORKERS = 2


@dataclass(frozen=True)
class EngineOptions:
    engine: str = "local"
    #: A running Ray cluster (``ray://host:10001``, ``auto``); None: start a local Ray.
    ray_address: str | None = None
    shards: int = DEFAULT_SHARDS
    #: Shards running at once.
    workers: int = DEFAULT_WORKERS
    #: Keep the parts as a Parquet dataset folder at the output path instead of one file.
    output_dataset: bool = False


def pop_engine_options(settings: dict[str, Any]) -> EngineOptions:
    """Take the engine keys out of flat settings and check them (exit 2 on a bad one)."""
    engine = settings.pop("engine", None) or "local"
    address = settings.pop("ray_address", None)
    shards = settings.pop("shards", None)
    workers = settings.pop("workers", None)
    dataset = settings.pop("output_dataset", None)
    if engine not in ENGINES:
        raise UsageError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    for name, value in (("shards", shards), ("workers", workers)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000
        ):
            raise UsageError(f"{name} must be an integer from 1 to 10000, got {value!r}")
    if address is not None and not isinstance(address, str):
        raise UsageError(f"ray_address must be a string, got {address!r}")
    if dataset is not None and not isinstance(dataset, bool):
        raise UsageError(f"output_dataset must be true or false, got {dataset!r}")
    if engine == "local" and (address or shards or workers or dataset):
        raise UsageError(
            "--ray-address, --shards, --workers and --output-dataset need --engine ray"
        )
    return EngineOptions(
        engine=engine,
        ray_address=address,
        shards=shards or DEFAULT_SHARDS,
        workers=workers or DEFAULT_WORKERS,
        output_dataset=bool(dataset),
    )


def check_supported(job: Job) -> None:
    """What a Ray run does not do: one line, exit 2, before anything is written."""
    why = None
    if job.mode != "live":
        why = "--mode batch (the provider's Batch API needs no cluster)"
    elif job.image_columns:
        why = "--image-column (image paths are relative to the input, not to a shard)"
    if why is not None:
        raise UsageError(f"--engine ray does not take {why}", hint="run with --engine local")
