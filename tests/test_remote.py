"""RemotePath, the job's locations for object storage, and storage errors in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrun.errors import UsageError
from batchrun.io.remote import RemotePath, is_uri, location, reason, state_dir, storage_error
from batchrun.settings import job_from_settings


@pytest.mark.parametrize(
    ("text", "remote"),
    [
        ("s3://b/k.jsonl", True),
        ("gs://b/k.parquet", True),
        ("file:///tmp/x.jsonl", False),
        ("FILE:///tmp/x.jsonl", False),
        ("data/x.jsonl", False),
        ("/abs/x.jsonl", False),
    ],
)
def test_is_uri(text: str, remote: bool) -> None:
    assert is_uri(text) is remote
    assert isinstance(location(text), RemotePath) is remote


def test_a_file_uri_is_the_local_path() -> None:
    assert location("file:///tmp/a b/x.jsonl") == Path("/tmp/a b/x.jsonl")


def test_remote_path_offers_the_path_operations_a_job_needs() -> None:
    p = RemotePath("s3://bkt/a/b/labels.parquet")
    assert (p.name, p.stem, p.suffix) == ("labels.parquet", "labels", ".parquet")
    assert str(p.with_suffix(".summary.json")) == "s3://bkt/a/b/labels.summary.json"
    assert p.local_name() == Path("s3", "bkt", "a", "b", "labels.parquet")


@pytest.mark.parametrize("uri", ["s3://bkt", "s3://bkt/", "s3:///k.jsonl"])
def test_a_uri_naming_no_object_is_refused(uri: str) -> None:
    with pytest.raises(UsageError, match="names no object"):
        RemotePath(uri)


def test_credentials_in_a_uri_are_refused_and_not_repeated() -> None:
    with pytest.raises(UsageError) as info:
        RemotePath("s3://AKID:s3cr3t@bkt/k.jsonl")
    assert "s3cr3t" not in str(info.value) and "AKID" not in str(info.value)


def test_job_with_s3_output_keeps_its_checkpoint_on_the_local_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHRUN_STATE_DIR", str(tmp_path))
    job = job_from_settings({"input": "s3://bkt/in/p.jsonl"})
    assert str(job.output_path) == "s3://bkt/in/p.out.parquet"
    assert str(job.summary_path) == "s3://bkt/in/p.out.summary.json"
    assert job.checkpoint_dir == tmp_path / "s3" / "bkt" / "in" / "p.out.checkpoint"
    assert job.local_output == job.checkpoint_dir / "output.parquet"


def test_state_dir_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("BATCHRUN_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert state_dir() == tmp_path / "batchrun"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert state_dir() == tmp_path / ".local" / "state" / "batchrun"


def test_a_job_file_does_not_resolve_a_uri_against_its_folder(tmp_path: Path) -> None:
    from batchrun.settings import resolve_settings

    job_file = tmp_path / "job.toml"
    job_file.write_text('input = "s3://bkt/p.jsonl"\noutput = "out/x.parquet"\n')
    settings = resolve_settings(job_file, {})
    assert settings["input"] == "s3://bkt/p.jsonl"
    assert settings["output"] == str(tmp_path / "out" / "x.parquet")


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("When getting information for key 'k' in bucket 'b': AWS Error NETWORK_CONNECTION "
         "during HeadObject operation: curlCode: 7", "cannot be reached"),
        ("AWS Error ACCESS_DENIED during HeadObject operation: No response body.", "access denied"),
        ("AWS Error NO_SUCH_BUCKET during CreateMultipartUpload (Request ID: XYZ)", "bucket does not exist"),
        ("something\nelse entirely (Request ID: ABC)", "something else entirely"),
    ],
)  # fmt: skip
def test_storage_errors_say_why_in_one_line(message: str, expected: str) -> None:
    err = storage_error(RemotePath("s3://b/k.jsonl"), "input file", OSError(message))
    text = str(err)
    assert text.startswith("input file s3://b/k.jsonl cannot be accessed: ")
    assert expected in text and "\n" not in text and "Request ID" not in text
    assert expected in reason(OSError(message))
