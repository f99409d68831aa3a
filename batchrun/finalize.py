"""Finalize: one Parquet file in input order, built from the journal and the input (read
again batch by batch, so memory stays flat), graded when the job grades."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyarrow as pa

from batchrun.checkpoint import Checkpoint
from batchrun.grading import grade
from batchrun.io.readers import InputBatch, iter_batches, rows_to_arrow
from batchrun.io.writers import output_batch, output_schema, result_index, write_atomically
from batchrun.job import Job
from batchrun.scan import Scan
from batchrun.typed import Column, column_names, typed_arrays, typed_columns

_COMPLETION = result_index("completion")
_ARGUMENTS = result_index("arguments")


def write_output(
    job: Job,
    ckpt: Checkpoint,
    scan: Scan,
    total: int,
    *,
    partial: bool,
    before_replace: Callable[[], None] | None = None,
) -> int:
    """Write OUTPUT: every row below ``total`` (when ``partial``, only those recorded).

    ``before_replace`` runs before the new file takes OUTPUT's place (see
    :func:`write_atomically`). Returns the number of rows written.
    """
    columns, schema = final_schema(job, scan)

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in iter_batches(job.input_path):
            if batch.start >= total:
                break
            yield _output_batch(job, ckpt, batch, scan, schema, columns, total, partial)

    return write_atomically(job.output_path, schema, batches(), before_replace)


def final_schema(job: Job, scan: Scan) -> tuple[list[Column], pa.Schema]:
    """The output's schema, and the typed columns of a --schema job (derived from the JSON
    Schema alone, so it is the same whichever rows failed), named clear of the others."""
    graded, identity = job.grading is not None, job.identity()
    base = output_schema(scan.schema, scan.id_column, graded=graded, job=identity)
    if job.params.schema is None:
        return [], base
    columns = typed_columns(job.params.schema)
    names = column_names(columns, set(base.names))
    typed = [pa.field(n, c.kind.arrow) for n, c in zip(names, columns, strict=True)]
    return columns, output_schema(
        scan.schema, scan.id_column, graded=graded, job=identity, typed=typed
    )


def _output_batch(
    job: Job,
    ckpt: Checkpoint,
    batch: InputBatch,
    scan: Scan,
    schema: pa.Schema,
    columns: list[Column],
    total: int,
    partial: bool,
) -> pa.RecordBatch:
    stop = min(batch.start + len(batch.rows), total)
    results = ckpt.results_between(batch.start, stop)
    inputs = batch.arrow if batch.arrow is not None else rows_to_arrow(batch.rows, scan.schema)
    n = stop - batch.start
    if len(results) == n:
        inputs = inputs.slice(0, n)
    elif partial:
        inputs = inputs.take(pa.array([r[0] - batch.start for r in results], type=pa.int64()))
    else:
        raise RuntimeError(f"rows {batch.start}..{stop - 1} are not all recorded")
    if scan.id_column is not None:
        ids = inputs.column(scan.id_column)
    else:
        ids = pa.array([r[0] for r in results], type=pa.int64())
    correct = None
    if job.grading is not None:
        completions = pa.array([r[_COMPLETION] for r in results], type=pa.string())
        correct = grade(completions, inputs.column(job.grading.expected_column), job.grading.match)
    typed = typed_arrays(columns, [r[_ARGUMENTS] for r in results]) if columns else []
    return output_batch(schema, inputs, ids, results, scan.id_column, correct, typed)
