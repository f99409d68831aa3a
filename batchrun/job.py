"""The job: frozen, validated settings for one run (:mod:`batchrun.settings` builds one
from a job file and flags)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchrun.batchopts import MODES, BatchOptions, check_batchable
from batchrun.checks import check, check_base_url, is_int, is_number, template_columns
from batchrun.errors import UsageError
from batchrun.io.remote import Location, RemotePath, state_dir
from batchrun.pacing import Budget, Limits, RetryPolicy
from batchrun.profiles import GATEWAY, Profile, get_profile, refusal
from batchrun.structured import check_schema
from batchrun.tools import normalize_tool_choice, normalize_tools

__all__ = ["Budget", "Job", "Limits", "RequestParams", "RetryPolicy"]

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
    "invalid_output",
    # Batch mode (``--mode batch``): the batch's result for the row was not a message.
    "batch_errored",
    "batch_canceled",
    "batch_expired",
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
    #: A JSON Schema of an object (``--schema``, ``--choices``): sent as the one tool, forced,
    #: and each answer's arguments validated against it (:mod:`batchrun.structured`).
    schema: dict[str, Any] | None = None

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
        if self.schema is not None:
            check_schema(self.schema)
            check(
                self.tools is None and self.tool_choice is None,
                "--schema (or --choices) sends its own forced tool: drop --tools and --tool-choice",
            )
        if self.metadata is not None:
            check(isinstance(self.metadata, dict), "metadata must be an object")
        if self.extra_body is not None:
            check(isinstance(self.extra_body, dict), "extra_body must be a JSON object")
            check(
                "messages" not in self.extra_body,
                "extra_body must not hold messages (they come from the rows)",
            )
        for name in ("tools", "tool_choice", "metadata", "extra_body"):  # schema: above
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


#: How ``--cache`` is used (see ``Job.cache_mode``).
CACHE_MODES = ("read-write", "read-only", "refresh")

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

    #: A local path, or an object's URI (``s3://bucket/key``).
    input_path: Location
    output_path: Location
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
    #: Send a request repeated within the input once and give every such row its answer.
    #: None: on when the job is deterministic (temperature 0), off otherwise (repeats at a
    #: higher temperature may be wanted as separate samples).
    dedupe: bool | None = None
    #: A response cache shared across runs (a folder holding one SQLite file); None: none.
    cache_dir: Path | None = None
    #: read-write (use and fill), read-only (use, never add), refresh (never use, replace).
    cache_mode: str = "read-write"
    #: Columns holding each row's images (paths relative to the input, URLs, bytes).
    image_columns: tuple[str, ...] = ()
    #: Ask ``GET {base_url}/models`` whether the model is served before sending.
    model_check: bool = True
    #: With a schema: how often an invalid answer is asked again before the row fails.
    max_reasks: int = 2
    #: A column holding each row's own request parameters (an object; null: none).
    params_column: str | None = None
    #: live (one request a row) or batch (the provider's Batch API, see BatchOptions).
    mode: str = "live"
    batch: BatchOptions = field(default_factory=BatchOptions)
    #: The output the tracing ids name, when not this run's own (a Ray shard: the job's).
    trace_output: str | None = None

    def __post_init__(self) -> None:
        check(self.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "batch":
            check_batchable(self.params, self.budget, self.batch.api)
            # A batch is sent whole: no row can wait for another's answer or a cache look-up.
            check(
                not self.dedupe and self.cache_dir is None,
                "--dedupe and --cache work in --mode live only (a batch sends every row it holds)",
            )
            check(
                self.params.schema is None and self.params_column is None,
                "--schema, --choices and --params-column work in --mode live only "
                "(an invalid answer is asked again at once, and a row's own parameters "
                "are checked against what a live request takes)",
            )
        check(
            self.cache_dir is None or self.params.schema is None,
            "--cache does not keep the validated answers of --schema or --choices yet: "
            "run without one of them",
        )
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
        given = (k for k in profile.refuses if getattr(self.params, k, None) is not None)
        if (why := refusal(profile, given)) is not None:
            raise UsageError(why[0], hint=why[1])
        if self.limit is not None:
            check(
                is_int(self.limit) and self.limit >= 1,
                f"limit must be an integer >= 1, got {self.limit!r}",
            )
        check(
            is_int(self.max_reasks) and 0 <= self.max_reasks <= 10,
            f"max_reasks must be an integer from 0 to 10, got {self.max_reasks!r}",
        )
        check(
            self.dedupe is None or isinstance(self.dedupe, bool),
            f"dedupe must be true or false, got {self.dedupe!r}",
        )
        check(
            self.cache_mode in CACHE_MODES,
            f"cache_mode must be one of {', '.join(CACHE_MODES)}, got {self.cache_mode!r}",
        )

    @property
    def dedupe_enabled(self) -> bool:
        """Whether identical requests are sent once (see ``dedupe``)."""
        if self.mode == "batch":
            return False  # a batch sends every row it holds (see __post_init__)
        if self.dedupe is not None:
            return self.dedupe
        return self.params.temperature == 0

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
    def summary_path(self) -> Location:
        return self.output_path.with_suffix(".summary.json")

    @property
    def checkpoint_dir(self) -> Path:
        """Beside a local output; for an output in object storage, on the local disk under
        :func:`state_dir`, named after the output (``s3://b/out/x.parquet`` →
        ``STATE/s3/b/out/x.checkpoint``)."""
        if isinstance(self.output_path, RemotePath):
            return state_dir() / self.output_path.with_suffix(".checkpoint").local_name()
        return self.output_path.with_suffix(".checkpoint")

    @property
    def local_output(self) -> Path:
        """The output on a local disk: OUTPUT itself, or for an output in object storage the
        copy kept in the checkpoint folder (written there, then published)."""
        if isinstance(self.output_path, RemotePath):
            return self.checkpoint_dir / "output.parquet"
        return self.output_path

    def fingerprint_fields(self) -> dict[str, Any]:
        """What makes two runs the same job: how rows become requests, and where they go."""
        fields = {
            "base_url": self.base_url.rstrip("/"),
            "prompt_column": self.prompt_column,
            "messages_column": self.messages_column,
            "template": self.template,
            "id_column": self.id_column,
            "params_column": self.params_column,
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
