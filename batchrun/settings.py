"""Settings: a TOML job file and flag overrides → a validated :class:`Job`.

Settings are flat: each ``run`` flag is a key of the job file (dashes become underscores),
and a flag given on the command line overrides the same key of the file. Relative paths in
a job file resolve against the job file's folder.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

from batchrun.batchopts import BatchOptions
from batchrun.checks import check
from batchrun.errors import UsageError
from batchrun.fastjson import encodes
from batchrun.io.files import open_regular
from batchrun.io.remote import is_uri, location
from batchrun.job import (
    DEFAULT_API_KEY_ENV,
    DEFAULT_BASE_URL,
    DEFAULT_MODEL,
    Budget,
    Grading,
    Job,
    Limits,
    RequestParams,
    RetryPolicy,
)
from batchrun.structured import choices_schema, load_schema
from batchrun.tools import CHOICE_WORDS

#: Every key a job file may hold (the ``run`` flags, dashes as underscores).
SETTING_KEYS = frozenset(
    """
    input output model base_url api_key_env prompt_column messages_column template system
    system_as_message id_column concurrency rpm tpm max_attempts timeout read_timeout
    max_retry_after
    max_tokens temperature top_p top_k frequency_penalty stop stream tools tool_choice
    metadata retry_failed only restart dry_run limit quiet max_failure_rate max_cost
    max_tokens_total prices cost_header provider expected_column match group_by
    image_columns extra_body model_check dedupe cache cache_mode mode batch_api batch_size
    poll_interval schema choices max_reasks params_column engine ray_address shards workers
    output_dataset
    """.split()  # noqa: SIM905 - a word list reads better than 40 quoted strings
)

_PATH_KEYS = ("input", "output", "prices", "cache")


def load_job_file(path: Path) -> dict[str, Any]:
    """Read a TOML job file into flat settings, paths resolved against its folder."""
    try:
        with open_regular(path, "job file") as f:
            data = tomllib.load(f)
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"job file {path} is not UTF-8 text (byte {exc.start}: {exc.reason})",
            hint="save it as UTF-8",
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"job file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - SETTING_KEYS)
    if unknown:
        raise UsageError(
            f"job file {path}: unknown key(s) {', '.join(unknown)}",
            hint=f"known keys: {', '.join(sorted(SETTING_KEYS))}",
        )
    for key in _PATH_KEYS:
        if key in data:
            check(isinstance(data[key], str), f"job file {path}: {key} must be a string path")
            if not is_uri(data[key]):  # s3://… names no file beside the job file
                data[key] = os.path.normpath(path.parent / data[key])
    schema = data.get("schema")
    if isinstance(schema, str) and not schema.lstrip().startswith("{"):  # a path, not JSON
        data["schema"] = os.path.normpath(path.parent / schema)
    return data


def resolve_settings(job_file: Path | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """Job file settings with the given (non-None) flag values on top."""
    settings = load_job_file(job_file) if job_file is not None else {}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


def _parse_json_setting(name: str, value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{name} is not valid JSON: {exc}") from None
    return value


def _tool_choice(value: Any) -> Any:
    """A tool choice setting: a bare word ("auto", "required"; JSON needs no quotes
    around it on the command line) or a JSON object."""
    if isinstance(value, str) and value.strip() in CHOICE_WORDS:
        return value.strip()
    return _parse_json_setting("tool_choice", value)


def _schema(schema: Any, choices: Any) -> dict[str, Any] | None:
    """``schema`` (inline JSON, a TOML table or a file path) or ``choices`` (a, b, c)."""
    check(schema is None or choices is None, "give only one of --schema and --choices")
    if choices is not None:
        return choices_schema(choices)
    if schema is None:
        return None
    check(
        isinstance(schema, str | dict),
        f"schema must be JSON text, a table or a path, got {schema!r}",
    )
    return load_schema(schema)


def _grading(s: dict[str, Any]) -> Grading | None:
    expected = s.pop("expected_column", None)
    match = s.pop("match", None)
    group_by = s.pop("group_by", None)
    if expected is None:
        check(match is None and group_by is None, "match and group_by go with expected_column")
        return None
    return Grading(expected_column=expected, match=match or "exact", group_by=group_by)


#: Settings that are text: from a job file, a value of another kind is a mistake (which
#: would otherwise surface as a crash far from its cause).
_TEXT_KEYS = (
    "input", "output", "model", "base_url", "api_key_env", "prompt_column", "messages_column",
    "template", "system", "id_column", "prices", "expected_column", "match", "group_by",
    "provider", "cache", "cache_mode", "mode", "batch_api", "params_column",
)  # fmt: skip
#: Settings that are true or false: `restart = "false"` must not discard a checkpoint.
_FLAG_KEYS = (
    "system_as_message", "stream", "retry_failed", "restart", "dry_run", "quiet", "dedupe",
    "model_check",
)  # fmt: skip


def _check_kinds(s: dict[str, Any]) -> None:
    for key in _TEXT_KEYS:
        value = s.get(key)
        if value is None:
            continue
        check(isinstance(value, str), f"{key} must be a string, got {value!r}")
        # Bytes of another encoding on the command line arrive as lone surrogates.
        check(encodes(value), f"{key} is not UTF-8 text: {value!r}")
    for key in _FLAG_KEYS:
        value = s.get(key)
        check(
            value is None or isinstance(value, bool), f"{key} must be true or false, got {value!r}"
        )
    images = s.get("image_columns")
    check(
        images is None
        or isinstance(images, str)
        or (isinstance(images, list | tuple) and all(isinstance(c, str) for c in images)),
        f"image_columns must be a list of column names, got {images!r}",
    )
    stop = s.get("stop")
    for item in (stop,) if isinstance(stop, str) else stop or ():
        check(isinstance(item, str), f"stop sequences must be strings, got {item!r}")
        check(encodes(item), f"stop sequence {item!r} is not UTF-8 text")


def _names(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def job_from_settings(settings: dict[str, Any]) -> Job:
    """Build a validated Job from flat settings (see :data:`SETTING_KEYS`)."""
    _check_kinds(settings)
    s = dict(settings)
    s.pop("quiet", None)
    if "input" not in s:
        raise UsageError("no input given", hint="pass --input PATH or set input in the job file")
    input_path = location(s.pop("input"))
    output = s.pop("output", None)
    output_path = (
        location(output) if output else input_path.with_name(input_path.stem + ".out.parquet")
    )
    tools = _parse_json_setting("tools", s.pop("tools", None))
    if tools is not None:
        check(
            isinstance(tools, list),
            "tools must be a list of {name, description, input_schema} or "
            '{"type": "function", "function": {name, description, parameters}}',
        )
        tools = tuple(tools)
    stop = s.pop("stop", ())
    if isinstance(stop, str):
        stop = (stop,)
    schema = _schema(s.pop("schema", None), s.pop("choices", None))
    try:
        params = RequestParams(
            model=s.pop("model", DEFAULT_MODEL),
            max_tokens=s.pop("max_tokens", 512),
            temperature=s.pop("temperature", None),
            top_p=s.pop("top_p", None),
            top_k=s.pop("top_k", None),
            frequency_penalty=s.pop("frequency_penalty", None),
            stop_sequences=tuple(stop),
            stream=s.pop("stream", False),
            system=s.pop("system", None),
            system_as_message=s.pop("system_as_message", False),
            tools=tools,
            tool_choice=_tool_choice(s.pop("tool_choice", None)),
            metadata=_parse_json_setting("metadata", s.pop("metadata", None)),
            extra_body=_parse_json_setting("extra_body", s.pop("extra_body", None)),
            schema=schema,
        )
        limits = Limits(
            concurrency=s.pop("concurrency", Limits.concurrency),
            requests_per_minute=s.pop("rpm", None),
            tokens_per_minute=s.pop("tpm", None),
        )
        retry_kwargs: dict[str, Any] = {}
        if "max_attempts" in s:
            retry_kwargs["max_attempts"] = s.pop("max_attempts")
        if "timeout" in s:
            retry_kwargs["timeout_s"] = s.pop("timeout")
        if "read_timeout" in s:
            retry_kwargs["read_timeout_s"] = s.pop("read_timeout")
        if "max_retry_after" in s:
            retry_kwargs["max_retry_after_s"] = s.pop("max_retry_after")
        retry = RetryPolicy(**retry_kwargs)
        only = s.pop("only", ())
        if isinstance(only, str):
            only = tuple(t.strip() for t in only.split(",") if t.strip())
        job = Job(
            input_path=input_path,
            output_path=output_path,
            base_url=s.pop("base_url", DEFAULT_BASE_URL),
            api_key_env=s.pop("api_key_env", DEFAULT_API_KEY_ENV),
            prompt_column=s.pop("prompt_column", None),
            messages_column=s.pop("messages_column", None),
            template=s.pop("template", None),
            id_column=s.pop("id_column", None),
            params=params,
            limits=limits,
            retry=retry,
            max_failure_rate=s.pop("max_failure_rate", 0.0),
            retry_failed=s.pop("retry_failed", False),
            only_error_types=tuple(only),
            restart=s.pop("restart", False),
            dry_run=s.pop("dry_run", False),
            limit=s.pop("limit", None),
            budget=Budget(
                max_cost_usd=s.pop("max_cost", None),
                max_tokens_total=s.pop("max_tokens_total", None),
            ),
            grading=_grading(s),
            prices_path=Path(s.pop("prices")) if s.get("prices") else None,
            cost_header=s.pop("cost_header", None),
            provider=s.pop("provider", None),
            dedupe=s.pop("dedupe", None),
            cache_dir=Path(s.pop("cache")) if s.get("cache") else None,
            cache_mode=s.pop("cache_mode", "read-write"),
            image_columns=_names(s.pop("image_columns", ())),
            model_check=s.pop("model_check", True),
            max_reasks=s.pop("max_reasks", 2),
            params_column=s.pop("params_column", None),
            mode=s.pop("mode", "live"),
            batch=BatchOptions(
                api=s.pop("batch_api", BatchOptions.api),
                size=s.pop("batch_size", BatchOptions.size),
                poll_interval_s=s.pop("poll_interval", BatchOptions.poll_interval_s),
            ),
        )
    except TypeError as exc:  # a job-file value of the wrong kind reaching a comparison
        raise UsageError(f"a job setting has the wrong type: {exc}") from None
    unknown = sorted(s)
    if unknown:
        raise UsageError(f"unknown setting(s) {', '.join(unknown)}")
    return job
