"""Hostile input through the CLI: every broken file, odd value or unusable path is exit 2
(or 5) with one line naming the file, line/row and column, and nothing is sent.

The runs point at a real simulator on 127.0.0.1 and assert that it saw no request: a run
that got as far as sending would show up in its counters.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import pathlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from click.testing import CliRunner

from batchrun.cli import main
from batchrun.simulate import SimConfig
from tests.conftest import ROOT, SimThread, write_jsonl

KEY = "hostile-test-key-0123456789"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimThread]:
    with SimThread(SimConfig()) as s:
        yield s


def refused(sim: SimThread, *args: str, code: int = 2, base_url: str | None = None) -> str:
    """Run ``batchrun run ARGS``; assert exit ``code``, one line on stderr, no traceback and
    no request sent. Returns that line. ``base_url=""``: no --base-url flag."""
    before = sim.stats.requests
    url = ["--base-url", base_url or sim.url] if base_url != "" else []
    result = CliRunner().invoke(main, ["run", *url, *args], env={"AIMLAPI_KEY": KEY})
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code, result.output
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output and "a bug" not in result.output
    assert KEY not in result.output
    assert sim.stats.requests == before, "a request was sent"
    return lines[0]


def completed(sim: SimThread, *args: str) -> None:
    result = CliRunner().invoke(
        main, ["run", "--base-url", sim.url, "-q", *args], env={"AIMLAPI_KEY": KEY}
    )
    assert result.exit_code == 0, result.output


# --- JSON no later stage could carry --------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "extra", "column", "where"),
    [
        ('{"prompt": "hi \\ud800"}', [], "prompt", None),
        ('{"messages": [{"role": "user", "content": "\\udc00 x"}]}', [], "messages", "[0].content"),
        ('{"text": "a\\ud83d"}', ["--template", "Say {text}"], "text", None),
        ('{"id": "\\ud800", "prompt": "hi"}', [], "id", None),
        # a long integer sends the line to the standard library parser at once
        ('{"prompt": "hi \\ud800", "n": 12345678901234567890123}', [], "prompt", None),
        ('{"prompt": "hi", "\\ud800": 1}', [], "\\ud800", None),
    ],
)
def test_lone_surrogate_names_line_and_column(
    sim: SimThread, tmp_path: Path, line: str, extra: list[str], column: str, where: str | None
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "fine", "text": "x", "id": "a"}\n' + line + "\n")
    msg = refused(sim, "--input", str(path), "--output", str(tmp_path / "o.parquet"), *extra)
    assert f"{path}, line 2" in msg
    assert f"column {column!r}" in msg or f"column '{column}'" in msg
    assert "surrogate" in msg
    if where:
        assert where in msg


def test_a_surrogate_pair_is_fine(sim: SimThread, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "smile \\ud83d\\ude00"}\n')
    completed(sim, "--input", str(path), "--output", str(tmp_path / "o.parquet"))
    assert pq.read_table(tmp_path / "o.parquet").column("prompt").to_pylist() == ["smile 😀"]


def test_lone_surrogate_in_a_json_messages_string_of_parquet(
    sim: SimThread, tmp_path: Path
) -> None:
    path = tmp_path / "in.parquet"
    messages = ['[{"role": "user", "content": "ok"}]', '[{"role": "user", "content": "\\ud800"}]']
    pq.write_table(pa.table({"messages": messages}), path)
    msg = refused(sim, "--input", str(path), "--output", str(tmp_path / "o.parquet"))
    assert f"{path}, row 1, column 'messages'" in msg and "surrogate" in msg


@pytest.mark.parametrize("depth", [101, 1000, 100_000])
def test_deep_nesting_is_refused_naming_the_line(
    sim: SimThread, tmp_path: Path, depth: int
) -> None:
    # 1000 is within what orjson reads but beyond what a request body could be written as;
    # 100,000 is beyond every parser's stack.
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b", "x": ' + "[" * depth + "]" * depth + "}\n")
    msg = refused(sim, "--input", str(path), "--output", str(tmp_path / "o.parquet"))
    assert f"{path}, line 2" in msg and "nest" in msg


def test_nesting_up_to_the_limit_is_carried(sim: SimThread, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "b", "x": ' + "[" * 100 + "]" * 100 + "}\n")
    completed(sim, "--input", str(path), "--output", str(tmp_path / "o.parquet"))
    assert pq.read_table(tmp_path / "o.parquet").num_rows == 1


# --- files that are not what they claim ------------------------------------------------------


def test_missing_input_flag_and_job_file(sim: SimThread, tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    msg = refused(sim, "--input", str(missing), "--output", str(tmp_path / "o.parquet"))
    assert f"input file {missing} not found" in msg
    job = tmp_path / "job.toml"
    job.write_text('input = "gone.parquet"\n')
    msg = refused(sim, str(job))
    assert f"{tmp_path / 'gone.parquet'} not found" in msg


def test_input_that_is_a_folder(sim: SimThread, tmp_path: Path) -> None:
    folder = tmp_path / "dir.jsonl"
    folder.mkdir()
    job = tmp_path / "job.toml"
    job.write_text('input = "dir.jsonl"\n')
    msg = refused(sim, str(job))
    assert "is a folder, not a regular file" in msg


@pytest.mark.parametrize("name", ["in.jsonl", "in.parquet", "job.toml", "prices.toml"])
def test_a_fifo_is_refused_instead_of_hanging(sim: SimThread, tmp_path: Path, name: str) -> None:
    # A subprocess with a timeout: before the fix, open() blocked for good.
    fifo = tmp_path / name
    os.mkfifo(fifo)
    write_jsonl(tmp_path / "ok.jsonl", [{"prompt": "hi"}])
    args = {
        "in.jsonl": ["--input", str(fifo)],
        "in.parquet": ["--input", str(fifo)],
        "job.toml": [str(fifo)],
        "prices.toml": ["--input", str(tmp_path / "ok.jsonl"), "--prices", str(fifo)],
    }[name]
    env = {**os.environ, "AIMLAPI_KEY": KEY}
    proc = subprocess.run(
        [sys.executable, "-m", "batchrun", "run", "--base-url", sim.url, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr
    assert "FIFO" in proc.stderr and str(fifo) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def parquet_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "good.parquet"
    pq.write_table(pa.table({"prompt": [f"question {i}" for i in range(50)]}), path)
    return path.read_bytes()


@pytest.mark.parametrize("damage", ["truncated", "footer", "jsonl", "empty file", "page"])
def test_damaged_parquet_is_exit_2(sim: SimThread, tmp_path: Path, damage: str) -> None:
    good = parquet_bytes(tmp_path)
    path = tmp_path / "in.parquet"
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "footer":
        path.write_bytes(good[:-12] + b"\xff" * 8 + good[-4:])
    elif damage == "jsonl":
        path.write_text('{"prompt": "hi"}\n')
    elif damage == "empty file":
        path.write_bytes(b"")
    else:  # the footer is intact, the data pages are not
        body = bytearray(good)
        for i in range(4, 200):
            body[i] = 0xAB
        path.write_bytes(bytes(body))
    msg = refused(sim, "--input", str(path), "--output", str(tmp_path / "o.parquet"))
    assert f"input {path} is not a readable Parquet file" in msg


def invalid_utf8(values: list[bytes]) -> pa.Array:
    return pa.array(values, pa.binary()).view(pa.string())


@pytest.mark.parametrize("column", ["prompt", "note"])
def test_invalid_utf8_in_parquet_names_row_and_column(
    sim: SimThread, tmp_path: Path, column: str
) -> None:
    path = tmp_path / "in.parquet"
    columns: dict[str, Any] = {"prompt": ["a", "b", "c"], "note": ["x", "y", "z"]}
    columns[column] = invalid_utf8([b"fine", b"fine", b"bad \xff\xfe"])
    pq.write_table(pa.table(columns), path)
    msg = refused(sim, "--input", str(path), "--output", str(tmp_path / "o.parquet"))
    assert f"{path}, row 2, column {column!r}: is not valid UTF-8" in msg


def test_duplicate_parquet_column_names(sim: SimThread, tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    table = pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["prompt", "prompt"])
    pq.write_table(table, path)
    msg = refused(sim, "--input", str(path), "--output", str(tmp_path / "o.parquet"))
    assert "two columns named 'prompt'" in msg


def test_nanosecond_timestamps_are_carried(sim: SimThread, tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    ts = pa.array([1, 1_700_000_000_123_456_789], pa.timestamp("ns"))
    nested = pa.array([[1], [2]], pa.list_(pa.timestamp("ns", tz="UTC")))
    far = pa.array([10**12, 0], pa.timestamp("s"))  # beyond datetime's year 9999
    pq.write_table(
        pa.table({"prompt": ["a", "b"], "ts": ts, "stamps": nested, "far": far}),
        path,
    )
    completed(sim, "--input", str(path), "--output", str(tmp_path / "o.parquet"))
    out = pq.read_table(tmp_path / "o.parquet")
    written = pq.read_table(path)  # as Parquet holds them (seconds become milliseconds)
    assert out.column("ts").type == pa.timestamp("ns")
    assert out.column("ts").combine_chunks().equals(ts)
    for name in ("stamps", "far"):
        assert out.column(name).equals(written.column(name))


def test_a_template_sees_a_nanosecond_timestamp_as_text(sim: SimThread, tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"ts": pa.array([1], pa.timestamp("ns"))}), path)
    result = CliRunner().invoke(
        main,
        ["run", "--input", str(path), "--template", "At {ts}", "--dry-run"],
        env={"AIMLAPI_KEY": KEY},
    )
    assert result.exit_code == 0, result.output
    assert "At 1970-01-01 00:00:00.000000001" in result.output


def test_job_file_not_utf8(sim: SimThread, tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_bytes('input = "in.jsonl"\nsystem = "caf\xe9"\n'.encode("latin-1"))
    msg = refused(sim, str(job))
    assert f"job file {job} is not UTF-8" in msg


def test_price_file_not_utf8(sim: SimThread, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi"}])
    prices = tmp_path / "prices.toml"
    prices.write_bytes(b'[models."m\xe9"]\ninput = 1\noutput = 2\n')
    msg = refused(sim, "--input", str(src), "--prices", str(prices), "--dry-run")
    assert f"price file {prices} is not UTF-8" in msg


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ('restart = "false"', "restart must be true or false"),
        ('quiet = "no"', "quiet must be true or false"),
        ("base_url = 5", "base_url must be a string"),
        ("system = 3", "system must be a string"),
        ("api_key_env = 7", "api_key_env must be a string"),
        ("stop = [1]", "stop sequences must be strings"),
    ],
)
def test_job_file_values_of_the_wrong_kind(
    sim: SimThread, tmp_path: Path, setting: str, message: str
) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi"}])
    job = tmp_path / "job.toml"
    # A dry run, and no --base-url flag (it would override the file's): nothing could be sent.
    job.write_text(f'input = "in.jsonl"\n{setting}\n')
    assert message in refused(sim, str(job), "--dry-run", base_url="")


@pytest.mark.parametrize("flag", ["--system", "--template", "--model", "--stop"])
def test_flag_bytes_that_are_not_utf8(sim: SimThread, tmp_path: Path, flag: str) -> None:
    # An argument of another encoding reaches Python as lone surrogates.
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "hi", "prompt": "hi"}])
    value = os.fsdecode(b"caf\xe9 {text}")
    msg = refused(sim, "--input", str(src), "--output", str(tmp_path / "o.parquet"), flag, value)
    assert "not UTF-8" in msg


def test_metadata_flag_with_a_lone_surrogate_escape(sim: SimThread, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi"}])
    msg = refused(
        sim, "--input", str(src), "--output", str(tmp_path / "o.parquet"),
        "--metadata", '{"tag": "\\ud800"}',
    )  # fmt: skip
    assert "metadata" in msg and "surrogate" in msg


# --- empty inputs: one rule ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["jsonl", "blank jsonl", "parquet"])
def test_an_input_without_rows_is_exit_2(sim: SimThread, tmp_path: Path, kind: str) -> None:
    if kind == "parquet":
        path = tmp_path / "in.parquet"
        pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), path)
    else:
        path = tmp_path / "in.jsonl"
        path.write_text("" if kind == "jsonl" else "\n\n  \n")
    msg = refused(sim, "--input", str(path), "--output", str(tmp_path / "o.parquet"))
    assert f"{path}: input has no rows" in msg
    assert not (tmp_path / "o.parquet").exists()


# --- ids and output names --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ids", "line", "kind"), [([5, "5"], 2, "a string"), (["a", "b", 3], 3, "an integer")]
)
def test_mixed_id_types_are_refused_naming_the_line(
    sim: SimThread, tmp_path: Path, ids: list[Any], line: int, kind: str
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "prompt": "p"} for i in ids])
    msg = refused(sim, "--input", str(path), "--output", str(tmp_path / "o.parquet"))
    assert f"{path}, line {line}, column 'id'" in msg
    assert kind in msg and "first id (line 1)" in msg


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_output_names_never_collide(sim: SimThread, tmp_path: Path, fmt: str) -> None:
    rows = [
        {"prompt": "a", "status": "s1", "input_status": "i1", "input_input_status": "ii1",
         "correct": "c1", "expected": "x"},
    ]  # fmt: skip
    if fmt == "jsonl":
        path = write_jsonl(tmp_path / "in.jsonl", rows)
    else:
        path = tmp_path / "in.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    out = tmp_path / "o.parquet"
    completed(sim, "--input", str(path), "--output", str(out), "--expected-column", "expected")
    table = pq.read_table(out)
    assert len(set(table.column_names)) == len(table.column_names)
    row = table.to_pylist()[0]
    # Columns a result column does not take keep their names; the others are prefixed
    # until free.
    assert row["input_status"] == "i1"
    assert row["input_input_status"] == "ii1"
    assert row["input_input_input_status"] == "s1"
    assert row["input_correct"] == "c1"
    assert row["status"] == "ok" and row["correct"] in (True, False)


@pytest.mark.parametrize(
    ("names", "id_column", "graded", "expected"),
    [
        (["id", "text"], "id", False, [None, "text"]),
        (["status", "input_status"], None, False, ["input_input_status", "input_status"]),
        (["id", "input_id"], "key", False, ["input_input_id", "input_id"]),
        (["model", "input_model", "input_input_model"], None, False,
         ["input_input_input_model", "input_model", "input_input_model"]),
        (["correct"], None, False, ["correct"]),
        (["correct", "input_correct"], None, True, ["input_input_correct", "input_correct"]),
    ],
)  # fmt: skip
def test_carried_names_are_distinct(
    names: list[str], id_column: str | None, graded: bool, expected: list[str | None]
) -> None:
    from batchrun.io.writers import RESULT_NAMES, carried_names

    got = carried_names(names, id_column, graded)
    assert got == expected
    kept = [n for n in got if n is not None]
    assert len(set(kept)) == len(kept) and not set(kept) & RESULT_NAMES


# --- where the output goes -------------------------------------------------------------------


def test_output_under_a_regular_file(sim: SimThread, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi"}])
    (tmp_path / "afile").write_text("x")
    msg = refused(sim, "--input", str(src), "--output", str(tmp_path / "afile" / "o.parquet"))
    assert f"{tmp_path / 'afile'} is a file, not a folder" in msg


def test_checkpoint_folder_that_is_a_file(sim: SimThread, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi"}])
    (tmp_path / "o.checkpoint").write_text("x")
    msg = refused(sim, "--input", str(src), "--output", str(tmp_path / "o.parquet"), code=5)
    assert f"checkpoint folder {tmp_path / 'o.checkpoint'} is a file" in msg


def test_output_on_a_read_only_file_system(
    sim: SimThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests may run as root, for whom permissions do not apply: the file system's answer
    # is simulated where the checkpoint folder is made.
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi"}])
    ro = tmp_path / "ro"
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        if self.is_relative_to(ro):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    msg = refused(sim, "--input", str(src), "--output", str(ro / "o.parquet"))
    assert f"cannot create the checkpoint {ro / 'o.checkpoint'}" in msg
    assert "Read-only file system" in msg


# --- the base URL ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:99999/v1", "port must be from 1 to 65535"),
        ("http://127.0.0.1:0/v1", "port must be from 1 to 65535"),
        ("http://127.0.0.1:http/v1", "port must be from 1 to 65535"),
        ("ftp://127.0.0.1/v1", "must start with http:// or https://"),
        ("127.0.0.1:8089/v1", "must start with http:// or https://"),
        ("http:///v1", "names no host"),
        ("http://127.0.0.1/v1?key=1", "query or fragment"),
        ("http://127.0.0.1/v1#x", "query or fragment"),
        ("http://127.0.0.1/v1\r\nX-Evil: 1", "control characters"),
        ("http://127.0.0.1 /v1", "spaces"),
        ("http://[::1/v1", "not a valid URL"),
    ],
)
def test_invalid_base_url_is_exit_2(sim: SimThread, tmp_path: Path, url: str, message: str) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi"}])
    msg = refused(sim, "--input", str(src), "--output", str(tmp_path / "o.parquet"), base_url=url)
    assert message in msg
    assert not (tmp_path / "o.checkpoint").exists()


@pytest.mark.parametrize(
    "url", ["http://user:s3cr3t-pw@127.0.0.1:8089/v1", "https://:s3cr3t-pw@example.com/v1",
            "https://s3cr3t-pw@example.com/v1"],
)  # fmt: skip
def test_credentials_in_the_base_url_are_refused_unprinted(
    sim: SimThread, tmp_path: Path, url: str
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi"}])
    msg = refused(sim, "--input", str(src), "--output", str(tmp_path / "o.parquet"), base_url=url)
    assert "credentials" in msg and "AIMLAPI_KEY" in msg
    assert "s3cr3t-pw" not in msg
    assert not (tmp_path / "o.checkpoint").exists()


# --- messages that misled --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "names"),
    [
        ("Hi {text!r:>10}", ["conversion (!r)", "format spec (:>10)"]),
        ("Hi {text!s}", ["conversion (!s)"]),
        ("Hi {text:>10}", ["format spec (:>10)"]),
    ],
)
def test_template_conversions_and_specs_are_named(
    sim: SimThread, tmp_path: Path, template: str, names: list[str]
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "hi"}])
    msg = refused(sim, "--input", str(src), "--template", template, "--dry-run")
    for name in names:
        assert name in msg
    assert "not support" in msg and "{text}" in msg


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_invalid_regex_expected_value_names_the_row(
    sim: SimThread, tmp_path: Path, fmt: str
) -> None:
    rows = [{"prompt": "a", "want": "^yes$"}, {"prompt": "b", "want": "(unclosed"}]
    if fmt == "jsonl":
        path = write_jsonl(tmp_path / "in.jsonl", rows)
        where = "line 2"
    else:
        path = tmp_path / "in.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        where = "row 1"
    msg = refused(
        sim, "--input", str(path), "--output", str(tmp_path / "o.parquet"),
        "--expected-column", "want", "--match", "regex",
    )  # fmt: skip
    assert f"{path}, {where}, column 'want'" in msg
    assert "not a valid regular expression" in msg


def test_invalid_regex_added_when_resuming_is_refused(sim: SimThread, tmp_path: Path) -> None:
    rows = [{"prompt": "a", "want": "^yes$"}, {"prompt": "b", "want": "(unclosed"}]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "o.parquet"
    completed(sim, "--input", str(path), "--output", str(out))
    msg = refused(
        sim, "--input", str(path), "--output", str(out),
        "--expected-column", "want", "--match", "regex",
    )  # fmt: skip
    assert f"{path}, line 2, column 'want'" in msg and "not a valid regular expression" in msg


# --- stdout and other destinations -----------------------------------------------------------


def cli(*args: str, stdout: Any, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchrun", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout,
        env={**os.environ, "AIMLAPI_KEY": KEY},
        cwd=ROOT,
    )


def closed_pipe_run(*args: str) -> tuple[int, str]:
    """Run the CLI with a stdout whose reader is already gone (``batchrun … | true``)."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = cli(*args, stdout=write)
    finally:
        os.close(write)
    return proc.returncode, proc.stderr


