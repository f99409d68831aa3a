"""End to end on a local Ray (2 CPUs, started and stopped by batchrun): the real CLI,
shards as Ray tasks, against the simulator over real sockets."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from batchrun.simulate.serving import SIM_KEY
from tests.conftest import ROOT, run_cli, write_jsonl
from tests.test_e2e_s3 import Store as S3Store
from tests.test_e2e_s3 import _no_credentials_written as no_credentials_written
from tests.test_e2e_s3 import s3_endpoint  # noqa: F401 - the S3 server fixture, by name

pytest.importorskip("ray")

pytestmark = pytest.mark.e2e

#: Columns that differ between any two runs of the same rows (ids of the answer, timing).
_PER_SEND = {"response_id", "latency_ms", "finished_at", "inference_id"}


def _rows(n: int) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "prompt": f"say {i}", "group": i % 3} for i in range(n)]


def _ray(tmp: Path, sim: Any, src: Path, out: Path, *extra: str, **kw: Any) -> Any:
    return run_cli(
        "run", "--input", str(src), "--output", str(out), "--base-url", sim.url, "--quiet",
        "--engine", "ray", *extra, env=_env(tmp), **kw,
    )  # fmt: skip


def _env(tmp: Path) -> dict[str, str]:
    return {"BATCHRUN_STATE_DIR": str(tmp / "state"), "BATCHRUN_JOURNAL_COPY_S": "0.5"}


def _cmd(
    tmp: Path, sim: Any, src: Path, out: Path, *extra: str
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a Ray run a test starts itself."""
    args = [sys.executable, "-m", "batchrun", "run", "--input", str(src), "--output", str(out),
            "--base-url", sim.url, "--quiet", "--engine", "ray", *extra]  # fmt: skip
    return args, {**os.environ, "AIMLAPI_KEY": "test-key", **_env(tmp)}


def _kill_once_sending(args: list[str], env: dict[str, str], sim: Any, after: int) -> bool:
    """Start a batchrun command and SIGKILL it once the simulator has had ``after`` more
    requests (Ray's start-up takes seconds, longer on a loaded machine); False if it ended
    first."""
    start = sim.stats.requests
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while sim.stats.requests - start < after and time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    return True


def _ray_processes(driver_pid: int) -> list[str]:
    """The raylet and control store of the local Ray this driver started (named by its
    session folder, which ends in the driver's pid); they would outlive it for good. Its
    agents exit by themselves once these are gone. Other Rays on the machine are not its."""
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [
        line
        for line in ps.splitlines()
        if ("raylet" in line or "gcs_server" in line) and f"_{driver_pid}/" in line
    ]


def _ray_with_pid(tmp: Path, sim: Any, src: Path, out: Path, *extra: str) -> tuple[Any, int]:
    """As :func:`_ray`, and the driver's pid."""
    args, env = _cmd(tmp, sim, src, out, *extra)
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    stdout, stderr = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr), proc.pid


