"""The output: one Parquet file, input order, fixed versioned schema, written crash-safely.

The file is built from the checkpoint journal and the input (read again, batch by batch),
into a temporary file that is fsynced and renamed into place: a reader never sees a
half-written output.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from batchrun import __version__
from batchrun.records import OUTPUT_INDEXES, RESULT_COLUMNS, RESULT_FIELDS

#: 2 added reported_cost_usd, 3 reasoning_content, 4 client_request_id, inference_id and
#: credits_used, 5 served_by and cached, 6 the typed columns of a --schema job after the
#: result columns (readers take older files by column name).
SCHEMA_VERSION = "6"

RESULT_NAMES = frozenset(f.name for f in RESULT_FIELDS) | {"id"}
#: Prefix for input columns whose names are taken by result columns.
INPUT_PREFIX = "input_"


def carried_name(name: str, id_column: str | None) -> str | None:
    """The output name of an input column (None: it is the id column, shown as ``id``);
    :func:`carried_names` makes the names of a whole schema distinct."""
    if name == "id" and id_column == "id":
        return None
    return INPUT_PREFIX + name if name in RESULT_NAMES else name


#: Added after the result columns when the job grades completions.
CORRECT_FIELD = pa.field("correct", pa.bool_())


def carried_names(
    names: list[str], id_column: str | None, graded: bool = False
) -> list[str | None]:
    """Output names of the input columns ``names``, all distinct from each other and from the
    result columns: a column whose name a result column takes is prefixed with ``input_``
    until the name is free (``status`` beside an input ``input_status`` becomes
    ``input_input_status``); the others keep theirs. None for the id column."""
    reserved = RESULT_NAMES | ({CORRECT_FIELD.name} if graded else set())
    kept = [carried_name(n, id_column) == n and n not in reserved for n in names]
    taken = set(reserved) | {n for n, k in zip(names, kept, strict=True) if k}
    out: list[str | None] = []
    for name, keep in zip(names, kept, strict=True):
        if keep:
            out.append(name)
        elif carried_name(name, id_column) is None:
            out.append(None)
        else:
            candidate = INPUT_PREFIX + name
            while candidate in taken:
                candidate = INPUT_PREFIX + candidate
            taken.add(candidate)
            out.append(candidate)
    return out


#: Key-value metadata key of the job that wrote an output (JSON), read by ``batchrun compare``.
JOB_KEY = b"batchrun.job"


def output_schema(
    input_schema: pa.Schema,
    id_column: str | None,
    graded: bool = False,
    job: dict[str, Any] | None = None,
    typed: Sequence[pa.Field] = (),
) -> pa.Schema:
    """id, the input columns (renamed on collision), the result columns, ``correct`` when
    graded, then the ``typed`` columns of a structured output; versioned, with ``job``
    (JSON) under :data:`JOB_KEY` when given."""
    id_type = input_schema.field(id_column).type if id_column else pa.int64()
    fields = [pa.field("id", id_type, nullable=False)]
    names = carried_names(input_schema.names, id_column, graded)
    for f, name in zip(input_schema, names, strict=True):
        if name is not None:
            fields.append(pa.field(name, f.type))
    fields.extend(RESULT_FIELDS)
    if graded:
        fields.append(CORRECT_FIELD)
    fields.extend(typed)
    metadata = {
        b"batchrun.schema_version": SCHEMA_VERSION.encode(),
        b"batchrun.version": __version__.encode(),
    }
    if job is not None:
        metadata[JOB_KEY] = json.dumps(job, sort_keys=True).encode()
    return pa.schema(fields, metadata=metadata)


def result_arrays(rows: list[tuple[Any, ...]]) -> list[pa.Array]:
    """Arrow arrays of the result columns from journal tuples (position first)."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * (len(RESULT_COLUMNS) + 1)
    arrays = []
    for f, index in zip(RESULT_FIELDS, OUTPUT_INDEXES, strict=True):
        values = columns[index]
        if pa.types.is_timestamp(f.type):
            # The journal keeps Unix seconds (float); the output, milliseconds.
            arrays.append(
                pa.array(
                    [None if v is None else int(v * 1000) for v in values], type=pa.int64()
                ).cast(f.type)
            )
        elif pa.types.is_boolean(f.type):
            # SQLite keeps booleans as 0/1 (null in rows recorded before the column existed).
            arrays.append(pa.array([None if v is None else bool(v) for v in values], type=f.type))
        else:
            arrays.append(pa.array(values, type=f.type))
    return arrays


def output_batch(
    schema: pa.Schema,
    inputs: pa.RecordBatch,
    ids: pa.Array,
    results: list[tuple[Any, ...]],
    id_column: str | None,
    correct: pa.Array | None = None,
    typed: Sequence[pa.Array] = (),
) -> pa.RecordBatch:
    """One output batch: ids, the input columns, the results (all the same length, in order),
    the grades when the job grades and the typed columns of a structured output."""
    arrays: list[pa.Array] = [ids]
    for f in inputs.schema:
        if carried_name(f.name, id_column) is not None:
            arrays.append(inputs.column(f.name))
    arrays.extend(result_arrays(results))
    if correct is not None:
        arrays.append(correct)
    arrays.extend(typed)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove_stale_temps(path: Path) -> None:
    """Remove temp files of ``path`` left by processes that died mid-write (``kill -9``
    during the final write); a live process's temp file is left alone."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = stale.name[len(path.name) + 2 : -len(".tmp")]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            stale.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_atomically(
    path: Path,
    schema: pa.Schema,
    batches: Iterable[pa.RecordBatch],
    before_replace: Callable[[], None] | None = None,
) -> int:
    """Write batches to ``path`` via temp file + fsync + rename + fsync of the folder.

    ``before_replace`` runs once the file is complete, before it takes ``path``'s place: it
    may raise to keep the old file. Returns the number of rows written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = _temp_for(path)
    rows = 0
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for batch in batches:
                if batch.num_rows:
                    writer.write_batch(batch)
                    rows += batch.num_rows
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return rows


def write_text_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = _temp_for(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:  # a full disk must not leave the temp file behind
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)


def result_index(name: str) -> int:
    """Index of a result column in a journal result tuple (position first)."""
    return RESULT_COLUMNS.index(name) + 1
