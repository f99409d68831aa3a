"""Scenario G of ``make bench``: ``batchrun compare`` on two 1,000,000-row outputs.

Two outputs of a graded nightly eval (and, separately, of an ungraded job) are generated
with pyarrow in batchrun's own output schema and row-group size; the real CLI compares
them in a child process, whose wall time and peak RSS (from wait4's rusage) are measured.
The ideal is a bare child that reads the same columns of both files with pyarrow and does
nothing else. Target: ≤ 500 MB peak and ≤ 60 s. Nothing here asserts.

    python -m bench.compare_bench               # 1,000,000 rows
    python -m bench.compare_bench --rows 100000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchrun.io.readers import DEFAULT_BATCH_ROWS
from batchrun.io.writers import output_schema

_INPUT = pa.schema(
    [
        ("id", pa.int64()),
        ("category", pa.string()),
        ("question", pa.string()),
        ("answer", pa.string()),
    ]
)
_CATEGORIES = ["arithmetic", "geography", "history", "science", "spelling"]
#: What compare reads of each file (the report's columns, the key, the grade, the group).
_COLUMNS = [
    "id", "category", "status", "finish_reason_normalized", "error_type", "prompt_tokens",
    "completion_tokens", "total_tokens", "model", "latency_ms", "finished_at",
    "reported_cost_usd", "correct",
]  # fmt: skip


def _job(graded: bool) -> dict[str, object]:
    grading = {"expected_column": "answer", "match": "exact", "group_by": "category"}
    return {
        "prompt_column": "question", "messages_column": None, "template": None,
        "id_column": "id", "params": {"model": "gpt-4o-mini", "max_tokens": 8},
        "grading": grading if graded else None,
    }  # fmt: skip


def _share(ids: pa.Array, multiplier: int, per_mille: int) -> pa.Array:
    """A deterministic pseudo-random boolean per id, true for about per_mille / 1000."""
    mixed = pc.bit_wise_and(pc.multiply(ids, multiplier), 0xFFFFFFFF)
    return pc.less(pc.divide(mixed, 4_294_967), per_mille)


def make_output(path: Path, rows: int, *, night: int, graded: bool) -> Path:
    """One output of ``rows`` rows; ``night`` shifts which rows are right, fail or change."""
    ids = pc.cast(pc.indices_nonzero(pa.nulls(rows, pa.bool_()).fill_null(True)), pa.int64())
    text = pc.cast(ids, pa.string())
    answer = pc.binary_join_element_wise("beta", text, "")
    right = _share(ids, 2654435761, 800)
    if night:  # about 3 % of the rows flip from one night to the next, either way
        right = pc.xor(right, _share(ids, 2246822519, 30))
    failed = _share(ids, 3266489917, 10 if night == 0 else 15)
    completion = pc.if_else(right, answer, pc.binary_join_element_wise("gamma", text, ""))
    status = pc.if_else(failed, "error", "ok")
    ok = pc.invert(failed)
    n = pa.nulls(rows, pa.string())
    category = pc.take(pa.array(_CATEGORIES), pc.cast(pc.bit_wise_and(ids, 3), pa.int64()))
    tokens = pc.if_else(ok, pc.add(pc.bit_wise_and(ids, 31), 40), None)
    start_ms = 1_796_000_000_000 + night * 86_400_000
    columns: dict[str, pa.Array] = {
        "id": ids,
        "category": category,
        "question": pc.binary_join_element_wise(
            "Question ",
            text,
            ": which option is right? Answer with one of: alpha",
            text,
            ", beta",
            text,
            ", gamma",
            text,
            ".",
            "",
        ),
        "answer": answer,
        "status": status,
        "completion": pc.if_else(ok, completion, n),
        "finish_reason": pc.if_else(ok, "stop", n),
        "finish_reason_normalized": pc.if_else(ok, "stop", "error"),
        "prompt_tokens": tokens,
        "completion_tokens": pc.if_else(ok, pa.scalar(1, pa.int64()), None),
        "total_tokens": pc.add(tokens, 1),
        "model": pc.if_else(ok, "gpt-4o-mini-2024-07-18", n),
        "attempts": pa.repeat(pa.scalar(1, pa.int32()), rows),
        "latency_ms": pc.cast(pc.add(pc.bit_wise_and(ids, 1023), 50 + 20 * night), pa.float64()),
        "error_type": pc.if_else(failed, "server_error", n),
        "error": pc.if_else(failed, "HTTP 500: simulated", n),
        "finished_at": pc.cast(pc.add(ids, start_ms), pa.timestamp("ms", tz="UTC")),
        "correct": pc.if_else(ok, right, None),
    }
    schema = output_schema(_INPUT, "id", graded=graded, job=_job(graded))
    arrays = [
        columns[f.name].cast(f.type) if f.name in columns else pa.nulls(rows, f.type)
        for f in schema
    ]
    pq.write_table(
        pa.Table.from_arrays(arrays, schema=schema),
        path,
        compression="zstd",
        row_group_size=DEFAULT_BATCH_ROWS,
    )
    return path


@dataclass
class Child:
    exit_code: int
    wall_s: float
    rss_mb: float
    stdout: str


def run_child(args: list[str]) -> Child:
    """A child process; wall time and peak RSS from wait4's rusage."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    return Child(
        os.waitstatus_to_exitcode(status), time.perf_counter() - t0, usage.ru_maxrss / 1024, out
    )


