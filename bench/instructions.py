"""Client instructions per row, counted by callgrind: a figure the machine's load cannot move.

Wall-clock rows/s on a shared two-core machine swing by half from one run to the next;
instructions executed do not. This runs the real ``batchrun run`` under
``valgrind --tool=callgrind`` against one simulator (this checkout's, so the server is the
same for every client), at two input sizes, and reports the marginal instructions per row
(the difference of the two totals over the difference of the sizes, start-up cancelled out)
and the start-up cost. With ``--against REV`` the same is measured for the client at git
revision REV (extracted with ``git archive``), and the ratio of the two is printed.

    python -m bench.instructions --against d0cabcc
    python -m bench.instructions --sim-args="--reasoning-rate 0.25"

Needs valgrind. Each run is 40-60 s (callgrind slows Python some fifty times).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.harness import HERE, Simulator, make_input

ROOT = HERE.parent


@dataclass(frozen=True)
class Count:
    label: str
    per_row: float
    startup: float


def _collected(stderr: str) -> int:
    m = re.search(r"Collected : (\d+)", stderr)
    if not m:
        raise RuntimeError(f"callgrind printed no total: {stderr[-500:]}")
    return int(m.group(1))


def instructions(code: Path, url: str, src: Path, out: Path) -> int:
    """Instructions the client at ``code`` executes to run ``src`` to the end."""
    env = dict(os.environ, AIMLAPI_KEY="bench-key", PYTHONPATH=str(code))
    proc = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}.cg",
            sys.executable,
            "-m",
            "batchrun",
            "run",
            "--input",
            str(src),
            "--base-url",
            url,
            "--concurrency",
            "64",
            "--output",
            str(out),
            "--quiet",
            "--restart",
        ],
        env=env,
        # Not this checkout's folder: `python -m` puts the working directory first on the
        # path, and its batchrun would shadow the one PYTHONPATH names.
        cwd=out.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"client at {code} exited {proc.returncode}: {proc.stderr[-500:]}")
    return _collected(proc.stderr)


def measure(label: str, code: Path, url: str, tmp: Path, sizes: tuple[int, int]) -> Count:
    small, large = sizes
    totals = []
    for n in sizes:
        src = tmp / f"in{n}.jsonl"
        if not src.exists():
            make_input(src, n)
        totals.append(instructions(code, url, src, tmp / f"{label}{n}.parquet"))
        print(f"  {label}: {n:,} rows, {totals[-1]:,} instructions", file=sys.stderr)
    per_row = (totals[1] - totals[0]) / (large - small)
    return Count(label, per_row, totals[0] - per_row * small)


def extract(rev: str, into: Path) -> Path:
    """The tree at ``rev`` (its ``batchrun`` package is what PYTHONPATH picks up)."""
    archive = subprocess.run(
        ["git", "archive", rev], cwd=ROOT, capture_output=True, check=True
    ).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--against", metavar="REV", help="also measure the client at REV")
    ap.add_argument("--sizes", default="1000,3000", help="two input sizes (rows)")
    ap.add_argument("--sim-args", default="--reasoning-rate 0", help="simulator options")
    opts = ap.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("bench.instructions: valgrind is not installed")
    a, b = (int(x) for x in opts.sizes.split(","))
    with tempfile.TemporaryDirectory(prefix="batchrun-instr-") as d:
        tmp = Path(d)
        sim = Simulator(*shlex.split(opts.sim_args))
        try:
            counts = [measure("this checkout", ROOT, sim.url, tmp, (a, b))]
            if opts.against:
                old = extract(opts.against, tmp / "old")
                counts.append(measure(opts.against, old, sim.url, tmp, (a, b)))
        finally:
            sim.close()
    print(f"simulator: {opts.sim_args or '(defaults)'}; sizes {a:,} and {b:,} rows\n")
    print("| client | instructions / row | start-up (M instructions) |")
    print("|---|---:|---:|")
    for c in counts:
        print(f"| {c.label} | {c.per_row:,.0f} | {c.startup / 1e6:,.0f} |")
    if len(counts) == 2:
        print(f"\nthis checkout / {opts.against}: {counts[0].per_row / counts[1].per_row:.3f}")


if __name__ == "__main__":
    main()
