"""Scenario R: the Ray engine on a local Ray (started and stopped by batchrun).

- R1: 5,000 rows at 200 ± 50 ms, K = 8 shards, N = 2 at a time, against one process at the
  same total concurrency: rows/s from the first request to the last answer (the ideal is
  the single process's, measured in the same run; target ≥ 0.9), Ray's start-up as the
  driver reports it, and whether the two outputs are the same row for row (every column
  but the per-send ones: response ids, latency, timestamps, tracing ids).
- R2: ``--rpm R`` over 4 shards against the simulator's limit R: 429s (target zero) and
  the rate while sending (target ≥ 0.9 of R).
- Peak memory: the driver's (wait4) and, sampled from /proc every 0.1 s, each Ray worker
  process's and Ray's own (raylet, GCS, agents) — the workers each run shards one after
  another, so a worker's peak is its largest shard plus what it kept.

    python -m bench.run --only R
"""

from __future__ import annotations

import os
import re
import sys
import threading
from pathlib import Path

import pyarrow.parquet as pq

from bench.harness import Simulator, make_input, run_client, sending_rate

_PER_SEND = {"response_id", "latency_ms", "finished_at", "client_request_id", "inference_id"}


class RssSampler:
    """Peak RSS (MB) of every process whose command line names Ray, by pid."""

    def __init__(self) -> None:
        self.peaks: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for pid_dir in Path("/proc").iterdir():
                if not pid_dir.name.isdigit():
                    continue
                try:
                    cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    status = (pid_dir / "status").read_text()
                except OSError:
                    continue
                if "ray" not in cmd.lower():
                    continue
                m = re.search(r"VmRSS:\s+(\d+) kB", status)
                if m is None:
                    continue
                mb = int(m.group(1)) / 1024
                pid = int(pid_dir.name)
                name = _kind(cmd)
                if mb > self.peaks.get(pid, ("", 0.0))[1]:
                    self.peaks[pid] = (name, mb)

    def by_kind(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for name, mb in self.peaks.values():
            out.setdefault(name, []).append(mb)
        return out


def _kind(cmd: str) -> str:
    if "batchrun" in cmd and "--engine ray" in cmd:
        return "driver"  # its peak comes from wait4
    if "ray::" in cmd:  # a worker names itself by what it runs (ray::run_shard, ray::IDLE)
        m = re.search(r"ray::(\w+)", cmd)
        name = m.group(1) if m else "worker"
        return "worker" if name in ("run_shard", "IDLE") else f"ray::{name}"
    for part in ("raylet", "gcs_server", "dashboard", "log_monitor", "runtime_env", "monitor"):
        if part in cmd:
            return part
    return "other"


def _same_rows(a: Path, b: Path) -> bool:
    x, y = pq.read_table(a), pq.read_table(b)
    if x.schema.names != y.schema.names:
        return False
    return all(
        x.column(n).to_pylist() == y.column(n).to_pylist()
        for n in x.schema.names
        if n not in _PER_SEND
    )


def _startup_s(stderr: str) -> float | None:
    m = re.search(r"Ray started in ([\d.]+) s", stderr)
    return float(m.group(1)) if m else None


def scenario(tmp: Path, quick: bool) -> list[str]:
    lines: list[str] = []
    n, concurrency = (2_000 if quick else 5_000), 64
    src = make_input(tmp / "R1.jsonl", n)
    sim_args = ["--latency-ms", "200", "--jitter-ms", "50"]
    env_state = str(tmp / "R-state")
    os.environ["BATCHRUN_STATE_DIR"] = env_state  # run_client passes the environment on
    sim = Simulator(*sim_args)
    try:
        single_out = tmp / "R1-single.out.parquet"
        single = run_client(["--input", str(src), "--base-url", sim.url,
                             "--concurrency", str(concurrency)], single_out)  # fmt: skip
        ray_out = tmp / "R1-ray.out.parquet"
        with RssSampler() as rss:
            ray = run_client(["--input", str(src), "--base-url", sim.url, "--engine", "ray",
                              "--shards", "8", "--workers", "2",
                              "--concurrency", str(concurrency)], ray_out)  # fmt: skip
        stats = sim.stats()
    finally:
        sim.close()
    one, many = sending_rate(single_out), sending_rate(ray_out)
    kinds = rss.by_kind()
    workers = sorted(kinds.pop("worker", []), reverse=True)
    kinds.pop("driver", None)
    ray_own = sum(max(v) for v in kinds.values())
    lines.append(
        f"- R1 (Ray, {n:,} rows at 200±50 ms, K = 8, N = 2, concurrency {concurrency} in all): "
        f"while sending {many:,.1f} rows/s against one process's {one:,.1f} "
        f"(ratio {many / one:.3f}; target ≥ 0.9); end to end {n / ray.wall_s:,.1f} against "
        f"{n / single.wall_s:,.1f} rows/s; Ray's start-up {_startup_s(ray.stderr)} s; exit "
        f"{single.exit_code} / {ray.exit_code}; requests the simulator received "
        f"{stats.get('requests', 0):,} (two runs of {n:,}); outputs the same row for row: "
        f"{_same_rows(single_out, ray_out)}."
    )
    lines.append(
        f"- R1 peak RSS: driver {ray.max_rss_mb:.0f} MB (one process: {single.max_rss_mb:.0f} "
        f"MB); Ray workers {', '.join(f'{w:.0f}' for w in workers) or '—'} MB; Ray's own "
        f"processes {ray_own:.0f} MB in all ("
        + ", ".join(f"{k} {max(v):.0f}" for k, v in sorted(kinds.items()))
        + ")."
    )
    # R2: the cluster's --rpm against the server's limit.
    limit, m = 6000, (1_500 if quick else 3_000)
    src2 = make_input(tmp / "R2.jsonl", m)
    sim = Simulator("--rpm-limit", str(limit), "--rpm-window", "10")
    try:
        out2 = tmp / "R2.out.parquet"
        r2 = run_client(["--input", str(src2), "--base-url", sim.url, "--engine", "ray",
                         "--shards", "4", "--workers", "4", "--rpm", str(limit),
                         "--concurrency", "64"], out2)  # fmt: skip
        stats = sim.stats()
    finally:
        sim.close()
    rate = sending_rate(out2)
    s429 = int(stats.get("by_status", {}).get("429", 0))
    lines.append(
        f"- R2 (Ray, --rpm {limit:,} over 4 shards, the simulator's limit {limit:,}/min in "
        f"10 s windows, {m:,} rows): {s429} 429s (target 0); while sending {rate * 60:,.0f} "
        f"requests/min, {rate * 60 / limit:.1%} of the limit (target ≥ 90 %); exit "
        f"{r2.exit_code}."
    )
    return lines


if __name__ == "__main__":  # python -m bench.ray_bench [--quick]
    import tempfile

    with tempfile.TemporaryDirectory(prefix="batchrun-ray-bench-") as d:
        print("\n".join(scenario(Path(d), "--quick" in sys.argv)))
