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
from batchrun.io.files import open_input, regular_file
from batchrun.io.remote import Location, RemotePath, open_remote_random, storage_error

DEFAULT_BATCH_ROWS = 2048
#: How deep arrays and objects may nest in a JSONL value. Far beyond real data, and well
#: inside what every later stage can carry: orjson writes request bodies only up to 254
#: levels, and the standard library's fallback fails near the interpreter's stack depth.
MAX_NESTING = 100


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


def input_format(path: Location) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    raise UsageError(f"input {path} must end in .jsonl, .ndjson or .parquet")


def iter_batches(path: Location, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[InputBatch]:
    """Stream the input file in batches of at most ``batch_rows`` rows."""
    read = _iter_jsonl if input_format(path) == "jsonl" else _iter_parquet
    if not isinstance(path, RemotePath):
        yield from read(path, batch_rows)
        return
    try:
        yield from read(path, batch_rows)
    except OSError as exc:  # the connection lost mid-read, say: one line, no traceback
        raise storage_error(path, "input", exc) from None


def _iter_jsonl(path: Location, batch_rows: int) -> Iterator[InputBatch]:
    name = str(path)
    loads = fastjson.loads
    position = 0
    batch = InputBatch(start=0, rows=[], lines=[])
    with open_input(path, "input file") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue  # blank lines (a trailing newline, say) are not rows
            assert batch.lines is not None
            try:
                row = loads(raw)
            except fastjson.UnpairedSurrogate as exc:
                batch.errors.append(_surrogate_error(exc.path, name, line_no))
                row = None
            except fastjson.NestingTooDeep:
                batch.errors.append(_nesting_error(name, line_no, None))
                row = None
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
                # Counting brackets is cheap (and needless on a line too short to nest
                # that deep); only a line with many walks its values.
                elif len(raw) > MAX_NESTING and raw.count(b"[") + raw.count(b"{") > MAX_NESTING:
                    deep = next(
                        (k for k, v in row.items() if fastjson.depth(v) > MAX_NESTING), None
                    )
                    if deep is not None:
                        batch.errors.append(_nesting_error(name, line_no, deep))
                        row = None
            batch.rows.append(row)
            batch.lines.append(line_no)
            position += 1
            if len(batch.rows) >= batch_rows:
                yield batch
                batch = InputBatch(start=position, rows=[], lines=[])
    if batch.rows:
        yield batch


def _surrogate_error(path: list[str | int], file: str, line: int) -> InputError:
    inside = f" (at {fastjson.format_path(path)})" if len(path) > 1 else ""
    return InputError(
        f"holds an unpaired surrogate escape (a lone \\ud800-\\udfff){inside}, which UTF-8 text cannot carry",
        file=file,
        line=line,
        column=str(path[0]) if path else None,
        hint="write the character itself or a complete surrogate pair",
    )


def _nesting_error(file: str, line: int, column: str | None) -> InputError:
    return InputError(
        f"arrays and objects nest more than {MAX_NESTING} levels deep",
        file=file,
        line=line,
        column=column,
    )


def _unreadable_parquet(path: Location, exc: BaseException, position: int | None) -> UsageError:
    at = f" (at row {position})" if position else ""
    return UsageError(
        f"input {path} is not a readable Parquet file{at}: {' '.join(str(exc).split()).rstrip('.')}",
        hint="a .parquet input must be a complete Parquet file; JSONL input is named .jsonl or .ndjson",
    )


def _open_parquet(path: Location) -> pq.ParquetFile:
    source: Path | pa.NativeFile
    if isinstance(path, RemotePath):
        source = open_remote_random(path, "input file")  # ranged reads: footer, then pages
    else:
        regular_file(path, "input file")  # pyarrow would block on a FIFO, and read a folder
        source = path
    try:
        return pq.ParquetFile(source)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable_parquet(path, exc, None) from None


def _iter_parquet(path: Location, batch_rows: int) -> Iterator[InputBatch]:
    pf = _open_parquet(path)
    name = str(path)
    position = 0
    batches = pf.iter_batches(batch_size=batch_rows)
    while True:
        try:
            rb = next(batches)
        except StopIteration:
            break
        except (pa.ArrowException, OSError) as exc:  # a damaged page or row group
            raise _unreadable_parquet(path, exc, position) from None
        yield InputBatch(start=position, rows=_python_rows(rb, name, position), arrow=rb)
        position += rb.num_rows


def _python_rows(rb: pa.RecordBatch, file: str, start: int) -> list[dict[str, Any] | None]:
    """The batch as dicts. Where ``to_pylist`` fails, again column by column, so that a
    column Python cannot hold is named, or read as text where that keeps it usable."""
    try:
        return rb.to_pylist()  # type: ignore[no-any-return]
    except (ValueError, OverflowError):  # UnicodeDecodeError included
        pass
    names = rb.schema.names
    columns = [_column_values(rb.column(i), names[i], file, start) for i in range(len(names))]
    if not columns:
        return [{} for _ in range(rb.num_rows)]
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


def _column_values(col: pa.Array, name: str, file: str, start: int) -> list[Any]:
    try:
        return col.to_pylist()  # type: ignore[no-any-return]
    except UnicodeDecodeError:
        raise _invalid_utf8(col, name, file, start) from None
    except (ValueError, OverflowError):
        pass
    # Times Python's datetime cannot hold (nanoseconds, years past 9999): the output
    # carries the column as it is; rows see it as text (templates, messages).
    try:
        return col.cast(_as_text(col.type)).to_pylist()  # type: ignore[no-any-return]
    except (pa.ArrowException, ValueError, OverflowError) as exc:
        raise InputError(
            f"values of type {col.type} cannot be read ({exc})", file=file, column=name
        ) from None


def _as_text(t: pa.DataType) -> pa.DataType:
    """``t`` with every date, time, timestamp and duration inside it turned into a string."""
    if pa.types.is_temporal(t):
        return pa.string()
    if pa.types.is_struct(t):
        return pa.struct(
            [t.field(i).with_type(_as_text(t.field(i).type)) for i in range(t.num_fields)]
        )
    if pa.types.is_map(t):
        return pa.map_(_as_text(t.key_type), _as_text(t.item_type))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(t.value_field.with_type(_as_text(t.value_type)), t.list_size)
    if pa.types.is_large_list(t):
        return pa.large_list(t.value_field.with_type(_as_text(t.value_type)))
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_as_text(t.value_type)))
    return t