def test_a_closed_stdout_keeps_the_runs_exit_code(sim: SimThread, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q{i}"} for i in range(3)])
    out = tmp_path / "o.parquet"
    code, err = closed_pipe_run("run", "--base-url", sim.url, "-q", "--input", str(src),
                                "--output", str(out))  # fmt: skip
    assert code == 0, err
    assert err == ""
    assert pq.read_table(out).num_rows == 3
    # A dry run, and a run that fails (exit 3), keep theirs too.
    code, err = closed_pipe_run("run", "--input", str(src), "--dry-run")
    assert (code, err) == (0, "")
    failing = write_jsonl(tmp_path / "f.jsonl", [{"prompt": "x", "max_tokens": 1}])
    code, err = closed_pipe_run(
        "run", "--base-url", sim.url, "-q", "--input", str(failing),
        "--output", str(tmp_path / "f.parquet"), "--model", "no-such-model",
    )  # fmt: skip
    assert code not in (0, 1), err
    assert "Traceback" not in err and "a bug" not in err


def test_stdout_on_a_full_disk_is_one_line(sim: SimThread, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "q"}])
    out = tmp_path / "o.parquet"
    with open("/dev/full", "w") as full:
        proc = cli("run", "--base-url", sim.url, "-q", "--input", str(src), "--output", str(out),
                   stdout=full)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            "batchrun: cannot write to standard output: No space left on device"
        ]
        assert pq.read_table(out).num_rows == 1
        report = cli("report", str(out), stdout=full)
    assert report.returncode == 1
    assert report.stderr.strip().splitlines() == [
        "batchrun: cannot write to standard output: No space left on device"
    ]
    code, err = closed_pipe_run("report", str(out))
    assert (code, err) == (0, "")


