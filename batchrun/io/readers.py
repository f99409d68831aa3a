"""Streaming readers: JSONL line by line, Parquet record batch by record batch.

Memory stays bounded by the batch size whatever the input size. Every row gets its 0-based
position; JSONL rows also keep their 1-based line number for error messages.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import pyarrow as pa
import pyarrow.parquet as pq

from batchrun import fastjson
from batchrun.errors import InputError, UsageError

DEFAULT_BATCH_ROWS = 2048


class Where(TypedDict, total=False):
    """Where a row stands, as InputError keywords: ``line`` (JSONL) or ``row`` (Parquet)."""

    line: int
    row: int


@dataclass(slots=True)
class InputBatch:
    """Consecutive rows of the input, starting at position ``start``."""

    start: int
    #: The rows as dicts; None where a JSONL line could not be parsed (see ``errors``).
    rows: list[dict[str, Any] | None]
    #: 1-based line numbers (JSONL only).
    lines: list[int] | None = None
    #: The batch as Arrow (Parquet only; JSONL batches are converted by :func:`rows_to_arrow`).
    arrow: pa.RecordBatch | None = None
    errors: list[InputError] = field(default_factory=list)

    def where(self, offset: int) -> Where:
        """Keyword arguments for InputError locating row ``start + offset``."""
        if self.lines is not None:
            return {"line": self.lines[offset]}
        return {"row": self.start + offset}


def input_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    raise UsageError(f"input {path} must end in .jsonl, .ndjson or .parquet")


def iter_batches(path: Path, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[InputBatch]:
    """Stream the input file in batches of at most ``batch_rows`` rows."""
    if not path.exists():
        raise UsageError(f"input file {path} not found")
    if input_format(path) == "jsonl":
        yield from _iter_jsonl(path, batch_rows)
    else:
        yield from _iter_parquet(path, batch_rows)


def _iter_jsonl(path: Path, batch_rows: int) -> Iterator[InputBatch]:
    name = str(path)
    loads = fastjson.loads
    position = 0
    batch = InputBatch(start=0, rows=[], lines=[])
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue  # blank lines (a trailing newline, say) are not rows
            assert batch.lines is not None
            try:
                row = loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                col = getattr(exc, "colno", None)
                at = f" at character {col}" if col else ""
                reason = getattr(exc, "msg", None) or "not UTF-8"
                batch.errors.append(
                    InputError(f"not valid JSON{at} ({reason})", file=name, line=line_no)
                )
                row = None
            else:
                if not isinstance(row, dict):
                    batch.errors.append(
                        InputError(
                            "is not a JSON object",
                            file=name,
                            line=line_no,
                            hint="each line must be one {...} object",
                        )
                    )
                    row = None
            batch.rows.append(row)
            batch.lines.append(line_no)
            position += 1
            if len(batch.rows) >= batch_rows:
                yield batch
                batch = InputBatch(start=position, rows=[], lines=[])
    if batch.rows:
        yield batch


def _iter_parquet(path: Path, batch_rows: int) -> Iterator[InputBatch]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UsageError(f"input {path} is not a readable Parquet file: {exc}") from None
    position = 0
    for rb in pf.iter_batches(batch_size=batch_rows):
        rows: list[dict[str, Any] | None] = list(rb.to_pylist())
        yield InputBatch(start=position, rows=rows, arrow=rb)
        position += rb.num_rows


def parquet_schema(path: Path) -> pa.Schema:
    return pq.read_schema(path)


# --- JSONL → Arrow -----------------------------------------------------------------------------


def infer_column_types(rows: list[dict[str, Any] | None]) -> dict[str, pa.DataType | None]:
    """Arrow type of each column in these rows; None for a column whose values do not agree."""
    columns: dict[str, list[Any]] = {}
    valid = [r for r in rows if r is not None]
    for r in valid:
        for k in r:
            columns.setdefault(k, [])
    for name, values in columns.items():
        values.extend(r.get(name) for r in valid)
    types: dict[str, pa.DataType | None] = {}
    for name, values in columns.items():
        try:
            types[name] = pa.array(values).type
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            types[name] = None
    return types


def merge_column_types(
    into: dict[str, pa.DataType | None], new: dict[str, pa.DataType | None]
) -> None:
    """Unify per-batch types in place; columns that cannot be unified become None (mixed)."""
    for name, t in new.items():
        if name not in into:
            into[name] = t
            continue
        old = into[name]
        if old is None or t is None:
            into[name] = None
            continue
        if old == t:
            continue
        try:
            unified = pa.unify_schemas(
                [pa.schema([(name, old)]), pa.schema([(name, t)])], promote_options="permissive"
            )
            into[name] = unified.field(name).type
        except (pa.ArrowInvalid, pa.ArrowTypeError, NotImplementedError):
            into[name] = None


def jsonl_schema(types: dict[str, pa.DataType | None]) -> pa.Schema:
    """The schema JSONL input columns get in the output: mixed columns become JSON text."""
    fields = []
    for name, t in types.items():
        if t is None:
            fields.append(pa.field(name, pa.string(), metadata={b"batchrun": b"json"}))
        elif pa.types.is_null(t):
            fields.append(pa.field(name, pa.string()))
        else:
            fields.append(pa.field(name, t))
    return pa.schema(fields)


def rows_to_arrow(rows: list[dict[str, Any] | None], schema: pa.Schema) -> pa.RecordBatch:
    """Convert JSONL rows to a record batch of ``schema`` (from :func:`jsonl_schema`)."""
    arrays = []
    for f in schema:
        values = [None if r is None else r.get(f.name) for r in rows]
        if f.metadata and f.metadata.get(b"batchrun") == b"json":
            values = [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]
        arrays.append(pa.array(values, type=f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
