"""Tools and tool choices: both wire shapes accepted, one neutral shape kept.

The neutral shape is the gateway's documented one (Anthropic style), so a job written
before OpenAI shapes were accepted keeps its fingerprint:

- a tool is ``{"name", "description"?, "input_schema"}``;
- a tool choice is ``{"type": "auto" | "none" | "required"}`` or ``{"type": "tool", "name"}``.

Accepted as well, and turned into the neutral shape: OpenAI tools
``{"type": "function", "function": {"name", "description"?, "parameters"?}}``, the string
choices ``"auto"``, ``"none"``, ``"required"`` (and Anthropic's ``"any"``, which means
required), ``{"type": "any"}``, ``{"type": "function", "function": {"name"}}`` and
``{"type": "function", "name"}``. :func:`openai_tools` gives the OpenAI tool shape back
for servers that take it (see :mod:`batchrun.profiles`); :func:`openai_tool_choice` gives
the choice as it is sent to every server, the gateway included (its documentation lists
the words and the function object).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from batchrun.errors import UsageError

#: Tool-choice words, and what each means in the neutral shape.
CHOICE_WORDS = {"auto": "auto", "none": "none", "required": "required", "any": "required"}

_CHOICE_HELP = (
    'tool_choice must be "auto", "none", "required", {"type": "auto"|"none"|"required"}, '
    '{"type": "tool", "name": T} or {"type": "function", "function": {"name": T}} '
    "with T one of the tools"
)
#: An empty-object schema, for an OpenAI function declared without parameters.
_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


def normalize_tool(tool: Any, i: int) -> dict[str, Any]:
    """One tool of either shape in the neutral shape; UsageError naming ``tools[i]``."""
    if not isinstance(tool, dict):
        raise UsageError(
            f"tools[{i}] must be an object: {{name, description, input_schema}} or "
            '{"type": "function", "function": {name, description, parameters}}'
        )
    if tool.get("type") == "function" or "function" in tool:
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise UsageError(f"tools[{i}] has type function but no 'function' object")
        extra = sorted(set(tool) - {"type", "function"}) + sorted(
            set(fn) - {"name", "description", "parameters"}
        )
        if extra:
            # Anything else (strict, cache_control, …) has no counterpart in the other
            # shape: refused rather than silently dropped for one provider.
            raise UsageError(
                f"tools[{i}]: key {extra[0]!r} cannot be carried over; a function tool "
                "takes name, description and parameters"
            )
        out: dict[str, Any] = {"name": fn.get("name")}
        if "description" in fn:
            out["description"] = fn["description"]
        out["input_schema"] = fn.get("parameters", _NO_PARAMETERS)
        tool, where = out, f"tools[{i}].function"
    else:
        where = f"tools[{i}]"
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise UsageError(f"{where} needs a non-empty 'name'")
    schema_key = "parameters" if where.endswith("function") else "input_schema"
    if not isinstance(tool.get("input_schema"), dict):
        raise UsageError(f"{where} ({name}) needs a {schema_key!r} object")
    if not isinstance(tool.get("description", ""), str):
        raise UsageError(f"{where}.description must be a string")
    return dict(tool)


def normalize_tools(tools: Iterable[Any]) -> tuple[dict[str, Any], ...]:
    """Every tool in the neutral shape; names must be unique (a choice names one)."""
    out = tuple(normalize_tool(t, i) for i, t in enumerate(tools))
    seen: set[str] = set()
    for t in out:
        if t["name"] in seen:
            raise UsageError(f"two tools are named {t['name']!r}; a tool choice names one")
        seen.add(t["name"])
    return out


def normalize_tool_choice(choice: Any, tools: Iterable[dict[str, Any]] | None) -> dict[str, Any]:
    """A tool choice of any accepted form in the neutral shape; UsageError otherwise."""
    names = {t["name"] for t in tools or ()}
    if isinstance(choice, str):
        word = CHOICE_WORDS.get(choice.strip())
        if word is None:
            raise UsageError(_CHOICE_HELP)
        return {"type": word}
    if not isinstance(choice, dict):
        raise UsageError(_CHOICE_HELP)
    kind = choice.get("type")
    if kind in CHOICE_WORDS and set(choice) == {"type"}:
        return {"type": CHOICE_WORDS[kind]}
    name: Any = None
    if kind == "tool" and set(choice) == {"type", "name"}:
        name = choice["name"]
    elif kind == "function" and set(choice) == {"type", "function"}:
        fn = choice["function"]
        name = fn.get("name") if isinstance(fn, dict) and set(fn) == {"name"} else None
    elif kind == "function" and set(choice) == {"type", "name"}:
        name = choice["name"]
    if isinstance(name, str) and name in names:
        return {"type": "tool", "name": name}
    if isinstance(name, str):
        known = ", ".join(sorted(names)) or "(no tools given)"
        raise UsageError(f"tool_choice names {name!r}, which is not one of the tools: {known}")
    raise UsageError(_CHOICE_HELP)


def openai_tools(tools: Iterable[Any]) -> list[Any]:
    """Neutral tools in OpenAI's shape (name, description, input_schema → parameters).
    Anything else passes as it is: ``--extra-body`` may hold tools already in the
    server's shape, and the user's fields are sent as given."""
    out = []
    for t in tools:
        if not (isinstance(t, dict) and isinstance(t.get("input_schema"), dict) and "name" in t):
            out.append(t)
            continue
        fn: dict[str, Any] = {"name": t["name"]}
        if "description" in t:
            fn["description"] = t["description"]
        fn["parameters"] = t["input_schema"]
        out.append({"type": "function", "function": fn})
    return out


def openai_tool_choice(choice: Any) -> Any:
    """A neutral tool choice in the documented (OpenAI) shape: a word, or the named
    function (anything else, from ``--extra-body``, as it is)."""
    if not isinstance(choice, dict):
        return choice
    if choice.get("type") == "tool" and "name" in choice:
        return {"type": "function", "function": {"name": choice["name"]}}
    if set(choice) == {"type"} and choice["type"] in ("auto", "none", "required"):
        return choice["type"]
    return choice
