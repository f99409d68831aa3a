"""Rows → request bodies. Every check a row can fail happens here, before anything is sent."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from batchrun import fastjson
from batchrun.checks import template_columns
from batchrun.errors import InputError, UsageError
from batchrun.images import ImageProblem, check_ref, max_image_bytes, refs_of
from batchrun.io.readers import MAX_NESTING, Where
from batchrun.job import Job, RequestParams
from batchrun.records import Request
from batchrun.rowparams import row_overrides
from batchrun.send.tracing import client_request_id, job_tag
from batchrun.structured import tool_fields

ROLES = frozenset({"system", "user", "assistant", "tool"})


class _Row(Mapping[str, str]):
    """Template values of one row; a missing column raises a KeyError naming it."""

    __slots__ = ("_row",)

    def __init__(self, row: dict[str, Any]) -> None:
        self._row = row

    def __getitem__(self, key: str) -> str:
        value = self._row[key]
        return value if isinstance(value, str) else str(value)

    def __iter__(self) -> Iterator[str]:
        return iter(self._row)

    def __len__(self) -> int:
        return len(self._row)


def estimate_prompt_tokens(text_chars: int) -> int:
    """A cheap upper-leaning estimate of a prompt's tokens: ~4 characters a token."""
    return text_chars // 4 + 4


def request_params(params: RequestParams) -> dict[str, Any]:
    """The job-level parameters of every request, in the API's names and a stable order
    (the dialect turns them into the wire body)."""
    out: dict[str, Any] = {"model": params.model, "max_tokens": params.max_tokens}
    for name in ("temperature", "top_p", "top_k", "frequency_penalty"):
        value = getattr(params, name)
        if value is not None:
            out[name] = value
    if params.stop_sequences:
        out["stop_sequences"] = list(params.stop_sequences)
    if params.stream:
        out["stream"] = True
    if params.system is not None:
        out["system"] = params.system
    out.update(tool_fields_of(params))
    if params.metadata is not None:
        out["metadata"] = params.metadata
    if params.extra_body is not None:
        out.update(params.extra_body)  # on purpose: the user's fields win
    return out


def tool_fields_of(params: RequestParams) -> dict[str, Any]:
    """The body's ``tools`` and ``tool_choice``: the job's own, or the one forced tool of its
    schema. The one place they are made, so a provider's dialect can translate them."""
    if params.schema is not None:
        return tool_fields(params.schema)
    out: dict[str, Any] = {}
    if params.tools is not None:
        out["tools"] = list(params.tools)
    if params.tool_choice is not None:
        out["tool_choice"] = params.tool_choice
    return out


