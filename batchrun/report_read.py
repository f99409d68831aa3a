"""What a report reads: the columns it needs of an output (and only those: the text columns
of a labeled dataset can be huge), the job recorded in the output's metadata, and the run
figures of the summary beside it.

Outputs of schema versions 1, 2 and 3 are read by column name; a column an older version
lacks reads as all null, never as a crash.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from batchrun.errors import UsageError
from batchrun.io.files import regular_file
from batchrun.io.writers import JOB_KEY, carried_name
from batchrun.summary import load_summary

VERSION_KEY = b"batchrun.schema_version"
_COLUMNS = {
    "status": pa.string(),
    "finish_reason_normalized": pa.string(),
    "error_type": pa.string(),
    "error": pa.string(),
    "prompt_tokens": pa.int64(),
    "completion_tokens": pa.int64(),
    "total_tokens": pa.int64(),
    "model": pa.string(),
    "attempts": pa.int32(),
    "latency_ms": pa.float64(),
    "finished_at": pa.timestamp("ms", tz="UTC"),
    "reported_cost_usd": pa.float64(),
    "credits_used": pa.int64(),
    "served_by": pa.int64(),
    "cached": pa.bool_(),
}
#: Figures of the run that only its summary holds, read from ``OUTPUT.summary.json``.
_RUN_FIGURES = (
    "wall_time_s",
    "rows_per_s",
    "requests_sent",
    "retries",
    "rate_limited",
    "rows_possibly_charged_twice",
    "rows_resumed",
)


@dataclass(frozen=True)
class RunFacts:
    """What the summary beside the output says of the last run that wrote it (the output
    alone does not know its wall time, 429s or rows possibly charged twice)."""

    summary_path: str
    state: str | None
    stop_reason: str | None
    figures: dict[str, float]  # _RUN_FIGURES present in the summary, as numbers


def recorded_group_by(path: Path) -> str | None:
    """The group column the job that wrote ``path`` graded by (its ``batchrun.job``
    metadata), as named in the output; None when it recorded none, or on any doubt."""
    try:
        regular_file(path, "output file")  # pyarrow would block on a FIFO
        schema = pq.read_schema(path)
        job = json.loads((schema.metadata or {}).get(JOB_KEY, b"null"))
    except (OSError, ValueError, pa.ArrowException, UsageError):
        return None
    grading = job.get("grading") if isinstance(job, dict) else None
    name = grading.get("group_by") if isinstance(grading, dict) else None
    if not isinstance(name, str):
        return None
    id_column = job.get("id_column")
    carried = carried_name(name, id_column if isinstance(id_column, str) else None) or "id"
    return carried if carried in schema.names else None


def read_columns(path: Path, group_by: str | None) -> tuple[pa.Table, str]:
    try:
        regular_file(path, "output file")  # pyarrow would block on a FIFO
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as e:
        raise UsageError(f"{path}: not a Parquet file ({e})") from e
    version = (schema.metadata or {}).get(VERSION_KEY)
    if "status" not in schema.names or version is None:
        raise UsageError(
            f"{path}: not a batchrun output (no `status` column or no batchrun.schema_version)",
            hint="give the OUTPUT file that `batchrun run` wrote",
        )
    if group_by is not None and group_by not in schema.names:
        raise UsageError(
            f"{path}: no column {group_by!r} to group by",
            hint=f"columns are: {', '.join(schema.names)}",
        )
    # Only the columns the report needs: the text columns of a labeled dataset can be huge.
    wanted = dict.fromkeys([*_COLUMNS, "correct", *([group_by] if group_by else [])])
    try:
        table = pq.read_table(path, columns=[c for c in wanted if c in schema.names])
    except (OSError, pa.ArrowException) as e:  # a damaged page past an intact footer
        raise UsageError(f"{path}: not a readable Parquet file ({e})") from e
    # A column absent from the file (reported_cost_usd before schema 2) reads as all null,
    # not as a crash.
    for name, type_ in _COLUMNS.items():
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, type_))
    return table, version.decode()


def non_null(path: Path, column: str) -> int:
    """Non-null values of a column, read batch by batch (reasoning texts can be long); 0 if
    the file has no such column (older schema versions)."""
    f = pq.ParquetFile(path)
    if column not in f.schema_arrow.names:
        return 0
    return sum(
        len(b) - b.column(0).null_count for b in f.iter_batches(columns=[column], batch_size=65536)
    )


def run_facts(path: Path, rows: int, notes: list[str]) -> RunFacts | None:
    """The run figures of the summary beside the output, when it is this output's summary
    (its row count agrees); numbers only, whatever a hand-edited file holds."""
    where = Path(path).with_suffix(".summary.json")
    data = load_summary(where)
    if not isinstance(data, dict):
        return None
    if data.get("rows_total") != rows:
        notes.append(f"{where} is the summary of another run ({data.get('rows_total')!r} rows)")
        return None
    figures = {
        k: float(v)
        for k in _RUN_FIGURES
        if isinstance(v := data.get(k), int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
    }

    def text(key: str) -> str | None:
        value = data.get(key)
        return value if isinstance(value, str) else None

    return RunFacts(str(where), text("state"), text("stop_reason"), figures)
