"""Structured outputs: a JSON Schema of an object becomes the one tool of every request, the
tool is forced, and each answer's tool-call arguments are validated against the schema.

- :func:`load_schema` reads ``--schema`` (inline JSON or a file) and refuses a schema that
  is no valid draft 2020-12 schema of an object with properties;
- :func:`choices_schema` is ``--choices a,b,c``: one required enum property ``label``;
- :func:`tool_fields` is the request's ``tools`` and ``tool_choice`` for a schema;
- :class:`AnswerCheck` takes a row's answer apart: the validated arguments (JSON text), or
  the violation jsonschema's ``best_match`` picks (not the first found: the least deep
  one) and the follow-up messages that re-ask for valid arguments.

How the arguments become typed columns is :mod:`batchrun.typed`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchrun import fastjson
from batchrun.checks import check
from batchrun.errors import Mismatch, UsageError
from batchrun.io.files import open_regular
from batchrun.typed import coerce, typed_columns

#: Name of the tool when the schema has no usable ``title`` (OpenAI allows [A-Za-z0-9_-]{1,64}).
DEFAULT_TOOL_NAME = "record_answer"
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
DEFAULT_DESCRIPTION = "Record the answer: call this tool with arguments that match its schema."
#: A schema file larger than this is a mistake (a data file named by accident).
SCHEMA_MAX_BYTES = 1 << 20
#: Characters of a violation quoted in an error row or a follow-up.
VIOLATION_MAX = 300


def load_schema(value: Any, *, what: str = "schema") -> dict[str, Any]:
    """``--schema``: a JSON object (a dict, or JSON text starting with ``{``) or the path of
    a JSON file holding one; checked by :func:`check_schema`."""
    if isinstance(value, Path) or (isinstance(value, str) and not value.lstrip().startswith("{")):
        path = Path(value)
        with open_regular(path, "schema file") as f:
            raw = f.read(SCHEMA_MAX_BYTES + 1)
        check(len(raw) <= SCHEMA_MAX_BYTES, f"schema file {path} is larger than 1 MiB")
        where = f"schema file {path}"
    elif isinstance(value, str):
        raw, where = value.encode("utf-8", "surrogatepass"), what
    else:
        raw, where = b"", what
    if raw:
        try:
            value = fastjson.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise UsageError(f"{where} is not valid JSON: {exc}") from None
    check_schema(value, where)
    assert isinstance(value, dict)
    return value


def check_schema(schema: Any, where: str = "schema") -> None:
    """Refuse what cannot be a structured output: no object, not a valid draft 2020-12
    schema, not ``type: object`` with properties, or a property no column can hold."""
    check(isinstance(schema, dict), f"{where} must be a JSON object (a JSON Schema)")
    import jsonschema  # only for jobs with a schema: it adds a fifth to the CLI's start

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        at = "/".join(str(p) for p in exc.path)
        raise UsageError(
            f"{where} is not a valid JSON Schema (draft 2020-12): {exc.message}"
            + (f" (at {at})" if at else "")
        ) from None
    check(
        schema.get("type") == "object" and isinstance(schema.get("properties"), dict),
        f'{where} must describe an object: {{"type": "object", "properties": {{...}}}}',
    )
    check(bool(schema["properties"]), f"{where} has no properties (one column each)")
    try:
        json.dumps(schema, allow_nan=False, ensure_ascii=False).encode()
    except (ValueError, UnicodeEncodeError):
        raise UsageError(f"{where} holds NaN, Infinity or an unpaired surrogate") from None
    typed_columns(schema)  # every property maps to an Arrow type (else a JSON-text column)


def choices_schema(choices: Any) -> dict[str, Any]:
    """``--choices positive,negative,neutral`` (or a list): one required enum property."""
    items = [c.strip() for c in choices.split(",")] if isinstance(choices, str) else choices
    check(
        isinstance(items, list | tuple) and all(isinstance(c, str) for c in items),
        "choices must be comma-separated text or a list of strings",
    )
    labels = [c for c in items if c]
    check(len(labels) >= 2, f"choices needs at least two values, got {labels!r}")
    check(len(set(labels)) == len(labels), f"choices are repeated: {', '.join(labels)}")
    return {
        "title": "label",
        "description": "Record the label: exactly one of the allowed values.",
        "type": "object",
        "properties": {"label": {"type": "string", "enum": labels}},
        "required": ["label"],
        "additionalProperties": False,
    }


def named_tool(choice: Any) -> str | None:
    """The tool a tool_choice forces: ``{"type": "function", "function": {"name": N}}`` (the
    documented form) or Anthropic's ``{"type": "tool", "name": N}``; None otherwise."""
    if not isinstance(choice, dict):
        return None
    if choice.get("type") == "tool":
        name = choice.get("name")
    elif choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
    else:
        return None
    return name if isinstance(name, str) else None


def tool_name(schema: dict[str, Any]) -> str:
    title = schema.get("title")
    if isinstance(title, str) and _TOOL_NAME.fullmatch(title):
        return title
    return DEFAULT_TOOL_NAME


def tool_fields(schema: dict[str, Any]) -> dict[str, Any]:
    """The body's ``tools`` (the schema as the one tool) and the ``tool_choice`` forcing it,
    in the documented forms (a provider's dialect translates them where it differs)."""
    name = tool_name(schema)
    description = schema.get("description")
    tool = {
        "name": name,
        "description": description if isinstance(description, str) else DEFAULT_DESCRIPTION,
        "input_schema": schema,
    }
    return {"tools": [tool], "tool_choice": {"type": "function", "function": {"name": name}}}


@dataclass(frozen=True, slots=True)
class Verdict:
    """An answer checked: ``arguments`` (compact JSON of the validated object) when valid,
    else the ``violation`` (of several, ``best_match``'s) and the ``followup`` messages
    that ask again."""

    arguments: str | None
    violation: str | None = None
    followup: tuple[dict[str, Any], ...] = ()


class AnswerCheck:
    """Validates the answers of one schema (draft 2020-12, no network: a remote ``$ref``
    fails as unresolvable)."""

    def __init__(self, schema: dict[str, Any]) -> None:
        import jsonschema
        from jsonschema.exceptions import best_match

        self.schema = schema
        self.name = tool_name(schema)
        self._validator = jsonschema.Draft202012Validator(schema)
        self._best_match = best_match
        self._columns = typed_columns(schema)

    def __repr__(self) -> str:
        return f"AnswerCheck(tool={self.name!r}, columns={len(self._columns)})"

    def __call__(self, completion: str | None, tool_calls: str | None) -> Verdict:
        """Check an ok answer's text and tool calls (JSON text, as the row records them)."""
        call = self._call(tool_calls)
        if call is None:
            return self._reask(
                f"the answer did not call the tool {self.name}",
                [{"role": "assistant", "content": completion or "(no answer)"}],
                f"Call the tool {self.name} with arguments that match its input schema; "
                "do not answer in text.",
                None,
            )
        call_id = call.get("id") if isinstance(call.get("id"), str) else None
        assistant = {"role": "assistant", "content": None, "tool_calls": [call]}
        raw = (call.get("function") or {}).get("arguments")
        if isinstance(raw, str):
            try:
                args = fastjson.loads(raw.encode("utf-8", "surrogatepass"))
            except (ValueError, UnicodeDecodeError) as exc:
                return self._reask(
                    f"the tool-call arguments are not JSON ({_first_line(exc)})",
                    [assistant],
                    None,
                    call_id,
                )
        else:
            args = raw
        if not isinstance(args, dict):
            return self._reask(
                f"the tool-call arguments are not a JSON object (got {type(args).__name__})",
                [assistant],
                None,
                call_id,
            )
        # is_valid first: most answers are valid, and it costs less than collecting errors.
        valid = self._validator.is_valid(args)
        error = None if valid else self._best_match(self._validator.iter_errors(args))
        if error is not None:
            at = _json_path(error.absolute_path)
            return self._reask(f"{error.message} (at {at})", [assistant], None, call_id)
        try:
            for column in self._columns:
                coerce(args.get(column.prop), column.kind, [column.prop])
        except Mismatch as exc:
            return self._reask(str(exc), [assistant], None, call_id)
        return Verdict(arguments=fastjson.dumps(args).decode())

    def _call(self, tool_calls: str | None) -> dict[str, Any] | None:
        """The answer's call of this tool (the first one naming it)."""
        if not tool_calls:
            return None
        try:
            calls = json.loads(tool_calls)
        except ValueError:
            return None
        for call in calls if isinstance(calls, list) else ():
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict) and fn.get("name") == self.name:
                found: dict[str, Any] = call
                return found
        return None

    def _reask(
        self,
        violation: str,
        answer: list[dict[str, Any]],
        user_text: str | None,
        call_id: str | None,
    ) -> Verdict:
        """The follow-up: the answer as it came, then the violation — as the tool's result
        when the answer called the tool (APIs want every call answered), else as a user
        message."""
        violation = violation[:VIOLATION_MAX]
        tell = (
            f"Error: {violation}. Call {self.name} again with arguments that match its "
            "input schema."
        )
        if call_id is not None and user_text is None:
            reply = {"role": "tool", "tool_call_id": call_id, "content": tell}
        else:
            if answer and answer[0].get("tool_calls"):
                # A call without an id cannot be answered as a tool result: keep the text.
                answer = [{"role": "assistant", "content": json.dumps(answer[0]["tool_calls"])}]
            reply = {"role": "user", "content": user_text or tell}
        return Verdict(arguments=None, violation=violation, followup=(*answer, reply))


def _json_path(path: Any) -> str:
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _first_line(exc: BaseException) -> str:
    return str(exc).split("\n", 1)[0][:100]
