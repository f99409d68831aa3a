"""The CLI with click's CliRunner on tmp_path: help, usage errors, dry run. Nothing is sent
in these tests (no server exists at the base URL they name)."""

from __future__ import annotations

import gc
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchrun.cli import main
from batchrun.cli_common import GC_THRESHOLD, resume_command, run_async
from batchrun.settings import job_from_settings, resolve_settings
from tests.conftest import write_jsonl

UNREACHABLE = "http://127.0.0.1:9/v1"  # discard port: any request would fail loudly


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    return write_jsonl(
        tmp_path / "p.jsonl",
        [{"id": f"r{i}", "prompt": f"question {i}", "topic": "t"} for i in range(5)],
    )


@pytest.mark.parametrize("command", [[], ["run"], ["simulate"]])
def test_every_command_has_help(runner: CliRunner, command: list[str]) -> None:
    result = runner.invoke(main, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_run_help_lists_exit_codes_and_contract_options(runner: CliRunner) -> None:
    out = runner.invoke(main, ["run", "--help"]).output
    for option in (
        "--model", "--base-url", "--api-key-env", "--prompt-column", "--messages-column",
        "--template", "--system", "--id-column", "--concurrency", "--rpm", "--tpm",
        "--max-attempts", "--timeout", "--max-tokens", "--temperature", "--top-p", "--top-k",
        "--frequency-penalty", "--stop", "--stream", "--retry-failed", "--restart", "--dry-run",
        "--limit", "--quiet", "--max-failure-rate",
    ):  # fmt: skip
        assert option in out, option
    assert "130/143" in out


def _run(runner: CliRunner, *args: str, key: str | None = "secret-key-123") -> tuple[int, str]:
    env = {"AIMLAPI_KEY": key} if key is not None else {"AIMLAPI_KEY": ""}
    result = runner.invoke(main, ["run", *args], env=env)
    return result.exit_code, result.output


def test_missing_key_is_exit_2_naming_the_variable(
    runner: CliRunner, prompts: Path, tmp_path: Path
) -> None:
    code, out = _run(
        runner,
        "--input",
        str(prompts),
        "--output",
        str(tmp_path / "o.parquet"),
        "--base-url",
        UNREACHABLE,
        key=None,
    )
    assert code == 2
    assert "AIMLAPI_KEY is not set" in out
    assert "Traceback" not in out
    assert not (tmp_path / "o.parquet").exists()


@pytest.mark.parametrize(
    ("flag", "value", "name"),
    [
        ("--temperature", "1.5", "temperature"),
        ("--top-p", "-0.1", "top_p"),
        ("--top-k", "-1", "top_k"),
        ("--frequency-penalty", "2.5", "frequency_penalty"),
        ("--max-tokens", "0", "max_tokens"),
        ("--concurrency", "0", "concurrency"),
        ("--tool-choice", '{"type": "sometimes"}', "tool_choice"),
        ("--tools", "[{", "tools"),
    ],
)
def test_out_of_range_parameter_is_exit_2(
    runner: CliRunner, prompts: Path, tmp_path: Path, flag: str, value: str, name: str
) -> None:
    code, out = _run(
        runner,
        "--input",
        str(prompts),
        "--output",
        str(tmp_path / "o.parquet"),
        "--base-url",
        UNREACHABLE,
        flag,
        value,
    )
    assert code == 2, out
    assert name in out
    assert len(out.strip().splitlines()) == 1


def test_broken_json_line_names_file_and_line(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c",\n{"prompt": "d"}\n')
    code, out = _run(
        runner,
        "--input",
        str(path),
        "--output",
        str(tmp_path / "o.parquet"),
        "--base-url",
        UNREACHABLE,
    )
    assert code == 2
    assert f"{path}, line 3" in out
    assert "not valid JSON" in out


def test_missing_template_column_names_the_column_and_columns(
    runner: CliRunner, prompts: Path, tmp_path: Path
) -> None:
    code, out = _run(
        runner,
        "--input",
        str(prompts),
        "--output",
        str(tmp_path / "o.parquet"),
        "--template",
        "Q: {question}",
        "--base-url",
        UNREACHABLE,
    )
    assert code == 2
    assert "'question' not found" in out
    assert "id, prompt, topic" in out


def test_null_template_value_names_line_and_column(runner: CliRunner, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "a"}, {"text": None}])
    code, out = _run(
        runner,
        "--input",
        str(path),
        "--output",
        str(tmp_path / "o.parquet"),
        "--template",
        "Q: {text}",
        "--base-url",
        UNREACHABLE,
    )
    assert code == 2
    assert "line 2" in out and "'text'" in out


