"""Wall-clock A/B of the client at other revisions against this checkout's: one simulator
build for all, runs alternated round by round so that drift on a shared machine hits every
client alike, each as a ratio to a bare aiohttp loop measured between rounds. Medians.

    python -m bench.ab --against d0cabcc,47e1dc8           # scenario A, 20,000 rows, 3 rounds
    python -m bench.ab --against d0cabcc --rows 10000 --rounds 5

On a 2-core machine shared with other work, single runs of one client swing by ±20 %:
read the medians, and `python -m bench.instructions` for a figure load cannot move.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import CLIENT_CPU, Simulator, _pin, bare_loop_rate, make_input, sending_rate
from bench.instructions import ROOT, extract


def run_once(code: Path, url: str, src: Path, out: Path, rows: int) -> tuple[float, float]:
    """End-to-end and while-sending rows/s of the client at ``code``."""
    for stale in (out, out.with_suffix(".summary.json")):
        stale.unlink(missing_ok=True)
    shutil.rmtree(out.with_suffix(".checkpoint"), ignore_errors=True)
    env = dict(os.environ, AIMLAPI_KEY="bench-key", PYTHONPATH=str(code))
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "batchrun", "run", "--input", str(src), "--output", str(out),
         "--base-url", url, "--concurrency", "64", "--quiet"],
        env=env, cwd=out.parent, preexec_fn=_pin(CLIENT_CPU), capture_output=True, check=True,
    )  # fmt: skip
    return rows / (time.perf_counter() - t0), sending_rate(out)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--against", required=True, help="revisions, comma-separated")
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="batchrun-ab-") as d:
        tmp = Path(d)
        clients = {"this checkout": ROOT}
        for rev in opts.against.split(","):
            clients[rev] = extract(rev, tmp / rev)
        src = make_input(tmp / "in.jsonl", opts.rows)
        sim_args = ["--reasoning-rate", "0"]
        bare: list[float] = []
        results: dict[str, list[tuple[float, float]]] = {c: [] for c in clients}
        for r in range(opts.rounds):
            bare.append(bare_loop_rate(sim_args, opts.rows, 64))
            for label, code in clients.items():
                sim = Simulator(*sim_args)  # this checkout's, whichever client it serves
                try:
                    out = tmp / f"out-{r}-{label.replace(' ', '_')}.parquet"
                    results[label].append(run_once(code, sim.url, src, out, opts.rows))
                finally:
                    sim.close()
                e2e, sending = results[label][-1]
                print(f"round {r} {label}: {e2e:,.0f} rows/s end to end, {sending:,.0f} "
                      "while sending", file=sys.stderr, flush=True)  # fmt: skip
        ideal = statistics.median(bare)
        print(f"scenario A (0 ms, concurrency 64), {opts.rows:,} rows, {opts.rounds} rounds "
              f"alternated; bare loop (median) {ideal:,.0f} rows/s\n")  # fmt: skip
        print("| client | rows/s end to end | rows/s while sending | while sending / bare loop |")
        print("|---|---:|---:|---:|")
        for label, runs in results.items():
            e2e = statistics.median(x[0] for x in runs)
            sending = statistics.median(x[1] for x in runs)
            print(f"| {label} | {e2e:,.0f} | {sending:,.0f} | {sending / ideal:.1%} |")


if __name__ == "__main__":
    main()
