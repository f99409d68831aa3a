"""The validation pass: read the whole input once, before anything is sent.

It checks every row can become a request, that ids are unique, counts the rows and learns
the Arrow schema of the input columns (for JSONL, unified over all batches).
"""

from __future__ import annotations

import base64
import hashlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from batchrun.builder import RequestBuilder
from batchrun.errors import InputError, InvalidInput, UsageError
from batchrun.grading import pattern_error
from batchrun.io.readers import (
    InputBatch,
    Where,
    infer_column_types,
    input_format,
    iter_batches,
    jsonl_schema,
    merge_column_types,
    parquet_schema,
)
from batchrun.job import Job
from batchrun.records import Request
from batchrun.send.batch import batch_problem

#: Invalid rows kept with their messages (all are counted).
MAX_REPORTED_ERRORS = 1000


@dataclass
class Scan:
    """What the validation pass learned of the input."""

    total_rows: int
    schema: pa.Schema
    id_column: str | None
    mode: str
    column: str | None
    errors: list[InputError] = field(default_factory=list)
    invalid_rows: int = 0
    #: Sum of estimated tokens (prompt estimate + max_tokens) over the valid rows.
    estimated_tokens: int = 0
    #: Sum of the prompt-only part of the estimate.
    estimated_prompt_tokens: int = 0

    def to_meta(self) -> dict[str, Any]:
        return {
            "total_rows": self.total_rows,
            "schema": base64.b64encode(self.schema.serialize().to_pybytes()).decode(),
            "id_column": self.id_column,
            "mode": self.mode,
            "column": self.column,
            # Prices the rows a resume finds recorded without usage (budget.py).
            "estimated_prompt_tokens": self.estimated_prompt_tokens,
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Scan:
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(meta["schema"])))
        scan = cls(meta["total_rows"], schema, meta["id_column"], meta["mode"], meta["column"])
        scan.estimated_prompt_tokens = meta.get("estimated_prompt_tokens", 0)
        return scan


