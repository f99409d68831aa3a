"""The job: frozen, validated settings for one run, from a TOML job file and flag overrides.

Settings are flat: each ``run`` flag is a key of the job file (dashes become underscores),
and a flag given on the command line overrides the same key of the file. Relative paths in
a job file resolve against the job file's folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from string import Formatter
from typing import Any
from urllib.parse import urlsplit

from batchrun.errors import UsageError
from batchrun.fastjson import encodes
from batchrun.io.files import open_regular

DEFAULT_BASE_URL = "https://api.aimlapi.com/v1"
DEFAULT_MODEL = "anthropic/claude-3-opus"
DEFAULT_API_KEY_ENV = "AIMLAPI_KEY"
#: Response header read for the cost the server charged (LiteLLM-based gateways send it).
DEFAULT_COST_HEADER = "x-litellm-response-cost"

#: Error types a failed row can carry (the ``error_type`` column); ``--only`` takes these.
ERROR_TYPES = (
    "timeout",
    "connection_error",
    "rate_limited",
    "server_error",
    "bad_request",
    "not_found",
    "payload_too_large",
    "unprocessable",
    "invalid_response",
    "http_error",
    "authentication",
    "permission_denied",
    "redirect",
    "internal_error",
)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(float(value))  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True)
class RequestParams:
    """Body parameters sent with every request (the documented API's ranges are checked here)."""

    model: str = DEFAULT_MODEL
    max_tokens: int = 512
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    frequency_penalty: float | None = None
    stop_sequences: tuple[str, ...] = ()
    stream: bool = False
    system: str | None = None
    #: Send ``system`` as a leading system message instead of the ``system`` body field
    #: (for OpenAI-compatible servers that do not know the field).
    system_as_message: bool = False
    tools: tuple[dict[str, Any], ...] | None = None
    tool_choice: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _check(
            isinstance(self.model, str) and bool(self.model.strip()),
            "model must be a non-empty string",
        )
        _check(
            _is_int(self.max_tokens) and self.max_tokens >= 1,
            f"max_tokens must be an integer >= 1, got {self.max_tokens!r}",
        )
        if self.temperature is not None:
            _check(
                _is_number(self.temperature) and 0 <= self.temperature <= 1,
                f"temperature must be between 0 and 1, got {self.temperature!r}",
            )
        if self.top_p is not None:
            _check(
                _is_number(self.top_p) and 0 <= self.top_p <= 1,
                f"top_p must be between 0 and 1, got {self.top_p!r}",
            )
        if self.top_k is not None:
            _check(
                _is_int(self.top_k) and self.top_k >= 0,
                f"top_k must be an integer >= 0, got {self.top_k!r}",
            )
        if self.frequency_penalty is not None:
            _check(
                _is_number(self.frequency_penalty) and -2 <= self.frequency_penalty <= 2,
                f"frequency_penalty must be between -2 and 2, got {self.frequency_penalty!r}",
            )
        _check(
            all(isinstance(s, str) and s for s in self.stop_sequences),
            "stop sequences must be non-empty strings",
        )
        _check(isinstance(self.stream, bool), "stream must be true or false")
        if self.tools is not None:
            for i, tool in enumerate(self.tools):
                _check(
                    isinstance(tool, dict),
                    f"tools[{i}] must be an object with name, description, input_schema",
                )
                _check(
                    isinstance(tool.get("name"), str) and bool(tool["name"]),
                    f"tools[{i}] needs a non-empty 'name'",
                )
                _check(
                    isinstance(tool.get("input_schema"), dict),
                    f"tools[{i}] ({tool.get('name')}) needs an 'input_schema' object",
                )
                _check(
                    isinstance(tool.get("description", ""), str),
                    f"tools[{i}].description must be a string",
                )
        if self.tool_choice is not None:
            kind = self.tool_choice.get("type") if isinstance(self.tool_choice, dict) else None
            names = {t["name"] for t in self.tools or ()}
            _check(
                kind in ("auto", "none", "required")
                or (kind == "tool" and self.tool_choice.get("name") in names),
                'tool_choice must be {"type": "auto"|"none"|"required"} or {"type": "tool", "name": <one of tools>}',
            )
        if self.metadata is not None:
            _check(isinstance(self.metadata, dict), "metadata must be an object")
        for name in ("tools", "tool_choice", "metadata"):
            value = getattr(self, name)
            if value is not None:
                try:
                    json.dumps(value, allow_nan=False, ensure_ascii=False).encode()
                except UnicodeEncodeError:
                    raise UsageError(
                        f"{name} holds an unpaired surrogate (\\ud800-\\udfff), which UTF-8 cannot carry"
                    ) from None
                except ValueError:
                    raise UsageError(
                        f"{name} holds NaN or Infinity, which JSON cannot carry"
                    ) from None


@dataclass(frozen=True, kw_only=True)
class Limits:
    """How hard to push the API."""

    concurrency: int = 16
    #: Requests per minute, spread evenly; None = find the sustainable rate from 429s.
    requests_per_minute: float | None = None
    #: Tokens per minute (prompt estimate + max_tokens before sending, real usage after).
    tokens_per_minute: float | None = None

    def __post_init__(self) -> None:
        _check(
            _is_int(self.concurrency) and 1 <= self.concurrency <= 10_000,
            f"concurrency must be an integer from 1 to 10000, got {self.concurrency!r}",
        )
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None:
                _check(
                    _is_number(value) and value > 0,
                    f"{name} must be a positive number, got {value!r}",
                )


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """What to do when a request does not succeed. Waits are in seconds."""

    max_attempts: int = 6
    #: Per request, whole request including reading the (streamed) answer.
    timeout_s: float = 120.0
    #: A streamed answer silent this long has stalled, the wait for its first byte included.
    #: (A non-streamed answer arrives in one piece at the end: only ``timeout_s`` applies.)
    read_timeout_s: float = 60.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    #: A Retry-After longer than this stops the run (resumably) instead of hanging.
    max_retry_after_s: float = 600.0
    #: Stop the run after this many consecutive rows failed with the same non-retryable error.
    same_error_stop_after: int = 20

    def __post_init__(self) -> None:
        _check(
            _is_int(self.max_attempts) and self.max_attempts >= 1,
            f"max_attempts must be an integer >= 1, got {self.max_attempts!r}",
        )
        _check(
            _is_number(self.timeout_s) and self.timeout_s > 0,
            f"timeout must be a positive number of seconds, got {self.timeout_s!r}",
        )
        _check(
            _is_number(self.read_timeout_s) and self.read_timeout_s > 0,
            f"read_timeout must be a positive number of seconds, got {self.read_timeout_s!r}",
        )
        _check(
            self.backoff_initial_s >= 0 and self.backoff_max_s >= self.backoff_initial_s,
            "backoff waits must be >= 0 and max >= initial",
        )
        _check(self.max_retry_after_s >= 0, "max_retry_after_s must be >= 0")
        _check(
            _is_int(self.same_error_stop_after) and self.same_error_stop_after >= 1,
            "same_error_stop_after must be an integer >= 1",
        )


@dataclass(frozen=True, kw_only=True)
class Budget:
    """Caps over the whole output (earlier runs' rows count): stop starting requests before
    a cap would be crossed."""

    max_cost_usd: float | None = None
    max_tokens_total: int | None = None

    def __post_init__(self) -> None:
        if self.max_cost_usd is not None:
            _check(
                _is_number(self.max_cost_usd) and self.max_cost_usd > 0,
                f"max_cost must be a positive amount of USD, got {self.max_cost_usd!r}",
            )
        if self.max_tokens_total is not None:
            _check(
                _is_int(self.max_tokens_total) and self.max_tokens_total > 0,
                f"max_tokens_total must be a positive integer, got {self.max_tokens_total!r}",
            )


#: How a completion is compared with the expected answer.
MATCH_RULES = ("exact", "ignore_case", "contains", "regex")


@dataclass(frozen=True, kw_only=True)
class Grading:
    """Grade completions against an expected-answer column (nightly evaluations)."""

    expected_column: str
    #: exact and ignore_case compare trimmed text; contains looks for the expected text in
    #: the completion; regex searches the completion with the expected value as a pattern.
    match: str = "exact"
    #: Report accuracy per value of this column too.
    group_by: str | None = None

    def __post_init__(self) -> None:
        _check(
            self.match in MATCH_RULES,
            f"match must be one of {', '.join(MATCH_RULES)}, got {self.match!r}",
        )


@dataclass(frozen=True, kw_only=True)
class Job:
    """Everything one run needs. Build with :func:`job_from_settings` or directly."""

    input_path: Path
    output_path: Path
    base_url: str = DEFAULT_BASE_URL
    api_key_env: str = DEFAULT_API_KEY_ENV
    prompt_column: str | None = None
    messages_column: str | None = None
    template: str | None = None
    id_column: str | None = None
    params: RequestParams = field(default_factory=RequestParams)
    limits: Limits = field(default_factory=Limits)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: Fraction of rows allowed to fail before the run exits 3.
    max_failure_rate: float = 0.0
    retry_failed: bool = False
    #: With retry_failed: only rows whose error_type is one of these (empty = all).
    only_error_types: tuple[str, ...] = ()
    restart: bool = False
    dry_run: bool = False
    #: Process only the first N rows of the input.
    limit: int | None = None
    budget: Budget = field(default_factory=Budget)
    grading: Grading | None = None
    #: A TOML price file merged over the bundled prices.
    prices_path: Path | None = None
    #: Response header carrying the cost the server charged, in USD (None: read none).
    cost_header: str | None = DEFAULT_COST_HEADER

    def __post_init__(self) -> None:
        suffix = self.input_path.suffix.lower()
        _check(
            suffix in (".jsonl", ".parquet", ".ndjson"),
            f"input {self.input_path} must end in .jsonl, .ndjson or .parquet",
        )
        _check(
            self.output_path.suffix.lower() == ".parquet",
            f"output {self.output_path} must end in .parquet",
        )
        _check(
            self.output_path.resolve() != self.input_path.resolve(),
            "output must not be the input file",
        )
        check_base_url(self.base_url, self.api_key_env)
        sources = [n for n in ("prompt_column", "messages_column", "template") if getattr(self, n)]
        _check(
            len(sources) <= 1,
            f"give only one of prompt_column, messages_column, template (got {', '.join(sources)})",
        )
        if self.template is not None:
            template_columns(self.template)
        _check(
            _is_number(self.max_failure_rate) and 0 <= self.max_failure_rate <= 1,
            f"max_failure_rate must be between 0 and 1, got {self.max_failure_rate!r}",
        )
        unknown = set(self.only_error_types) - set(ERROR_TYPES)
        _check(
            not unknown,
            f"unknown error type(s) {', '.join(sorted(unknown))}; known: {', '.join(ERROR_TYPES)}",
        )
        _check(not self.only_error_types or self.retry_failed, "--only goes with --retry-failed")
        _check(
            not (self.retry_failed and self.restart),
            "--retry-failed and --restart exclude each other",
        )
        _check(
            self.cost_header is None
            or (isinstance(self.cost_header, str) and bool(self.cost_header)),
            f"cost_header must be a header name, got {self.cost_header!r}",
        )
        if self.limit is not None:
            _check(
                _is_int(self.limit) and self.limit >= 1,
                f"limit must be an integer >= 1, got {self.limit!r}",
            )

    @property
    def summary_path(self) -> Path:
        return self.output_path.with_suffix(".summary.json")

    @property
    def checkpoint_dir(self) -> Path:
        return self.output_path.with_suffix(".checkpoint")

    def fingerprint_fields(self) -> dict[str, Any]:
        """What makes two runs the same job: how rows become requests, and where they go."""
        return {
            "base_url": self.base_url.rstrip("/"),
            "prompt_column": self.prompt_column,
            "messages_column": self.messages_column,
            "template": self.template,
            "id_column": self.id_column,
            "params": json.loads(json.dumps(dataclasses.asdict(self.params), sort_keys=True)),
        }

    def identity(self) -> dict[str, Any]:
        """What an output records of the job that wrote it, so that ``batchrun compare`` can
        tell two jobs apart: the fingerprint without the base URL (where requests went is not
        what was asked, and a URL may hold credentials), and the grading."""
        identity = self.fingerprint_fields()
        del identity["base_url"]
        identity["grading"] = None if self.grading is None else dataclasses.asdict(self.grading)
        return identity


def _without_credentials(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@``, fit to print."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    return f"{scheme}{sep}{netloc}{slash}{path}"


def check_base_url(url: object, api_key_env: str = DEFAULT_API_KEY_ENV) -> None:
    """Refuse a base URL no request could go to, before anything is sent: scheme http or
    https, a host, a port from 1 to 65535, no query or fragment (requests go to
    BASE_URL/chat/completions), no spaces or control characters, and no credentials (they
    would be stored with the job; the key belongs in the environment). Messages never
    show a password."""
    _check(isinstance(url, str), f"base_url must be a string, got {url!r}")
    assert isinstance(url, str)
    shown = _without_credentials(url)
    _check(
        not any(c.isspace() or unicodedata.category(c)[0] == "C" for c in url),
        f"base_url {shown!r} holds spaces or control characters",
    )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        reason = "port must be from 1 to 65535" if "ort" in str(exc) else str(exc)
        raise UsageError(f"base_url {shown!r} is not a valid URL: {reason}") from None
    if parts.username is not None or parts.password is not None:
        raise UsageError(
            f"base_url {shown!r} carries credentials (user:password@)",
            hint=f"remove them: the API key comes from the environment variable {api_key_env}",
        )
    _check(
        parts.scheme in ("http", "https"),
        f"base_url must start with http:// or https://, got {shown!r}",
    )
    _check(bool(parts.hostname), f"base_url {shown!r} names no host")
    _check(port is None or port >= 1, f"base_url {shown!r}: port must be from 1 to 65535")
    _check(
        not parts.query and not parts.fragment and "?" not in url and "#" not in url,
        f"base_url {shown!r} must not have a query or fragment (requests go to BASE_URL/chat/completions)",
    )


def check_api_key(value: str, env_name: str) -> None:
    """Refuse an API key that cannot go into an ``Authorization`` header as it is: control
    characters (CR, LF, NUL, zero-width and other invisible format characters) or
    whitespace inside it (the ends are trimmed). A CR/LF would split the header; a space
    or an invisible character is a copy-paste accident the server answers with 401 on
    every row. The message names the position, never a character of the key."""
    key = value.strip()
    for i, c in enumerate(key, start=1):
        if unicodedata.category(c)[0] == "C":
            what = "a line break" if c in "\r\n" else "a control or invisible character"
        elif c.isspace():
            what = "whitespace"
        else:
            continue
        raise UsageError(
            f"the API key in environment variable {env_name} contains {what} (at character {i})",
            hint=f"set {env_name} to the key alone, on one line",
        )


def _placeholder(name: str, conversion: str | None, spec: str | None) -> str:
    return (
        "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
    )


def template_columns(template: str) -> list[str]:
    """The column names a ``{column}`` template refers to; raises UsageError if malformed."""
    try:
        parsed = list(Formatter().parse(template))
    except ValueError as exc:
        raise UsageError(
            f"template is malformed: {exc}", hint="write a literal brace as {{ or }}"
        ) from None
    names: list[str] = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        _check(bool(name), "template has an empty {} placeholder; name a column, e.g. {text}")
        unsupported = [
            *([f"a conversion (!{conversion})"] if conversion else []),
            *([f"a format spec (:{spec})"] if spec else []),
        ]
        if unsupported:
            column = name.split(".")[0].split("[")[0]
            raise UsageError(
                f"template placeholder {_placeholder(name, conversion, spec)} uses "
                f"{' and '.join(unsupported)}; templates do not support conversions or format specs",
                hint=f"write {{{column}}} and put any formatting in the column itself",
            )
        _check(
            not any(c in name for c in ".["),
            f"template placeholder {{{name}}} must be a plain column name "
            "(attribute and index access are not supported)",
        )
        if name not in names:
            names.append(name)
    _check(bool(names), "template names no column; use {column} placeholders")
    return names


# --- settings: job file + flags -------------------------------------------------------------

#: Every key a job file may hold (the ``run`` flags, dashes as underscores).
SETTING_KEYS = frozenset(
    """
    input output model base_url api_key_env prompt_column messages_column template system
    system_as_message id_column concurrency rpm tpm max_attempts timeout read_timeout
    max_retry_after
    max_tokens temperature top_p top_k frequency_penalty stop stream tools tool_choice
    metadata retry_failed only restart dry_run limit quiet max_failure_rate max_cost
    max_tokens_total prices cost_header expected_column match group_by
    """.split()  # noqa: SIM905 - a word list reads better than 40 quoted strings
)

_PATH_KEYS = ("input", "output", "prices")


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
            _check(isinstance(data[key], str), f"job file {path}: {key} must be a string path")
            data[key] = os.path.normpath(path.parent / data[key])
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


def _grading(s: dict[str, Any]) -> Grading | None:
    expected = s.pop("expected_column", None)
    match = s.pop("match", None)
    group_by = s.pop("group_by", None)
    if expected is None:
        _check(match is None and group_by is None, "match and group_by go with expected_column")
        return None
    return Grading(expected_column=expected, match=match or "exact", group_by=group_by)


#: Settings that are text: from a job file, a value of another kind is a mistake (which
#: would otherwise surface as a crash far from its cause).
_TEXT_KEYS = (
    "input", "output", "model", "base_url", "api_key_env", "prompt_column", "messages_column",
    "template", "system", "id_column", "prices", "expected_column", "match", "group_by",
)  # fmt: skip
#: Settings that are true or false: `restart = "false"` must not discard a checkpoint.
_FLAG_KEYS = ("system_as_message", "stream", "retry_failed", "restart", "dry_run", "quiet")


def _check_kinds(s: dict[str, Any]) -> None:
    for key in _TEXT_KEYS:
        value = s.get(key)
        if value is None:
            continue
        _check(isinstance(value, str), f"{key} must be a string, got {value!r}")
        # Bytes of another encoding on the command line arrive as lone surrogates.
        _check(encodes(value), f"{key} is not UTF-8 text: {value!r}")
    for key in _FLAG_KEYS:
        value = s.get(key)
        _check(
            value is None or isinstance(value, bool), f"{key} must be true or false, got {value!r}"
        )
    stop = s.get("stop")
    for item in (stop,) if isinstance(stop, str) else stop or ():
        _check(isinstance(item, str), f"stop sequences must be strings, got {item!r}")
        _check(encodes(item), f"stop sequence {item!r} is not UTF-8 text")


def job_from_settings(settings: dict[str, Any]) -> Job:
    """Build a validated Job from flat settings (see :data:`SETTING_KEYS`)."""
    _check_kinds(settings)
    s = dict(settings)
    s.pop("quiet", None)
    if "input" not in s:
        raise UsageError("no input given", hint="pass --input PATH or set input in the job file")
    input_path = Path(s.pop("input"))
    output = s.pop("output", None)
    output_path = Path(output) if output else input_path.with_name(input_path.stem + ".out.parquet")
    tools = _parse_json_setting("tools", s.pop("tools", None))
    if tools is not None:
        _check(isinstance(tools, list), "tools must be a list of {name, description, input_schema}")
        tools = tuple(tools)
    stop = s.pop("stop", ())
    if isinstance(stop, str):
        stop = (stop,)
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
            tool_choice=_parse_json_setting("tool_choice", s.pop("tool_choice", None)),
            metadata=_parse_json_setting("metadata", s.pop("metadata", None)),
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
            cost_header=s.pop("cost_header", DEFAULT_COST_HEADER) or None,
        )
    except TypeError as exc:  # a job-file value of the wrong kind reaching a comparison
        raise UsageError(f"a job setting has the wrong type: {exc}") from None
    unknown = sorted(s)
    if unknown:
        raise UsageError(f"unknown setting(s) {', '.join(unknown)}")
    return job
