"""Cut the input into K row ranges (one input file a shard) and merge the shards' parts.

A shard's input holds its rows as they are, plus — when the input has no id column — an
``id`` column with each row's position in the whole input, so every shard's rows keep the
ids (and the merged output the order) a single-process run gives them.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from batchrun.cluster.store import Store
from batchrun.io.readers import iter_batches
from batchrun.io.remote import Location
from batchrun.io.writers import JOB_KEY
from batchrun.job import Job
from batchrun.scan import Scan


def ranges(total: int, k: int) -> list[tuple[int, int]]:
    """K contiguous row ranges covering 0..total, sizes differing by at most one."""
    k = max(1, min(k, total)) if total else 1
    base, extra = divmod(total, k)
    out, start = [], 0
    for i in range(k):
        stop = start + base + (1 if i < extra else 0)
        out.append((start, stop))
        start = stop
    return out


def input_name(index: int, fmt: str) -> str:
    return f"input-{index:05d}.{fmt}"


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def write_shard_inputs(
    job: Job, scan: Scan, spans: list[tuple[int, int]], store: Store, staging: Path
) -> None:
    """One pass over the input, each row to its shard's file, written whole into the
    store (a crash never leaves a short shard input behind a manifest). ``staging``: a
    local folder for the files on their way (inside the store when it is local)."""
    staging.mkdir(parents=True, exist_ok=True)
    fmt = shard_format(job)
    add_id = scan.id_column is None
    total = spans[-1][1]
    index = 0
    sink: Any = None
    written: set[int] = set()

    def tmp_for(i: int) -> Path:
        return staging / f"input-{i:05d}.{os.getpid()}.writing"

    def close(i: int) -> None:
        nonlocal sink
        if sink is not None:
            sink.close()
            sink = None
            store.move_in(tmp_for(i), input_name(i, fmt))
            written.add(i)

    for batch in iter_batches(job.input_path):
        n = len(batch.rows)
        offset = 0
        while offset < n and batch.start + offset < total:
            pos = batch.start + offset
            while pos >= spans[index][1]:
                close(index)
                index += 1
            take = min(n - offset, spans[index][1] - pos)
            if fmt == "jsonl":
                if sink is None:
                    sink = open(tmp_for(index), "w", encoding="utf-8")  # noqa: SIM115
                lines = []
                for j in range(offset, offset + take):
                    row = batch.rows[j]
                    assert row is not None  # the driver's scan proved every row valid
                    if add_id:
                        row = {**row, "id": batch.start + j}
                    lines.append(json.dumps(row, ensure_ascii=False) + "\n")
                sink.write("".join(lines))
            else:
                assert batch.arrow is not None
                part = pa.Table.from_batches([batch.arrow.slice(offset, take)])
                if add_id:
                    part = part.append_column("id", pa.array(range(pos, pos + take), pa.int64()))
                if sink is None:
                    sink = pq.ParquetWriter(tmp_for(index), part.schema)
                sink.write_table(part)
            offset += take
    close(index)
    missing = [i for i in range(len(spans)) if i not in written]
    assert not missing, f"shards {missing} got no rows"  # ranges() never cuts an empty one


def shard_format(job: Job) -> str:
    return "jsonl" if str(job.input_path).lower().endswith((".jsonl", ".ndjson")) else "parquet"


def merge_parts(store: Store, count: int, local: Path, job_key: bytes) -> None:
    """The parts, in shard order, as one Parquet file at ``local`` (written aside, then
    renamed in). A JSONL shard's columns are typed from its own rows, so types are unified
    first (a column null in one shard takes the type the others give it). The merged file
    names the whole job, not a shard, as the job that wrote it."""
    files = [store.parquet(part_name(i)) for i in range(count)]
    schema = pa.unify_schemas([f.schema_arrow for f in files], promote_options="permissive")
    metadata = dict(files[0].schema_arrow.metadata or {})
    metadata[JOB_KEY] = job_key
    schema = schema.with_metadata(metadata)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(local.name + ".merging")
    with pq.ParquetWriter(tmp, schema) as writer:
        for f in files:
            for rb in f.iter_batches(batch_size=65536):
                writer.write_table(_conform(pa.Table.from_batches([rb]), schema))
    os.replace(tmp, local)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    cols = []
    for f in schema:
        if f.name in table.column_names:
            cols.append(table.column(f.name).cast(f.type))
        else:
            cols.append(pa.nulls(len(table), f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def keep_as_dataset(store: Store, count: int, folder: Location) -> None:
    """The parts as a Parquet dataset folder (or key prefix) at the output path."""
    dest = Store(folder)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(count):
            local = Path(tmp) / part_name(i)
            store.get(part_name(i), local)
            dest.move_in(local, part_name(i))