def test_shards_give_the_single_process_output_row_for_row(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(latency_ms=40, jitter_ms=20, reasoning_rate=0.25)
    src = write_jsonl(tmp_path / "in.jsonl", _rows(1000))
    # One process first, into the same output path (moved aside): the tracing ids name the
    # output, so they too must be the same.
    out = tmp_path / "out.parquet"
    r = run_cli("run", "--input", str(src), "--output", str(out), "--base-url", sim.url,
                "--quiet", "--concurrency", "16")  # fmt: skip
    assert r.returncode == 0, r.stderr
    single = out.rename(tmp_path / "single.parquet")
    shutil.rmtree(tmp_path / "out.checkpoint")
    (tmp_path / "out.summary.json").unlink()
    sent_before = sim.stats.requests
    r, pid = _ray_with_pid(tmp_path, sim, src, out, "--shards", "8", "--workers", "2",
                           "--concurrency", "16")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "Ray started in" in r.stderr
    assert sim.stats.requests - sent_before == 1000  # one request a row, no more
    assert sim.stats.max_in_flight <= 16  # the concurrency is the cluster's total
    a, b = pq.read_table(single), pq.read_table(out)
    assert a.schema.names == b.schema.names
    assert a.schema.metadata[b"batchrun.job"] == b.schema.metadata[b"batchrun.job"]
    for name in a.schema.names:
        if name not in _PER_SEND:
            assert a.column(name).to_pylist() == b.column(name).to_pylist(), name
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["rows_ok"] == 1000 and summary["requests_sent"] == 1000
    assert summary["state"] == "complete" and summary["latency_ms"]["p50"] > 0
    assert not _ray_processes(pid)  # the local Ray batchrun started is gone with it

    # A rerun sends nothing and starts no Ray; another K or job is refused, naming it.
    r = _ray(tmp_path, sim, src, out, "--shards", "8", "--workers", "2", "--concurrency", "16")
    assert r.returncode == 0 and "already complete" in r.stderr
    assert "Ray started" not in r.stderr and sim.stats.requests - sent_before == 1000
    r = _ray(tmp_path, sim, src, out, "--shards", "4")
    assert r.returncode == 5 and "--shards (8 then, 4 now)" in r.stderr
    r = _ray(tmp_path, sim, src, out, "--shards", "8", "--max-tokens", "64")
    assert r.returncode == 5 and "params.max_tokens" in r.stderr
    with src.open("a") as f:
        f.write(json.dumps({"id": "r1000", "prompt": "one more"}) + "\n")
    r = _ray(tmp_path, sim, src, out, "--shards", "8")
    assert r.returncode == 5 and "the input changed" in r.stderr
    assert sim.stats.requests - sent_before == 1000  # nothing sent by the refused reruns


def test_bad_input_is_refused_before_ray_starts_or_anything_is_sent(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory()
    rows = _rows(50)
    rows[40]["id"] = "r3"  # a duplicate id in another shard than its first
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    r = _ray(tmp_path, sim, src, tmp_path / "out.parquet", "--shards", "4")
    assert r.returncode == 2
    assert "r3" in r.stderr and "line 41" in r.stderr
    assert "Ray started" not in r.stderr and sim.stats.requests == 0


#: A driver whose shard task has a bug: run_shard replaced by one that raises (defined in
#: __main__, so Ray ships it by value to the worker).
_BROKEN_SHARD = """
import sys
from pathlib import Path

import batchrun.cluster.driver as driver
from batchrun.cluster.options import EngineOptions
from batchrun.errors import BatchrunError
from batchrun.job import Job


def broken(spec, coordinator):
    raise ValueError("no such thing")


driver.run_shard = broken
job = Job(input_path=Path(sys.argv[1]), output_path=Path(sys.argv[2]), base_url=sys.argv[3])
try:
    driver.run_on_ray(job, EngineOptions(engine="ray", shards=2), print, True)
except BatchrunError as exc:
    print(exc.exit_code, exc.message)
"""


def test_a_bug_inside_a_shard_is_said_at_once_and_not_taken_for_a_lost_worker(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory()
    src = write_jsonl(tmp_path / "in.jsonl", _rows(20))
    script = tmp_path / "broken.py"
    script.write_text(_BROKEN_SHARD)
    _, env = _cmd(tmp_path, sim, src, tmp_path / "out.parquet")
    r = subprocess.run([sys.executable, str(script), str(src), str(tmp_path / "out.parquet"),
                        sim.url], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=240)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "worker was lost" not in r.stdout  # not started again as if its node had died
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("1 shard ") and "a bug in batchrun" in last
    assert "ValueError: no such thing" in last
    assert sim.stats.requests == 0


def test_a_lost_coordinator_stops_the_run_in_one_line_and_a_rerun_resumes(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(latency_ms=100)
    n = 1200
    src = write_jsonl(tmp_path / "in.jsonl", _rows(n))
    out = tmp_path / "out.parquet"
    args, env = _cmd(tmp_path, sim, src, out, "--shards", "4", "--concurrency", "8")
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while sim.stats.requests < 200 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    actors = [int(line.split()[0]) for line in ps.splitlines() if "ray::Coordinator" in line]
    assert len(actors) == 1, ps  # this run's (no other Ray runs during the tests)
    os.kill(actors[0], signal.SIGKILL)  # as an OOM kill or a lost node would
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    assert "the cluster's coordinator was lost" in stderr and "Traceback" not in stderr
    assert "a bug" not in stderr
    assert 0 < sim.stats.requests < n
    r = _ray(tmp_path, sim, src, out, "--shards", "4", "--concurrency", "8", timeout=240)
    assert r.returncode == 0, r.stderr
    assert pq.read_table(out).column("id").to_pylist() == [f"r{i}" for i in range(n)]


def test_kill_9_of_the_driver_then_rerun_gives_every_row_once(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(latency_ms=150, jitter_ms=50)
    n, concurrency = 1500, 16
    src = write_jsonl(tmp_path / "in.jsonl", _rows(n))
    out = tmp_path / "out.parquet"
    args, env = _cmd(tmp_path, sim, src, out, "--shards", "6", "--concurrency", str(concurrency))
    kills = sum(_kill_once_sending(args, env, sim, after) for after in (200, 400))
    assert kills == 2
    assert 0 < sim.stats.requests < n  # each killed mid-way
    r = _ray(tmp_path, sim, src, out, "--shards", "6", "--concurrency", str(concurrency),
             timeout=240)  # fmt: skip
    assert r.returncode == 0, r.stderr
    ids = pq.read_table(out).column("id").to_pylist()
    assert ids == [f"r{i}" for i in range(n)]  # every row once, in input order
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    # Rows paid twice are those in flight at a kill (resent with their key, which this
    # simulator does not honour): within the bound, and every one counted.
    extra = sim.stats.requests - n
    assert extra == sim.stats.keys_billed_twice <= kills * concurrency
    assert summary["rows_possibly_charged_twice"] >= extra


def test_a_lost_worker_disk_resumes_from_the_journal_copy(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(latency_ms=100)
    n = 1200
    src = write_jsonl(tmp_path / "in.jsonl", _rows(n))
    out = tmp_path / "out.parquet"
    args, env = _cmd(tmp_path, sim, src, out, "--shards", "2", "--concurrency", "8")
    assert _kill_once_sending(args, env, sim, 400)  # copies every 0.5 s: several made
    copies = sorted(p.name for p in (tmp_path / "out.shards").glob("journal-*.sqlite"))
    assert copies, "no journal copy in the store after seconds of sending"
    shutil.rmtree(tmp_path / "state" / "ray")  # the workers' disks are gone
    first = sim.stats.requests
    assert 0 < first < n
    r = _ray(tmp_path, sim, src, out, "--shards", "2", "--concurrency", "8", timeout=240)
    assert r.returncode == 0, r.stderr
    assert "resumed from its journal copy" in r.stderr
    ids = pq.read_table(out).column("id").to_pylist()
    assert ids == [f"r{i}" for i in range(n)]
    # The copy kept most of what was done: far fewer than every row were sent again.
    resent = sim.stats.requests - n
    assert resent < first
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["rows_possibly_charged_twice"] >= resent


def test_rpm_is_the_clusters_and_a_403_on_one_shard_stops_them_all(
    tmp_path: Path, sim_factory: Any
) -> None:
    limit = 1800  # 30 a second, enforced by the simulator over 2 s windows
    sim = sim_factory(rpm_limit=limit, rpm_window_s=2.0)
    src = write_jsonl(tmp_path / "in.jsonl", _rows(300))
    out = tmp_path / "out.parquet"
    r = _ray(tmp_path, sim, src, out, "--shards", "4", "--workers", "4", "--rpm", str(limit),
             "--concurrency", "32")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert sim.stats.rate_limited == 0  # four shards, one limit: never exceeded
    assert sim.stats.requests == 300

    bad = sim_factory(latency_ms=50, rate_403=0.01, seed=3)
    src2 = write_jsonl(tmp_path / "in2.jsonl", _rows(1000))
    out2 = tmp_path / "out2.parquet"
    r = _ray(tmp_path, bad, src2, out2, "--shards", "4", "--workers", "4", "--concurrency", "8")
    assert r.returncode == 4, r.stderr
    assert "shard" in r.stderr and "Insufficient credits" in r.stderr
    assert bad.stats.requests < 1000  # every shard stopped, not only the one that met it
    summary = json.loads((tmp_path / "out2.summary.json").read_text())
    assert summary["state"] == "partial" and summary["exit_code"] == 4
    # The account is topped up: the same server (the same job) answers every request now.
    bad._sim._app[SIM_KEY].faults.config = replace(bad.config, rate_403=0.0)
    r = _ray(tmp_path, bad, src2, out2, "--shards", "4", "--workers", "4", "--concurrency", "8",
             "--retry-failed")  # fmt: skip
    assert r.returncode == 0, r.stderr
    t = pq.read_table(out2)
    assert t.column("id").to_pylist() == [f"r{i}" for i in range(1000)]
    assert set(t.column("status").to_pylist()) == {"ok"}


def test_sigterm_stops_every_shard_resumably_and_ray_goes_with_the_driver(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(latency_ms=200)
    src = write_jsonl(tmp_path / "in.jsonl", _rows(800))
    out = tmp_path / "out.parquet"
    args, env = _cmd(tmp_path, sim, src, out, "--concurrency", "8")
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while sim.stats.requests < 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "interrupted by SIGTERM" in stdout + stderr
    assert not _ray_processes(proc.pid)
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["state"] == "partial" and 0 < summary["rows_ok"] < 800
    sent = sim.stats.requests
    r = _ray(tmp_path, sim, src, out, "--concurrency", "8", timeout=240)
    assert r.returncode == 0, r.stderr
    assert pq.read_table(out).column("id").to_pylist() == [f"r{i}" for i in range(800)]
    # In-flight rows finished before the shards stopped: the rerun sent only the rest.
    assert sim.stats.requests - sent == 800 - summary["rows_ok"] - summary["rows_error"]


def test_output_dataset_keeps_the_parts_as_a_folder(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory()
    src = write_jsonl(tmp_path / "in.jsonl", _rows(90))
    out = tmp_path / "out.parquet"
    r = _ray(tmp_path, sim, src, out, "--shards", "3", "--output-dataset")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"part-0000{i}.parquet" for i in range(3)]
    t = pq.read_table(out)  # a folder of parts reads as one table
    assert sorted(t.column("id").to_pylist()) == sorted(f"r{i}" for i in range(90))


def test_input_and_output_in_s3_on_ray(
    request: pytest.FixtureRequest, tmp_path: Path, sim_factory: Any
) -> None:
    store = S3Store(request.getfixturevalue("s3_endpoint"), tmp_path)
    sim = sim_factory()
    rows = _rows(200)
    src = store.put("in/prompts.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    out = store.uri("out/labels.parquet")
    r = run_cli("run", "--input", src, "--output", out, "--base-url", sim.url, "--quiet",
                "--engine", "ray", "--shards", "3", env=store.env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    t = pq.read_table(io.BytesIO(store.get("out/labels.parquet")))
    assert t.column("id").to_pylist() == [row["id"] for row in rows]
    assert set(t.column("status").to_pylist()) == {"ok"} and sim.stats.requests == 200
    keys = store.object_keys()
    # Beside the output: its summary, the manifest and the store of shard files.
    assert {"out/labels.summary.json", "out/labels.manifest.json"} <= set(keys)
    assert "out/labels.shards/part-00002.parquet" in keys
    assert "out/labels.shards/journal-00000.sqlite" in keys
    assert not [k for k in keys if k.endswith(".batchrun.tmp")]
    no_credentials_written(store, tmp_path)
    again = run_cli("run", "--input", src, "--output", out, "--base-url", sim.url, "--quiet",
                    "--engine", "ray", "--shards", "3", env=store.env)  # fmt: skip
    assert again.returncode == 0 and "already complete" in again.stderr
    assert sim.stats.requests == 200


def test_a_killed_worker_is_started_again_and_its_shard_resumes(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(latency_ms=100)
    n = 1200
    src = write_jsonl(tmp_path / "in.jsonl", _rows(n))
    out = tmp_path / "out.parquet"
    args, env = _cmd(tmp_path, sim, src, out, "--shards", "2", "--concurrency", "8")
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while sim.stats.requests < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    workers = [int(line.split()[0]) for line in ps.splitlines() if "ray::run_shard" in line]
    assert workers, ps
    os.kill(workers[0], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr
    assert "worker was lost" in stderr and "starting it again from its journal" in stderr
    assert pq.read_table(out).column("id").to_pylist() == [f"r{i}" for i in range(n)]
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    extra = sim.stats.requests - n
    assert extra == sim.stats.keys_billed_twice <= 8  # the killed worker's rows in flight
    assert summary["rows_possibly_charged_twice"] >= extra
    # Both attempts' requests are in the summary (the first's as last reported before its
    # worker died: its last quarter second and its rows in flight may be missing).
    assert sim.stats.requests - 40 <= summary["requests_sent"] <= sim.stats.requests


def test_max_cost_is_the_clusters_and_a_higher_cap_continues(
    tmp_path: Path, sim_factory: Any
) -> None:
    # 1,000 rows cost some $0.79 at --max-tokens 16 (the simulator reports each answer's
    # cost, as the gateway does): a cap of $0.40 admits about half of them.
    sim = sim_factory(latency_ms=20, jitter_ms=10)
    n, cap = 1000, 0.40
    src = write_jsonl(tmp_path / "in.jsonl", _rows(n))
    out = tmp_path / "out.parquet"
    args = ("--shards", "4", "--workers", "2", "--concurrency", "16", "--max-tokens", "16")
    r = _ray(tmp_path, sim, src, out, *args, "--max-cost", str(cap), timeout=240)
    assert r.returncode == 4, r.stderr
    assert "budget: the cost cap of $0.4000 is reached" in r.stderr
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["exit_code"] == 4 and "budget" in summary["stop_reason"]
    # Over every shard: what the server charged, and what the summary says was spent.
    assert sim.stats.usd_spent <= cap
    assert summary["spent_usd"] <= cap
    assert summary["spent_usd"] == pytest.approx(sim.stats.usd_spent, abs=1e-6)
    # It stopped at the cap, not well before it (the last requests reserve their worst).
    assert 380 <= summary["rows_ok"] < 520, summary["rows_ok"]
    first = sim.stats.ok
    # A higher cap continues: the rows already answered are not sent again.
    r = _ray(tmp_path, sim, src, out, *args, "--max-cost", "10", timeout=240)
    assert r.returncode == 0, r.stderr
    assert pq.read_table(out).column("id").to_pylist() == [f"r{i}" for i in range(n)]
    assert sim.stats.ok == n and first == summary["rows_ok"]
    final = json.loads((tmp_path / "out.summary.json").read_text())
    assert final["spent_usd"] == pytest.approx(sim.stats.usd_spent, abs=1e-6)