def test_report_html_to_an_unwritable_path(sim: SimThread, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "q"}])
    out = tmp_path / "o.parquet"
    completed(sim, "--input", str(src), "--output", str(out))
    (tmp_path / "afile").write_text("x")
    html = tmp_path / "afile" / "r.html"
    result = CliRunner().invoke(main, ["report", str(out), "--html", str(html)])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f"batchrun: error: cannot write the HTML report {html}: {tmp_path / 'afile'} is a file, "
        "not a folder; give --html a path in a folder you can write to"
    ]


def test_html_temp_file_is_removed_when_the_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchrun.io import writers

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writers.os, "fsync", no_space)
    with pytest.raises(OSError):
        writers.write_text_atomically(tmp_path / "r.html", "<html></html>")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_simulate_port_out_of_range(port: str) -> None:
    result = CliRunner().invoke(main, ["simulate", "--port", port])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"batchrun: error: --port must be from 0 to 65535 (0 = any free port), got {port}"
    ]


def test_report_of_a_fifo_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "o.parquet"
    os.mkfifo(fifo)
    proc = cli("report", str(fifo), stdout=subprocess.PIPE, timeout=30)
    assert proc.returncode == 2
    assert "FIFO" in proc.stderr


def test_dry_run_json_is_unchanged_by_the_new_reader(tmp_path: Path) -> None:
    # The Parquet reader converts column by column now: rows must read as before.
    path = tmp_path / "in.parquet"
    rows = [{"prompt": "a", "n": 1, "tags": ["x", "y"], "meta": {"k": 1.5}}, {"prompt": "b",
            "n": None, "tags": [], "meta": None}]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), path)
    from batchrun.io.readers import iter_batches

    assert [r for b in iter_batches(path) for r in b.rows] == rows
    assert json.dumps(rows)  # plain Python values


