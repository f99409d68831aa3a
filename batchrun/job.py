"""The job: frozen, validated settings for one run (:mod:`batchrun.settings` builds one
from a job file and flags)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchrun.checks import check, check_base_url, is_int, is_number, template_columns
from batchrun.errors import UsageError
from batchrun.profiles import GATEWAY, Profile, get_profile
from batchrun.tools import normalize_tool_choice, normalize_tools

DEFAULT_BASE_URL = "https://api.aimlapi.com/v1"
DEFAULT_MODEL = "anthropic/claude-3-opus"
DEFAULT_API_KEY_ENV = "AIMLAPI_KEY"
#: Response header read for the cost the server charged, in USD, unless the profile names
#: another: the AI/ML API gateway's (LiteLLM: ``x-litellm-response-cost``).
DEFAULT_COST_HEADER = GATEWAY.cost_header

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
    "invalid_image",
    "internal_error",
)


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
    #: Tools in either shape (:mod:`batchrun.tools`); kept in the neutral one.
    tools: tuple[dict[str, Any], ...] | None = None
    #: A word ("auto", "none", "required") or an object; kept in the neutral shape.
    tool_choice: dict[str, Any] | str | None = None
    metadata: dict[str, Any] | None = None
    #: Fields merged into every body on purpose (``--extra-body``): batchrun itself sends
    #: only what the model's documented schema has (the gateway refuses other fields of
    #: Claude models).
    extra_body: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check(
            isinstance(self.model, str) and bool(self.model.strip()),
            "model must be a non-empty string",
        )
        check(
            is_int(self.max_tokens) and self.max_tokens >= 1,
            f"max_tokens must be an integer >= 1, got {self.max_tokens!r}",
        )
        if self.temperature is not None:
            check(
                is_number(self.temperature) and 0 <= self.temperature <= 1,
                f"temperature must be between 0 and 1, got {self.temperature!r}",
            )
        if self.top_p is not None:
            check(
                is_number(self.top_p) and 0 <= self.top_p <= 1,
                f"top_p must be between 0 and 1, got {self.top_p!r}",
            )
        if self.top_k is not None:
            check(
                is_int(self.top_k) and self.top_k >= 0,
                f"top_k must be an integer >= 0, got {self.top_k!r}",
            )
        if self.frequency_penalty is not None:
            check(
                is_number(self.frequency_penalty) and -2 <= self.frequency_penalty <= 2,
                f"frequency_penalty must be between -2 and 2, got {self.frequency_penalty!r}",
            )
        check(
            all(isinstance(s, str) and s for s in self.stop_sequences),
            "stop sequences must be non-empty strings",
        )
        check(isinstance(self.stream, bool), "stream must be true or false")
        # Either wire shape is accepted; the neutral (gateway) shape is kept, so the
        # fingerprint does not depend on how the tools were written.
        if self.tools is not None:
            object.__setattr__(self, "tools", normalize_tools(self.tools))
        if self.tool_choice is not None:
            object.__setattr__(
                self, "tool_choice", normalize_tool_choice(self.tool_choice, self.tools)
            )
        if self.metadata is not None:
            check(isinstance(self.metadata, dict), "metadata must be an object")
        if self.extra_body is not None:
            check(isinstance(self.extra_body, dict), "extra_body must be a JSON object")
            check(
                "messages" not in self.extra_body,
                "extra_body must not hold messages (they come from the rows)",
            )
        for name in ("tools", "tool_choice", "metadata", "extra_body"):
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
        check(
            is_int(self.concurrency) and 1 <= self.concurrency <= 10_000,
            f"concurrency must be an integer from 1 to 10000, got {self.concurrency!r}",
        )
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None:
                check(
                    is_number(value) and value > 0,
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
        check(
            is_int(self.max_attempts) and self.max_attempts >= 1,
            f"max_attempts must be an integer >= 1, got {self.max_attempts!r}",
        )
        check(
            is_number(self.timeout_s) and self.timeout_s > 0,
            f"timeout must be a positive number of seconds, got {self.timeout_s!r}",
        )
        check(
            is_number(self.read_timeout_s) and self.read_timeout_s > 0,
            f"read_timeout must be a positive number of seconds, got {self.read_timeout_s!r}",
        )
        check(
            self.backoff_initial_s >= 0 and self.backoff_max_s >= self.backoff_initial_s,
            "backoff waits must be >= 0 and max >= initial",
        )
        check(self.max_retry_after_s >= 0, "max_retry_after_s must be >= 0")
        check(
            is_int(self.same_error_stop_after) and self.same_error_stop_after >= 1,
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
            check(
                is_number(self.max_cost_usd) and self.max_cost_usd > 0,
                f"max_cost must be a positive amount of USD, got {self.max_cost_usd!r}",
            )
        if self.max_tokens_total is not None:
            check(
                is_int(self.max_tokens_total) and self.max_tokens_total > 0,
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
        check(
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
    #: Response header carrying the cost the server charged, in USD (None: the profile's;
    #: "": read none).
    cost_header: str | None = None
    #: The provider profile by name (:data:`batchrun.profiles.PROFILES`); None: the one
    #: the base URL implies.
    provider: str | None = None
    #: Columns holding each row's images (paths relative to the input, URLs, bytes).
    image_columns: tuple[str, ...] = ()
    #: Ask ``GET {base_url}/models`` whether the model is served before sending.
    model_check: bool = True

    def __post_init__(self) -> None:
        suffix = self.input_path.suffix.lower()
        check(
            suffix in (".jsonl", ".parquet", ".ndjson"),
            f"input {self.input_path} must end in .jsonl, .ndjson or .parquet",
        )
        check(
            self.output_path.suffix.lower() == ".parquet",
            f"output {self.output_path} must end in .parquet",
        )
        check(
            self.output_path.resolve() != self.input_path.resolve(),
            "output must not be the input file",
        )
        check_base_url(self.base_url, self.api_key_env)
        sources = [n for n in ("prompt_column", "messages_column", "template") if getattr(self, n)]
        check(
            len(sources) <= 1,
            f"give only one of prompt_column, messages_column, template (got {', '.join(sources)})",
        )
        if self.template is not None:
            template_columns(self.template)
        check(
            is_number(self.max_failure_rate) and 0 <= self.max_failure_rate <= 1,
            f"max_failure_rate must be between 0 and 1, got {self.max_failure_rate!r}",
        )
        unknown = set(self.only_error_types) - set(ERROR_TYPES)
        check(
            not unknown,
            f"unknown error type(s) {', '.join(sorted(unknown))}; known: {', '.join(ERROR_TYPES)}",
        )
        check(not self.only_error_types or self.retry_failed, "--only goes with --retry-failed")
        check(
            not (self.retry_failed and self.restart),
            "--retry-failed and --restart exclude each other",
        )
        check(
            self.cost_header is None or isinstance(self.cost_header, str),
            f"cost_header must be a header name, got {self.cost_header!r}",
        )
        check(
            all(isinstance(c, str) and c for c in self.image_columns),
            "image columns must be non-empty column names",
        )
        profile = self.profile  # an unknown provider name is refused here
        refused = sorted(k for k in profile.refuses if getattr(self.params, k, None) is not None)
        if refused:
            raise UsageError(
                f"the {profile.name} provider does not take {', '.join(refused)}",
                hint="leave it out, or name a provider that takes it with --provider (vllm, litellm)",
            )
        if self.limit is not None:
            check(
                is_int(self.limit) and self.limit >= 1,
                f"limit must be an integer >= 1, got {self.limit!r}",
            )

    @property
    def profile(self) -> Profile:
        """The provider profile: ``provider`` by name, else the base URL's."""
        return get_profile(self.provider, self.base_url)

    @property
    def read_cost_header(self) -> str | None:
        """The response header read for each request's cost (None: none)."""
        if self.cost_header is None:
            return self.profile.cost_header
        return self.cost_header or None

    @property
    def summary_path(self) -> Path:
        return self.output_path.with_suffix(".summary.json")

    @property
    def checkpoint_dir(self) -> Path:
        return self.output_path.with_suffix(".checkpoint")

    def fingerprint_fields(self) -> dict[str, Any]:
        """What makes two runs the same job: how rows become requests, and where they go."""
        fields = {
            "base_url": self.base_url.rstrip("/"),
            "prompt_column": self.prompt_column,
            "messages_column": self.messages_column,
            "template": self.template,
            "id_column": self.id_column,
            "params": json.loads(json.dumps(dataclasses.asdict(self.params), sort_keys=True)),
            # Only where it is not the gateway's: checkpoints from before profiles resume.
            **({} if self.profile is GATEWAY else {"provider": self.profile.name}),
        }
        if self.image_columns:  # absent otherwise: older checkpoints resume as they were
            fields["image_columns"] = list(self.image_columns)
        return fields

    def identity(self) -> dict[str, Any]:
        """What an output records of the job that wrote it, so that ``batchrun compare`` can
        tell two jobs apart: the fingerprint without the base URL (where requests went is not
        what was asked, and a URL may hold credentials), and the grading."""
        identity = self.fingerprint_fields()
        del identity["base_url"]
        identity.pop("provider", None)  # where the requests went, as the base URL
        identity["grading"] = None if self.grading is None else dataclasses.asdict(self.grading)
        return identity
