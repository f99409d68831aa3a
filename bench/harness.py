"""The harness of ``make bench`` (:mod:`bench.run`) and the other benchmarks: the simulator and
the real CLI each in its own process, pinned to its own core where the machine has two; the
figures of one run (:class:`Row`) and how they are measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
TWO_CORES = (os.cpu_count() or 1) >= 2
SERVER_CPU, CLIENT_CPU = 0, 1


def _pin(cpu: int) -> Callable[[], None] | None:
    if not TWO_CORES or not hasattr(os, "sched_setaffinity"):
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Simulator:
    """``batchrun simulate`` in a subprocess, pinned to the server core."""

    def __init__(self, *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "batchrun", "simulate", "--port", str(self.port), *args],
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_pin(SERVER_CPU),
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        if "listening" not in line:
            raise RuntimeError(f"simulator did not start: {line}")
        # Keep reading what it says later (a line per re-ask it answers): a full pipe would
        # stop the simulator mid-answer.
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_sim/stats", timeout=10) as r:
            data: dict[str, Any] = json.load(r)
        return data

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@dataclass
class ClientRun:
    exit_code: int
    wall_s: float
    cpu_s: float
    max_rss_mb: float
    summary: dict[str, Any] = field(default_factory=dict)
    stderr: str = ""


def run_client(args: list[str], output: Path) -> ClientRun:
    """The real CLI, pinned to the client core; CPU and peak RSS from wait4's rusage."""
    env = dict(os.environ, AIMLAPI_KEY="bench-key")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun", "run", *args, "--output", str(output), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=_pin(CLIENT_CPU),
    )
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    summary_path = output.with_suffix(".summary.json")
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return ClientRun(
        proc.returncode,
        wall,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss / 1024,
        summary,
        err[-2000:],
    )


async def _bare_loop(url: str, rows: int, concurrency: int) -> float:
    """The floor: a plain aiohttp loop posting the same bodies, nothing recorded."""
    import aiohttp

    sem = asyncio.Semaphore(concurrency)
    body = {"model": "anthropic/claude-3-opus", "max_tokens": 16}
    headers = {"Authorization": "Bearer bench-key"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def one(i: int) -> None:
            async with sem:
                payload = dict(body, messages=[{"role": "user", "content": f"prompt number {i}"}])
                async with session.post(f"{url}/chat/completions", json=payload) as resp:
                    await resp.read()

        t0 = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for i in range(rows):
                await sem.acquire()  # bound the number of pending tasks too
                sem.release()
                tg.create_task(one(i))
        return rows / (time.perf_counter() - t0)


def bare_loop_rate(sim_args: list[str], rows: int, concurrency: int) -> float:
    """The bare loop against its own simulator (started with ``sim_args``), run in this
    process pinned to the client core for the duration."""
    sim = Simulator(*sim_args)
    before = os.sched_getaffinity(0) if TWO_CORES else None
    if before is not None:
        os.sched_setaffinity(0, {CLIENT_CPU})
    try:
        return asyncio.run(_bare_loop(sim.url, rows, concurrency))
    finally:
        if before is not None:
            os.sched_setaffinity(0, before)
        sim.close()


def make_input(path: Path, rows: int) -> Path:
    """Prompts with an extra column; JSONL or Parquet by suffix, written in batches."""
    if path.suffix == ".jsonl":
        with path.open("w") as f:
            for i in range(rows):
                f.write(
                    json.dumps({"id": i, "prompt": f"prompt number {i}", "group": i % 7}) + "\n"
                )
        return path
    schema = pa.schema([("id", pa.int64()), ("prompt", pa.string()), ("group", pa.int64())])
    with pq.ParquetWriter(path, schema) as w:
        for start in range(0, rows, 100_000):
            ids = list(range(start, min(rows, start + 100_000)))
            w.write_table(
                pa.table(
                    {
                        "id": ids,
                        "prompt": [f"prompt number {i}" for i in ids],
                        "group": [i % 7 for i in ids],
                    },
                    schema=schema,
                )
            )
    return path


def commit_id() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


@dataclass
class Row:
    scenario: str
    setup: str
    rows: int
    rows_per_s: float
    ideal: float
    target: str
    cpu_per_1k: float
    rss_mb: float
    requests: int
    retries: int
    s429: int
    note: str = ""
    #: Rows per second from the first request sent to the last answer (from the output).
    sending_rows_per_s: float = 0.0
    #: The ideal of the while-sending figure where it has its own (I: dedupe off's); else
    #: that column is compared to ``ideal`` too.
    sending_ideal: float = 0.0

    @property
    def ratio(self) -> float:
        return self.rows_per_s / self.ideal if self.ideal else 0.0

    def rate_cell(self, rate: float, ideal: float | None = None) -> str:
        ideal = self.ideal if ideal is None else ideal
        return f"{rate:,.0f}" + (f" ({rate / ideal:.1%})" if ideal else "")

    def ideal_cell(self) -> str:
        if not self.ideal:
            return "—"
        both = f" / {self.sending_ideal:,.0f} while sending" if self.sending_ideal else ""
        return f"{self.ideal:,.0f}{both}"


def sending_rate(output: Path) -> float:
    """Rows per second over the sending phase: from the first request's start (its finish
    less its latency) to the last answer, read from the output. Process start-up, the
    validation pass and writing the output are outside it."""
    try:
        t = pq.read_table(output, columns=["finished_at", "latency_ms"])
    except OSError:
        return 0.0
    millis = pc.cast(t.column("finished_at"), pa.int64()).to_pylist()
    pairs = [
        (ms / 1000, (lat or 0.0) / 1000)
        for ms, lat in zip(millis, t.column("latency_ms").to_pylist(), strict=True)
        if ms is not None
    ]
    ends = [end for end, _ in pairs]
    starts = [end - lat for end, lat in pairs]
    span = max(ends) - min(starts) if ends else 0.0
    return len(ends) / span if span > 0 else 0.0


def _429s(stats: dict[str, Any]) -> int:
    return int(stats.get("by_status", {}).get("429", 0))


def scenario(
    name: str,
    setup: str,
    tmp: Path,
    rows: int,
    sim_args: list[str],
    client_args: list[str],
    ideal: float,
    target: str,
    fmt: str = "jsonl",
    port: int | None = None,
) -> Row:
    src = make_input(tmp / f"{name}.{fmt}", rows)
    sim = Simulator(*sim_args, port=port)
    output = tmp / f"{name}.out.parquet"
    try:
        run = run_client(["--input", str(src), "--base-url", sim.url, *client_args], output)
        stats = sim.stats()
    finally:
        sim.close()
    s = run.summary
    note = f"exit {run.exit_code}" + (
        f"; {s.get('rows_error', 0)} rows error" if s.get("rows_error") else ""
    )
    if stats.get("billed_twice"):
        note += f"; billed twice {stats['billed_twice']}"
    if stats.get("batches_created"):
        note += f"; {stats['batches_created']} batches, {stats.get('requests', 0)} chat requests"
    if run.exit_code not in (0,):
        note += f"; {run.stderr.strip().splitlines()[-1] if run.stderr.strip() else ''}"
    done = int(s.get("rows_ok", 0)) + int(s.get("rows_error", 0))
    return Row(
        name,
        setup,
        rows,
        done / run.wall_s,
        ideal,
        target,
        run.cpu_s / max(1, done) * 1000,
        run.max_rss_mb,
        int(s.get("requests_sent", 0)),
        int(s.get("retries", 0)),
        _429s(stats),
        note,
        sending_rate(output),
    )
