"""``make bench``: the real CLI against ``batchrun simulate``, each in its own process.

Server and client are pinned to different cores where the machine has two. Every scenario
reports figures and a ratio to its ideal; nothing here asserts. Results are printed as a
Markdown table and saved under ``bench/``.

    python -m bench.run            # every scenario, full size
    python -m bench.run --quick    # smaller inputs, for day-to-day work
    python -m bench.run --only A,C # some scenarios
    python -m bench.run --quick --only I   # dedupe on (no repeats) against dedupe off
    python -m bench.run --quick --only J   # --mode batch
    python -m bench.run --only R           # the Ray engine (local Ray)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
from pathlib import Path

from bench import compare_bench, image_bench, ray_bench
from bench.harness import (
    CLIENT_CPU,
    HERE,
    SERVER_CPU,
    TWO_CORES,
    Row,
    Simulator,
    bare_loop_rate,
    commit_id,
    free_port,
    run_client,
    scenario,
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
        if want("R"):  # the Ray engine on a local Ray (bench/ray_bench.py)
            extra += ray_bench.scenario(tmp, q)
        if want("G"):  # batchrun compare of two outputs (bench/compare_bench.py)
            extra += compare_bench.scenario(tmp, 100_000 if q else 1_000_000)
    lines = [
        f"# batchrun benchmarks — {dt.date.today().isoformat()}",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"server pinned to core {SERVER_CPU}, client to core {CLIENT_CPU}: {TWO_CORES}. {'Quick run.' if q else 'Full run.'} "
        f"Commit {commit_id()}. Load average (1 min) {load_before:.1f} at the start, "
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