def _invalid_utf8(col: pa.Array, name: str, file: str, start: int) -> InputError:
    """The first row whose value is not valid UTF-8 (a second look, only on this error)."""
    row = None
    for i in range(len(col)):
        try:
            col[i].as_py()
        except UnicodeDecodeError:
            row = start + i
            break
        except (ValueError, OverflowError):
            continue
    return InputError("is not valid UTF-8 text", file=file, row=row, column=name)


def parquet_schema(path: Location) -> pa.Schema:
    """The Parquet input's schema; UsageError if it is unreadable or repeats a column name."""
    schema = _open_parquet(path).schema_arrow
    seen: set[str] = set()
    for n in schema.names:
        if n in seen:
            raise UsageError(
                f"input {path} has two columns named {n!r}",
                hint="rename one: rows and the output need distinct column names",
            )
        seen.add(n)
    return schema


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


#: JSONL columns nesting deeper than this are carried as JSON text: Parquet readers refuse
#: schemas nested past 100 levels (pyarrow's default), and each list takes two.
MAX_TYPED_NESTING = 32


def _type_depth(t: pa.DataType) -> int:
    """How deep lists, structs and maps nest in ``t`` (a flat type: 0)."""
    if not t.num_fields:
        return 0
    return 1 + max(_type_depth(t.field(i).type) for i in range(t.num_fields))


def jsonl_schema(types: dict[str, pa.DataType | None]) -> pa.Schema:
    """The schema JSONL input columns get in the output: mixed columns, and columns too
    deeply nested for a Parquet reader, become JSON text."""
    fields = []
    for name, t in types.items():
        if t is None or _type_depth(t) > MAX_TYPED_NESTING:
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
