"""``batchrun cancel`` end to end: named by its job file, and for a job whose output is in
object storage (its journal on the local disk): the real CLI against the simulator's Batch
API, and moto's S3 server for the latter (the fixtures of test_e2e_s3)."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, run_cli, write_jsonl

pytest.importorskip("moto.server")

from tests import test_e2e_s3 as s3  # after the skip: it imports moto

pytestmark = pytest.mark.e2e

#: test_e2e_s3's moto server on a loopback port, a fixture of this module too.
s3_endpoint = s3.s3_endpoint


@pytest.fixture
def store(s3_endpoint: str, tmp_path: Path) -> s3.Store:
    return s3.Store(s3_endpoint, tmp_path)


ROWS = [{"id": f"row-{i:03d}", "prompt": f"Label item {i}."} for i in range(100)]


def _killed_while_polling(args: list[str], env: dict[str, str] | None = None) -> None:
    """Run ``batchrun run ARGS`` until it has created its batches and polled once; SIGKILL."""
    proc = subprocess.run(
        [sys.executable, "-m", "batchrun", "run", *args],
        cwd=ROOT,
        env={
            **os.environ,
            "AIMLAPI_KEY": "test-key",
            "BATCHRUN_CRASH_AT": "polling",
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def _canceled(stdout: str) -> int:
    return len(re.findall(r"^batchrun: chunk \d \(rows [\d-]+\) \S+: canceling$", stdout, re.M))


def test_cancel_job_file_cancels_what_a_run_of_that_file_left_open(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(batch_delay_s=30.0)
    write_jsonl(tmp_path / "in.jsonl", ROWS)
    job = tmp_path / "label.toml"
    job.write_text(
        f'input = "in.jsonl"\noutput = "out/labels.parquet"\nbase_url = "{sim.url}"\n'
        'mode = "batch"\nbatch_size = 50\npoll_interval = 0.1\n'
    )
    _killed_while_polling([str(job), "--quiet"])
    cancel = run_cli("cancel", str(job))
    assert cancel.returncode == 0, cancel.stderr
    assert _canceled(cancel.stdout) == 2 and sim.stats.batch_cancels == 2
    again = run_cli("cancel", str(job))  # the batches are still open in the journal
    assert again.returncode == 0, again.stderr
    rerun = run_cli("run", str(job), "--quiet")
    assert rerun.returncode == 3, rerun.stderr
    out = tmp_path / "out" / "labels.parquet"
    types = pq.read_table(out).column("error_type").to_pylist()
    assert set(types) <= {"batch_canceled", None} and "batch_canceled" in types
    assert sim.stats.batches_created == 2 and sim.stats.requests == 0
    # Once every batch is done, there is nothing to cancel.
    done = run_cli("cancel", str(job))
    assert done.returncode == 0 and done.stdout.strip() == "batchrun: no open batches"


@pytest.mark.parametrize("named_by", ["--output", "job file"])
def test_cancel_finds_the_local_journal_of_an_output_in_object_storage(
    store: s3.Store, sim_factory: Any, tmp_path: Path, named_by: str
) -> None:
    sim = sim_factory(batch_delay_s=30.0)
    src = store.put("in/p.jsonl", b"".join(json.dumps(r).encode() + b"\n" for r in ROWS))
    out = store.uri("out/labels.parquet")
    args = ["--input", src, "--output", out, "--base-url", sim.url, "--mode", "batch",
            "--batch-size", "50", "--poll-interval", "0.1", "--quiet"]  # fmt: skip
    _killed_while_polling(args, store.env)
    if named_by == "--output":
        # click's Path type made s3://b/k s3:/b/k, and the journal was looked for beside it.
        cancel = run_cli("cancel", "--output", out, env=store.env)
    else:
        job = tmp_path / "job.toml"
        job.write_text(f'input = "{src}"\noutput = "{out}"\nbase_url = "{sim.url}"\n')
        cancel = run_cli("cancel", str(job), env=store.env)
    assert cancel.returncode == 0, cancel.stderr
    assert _canceled(cancel.stdout) == 2 and sim.stats.batch_cancels == 2
    rerun = run_cli("run", *args, env=store.env)
    assert rerun.returncode == 3, rerun.stderr
    table = pq.read_table(io.BytesIO(store.get_uri(out)))
    types = table.column("error_type").to_pylist()
    assert set(types) <= {"batch_canceled", None} and "batch_canceled" in types