def test_dry_run_says_a_key_with_a_line_break_is_unusable(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi"}])
    bad_key = "sk-first-half\nsk-second-half"
    result = CliRunner().invoke(
        main, ["run", "--input", str(src), "--dry-run"], env={"AIMLAPI_KEY": bad_key}
    )
    assert result.exit_code == 0, result.output
    assert "API key: $AIMLAPI_KEY is set, but unusable" in result.output
    assert "line break" in result.output
    assert "first-half" not in result.output and "second-half" not in result.output


# --- what a server sends: parsed by the same rules ------------------------------------------


class AnswerThread:
    """A small aiohttp server on 127.0.0.1 answering every POST with one fixed body."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status, self.body = status, body
        self.requests = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.url = ""
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        async def answer(request: web.Request) -> web.Response:
            await request.read()
            self.requests += 1
            return web.Response(status=self.status, body=self.body, content_type="application/json")

        app = web.Application()
        app.router.add_post("/v1/chat/completions", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> AnswerThread:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def test_an_answer_with_a_lone_surrogate_fails_its_row_not_the_run(tmp_path: Path) -> None:
    # json would read it, and the journal could then not store it (the run stopped, exit 5).
    body = (
        b'{"id": "r1", "object": "chat.completion", "model": "m", "choices": [{"index": 0,'
        b' "message": {"role": "assistant", "content": "hi \\ud800"}, "finish_reason": "stop"}],'
        b' "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}'
    )
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    out = tmp_path / "o.parquet"
    with AnswerThread(201, body) as server:
        result = CliRunner().invoke(
            main,
            ["run", "--base-url", server.url, "-q", "--input", str(src), "--output", str(out),
             "--max-attempts", "1"],
            env={"AIMLAPI_KEY": KEY},
        )  # fmt: skip
    assert result.exit_code == 3, result.output
    rows = pq.read_table(out).to_pylist()
    assert [r["error_type"] for r in rows] == ["invalid_response"] * 2


@pytest.mark.parametrize("bad_key", ["sk-abc\r\nX-Evil: 1", "sk-abc def", "sk-abc\u200bdef"])
def test_a_key_the_header_cannot_carry_is_refused_before_sending(
    sim: SimThread, tmp_path: Path, bad_key: str
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "prompt": "hi"}])
    before = sim.stats.requests
    result = CliRunner().invoke(
        main,
        [
            "run",
            "--base-url",
            sim.url,
            "--input",
            str(src),
            "--output",
            str(tmp_path / "o.parquet"),
        ],
        env={"AIMLAPI_KEY": bad_key},
    )
    assert result.exit_code == 2, result.output
    assert "AIMLAPI_KEY" in result.stderr and bad_key.strip() not in result.output
    assert sim.stats.requests == before
    assert not (tmp_path / "o.checkpoint" / "journal.sqlite").exists()


def test_a_temp_file_left_by_a_killed_final_write_is_removed(tmp_path: Path) -> None:
    import pyarrow as pa_

    from batchrun.io.writers import write_atomically

    out = tmp_path / "x.parquet"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / f".x.parquet.{dead.stdout.strip()}.tmp"
    stale.write_bytes(b"half a parquet file")
    live = tmp_path / f".x.parquet.{os.getppid()}.tmp"  # a live process's write is left alone
    live.write_bytes(b"in progress")
    schema = pa_.schema([("a", pa_.int64())])
    write_atomically(out, schema, [pa_.record_batch([pa_.array([1])], schema=schema)])
    assert not stale.exists() and live.exists() and out.exists()