class RequestBuilder:
    """Turns rows into request bodies for one job; the prompt source is fixed by the first row."""

    def __init__(self, job: Job, file: str) -> None:
        self.job = job
        self.file = file
        #: Shared by every request of the job (rows do not change it).
        self._params = request_params(job.params)
        self._system_chars = len(job.params.system or "")
        self._profile = job.profile  # what a row's own parameters are checked against
        self._template_columns = template_columns(job.template) if job.template else []
        self.mode: str | None = None
        self.column: str | None = None
        if job.template is not None:
            self.mode = "template"
        elif job.messages_column:
            self.mode, self.column = "messages", job.messages_column
        elif job.prompt_column:
            self.mode, self.column = "prompt", job.prompt_column
        self.id_column: str | None = job.id_column
        self._image_columns = job.image_columns
        # Relative image paths resolve beside a local input; beside an object there is no
        # folder to look in, so they resolve against the working folder.
        path = job.input_path
        self._image_dir = path.parent if isinstance(path, Path) else Path()
        self._image_limit = max_image_bytes(job.params.model)
        #: Names the job in every row's X-Client-Request-Id (stable across resumes).
        output = job.trace_output or str(job.output_path.resolve())
        self.trace_tag = job_tag(job.fingerprint_fields(), output)

    def resolve(self, columns: list[str]) -> None:
        """Fix the prompt source and id column from the input's columns (first row or schema)."""
        if self.mode is None:
            if "messages" in columns:
                self.mode, self.column = "messages", "messages"
            elif "prompt" in columns:
                self.mode, self.column = "prompt", "prompt"
            else:
                raise UsageError(
                    f"{self.file}: no prompt source; columns are: {', '.join(columns) or '(none)'}",
                    hint="use --prompt-column, --messages-column or --template",
                )
        elif self.column is not None and self.column not in columns:
            raise UsageError(
                f"{self.file}: column {self.column!r} not found; columns are: {', '.join(columns)}",
                hint=f"pass --{self.mode}-column with one of them",
            )
        missing = [c for c in self._template_columns if c not in columns]
        if missing:
            raise UsageError(
                f"{self.file}: template column {missing[0]!r} not found; columns are: {', '.join(columns)}"
            )
        missing = [c for c in self._image_columns if c not in columns]
        if missing:
            raise UsageError(
                f"{self.file}: image column {missing[0]!r} not found; columns are: {', '.join(columns)}"
            )
        if self.id_column is None:
            self.id_column = "id" if "id" in columns else None
        elif self.id_column not in columns:
            raise UsageError(
                f"{self.file}: id column {self.id_column!r} not found; columns are: {', '.join(columns)}"
            )

    def row_id(self, row: dict[str, Any], position: int, where: Where) -> Any:
        """The row's id: the id column's value (a string or integer), else its position."""
        if self.id_column is None:
            return position
        value = row.get(self.id_column)
        if value is None or isinstance(value, bool) or not isinstance(value, (str, int)):
            raise InputError(
                "id is missing or not a string/integer"
                if value is None
                else f"id {value!r} is not a string or integer",
                file=self.file,
                column=self.id_column,
                **where,
            )
        return value

    def build(self, row: dict[str, Any], position: int, where: Where) -> Request:
        """The request for one row; raises InputError naming file, line/row and column."""
        if self.mode == "template":
            assert self.job.template is not None
            for col in self._template_columns:
                if row.get(col) is None:
                    reason = "not found" if col not in row else "null"
                    raise InputError(
                        f"template column is {reason}", file=self.file, column=col, **where
                    )
            content = self.job.template.format_map(_Row(row))
            messages: list[Any] = [{"role": "user", "content": content}]
            chars = len(content)
        elif self.mode == "prompt":
            assert self.column is not None
            value = row.get(self.column)
            if not isinstance(value, str) or not value:
                reason = (
                    "missing"
                    if self.column not in row
                    else f"not a non-empty string ({type(value).__name__})"
                )
                raise InputError(f"prompt is {reason}", file=self.file, column=self.column, **where)
            messages = [{"role": "user", "content": value}]
            chars = len(value)
        else:
            assert self.column is not None
            messages, chars = self._messages(row.get(self.column), where)
        images, image_tokens = self._images(row, where) if self._image_columns else ((), 0)
        params, max_tokens, system_chars = (
            self._params,
            self.job.params.max_tokens,
            self._system_chars,
        )
        column = self.job.params_column
        if column is not None:
            own = row_overrides(
                row.get(column), self.job.params.model, self._profile, self.file, column, where
            )
            if own:
                params = {**params, **own}
                max_tokens = own.get("max_tokens", max_tokens)
                system_chars = len(own.get("system", self.job.params.system or ""))
        return Request(
            position=position,
            messages=messages,
            params=params,
            max_tokens=max_tokens,
            prompt_tokens=estimate_prompt_tokens(chars + system_chars) + image_tokens,
            images=images,
            client_request_id=client_request_id(self.trace_tag, self.row_id(row, position, where)),
        )

    def _images(self, row: dict[str, Any], where: Where) -> tuple[tuple[Any, ...], int]:
        """The row's images by reference, each checked (a file's head only: exists, is a
        JPEG/PNG/GIF/WebP by its bytes, within the model's size limit), and their tokens."""
        refs = []
        tokens = 0
        for col in self._image_columns:
            try:
                found = refs_of(row.get(col), self._image_dir)
                for k, ref in enumerate(found):
                    try:
                        tokens += check_ref(ref, self._image_limit)
                    except ImageProblem as exc:
                        at = f"image {k + 1} of {len(found)}: " if len(found) > 1 else ""
                        raise ImageProblem(at + str(exc)) from None
            except ImageProblem as exc:
                raise InputError(str(exc), file=self.file, column=col, **where) from None
            refs.extend(found)
        return tuple(refs), tokens

    def _messages(self, value: Any, where: Where) -> tuple[list[Any], int]:
        col = self.column
        if isinstance(value, str):
            # A JSON-encoded messages list is common in CSV-born Parquet files. Read as the
            # JSONL reader reads a line: what it refuses (a lone surrogate, deep nesting)
            # could not be sent either.
            raw = value.encode("utf-8", "surrogatepass")
            try:
                value = fastjson.loads(raw)
            except fastjson.UnpairedSurrogate:
                raise InputError(
                    "messages holds an unpaired surrogate escape, which UTF-8 text cannot carry",
                    file=self.file,
                    column=col,
                    **where,
                ) from None
            except fastjson.NestingTooDeep:
                value = None  # deeper than any limit: said below
                too_deep = True
            except ValueError:
                raise InputError(
                    "messages is a string but not a JSON list", file=self.file, column=col, **where
                ) from None
            else:
                brackets = raw.count(b"[") + raw.count(b"{")
                too_deep = brackets > MAX_NESTING and fastjson.depth(value) > MAX_NESTING
            if too_deep:
                raise InputError(
                    f"messages nest more than {MAX_NESTING} levels deep",
                    file=self.file,
                    column=col,
                    **where,
                )
        if not isinstance(value, list) or not value:
            raise InputError(
                "messages must be a non-empty list of {role, content}",
                file=self.file,
                column=col,
                **where,
            )
        chars = 0
        out: list[Any] = []
        for i, m in enumerate(value):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise InputError(
                    f"messages[{i}] needs a role of {', '.join(sorted(ROLES))}",
                    file=self.file,
                    column=col,
                    **where,
                )
            content = m.get("content")
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                chars += sum(len(str(p.get("text", ""))) for p in content if isinstance(p, dict))
            elif not (content is None and m["role"] == "assistant" and m.get("tool_calls")):
                raise InputError(
                    f"messages[{i}].content must be a string or a list of parts",
                    file=self.file,
                    column=col,
                    **where,
                )
            # Parquet structs come back with every field, null ones included; drop those.
            out.append({k: v for k, v in m.items() if v is not None})
        return out, chars
