"""Reading two outputs for ``batchrun compare``: what each says of the job that wrote it,
whether they are outputs of one job, and the few rows a comparison shows — in bounded
memory (one column at a time, batch by batch).

Outputs of schema versions 1, 2 and 3 are read by column name; a column an older version
lacks reads as absent, never as a crash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from string import Formatter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchrun.errors import UsageError
from batchrun.io.writers import JOB_KEY, carried_name
from batchrun.pricing import normalize_model

VERSION_KEY = b"batchrun.schema_version"
KNOWN_VERSIONS = ("1", "2", "3")
#: Rows a batch of a streamed read holds at most, and about how many bytes of text.
BATCH_ROWS = 65_536
BATCH_BYTES = 4 << 20
#: Parts of the recorded job that do not change what is asked: streaming or not, and the
#: metadata object sent along (it may carry the date of the night).
_NOT_THE_JOB = {("params", "stream"), ("params", "metadata"), ("grading", "group_by")}


@dataclass(frozen=True)
class OutputInfo:
    """One output's schema, version and recorded job (None: written before outputs kept it)."""

    path: Path
    schema: pa.Schema
    version: str
    job: dict[str, Any] | None

    @property
    def input_columns(self) -> list[str]:
        """The carried input columns: an output holds id, the input columns, then the result
        columns starting with ``status`` (new result columns come after it)."""
        names = self.schema.names
        return names[1 : names.index("status")] if "status" in names else []

    @property
    def graded(self) -> bool:
        return "correct" in self.schema.names and pa.types.is_boolean(
            self.schema.field("correct").type
        )

    @property
    def expected_column(self) -> str | None:
        grading = (self.job or {}).get("grading") or {}
        name = grading.get("expected_column")
        return self._carried(name) if isinstance(name, str) else None

    @property
    def group_by(self) -> str | None:
        grading = (self.job or {}).get("grading") or {}
        name = grading.get("group_by")
        return self._carried(name) if isinstance(name, str) else None

    def _carried(self, name: str) -> str | None:
        id_column = (self.job or {}).get("id_column")
        out = carried_name(name, id_column if isinstance(id_column, str) else None) or "id"
        return out if out in self.schema.names else None

    def prompt_columns(self) -> list[str]:
        """The columns a prompt is shown from: the recorded prompt source, else a
        ``messages`` or ``prompt`` column (the order in which a run picks its default)."""
        job = self.job or {}
        template = job.get("template")
        if isinstance(template, str):
            return [c for n in dict.fromkeys(_names(template)) if (c := self._carried(n))]
        for name in (job.get("messages_column"), job.get("prompt_column"), "messages", "prompt"):
            if isinstance(name, str) and (col := self._carried(name)) is not None:
                return [col]
        return []

    def prompt_text(self, row: dict[str, Any]) -> str | None:
        """The prompt of one row read with :meth:`prompt_columns`, as text."""
        template = (self.job or {}).get("template")
        if isinstance(template, str):
            names = {c: self._carried(c) for c in dict.fromkeys(_names(template))}
            try:
                return template.format_map({c: str(row.get(col or "")) for c, col in names.items()})
            except (KeyError, ValueError, IndexError):
                return None
        cols = self.prompt_columns()
        value = row.get(cols[0]) if cols else None
        if isinstance(value, list):  # messages: the last user turn is the question
            users = [m for m in value if isinstance(m, dict) and m.get("role") == "user"]
            content = users[-1].get("content") if users else None
            return content if isinstance(content, str) else json.dumps(value, default=str)
        return None if value is None else str(value)


def _names(template: str) -> list[str]:
    try:
        return [name for _, name, _, _ in Formatter().parse(template) if name]
    except ValueError:
        return []


def read_info(path: Path) -> OutputInfo:
    """Schema, version and recorded job of a batchrun output; UsageError if it is not one."""
    try:
        schema = pq.read_schema(path)
    except FileNotFoundError as e:
        raise UsageError(f"{path}: no such file") from e
    except (OSError, pa.ArrowException) as e:
        raise UsageError(f"{path}: not a Parquet file ({e})") from e
    meta = schema.metadata or {}
    version = meta.get(VERSION_KEY)
    if "status" not in schema.names or version is None:
        raise UsageError(
            f"{path}: not a batchrun output (no `status` column or no batchrun.schema_version)",
            hint="give OUTPUT files that `batchrun run` wrote",
        )
    job: dict[str, Any] | None = None
    if JOB_KEY in meta:
        try:
            loaded = json.loads(meta[JOB_KEY])
        except ValueError:
            loaded = None
        job = loaded if isinstance(loaded, dict) else None
    return OutputInfo(path, schema, version.decode(errors="replace"), job)


