"""``make bench``: the real CLI against ``batchrun simulate``, each in its own process.

Server and client are pinned to different cores where the machine has two. Every scenario
reports figures and a ratio to its ideal; nothing here asserts. Results are printed as a
Markdown table and saved under ``bench/``.

    python -m bench.run            # every scenario, full size
    python -m bench.run --quick    # smaller inputs, for day-to-day work
    python -m bench.run --only A,C # some scenarios
    python -m bench.run --quick --only I   # dedupe on (no repeats) against dedupe off
    python -m bench.run --quick --only J   # --mode batch
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
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

from bench import compare_bench, image_bench

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


def _commit() -> str:
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


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="")
    opts = ap.parse_args()
    only = {s.strip().upper() for s in opts.only.split(",") if s.strip()}
    q = opts.quick
    table: list[Row] = []
    extra: list[str] = []

    def want(s: str) -> bool:
        return not only or s in only

    # Other work on the machine moves every wall-clock figure: say how busy it was.
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="batchrun-bench-") as d:
        tmp = Path(d)
        if want("A"):
            n = 5_000 if q else 20_000
            floor = bare_loop_rate([], n, 64)
            extra.append(
                f"- A's ideal is a bare aiohttp loop (no checkpoint, no output) against the same simulator: {floor:,.0f} rows/s."
            )
            table.append(
                scenario(
                    "A",
                    "0 ms, concurrency 64",
                    tmp,
                    n,
                    [],
                    ["--concurrency", "64"],
                    floor,
                    "≥ 8,000 rows/s; ≤ 0.12 CPU-s/1k",
                )
            )
        if want("B"):
            n = 5_000 if q else 20_000
            floor = bare_loop_rate(["--latency-ms", "200", "--jitter-ms", "50"], n, 256)
            extra.append(
                f"- B: a bare aiohttp loop against the same simulator reaches {floor:,.0f} rows/s "
                f"({floor / 1280:.1%} of 1,280): what the simulator itself allows."
            )
            table.append(
                scenario(
                    "B",
                    "200±50 ms, concurrency 256",
                    tmp,
                    n,
                    ["--latency-ms", "200", "--jitter-ms", "50"],
                    ["--concurrency", "256"],
                    1280.0,
                    "≥ 97 % of 1,280",
                )
            )
        if want("C"):
            n = 1_500 if q else 3_000
            table.append(
                scenario(
                    "C",
                    "limit 6,000/min (10 s windows), --rpm 6000",
                    tmp,
                    n,
                    ["--rpm-limit", "6000", "--rpm-window", "10"],
                    ["--rpm", "6000", "--concurrency", "64"],
                    100.0,
                    "≥ 95 %, zero 429s",
                )
            )
        if want("D"):
            n = 5_000 if q else 20_000
            table.append(
                scenario(
                    "D",
                    "as B + 10 % 500, 5 % 429, 2 % drops",
                    tmp,
                    n,
                    [
                        "--latency-ms",
                        "200",
                        "--jitter-ms",
                        "50",
                        "--error-rate",
                        "0.1",
                        "--rate-429",
                        "0.05",
                        "--drop-rate",
                        "0.02",
                        "--seed",
                        "1",
                    ],
                    ["--concurrency", "256", "--max-attempts", "10"],
                    1280.0,
                    "all ok, ≥ 60 %",
                )
            )
        if want("F"):
            n = 1_500 if q else 3_000
            table.append(
                scenario(
                    "F",
                    "limit 3,000/min, no Retry-After, no --rpm",
                    tmp,
                    n,
                    ["--rpm-limit", "3000", "--rpm-window", "10", "--no-limit-retry-after"],
                    ["--concurrency", "64", "--max-attempts", "20"],
                    50.0,
                    "≥ 80 %, 429s < 10 % of requests",
                )
            )
        if want("E"):
            for n in (20_000, 100_000) if q else (100_000, 1_000_000):
                port = free_port()  # the rerun must reach the same base URL: it is part of the job
                r = scenario(
                    f"E{n // 1000}k", f"{n:,}-row Parquet, 0 ms, concurrency 64", tmp, n, [],
                    ["--concurrency", "64"], 0.0, "peak RSS ≤ 250 MB, flat", fmt="parquet", port=port,
                )  # fmt: skip
                table.append(r)
                # Resume of the finished output: must send nothing and return quickly.
                sim = Simulator(port=port)
                try:
                    rerun = run_client(
                        [
                            "--input",
                            str(tmp / f"E{n // 1000}k.parquet"),
                            "--base-url",
                            sim.url,
                            "--concurrency",
                            "64",
                        ],
                        tmp / f"E{n // 1000}k.out.parquet",
                    )
                    served = sim.stats().get("requests", 0)
                finally:
                    sim.close()
                extra.append(
                    f"- E {n:,} rows: rerun of the finished output: exit {rerun.exit_code}, "
                    f"{rerun.wall_s:.2f} s wall, requests the simulator received: {served}."
                )
        if want("H"):  # images and peak memory (bench/image_bench.py)
            extra += image_bench.scenario(tmp, 2_000 if q else 10_000)
        if want("I"):  # dedupe's cost where it saves nothing: A with no repeated prompt
            n = 5_000 if q else 20_000
            rates: dict[str, list[Row]] = {"on": [], "off": []}
            for i in range(3):  # alternated, so that drift on a shared machine hits both
                for mode, flags in (("on", []), ("off", ["--no-dedupe"])):
                    rates[mode].append(
                        scenario(
                            f"I{mode}{i}",
                            "",
                            tmp,
                            n,
                            [],
                            ["--concurrency", "64", "--temperature", "0", *flags],
                            0.0,
                            "",
                        )
                    )
            on, off = (
                sorted(rates[m], key=lambda r: r.rows_per_s)[1] for m in ("on", "off")
            )  # the median of three
            on.scenario, on.setup = "I", "as A at temperature 0, dedupe on, no repeats"
            # Each figure against dedupe off's same figure: end to end against end to end,
            # while sending against while sending (not against off's end-to-end rate).
            on.ideal, on.sending_ideal = off.rows_per_s, off.sending_rows_per_s
            on.target = "≥ 95 % of dedupe off"
            table.append(on)
            sending_ratio = on.sending_rows_per_s / max(off.sending_rows_per_s, 1e-9)
            extra.append(
                f"- I: dedupe on with no repeats {on.rows_per_s:,.0f} rows/s end to end "
                f"({on.sending_rows_per_s:,.0f} while sending) against dedupe off "
                f"{off.rows_per_s:,.0f} ({off.sending_rows_per_s:,.0f}): ratio "
                f"{on.rows_per_s / off.rows_per_s:.3f} end to end, {sending_ratio:.3f} while "
                f"sending; client CPU-s / 1k rows {on.cpu_per_1k:.3f} against "
                f"{off.cpu_per_1k:.3f} (medians of three runs each, alternated)."
            )
        if want("J"):  # batch mode: the Batch API, two batches of 100,000
            n = 50_000 if q else 200_000
            r = scenario(
                "J", f"--mode batch, {n:,} rows, batches of 100,000, 2 s each", tmp, n,
                ["--batch-delay", "2"], ["--mode", "batch", "--poll-interval", "0.5"], 0.0,
                "peak RSS ≤ 300 MB; zero chat requests",
            )  # fmt: skip
            table.append(r)
        if want("G"):  # batchrun compare of two outputs (bench/compare_bench.py)
            extra += compare_bench.scenario(tmp, 100_000 if q else 1_000_000)
    lines = [
        f"# batchrun benchmarks — {dt.date.today().isoformat()}",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"server pinned to core {SERVER_CPU}, client to core {CLIENT_CPU}: {TWO_CORES}. {'Quick run.' if q else 'Full run.'} "
        f"Commit {_commit()}. Load average (1 min) {load_before:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end (the benchmark itself accounts for about 2).",
        "",
        "rows/s is end to end (process start to exit: start-up, validation pass, sending, "
        "writing the output); 'while sending' counts from the first request to the last answer. "
        "Ratios are to the ideal.",
        "",
        "| scenario | setup | rows | rows/s end to end | rows/s while sending | ideal | target | CPU-s / 1k rows | peak RSS MB | requests | retries | 429s | notes |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in table:
        lines.append(
            f"| {r.scenario} | {r.setup} | {r.rows:,} | {r.rate_cell(r.rows_per_s)} | "
            f"{r.rate_cell(r.sending_rows_per_s, r.sending_ideal or None)} | {r.ideal_cell()} | "
            f"{r.target} | {r.cpu_per_1k:.3f} | {r.rss_mb:.0f} | {r.requests:,} | "
            f"{r.retries:,} | {r.s429:,} | {r.note} |"
        )
    e_rows = [r for r in table if r.scenario.startswith("E")]
    if len(e_rows) == 2:
        small, large = e_rows
        extra.append(
            f"- E peak RSS: {large.rss_mb:.0f} MB at {large.rows:,} rows against {small.rss_mb:.0f} MB "
            f"at {small.rows:,} ({large.rss_mb / small.rss_mb:.2f} times; the run holds 8 bytes an id for "
            "the uniqueness check, 24 at the check's peak)."
        )
    lines += ["", *extra, ""]
    text = "\n".join(lines)
    print(text)
    name = "latest-quick.md" if q else "latest.md"
    if not only:
        (HERE / name).write_text(text)
        print(f"saved to {HERE / name}", file=sys.stderr)


if __name__ == "__main__":
    main()