def _bare_read(paths: list[Path], columns: list[str]) -> Child:
    """The ideal: the same columns of both files read with pyarrow, nothing else."""
    code = (
        "import sys, pyarrow as pa, pyarrow.parquet as pq\n"
        "pa.set_memory_pool(pa.system_memory_pool())\n"
        "cols = sys.argv[1].split(',')\n"
        "for p in sys.argv[2:]:\n"
        "    names = pq.read_schema(p).names\n"
        "    pq.read_table(p, columns=[c for c in cols if c in names])\n"
    )
    return run_child([sys.executable, "-c", code, ",".join(columns), *map(str, paths)])


def _make_in_child(path: Path, rows: int, night: int, graded: bool) -> Path:
    """make_output in a child process: a child's peak RSS starts from its parent's (Linux
    keeps the high-water mark across fork and exec), so this process stays small."""
    args = ["--make", str(path), "--rows", str(rows), "--night", str(night)]
    subprocess.run(
        [sys.executable, "-m", "bench.compare_bench", *args, *([] if graded else ["--ungraded"])],
        check=True,
    )
    return path


def scenario(tmp: Path, rows: int) -> list[str]:
    """Markdown lines for ``make bench``: graded and ungraded compare against a bare read."""
    lines = []
    for graded in (True, False):
        kind = "graded" if graded else "ungraded"
        a, b = (
            _make_in_child(tmp / f"G-{kind}-{night}.parquet", rows, night, graded)
            for night in (0, 1)
        )
        report = tmp / f"G-{kind}.json"
        run = run_child(
            [sys.executable, "-m", "batchrun", "compare", str(a), str(b), "--json", str(report),
             "--html", str(tmp / f"G-{kind}.html")]
        )  # fmt: skip
        columns = _COLUMNS if graded else [*_COLUMNS, "completion"]
        bare = _bare_read([a, b], columns)
        doc = json.loads(report.read_text()) if report.exists() else {}
        acc, answers = doc.get("accuracy") or {}, doc.get("answers") or {}
        what = (
            f"{acc.get('right_to_wrong', 0):,} right → wrong, {acc.get('wrong_to_right', 0):,} wrong → right"
            if graded
            else f"{answers.get('changed', 0):,} of {answers.get('compared', 0):,} answers changed"
        )
        mb = sum(p.stat().st_size for p in (a, b)) / 1e6
        lines.append(
            f"- G {kind} compare of two {rows:,}-row outputs ({mb:,.0f} MB of Parquet): "
            f"exit {run.exit_code}, {run.wall_s:.2f} s wall, peak RSS {run.rss_mb:.0f} MB "
            f"(target ≤ 60 s, ≤ 500 MB); a bare pyarrow read of the same columns: "
            f"{bare.wall_s:.2f} s, {bare.rss_mb:.0f} MB (compare: {run.wall_s / bare.wall_s:.1f} times "
            f"the time, {run.rss_mb / bare.rss_mb:.1f} times the memory); {what}."
        )
        if run.exit_code != 0:
            lines.append(f"  - compare said: {run.stdout.strip().splitlines()[-1:]}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--make", type=Path, help="only write one output (used by the scenario)")
    ap.add_argument("--night", type=int, default=0)
    ap.add_argument("--ungraded", action="store_true")
    opts = ap.parse_args()
    if opts.make:
        make_output(opts.make, opts.rows, night=opts.night, graded=not opts.ungraded)
        return
    with tempfile.TemporaryDirectory(prefix="batchrun-compare-bench-") as d:
        print("\n".join(scenario(Path(d), opts.rows)))


if __name__ == "__main__":
    main()