def _short(value: object) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _job_diff(old: dict[str, Any], new: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        path = (*prefix, key)
        if path in _NOT_THE_JOB:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _job_diff(a, b, path)
        elif a != b:
            out.append(f"{'.'.join(path)} {_short(a)} vs {_short(b)}")
    return out


def job_differences(
    base: OutputInfo, cur: OutputInfo, models: tuple[set[str], set[str]]
) -> list[str]:
    """Why two outputs look like outputs of two jobs (empty: one job).

    The recorded jobs are compared where both outputs have one (base URL, streaming and the
    metadata object aside); otherwise the input columns and the model families served.
    ``models`` holds the models that served each output.
    """
    out = []
    if base.graded != cur.graded:
        which = base if base.graded else cur
        out.append(f"only {which.path} is graded (has a `correct` column)")
    if base.job is not None and cur.job is not None:
        out += _job_diff(base.job, cur.job)
        return out
    if base.input_columns != cur.input_columns:
        out.append(
            f"input columns differ: {', '.join(base.input_columns) or '(none)'} vs "
            f"{', '.join(cur.input_columns) or '(none)'}"
        )
    families = [{normalize_model(m) for m in side} for side in models]
    if all(families) and not families[0] & families[1]:
        out.append(
            f"models differ: {', '.join(sorted(models[0]))} vs {', '.join(sorted(models[1]))}"
        )
    return out


def batch_rows(pf: pq.ParquetFile, columns: list[str]) -> int:
    """Rows a batch of ``columns`` may hold to stay near BATCH_BYTES (their average size per
    row, uncompressed, from the file's metadata), between 256 and BATCH_ROWS."""
    meta = pf.metadata
    wanted = {i for i, name in enumerate(pf.schema_arrow.names) if name in columns}
    size = sum(
        meta.row_group(g).column(i).total_uncompressed_size
        for g in range(meta.num_row_groups)
        for i in wanted
    )
    per_row = size / meta.num_rows if meta.num_rows else 1.0
    return max(256, min(BATCH_ROWS, int(BATCH_BYTES / max(per_row, 1.0))))


def rows_with_keys(
    path: Path, key: str, keys: pa.Array, columns: list[str]
) -> dict[Any, dict[str, Any]]:
    """The rows of ``path`` whose ``key`` is in ``keys`` (a few hundred), as dicts by key.

    Streamed batch by batch, so a huge text column costs one batch of memory, not the file.
    """
    out: dict[Any, dict[str, Any]] = {}
    if len(keys) == 0:
        return out
    pf = pq.ParquetFile(path)
    wanted = [key, *dict.fromkeys(c for c in columns if c in pf.schema_arrow.names and c != key)]
    for batch in pf.iter_batches(batch_size=batch_rows(pf, wanted), columns=wanted):
        hit = pc.is_in(batch.column(key), value_set=keys)
        if pc.any(hit).as_py():
            for row in batch.filter(hit).to_pylist():
                out[row[key]] = row
            if len(out) >= len(keys):
                break
    return out


class ColumnWindow:
    """One column of a Parquet file read front to back, serving ``take`` for positions that
    never go back: it holds only the batches between the lowest position still wanted and
    the highest asked for."""

    def __init__(self, path: Path, column: str, rows: int | None = None) -> None:
        pf = pq.ParquetFile(path)
        #: Rows a batch holds (by default, about BATCH_BYTES of the column).
        self.rows = rows or batch_rows(pf, [column])
        self._batches = pf.iter_batches(batch_size=self.rows, columns=[column])
        self._start = 0  # position of the first held row
        self._held: list[pa.Array] = []

    def take(self, positions: pa.Array) -> pa.Array:
        """Values at ``positions`` (int64, each chunk's lowest >= the previous chunk's)."""
        if len(positions) == 0:
            return pa.chunked_array(self._held or [pa.array([], pa.string())]).take(positions)
        lo, hi = (v.as_py() for v in pc.min_max(positions).values())
        while self._held and self._start + len(self._held[0]) <= lo:
            self._start += len(self._held.pop(0))
        end = self._start + sum(len(a) for a in self._held)
        while end <= hi:
            arr = next(self._batches).column(0)
            if not self._held and end + len(arr) <= lo:
                self._start = end = end + len(arr)  # wholly before what is wanted
                continue
            self._held.append(arr)
            end += len(arr)
        return pa.chunked_array(self._held).take(pc.subtract(positions, self._start))
