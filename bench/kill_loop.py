"""Crash-safety loop: a real ``batchrun run`` killed with SIGKILL at random moments, rerun
until it exits 0; then every input id must be in the output exactly once.

    python -m bench.kill_loop [--rows 5000] [--concurrency 32] [--kills 20]
    python -m bench.kill_loop --batch [--batch-size 500]   # the same through the Batch API
    python -m bench.kill_loop --batch --batch-api openai   # through the OpenAI Batch API shape

Reports unique ids, duplicate paid requests (the simulator counts fresh answers given twice
for one Idempotency-Key) and the bound they are held to (kills x concurrency).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from bench.harness import Simulator


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--latency-ms", type=float, default=150.0)
    ap.add_argument(
        "--honor-idempotency",
        action="store_true",
        help="the simulator replays answers for a known key",
    )
    ap.add_argument(
        "--choices",
        help="label with --choices (a forced tool): kills land between answers and re-asks too",
    )
    ap.add_argument(
        "--invalid-rate", type=float, default=0.0, help="the simulator's share of invalid answers"
    )
    ap.add_argument("--batch", action="store_true", help="--mode batch (the Batch API)")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument(
        "--batch-api",
        choices=("gateway", "openai"),
        default="gateway",
        help="the Batch API shape with --batch (the simulator serves both)",
    )
    ap.add_argument(
        "--ray",
        type=int,
        metavar="K",
        help="--engine ray with K shards (2 at a time); the driver is the process killed, "
        "each 4-12 s after its start (Ray itself takes some 4 s to start)",
    )
    opts = ap.parse_args()
    rng = random.Random(opts.seed)
    with tempfile.TemporaryDirectory(prefix="batchrun-kill-") as d:
        tmp = Path(d)
        src = tmp / "in.jsonl"
        with src.open("w") as f:
            for i in range(opts.rows):
                f.write(json.dumps({"id": f"r{i}", "prompt": f"prompt number {i}"}) + "\n")
        out = tmp / "out.parquet"
        extra = ["--honor-idempotency"] if opts.honor_idempotency else []
        extra += ["--invalid-rate", str(opts.invalid_rate)]
        if opts.batch:
            extra += ["--batch-delay", "1.5"]
        sim = Simulator(
            "--latency-ms", str(opts.latency_ms), "--jitter-ms", str(opts.latency_ms / 3), *extra
        )
        args = [
            sys.executable, "-m", "batchrun", "run", "--input", str(src), "--output", str(out),
            "--base-url", sim.url, "--concurrency", str(opts.concurrency), "--quiet",
            *(["--choices", opts.choices, "--max-failure-rate", "1"] if opts.choices else []),
        ]  # fmt: skip
        if opts.ray:
            args += ["--engine", "ray", "--shards", str(opts.ray)]
            env_state = tmp / "state"  # the shards' journals: the workers' own disk
            os.environ["BATCHRUN_STATE_DIR"] = str(env_state)
        if opts.batch:
            args += [
                "--mode",
                "batch",
                "--batch-size",
                str(opts.batch_size),
                "--poll-interval",
                "0.2",
                "--batch-api",
                opts.batch_api,
            ]
        env = dict(os.environ, AIMLAPI_KEY="bench-key")
        kills = runs = 0
        t0 = time.perf_counter()
        try:
            while True:
                runs += 1
                proc = subprocess.Popen(
                    args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                if kills < opts.kills:
                    time.sleep(rng.uniform(4.0, 12.0) if opts.ray else rng.uniform(0.6, 2.0))
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGKILL)
                        proc.wait()
                        kills += 1
                        continue
                code = proc.wait()
                if code == 0:
                    break
                if runs > opts.kills + 10:
                    raise SystemExit(f"run {runs} exited {code}")
            stats = sim.stats()
        finally:
            sim.close()
        wall = time.perf_counter() - t0
        table = pq.read_table(out)
        ids = table.column("id").to_pylist()
        summary = json.loads(out.with_suffix(".summary.json").read_text())
        expected = [f"r{i}" for i in range(opts.rows)]
        print(
            f"rows {opts.rows:,}, concurrency {opts.concurrency}, SIGKILLs {kills}, runs {runs}, wall {wall:.1f} s"
        )
        print(
            f"output rows {len(ids):,}; unique ids {len(set(ids)):,}; ids == input ids in order: {ids == expected}"
        )
        print(
            f"statuses: {dict((s, table.column('status').to_pylist().count(s)) for s in {'ok', 'error'})}"
        )
        print(
            f"simulator: {stats['requests']:,} requests, {stats['ok']:,} fresh answers, "
            f"{stats['replayed']:,} replayed for a known Idempotency-Key, billed twice {stats['billed_twice']} ({stats['keys_billed_twice']} rows)"
        )
        if opts.batch:
            print(
                f"batches ({opts.batch_api} shape): {stats['batches_created']} created ({stats['batch_creates_replayed']} creates "
                f"answered with an existing batch), {stats['batch_requests']:,} requests in them: "
                f"{stats['batch_requests'] - opts.rows:,} beyond one a row; chunks possibly created "
                f"twice: {len(summary['batches_in_doubt'])}"
            )
        print(
            f"bound: kills x concurrency = {kills * opts.concurrency}; rows counted as possibly charged twice: {summary['rows_possibly_charged_twice']}"
        )
        if opts.choices:
            attempts = sum(table.column("attempts").to_pylist())
            print(
                f"re-asks: {stats['followups']:,} follow-ups answered; attempts in the output "
                f"{attempts:,}; labels: {sorted(set(table.column('label').to_pylist()) - {None})}"
            )


if __name__ == "__main__":
    main()
