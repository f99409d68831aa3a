"""Every job file in jobs/ loads into a valid Job whose input exists."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from batchrun.checks import check_api_key, check_base_url
from batchrun.errors import UsageError
from batchrun.scan import scan_input
from batchrun.settings import job_from_settings, resolve_settings
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent
JOBS = sorted((ROOT / "jobs").glob("*.toml"))


def test_there_are_job_files() -> None:
    assert {p.name for p in JOBS} >= {
        "demo.toml",
        "extract_fields.toml",
        "label_sentiment.toml",
        "label_sentiment_batch.toml",
        "nightly_eval.toml",
        "reprocess_failed.toml",
    }


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_job_file_loads_and_its_input_is_valid(path: Path) -> None:
    job = job_from_settings(resolve_settings(path, {}))
    assert job.input_path.exists()
    scan = scan_input(job)
    assert scan.invalid_rows == 0 and scan.total_rows > 0


def _readme_commands() -> list[list[str]]:
    """The README's commands over the bundled job files (not those with shell variables)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.findall(r"^batchrun ((?:run|cancel) jobs/\S+\.toml[^#\n]*)", text, re.MULTILINE)
    return [shlex.split(c) for c in found if "$" not in c]


@pytest.mark.parametrize("command", _readme_commands(), ids=" ".join)
def test_the_readmes_commands_over_the_job_files_are_accepted(command: list[str]) -> None:
    # A job file changed under the README (label_sentiment took --choices, which batch mode
    # refuses) must not leave it showing a command that exits 2.
    verb, job, *flags = command
    if verb == "cancel":  # it cancels what a batch run of that file left open
        assert job_from_settings(resolve_settings(ROOT / job, {})).mode == "batch"
        return
    dry = [] if "--dry-run" in flags else ["--dry-run"]
    proc = run_cli("run", job, *flags, *dry)
    assert proc.returncode == 0, proc.stderr


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


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"cost_header": "x-cost"}, "x-cost"),
        ({"cost_header": ""}, None),
        ({}, "x-aimlapi-usd-spent"),  # the gateway profile's
        ({"provider": "openai"}, None),  # OpenAI reports no cost
        ({"provider": "openai", "cost_header": "x-cost"}, "x-cost"),
        ({"base_url": "http://127.0.0.1:4000/v1"}, "x-litellm-response-cost"),
    ],
)
def test_cost_header_setting(
    tmp_path: Path, settings: dict[str, str], expected: str | None
) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "hi"}\n')
    assert job_from_settings({"input": str(src), **settings}).read_cost_header == expected


@pytest.mark.parametrize(
    ("key", "what", "at"),
    [
        ("sk-abc\r\nX-Injected: 1", "a line break", 7),
        ("sk-abc\ndef", "a line break", 7),
        ("sk-abc def", "whitespace", 7),
        ("sk-abc\tdef", "a control or invisible character", 7),
        ("sk-\x00abc", "a control or invisible character", 4),
        ("sk-abc\u200bdef", "a control or invisible character", 7),  # zero-width space
        ("sk-abc\u00a0def", "whitespace", 7),  # no-break space
        ("sk-" + os.fsdecode(b"\xff") + "abc", "a control or invisible character", 4),
    ],
)
def test_check_api_key_refuses_control_characters_and_inner_whitespace(
    key: str, what: str, at: int
) -> None:
    with pytest.raises(UsageError) as info:
        check_api_key(key, "MY_KEY")
    message = str(info.value)
    assert f"contains {what} (at character {at})" in message
    assert "MY_KEY" in message
    for part in ("sk-abc", "abc", "def", "X-Injected"):
        assert part not in message


@pytest.mark.parametrize("key", ["sk-abc-DEF_123.xyz", "  sk-abc\n", "\tsk-abc\r\n", "k", ""])
def test_check_api_key_accepts_printable_keys_with_trimmed_ends(key: str) -> None:
    check_api_key(key, "MY_KEY")


@pytest.mark.parametrize(
    "url",
    [
        "https://api.aimlapi.com/v1",
        "http://127.0.0.1:8089/v1",
        "http://[::1]:8089/v1/",
        "HTTPS://Example.COM/v1",
        "http://localhost:65535",
        "http://host:1/a/b",
    ],
)
def test_check_base_url_accepts(url: str) -> None:
    check_base_url(url)


def test_a_refused_base_url_never_shows_its_password() -> None:
    for url in (
        "http://u:pw-secret@h:99999/v1",
        "http://u:pw-secret@h /v1",
        "ftp://u:pw-secret@h/",
    ):
        with pytest.raises(UsageError) as info:
            check_base_url(url)
        assert "pw-secret" not in str(info.value)
