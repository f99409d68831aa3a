"""Every job file in jobs/ loads into a valid Job whose input exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrun.errors import UsageError
from batchrun.job import job_from_settings, resolve_settings
from batchrun.scan import scan_input

JOBS = sorted((Path(__file__).resolve().parent.parent / "jobs").glob("*.toml"))


def test_there_are_job_files() -> None:
    assert {p.name for p in JOBS} >= {
        "demo.toml",
        "label_sentiment.toml",
        "nightly_eval.toml",
        "reprocess_failed.toml",
    }


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_job_file_loads_and_its_input_is_valid(path: Path) -> None:
    job = job_from_settings(resolve_settings(path, {}))
    assert job.input_path.exists()
    scan = scan_input(job)
    assert scan.invalid_rows == 0 and scan.total_rows > 0


def test_reprocessing_job_is_the_labeling_job() -> None:
    label = job_from_settings(resolve_settings(JOBS[0].parent / "label_sentiment.toml", {}))
    again = job_from_settings(resolve_settings(JOBS[0].parent / "reprocess_failed.toml", {}))
    assert label.output_path == again.output_path
    assert label.fingerprint_fields() == again.fingerprint_fields()  # so it may resume that output
    assert again.retry_failed and again.only_error_types


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"metadata": '{"score": NaN}'}, "metadata holds NaN or Infinity"),
        ({"metadata": {"score": float("inf")}}, "metadata holds NaN or Infinity"),
        ({"cost_header": 1}, "cost_header must be a header name"),
        ({"cost_header": True}, "cost_header must be a header name"),
    ],
)
def test_settings_json_cannot_carry_or_of_the_wrong_kind_are_refused(
    tmp_path: Path, settings: dict[str, object], message: str
) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "hi"}\n')
    with pytest.raises(UsageError, match=message):
        job_from_settings({"input": str(src), **settings})


@pytest.mark.parametrize(("value", "expected"), [("x-cost", "x-cost"), ("", None)])
def test_cost_header_setting(tmp_path: Path, value: str, expected: str | None) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "hi"}\n')
    assert job_from_settings({"input": str(src), "cost_header": value}).cost_header == expected