def test_duplicate_ids_are_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [{"id": 1, "prompt": "a"}, {"id": 2, "prompt": "b"}, {"id": 1, "prompt": "c"}],
    )
    code, out = _run(
        runner,
        "--input",
        str(path),
        "--output",
        str(tmp_path / "o.parquet"),
        "--base-url",
        UNREACHABLE,
    )
    assert code == 2
    assert "not unique" in out and "line 3" in out


def test_unknown_job_file_key_is_exit_2(runner: CliRunner, prompts: Path, tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text(f'input = "{prompts.name}"\nmodle = "x"\n')
    code, out = _run(runner, str(job))
    assert code == 2
    assert "modle" in out


def test_flags_override_the_job_file(runner: CliRunner, prompts: Path, tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text(
        f'input = "{prompts.name}"\noutput = "o.parquet"\ntemperature = 0.5\nmodel = "m-from-file"\n'
    )
    code, out = _run(runner, str(job), "--dry-run", "--model", "m-from-flag")
    assert code == 0, out
    assert '"model": "m-from-flag"' in out
    assert '"temperature": 0.5' in out


def test_dry_run_shows_requests_redacts_key_and_sends_nothing(
    runner: CliRunner, prompts: Path, tmp_path: Path
) -> None:
    code, out = _run(
        runner,
        "--input",
        str(prompts),
        "--output",
        str(tmp_path / "o.parquet"),
        "--dry-run",
        "--system",
        "Be brief.",
        "--max-tokens",
        "7",
    )
    assert code == 0, out
    assert "secret-key-123" not in out
    assert "Bearer ***" in out
    assert "5 rows, all valid" in out
    cid, first_body = out.split("Idempotency-Key: <per row>\nX-Client-Request-Id: ", 1)[1].split(
        "\n", 1
    )
    assert re.fullmatch(r"br:[0-9a-f]{12}:sr0", cid)  # the row id "r0", safe as it is
    body = json.loads(first_body[: first_body.index("\n}\n") + 2])
    assert body == {
        "model": "anthropic/claude-3-opus",
        "max_tokens": 7,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "question 0"}],
    }
    assert not (tmp_path / "o.parquet").exists()
    assert not (tmp_path / "o.checkpoint").exists()


def test_dry_run_lists_invalid_rows(runner: CliRunner, tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": "ok"}, {"prompt": ""}, {"prompt": 3}, {"prompt": "fine"}]
    )
    code, out = _run(
        runner, "--input", str(path), "--output", str(tmp_path / "o.parquet"), "--dry-run"
    )
    assert code == 2
    assert "line 2" in out and "line 3" in out


def test_every_run_flag_is_a_job_file_key() -> None:
    from batchrun.cli import run
    from batchrun.settings import SETTING_KEYS

    names = {p.name for p in run.params if p.name not in ("job_file", "input_")} | {"input"}
    assert names == set(SETTING_KEYS)


@pytest.mark.parametrize(
    "argv, restarted, expected",
    [
        (["batchrun", "run", "jobs/x.toml"], False, "batchrun run jobs/x.toml"),
        (
            ["/venv/bin/batchrun", "run", "jobs/x.toml", "--restart", "--rpm", "600"],
            True,
            "batchrun run jobs/x.toml --rpm 600 --no-restart",
        ),
        # restart = true in the job file: the rerun must say --no-restart.
        (["batchrun", "run", "jobs/fresh.toml"], True, "batchrun run jobs/fresh.toml --no-restart"),
        (
            ["batchrun", "run", "--input", "my prompts.jsonl", "--template", "Say {text}"],
            False,
            "batchrun run --input 'my prompts.jsonl' --template 'Say {text}'",
        ),
    ],
)
def test_resume_command_is_the_same_command_without_starting_over(
    argv: list[str], restarted: bool, expected: str
) -> None:
    assert resume_command(argv, restarted) == expected


def test_no_restart_overrides_restart_in_the_job_file(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi"}])
    job_file = tmp_path / "job.toml"
    job_file.write_text(f'input = "{src.name}"\nrestart = true\n')
    settings = resolve_settings(job_file, {"restart": False})
    assert job_from_settings(settings).restart is False
    assert job_from_settings(resolve_settings(job_file, {"restart": None})).restart is True


def test_a_command_runs_with_what_was_loaded_frozen_and_a_higher_collection_threshold() -> None:
    """The cyclic collector's tuning for the run (measured in bench.instructions)."""
    before = gc.get_threshold()
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)  # Python's defaults (another test's command may have run)

    async def seen() -> tuple[int, tuple[int, int, int]]:
        return gc.get_freeze_count(), gc.get_threshold()

    try:
        frozen, threshold = run_async(seen())
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert frozen > 10_000  # the modules loaded by then, at least
    assert threshold[0] == GC_THRESHOLD > 700