def _id_key(value: Any) -> int:
    """64-bit key of an id for the uniqueness check (ints as they are, others hashed)."""
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return value
    digest = hashlib.blake2b(repr(value).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def scan_input(
    job: Job,
    *,
    on_request: Callable[[Request, InputBatch, int], None] | None = None,
) -> Scan:
    """Validate every row of the input; ``on_request`` sees each valid request (dry run)."""
    path = job.input_path
    file = str(path)
    fmt = input_format(path)
    builder = RequestBuilder(job, file)
    errors: list[InputError] = []
    invalid = 0
    total = 0
    est = 0
    est_prompt = 0
    types: dict[str, pa.DataType | None] = {}
    # 8 bytes an id, in one compact buffer: the uniqueness check is the scan's only memory
    # that grows with the input.
    id_keys = array("q")
    resolved = False
    if fmt == "parquet":
        builder.resolve(parquet_schema(path).names)
        resolved = True
    # One id type a column: 5 and "5" would pass the uniqueness check and both come out '5'.
    first_id: tuple[type, Where] | None = None
    regex_column = (
        job.grading.expected_column
        if job.grading is not None and job.grading.match == "regex"
        else None
    )

    def add(error: InputError) -> None:
        nonlocal invalid
        invalid += 1
        if len(errors) < MAX_REPORTED_ERRORS:
            errors.append(error)

    for batch in iter_batches(path):
        for e in batch.errors:
            add(e)
        if fmt == "jsonl":
            merge_column_types(types, infer_column_types(batch.rows))
        for offset, row in enumerate(batch.rows):
            if row is None:
                continue
            if not resolved:
                try:
                    builder.resolve(list(row))
                except UsageError:
                    if errors:  # the rows before it explain more than the columns do
                        raise InvalidInput(errors, invalid) from None
                    raise
                resolved = True
            where = batch.where(offset)
            position = batch.start + offset
            try:
                rid = builder.row_id(row, position, where)
                request = builder.build(row, position, where)
            except InputError as e:
                add(e)
                continue
            if (
                job.mode == "batch"
                and (problem := batch_problem(request, job.batch.api)) is not None
            ):
                # Images are the one thing no shape carries: name the column that holds them.
                column = builder.column
                if request.images:
                    column = next((c for c in job.image_columns if row.get(c) is not None), column)
                add(InputError(problem, file=file, column=column, **where))
                continue
            if builder.id_column is not None:
                if first_id is None:
                    first_id = (type(rid), where)
                elif type(rid) is not first_id[0]:
                    add(_mixed_ids(file, builder.id_column, rid, first_id, where))
                    continue
                id_keys.append(_id_key(rid))
            if regex_column is not None:
                error = regex_error(row, file, regex_column, where)
                if error is not None:
                    add(error)
                    continue
            est += request.estimated_tokens
            est_prompt += request.prompt_tokens
            if on_request is not None:
                on_request(request, batch, offset)
        total += len(batch.rows)
    if not resolved and errors:
        raise InvalidInput(errors, invalid)
    if total == 0:  # the same rule for JSONL and Parquet: nothing to do is a mistake
        raise UsageError(
            f"{file}: input has no rows", hint="check that --input names the right file"
        )
    if builder.id_column is not None and id_keys:
        _check_unique_ids(job, builder, id_keys, add)
    schema = parquet_schema(path) if fmt == "parquet" else jsonl_schema(types)
    if job.params_column is not None and job.params_column not in schema.names:
        raise UsageError(
            f"{file}: params column {job.params_column!r} not found; columns are: {', '.join(schema.names)}"
        )
    assert builder.mode is not None
    return Scan(
        total,
        schema,
        builder.id_column,
        builder.mode,
        builder.column,
        errors,
        invalid,
        est,
        est_prompt,
    )


def _mixed_ids(
    file: str, column: str, rid: Any, first: tuple[type, Where], where: Where
) -> InputError:
    def kind(t: type) -> str:
        return "an integer" if t is int else "a string"

    at = ", ".join(f"{k} {v}" for k, v in first[1].items())
    return InputError(
        f"id {rid!r} is {kind(type(rid))}, but the first id ({at}) is {kind(first[0])}",
        file=file,
        column=column,
        **where,
        hint="an id column holds only strings or only integers",
    )


def regex_error(row: dict[str, Any], file: str, column: str, where: Where) -> InputError | None:
    """The error of a row whose expected value (graded with --match regex) is no pattern."""
    problem = pattern_error(row.get(column))
    if problem is None:
        return None
    return InputError(
        f"expected value is not a valid regular expression ({problem})",
        file=file,
        column=column,
        hint="escape it (a literal match is --match exact or contains)",
        **where,
    )


def _repeated_keys(keys: array[int]) -> set[int]:
    """The keys that occur more than once. Sorting, not hashing: about 24 bytes a key at
    the peak (the keys, the sort order, the sorted keys), where a hash set takes several
    times that."""
    n = len(keys)
    if n < 2:
        return set()
    arr = pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(keys)])
    ordered = pc.take(arr, pc.sort_indices(arr))
    same_as_next = pc.equal(ordered.slice(0, n - 1), ordered.slice(1))
    if not pc.any(same_as_next).as_py():
        return set()
    return set(pc.filter(ordered.slice(0, n - 1), same_as_next).to_pylist())


def _check_unique_ids(
    job: Job, builder: RequestBuilder, keys: array[int], add: Callable[[InputError], None]
) -> None:
    dup_keys = _repeated_keys(keys)
    if not dup_keys:
        return
    # Rare: find the repeated ids and where they stand (a second pass, only now).
    first_seen: dict[int, Where] = {}
    for batch in iter_batches(job.input_path):
        for offset, row in enumerate(batch.rows):
            if row is None or builder.id_column is None:
                continue
            rid = row.get(builder.id_column)
            if rid is None or _id_key(rid) not in dup_keys:
                continue
            where = batch.where(offset)
            key = _id_key(rid)
            if key in first_seen:
                seen = ", ".join(f"{k} {v}" for k, v in first_seen[key].items())
                add(
                    InputError(
                        f"id {rid!r} is not unique (also at {seen})",
                        file=str(job.input_path),
                        column=builder.id_column,
                        **where,
                    )
                )
            else:
                first_seen[key] = where
