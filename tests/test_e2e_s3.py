"""End to end with input and output in object storage: the real CLI against the simulator
and a real S3-compatible server (moto's server mode) on 127.0.0.1."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, run_cli

moto_server = pytest.importorskip("moto.server")

pytestmark = pytest.mark.e2e

KEY_ID = "AKIAS3TESTKEYID73910"
SECRET = "s3test-secret-do-not-store-b1f8c2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible server (moto) on a free loopback port, for this module."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


class Store:
    """One fresh bucket on the server, and the environment the CLI needs to reach it."""

    def __init__(self, endpoint: str, tmp: Path) -> None:
        self.bucket = f"b-{uuid.uuid4().hex[:12]}"
        self.fs = pafs.S3FileSystem(
            access_key=KEY_ID,
            secret_key=SECRET,
            endpoint_override=endpoint.removeprefix("http://"),
            scheme="http",
            region="us-east-1",
            allow_bucket_creation=True,
            allow_bucket_deletion=True,
        )
        self.fs.create_dir(self.bucket)
        self.state = tmp / "state"
        self.env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "HOME": str(tmp),  # no ~/.aws of the machine's
            "BATCHRUN_STATE_DIR": str(self.state),
        }

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def put(self, key: str, data: bytes) -> str:
        with self.fs.open_output_stream(f"{self.bucket}/{key}") as f:
            f.write(data)
        return self.uri(key)

    def get(self, key: str) -> bytes:
        with self.fs.open_input_stream(f"{self.bucket}/{key}") as f:
            return bytes(f.read())

    def get_uri(self, uri: str) -> bytes:
        with self.fs.open_input_stream(uri.removeprefix("s3://")) as f:
            return bytes(f.read())

    def object_keys(self) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.bucket, recursive=True))
        return sorted(i.path.split("/", 1)[1] for i in infos if i.type == pafs.FileType.File)


@pytest.fixture
def store(s3_endpoint: str, tmp_path: Path) -> Store:
    return Store(s3_endpoint, tmp_path)


def _rows(n: int) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "prompt": f"say {i}", "label": i % 3} for i in range(n)]


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _parquet(rows: list[dict[str, Any]]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf, row_group_size=100)
    return buf.getvalue()


def _run(
    store: Store, sim: Any, src: str, out: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "run", "--input", src, "--output", out, "--base-url", sim.url, "--quiet", *extra,
        env=store.env,
    )  # fmt: skip


def _output(store: Store, key: str) -> pa.Table:
    return pq.read_table(io.BytesIO(store.get(key)))


def _no_credentials_written(store: Store, tmp: Path) -> None:
    needles = (KEY_ID.encode(), SECRET.encode())
    files = [p for p in tmp.rglob("*") if p.is_file()]
    assert any(p.name == "journal.sqlite" for p in files)
    for p in files:
        data = p.read_bytes()
        assert not any(n in data for n in needles), p
    for key in store.object_keys():
        data = store.get(key)
        assert not any(n in data for n in needles), key


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_input_and_output_in_s3_round_trip(
    store: Store, sim_factory: Any, tmp_path: Path, fmt: str
) -> None:
    sim = sim_factory()
    rows = _rows(300)
    data = _jsonl(rows) if fmt == "jsonl" else _parquet(rows)
    src = store.put(f"in/prompts.{fmt}", data)
    out = store.uri("out/labels.parquet")
    result = _run(store, sim, src, out, "--concurrency", "8")
    assert result.returncode == 0, result.stderr
    table = _output(store, "out/labels.parquet")
    assert table.column("id").to_pylist() == [r["id"] for r in rows]
    assert table.column("label").to_pylist() == [r["label"] for r in rows]
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert sim.stats.requests == 300
    # Beside the output: the summary; no temporary key is left behind.
    assert store.object_keys() == sorted(
        [f"in/prompts.{fmt}", "out/labels.parquet", "out/labels.summary.json"]
    )
    assert b'"rows_ok": 300' in store.get("out/labels.summary.json")
    # The journal is on the local disk, under the state folder, named after the output.
    journal = store.state / "s3" / store.bucket / "out" / "labels.checkpoint" / "journal.sqlite"
    assert journal.is_file()
    _no_credentials_written(store, tmp_path)
    # A rerun of a finished job sends nothing.
    again = _run(store, sim, src, out)
    assert again.returncode == 0, again.stderr
    assert sim.stats.requests == 300


def test_kill_9_then_resume_sends_only_the_rest(
    store: Store, sim_factory: Any, tmp_path: Path
) -> None:
    sim = sim_factory(latency_ms=40)
    rows = _rows(600)
    src = store.put("in/p.jsonl", _jsonl(rows))
    out = store.uri("out/x.parquet")
    args = [sys.executable, "-m", "batchrun", "run", "--input", src, "--output", out,
            "--base-url", sim.url, "--concurrency", "4", "--quiet"]  # fmt: skip
    env = {**os.environ, **store.env, "AIMLAPI_KEY": "test-key"}
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while sim.stats.requests < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    first = sim.stats.requests
    assert 100 <= first < 600
    assert "out/x.parquet" not in store.object_keys()  # nothing partial was published
    result = _run(store, sim, src, out, "--concurrency", "8")
    assert result.returncode == 0, result.stderr
    table = _output(store, "out/x.parquet")
    assert table.column("id").to_pylist() == [r["id"] for r in rows]
    resent = sim.stats.requests - first
    # Only the rest, plus at most the 4 that were in flight at the kill.
    assert 600 - first <= resent <= 600 - first + 4
    _no_credentials_written(store, tmp_path)


def test_a_changed_input_object_is_refused_on_resume(store: Store, sim_factory: Any) -> None:
    sim = sim_factory()
    rows = _rows(50)
    src = store.put("in/p.jsonl", _jsonl(rows))
    out = store.uri("out/x.parquet")
    assert _run(store, sim, src, out, "--limit", "10").returncode == 0
    changed = [dict(r, prompt=r["prompt"] + "!") for r in rows]  # same rows, other bytes
    store.put("in/p.jsonl", _jsonl(changed))
    sent = sim.stats.requests
    result = _run(store, sim, src, out)
    assert result.returncode == 5
    assert f"the input {src} changed" in result.stderr
    assert sim.stats.requests == sent


@pytest.mark.parametrize(
    ("which", "expected"),
    [
        ("key", "input file s3://{bucket}/in/missing.jsonl not found"),
        ("bucket", "input file s3://no-such-bucket-s3test/in/p.jsonl not found"),
        ("output-bucket", "output s3://no-such-bucket-s3test/out/x.parquet cannot be"),
        ("unreachable", "cannot be reached"),
    ],
)
def test_storage_errors_are_one_line_and_exit_2_before_sending(
    store: Store, sim_factory: Any, s3_endpoint: str, which: str, expected: str
) -> None:
    sim = sim_factory()
    src = store.put("in/p.jsonl", _jsonl(_rows(5)))
    out = store.uri("out/x.parquet")
    if which == "key":
        src = store.uri("in/missing.jsonl")
    elif which == "bucket":
        src = "s3://no-such-bucket-s3test/in/p.jsonl"
    elif which == "output-bucket":
        out = "s3://no-such-bucket-s3test/out/x.parquet"
    elif which == "unreachable":
        store.env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{_free_port()}"
    result = _run(store, sim, src, out)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) <= 2, result.stderr  # the error, and at most a hint
    assert "Traceback" not in result.stderr
    assert expected.format(bucket=store.bucket) in lines[0], result.stderr
    assert sim.stats.requests == 0


@pytest.fixture(scope="module")
def strict_endpoint() -> Iterator[str]:
    """A moto server that checks credentials (IAM auth from the first request on)."""
    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize(
    ("credentials", "expected"),
    [
        (None, "access denied or no credentials"),
        ((KEY_ID, SECRET), "access denied (check the credentials"),
    ],
)
def test_missing_or_refused_credentials_are_one_line_and_exit_2(
    strict_endpoint: str,
    sim_factory: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    credentials: Any,
    expected: str,
) -> None:
    sim = sim_factory()
    env = {
        "AWS_ENDPOINT_URL": strict_endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
        "HOME": str(tmp_path),
        "BATCHRUN_STATE_DIR": str(tmp_path / "state"),
    }
    if credentials is not None:
        env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = credentials
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)  # the CLI inherits the rest of the environment
    result = run_cli(
        "run", "--input", "s3://bkt/in.jsonl", "--output", "s3://bkt/out.parquet",
        "--base-url", sim.url, env=env,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2
    first = result.stderr.strip().splitlines()[0]
    assert "input file s3://bkt/in.jsonl cannot be accessed" in first
    assert expected in first
    assert sim.stats.requests == 0
    assert not (tmp_path / "state").exists()  # refused before any checkpoint was made


@pytest.fixture
def in_process(store: Store, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """The store, reachable from batchrun's own code in this process."""
    from batchrun.io import remote

    for name, value in store.env.items():
        monkeypatch.setenv(name, value)
    remote._s3.cache_clear()  # set up from this test's environment
    yield store
    remote._s3.cache_clear()


