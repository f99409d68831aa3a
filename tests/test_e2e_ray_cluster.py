"""End to end against a Ray cluster batchrun did not start (``--ray-address``): a head node
started by the test (`ray start --head --block`) with the API key in its environment, as
an operator sets it on a cluster; batchrun joins it, never ships the key, and leaves the
cluster running when it is done."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli, write_jsonl

pytest.importorskip("ray")

pytestmark = pytest.mark.e2e

#: The key the head (and so every worker) holds; the driver has another one.
WORKER_KEY = "worker-side-key-7f3a9c"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    port = _free_port()
    state = tmp_path / "worker-state"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "AIMLAPI_KEY": WORKER_KEY,
           "BATCHRUN_STATE_DIR": str(state)}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    ray_cli = Path(sys.executable).with_name("ray")
    log = (tmp_path / "head.log").open("w")
    head = subprocess.Popen(
        [str(ray_cli), "start", "--head", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats", "--block"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert head.poll() is None, (tmp_path / "head.log").read_text()
            time.sleep(0.2)
        time.sleep(2)  # the raylet registers after the control store listens
        yield address, state, head
    finally:
        head.send_signal(signal.SIGTERM)  # --block: ends its processes with it
        head.wait(60)
        log.close()


def test_joining_a_running_cluster_leaves_it_running(
    ray_head: tuple[str, Path, subprocess.Popen[bytes]], tmp_path: Path, sim_factory: Any
) -> None:
    address, worker_state, head = ray_head
    sim = sim_factory(api_key=WORKER_KEY)
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "prompt": f"p{i}"} for i in range(300)])
    out = tmp_path / "out.parquet"
    r = run_cli(
        "run", "--input", str(src), "--output", str(out), "--base-url", sim.url, "--quiet",
        "--engine", "ray", "--ray-address", address, "--shards", "3",
        env={"RAY_AUTH_MODE": "disabled", "BATCHRUN_STATE_DIR": str(tmp_path / "driver")},
        key="driver-side-key-0b1d",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "Ray joined in" in r.stderr
    # The workers sent with the key of their own environment (the simulator takes no
    # other), so the driver's never went through Ray.
    assert pq.read_table(out).column("id").to_pylist() == list(range(300))
    assert sim.stats.requests == 300
    # The shards' journals live on the workers' disk (their state folder), not the driver's.
    assert list(worker_state.glob("ray/*/shard-00002/part.checkpoint/journal.sqlite"))
    assert not list((tmp_path / "driver").glob("ray/*/shard-*"))
    # The cluster batchrun joined is still there (`ray start --block` ends when any of its
    # processes does), and still takes connections.
    time.sleep(1)
    assert head.poll() is None
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", int(address.split(":")[1]))) == 0


def test_an_unreachable_cluster_is_one_line_and_exit_2(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory()
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "prompt": f"p{i}"} for i in range(5)])
    r = run_cli(
        "run", "--input", str(src), "--output", str(tmp_path / "o.parquet"), "--base-url",
        sim.url, "--quiet", "--engine", "ray", "--ray-address", f"127.0.0.1:{_free_port()}",
        env={"BATCHRUN_STATE_DIR": str(tmp_path / "st")}, timeout=180,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "cannot reach the Ray cluster" in r.stderr
    assert "Traceback" not in r.stderr and sim.stats.requests == 0