def test_an_objects_signature_skips_the_reread_only_while_size_mtime_and_etag_hold(
    in_process: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchrun.io import signature
    from batchrun.io.remote import RemotePath

    store = in_process
    src = RemotePath(store.put("in/p.jsonl", _jsonl(_rows(10))))
    first = signature.InputSignature.of(src)
    assert first.size == len(_jsonl(_rows(10))) and first.etag

    def no_read(path: object) -> str:
        raise AssertionError("read again")

    with monkeypatch.context() as m:
        m.setattr(signature, "file_digest", no_read)
        assert signature.InputSignature.of(src, known=first) is first
    store.put("in/p.jsonl", _jsonl(_rows(10))[::-1])  # same size, other bytes
    again = signature.InputSignature.of(src, known=first)
    assert again.etag != first.etag
    assert not again.same_content(first)


def test_an_upload_stopped_midway_leaves_the_published_object_whole(
    in_process: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during the upload: the key keeps its old object, no temporary key stays."""
    from batchrun.io import publish as publish_module
    from batchrun.io import remote

    store = in_process
    dest = remote.RemotePath(store.uri("out/x.parquet"))
    old, new = tmp_path / "old.bin", tmp_path / "new.bin"
    old.write_bytes(b"old object " * 1000)
    new.write_bytes(b"new object " * 1000)
    publish_module.publish(old, dest)
    assert store.get("out/x.parquet") == old.read_bytes()

    class Interrupted(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            if self.tell():
                raise KeyboardInterrupt
            return super().read(100)

    monkeypatch.setattr(
        publish_module, "open", lambda *a: Interrupted(new.read_bytes()), raising=False
    )
    with pytest.raises(KeyboardInterrupt):
        publish_module.publish(new, dest)
    assert store.get("out/x.parquet") == old.read_bytes()
    assert store.object_keys() == ["out/x.parquet"]


def test_an_output_whose_local_checkpoint_is_gone_is_not_overwritten(
    store: Store, sim_factory: Any
) -> None:
    sim = sim_factory()
    src = store.put("in/p.jsonl", _jsonl(_rows(20)))
    out = store.uri("out/x.parquet")
    assert _run(store, sim, src, out).returncode == 0
    shutil.rmtree(store.state)  # another machine, or a cleaned disk
    result = _run(store, sim, src, out)
    assert result.returncode == 5
    assert f"{out} exists but its checkpoint" in result.stderr
    assert sim.stats.requests == 20


def test_an_upload_refused_at_the_end_is_exit_5_and_the_rerun_sends_nothing(
    store: Store, sim_factory: Any
) -> None:
    sim = sim_factory(latency_ms=30)
    src = store.put("in/p.jsonl", _jsonl(_rows(100)))
    out_bucket = f"{store.bucket}-out"
    store.fs.create_dir(out_bucket)
    out = f"s3://{out_bucket}/x.parquet"
    args = [sys.executable, "-m", "batchrun", "run", "--input", src, "--output", out,
            "--base-url", sim.url, "--concurrency", "2", "--quiet"]  # fmt: skip
    env = {**os.environ, **store.env, "AIMLAPI_KEY": "test-key"}
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while sim.stats.requests == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    store.fs.delete_dir(out_bucket)  # the bucket goes away while rows are being sent
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 5, stderr
    assert f"cannot write {out}" in stderr and "Traceback" not in stderr
    store.fs.create_dir(out_bucket)
    sent = sim.stats.requests
    assert sent == 100
    again = _run(store, sim, src, out)
    assert again.returncode == 0, again.stderr
    assert sim.stats.requests == sent
    assert pq.read_table(io.BytesIO(store.get_uri(out))).num_rows == 100
