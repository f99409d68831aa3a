"""Request validation as the real API does it: the first problem, named by its field."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from batchrun.simulate.config import MODELS

ROLES = frozenset({"system", "user", "assistant", "tool"})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def validate(body: Any) -> tuple[str, str] | None:
    """(param, message) of the first problem with a request body, as the API reports it."""
    if not isinstance(body, dict):
        return "body", "request body must be a JSON object"
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "model", "model is required and must be a non-empty string"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages", "messages is required and must be a non-empty list"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            return "messages", f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}"
        c = m.get("content")
        if not (isinstance(c, (str, list)) or (c is None and m.get("tool_calls"))):
            return "messages", f"messages[{i}].content must be a string or a list of content parts"
    checks: list[tuple[str, Callable[[Any], bool], str]] = [
        ("max_tokens", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        ("temperature", lambda v: _is_num(v) and 0 <= v <= 1, "a number between 0 and 1"),
        ("top_p", lambda v: _is_num(v) and 0 <= v <= 1, "a number between 0 and 1"),
        ("top_k", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        ("frequency_penalty", lambda v: _is_num(v) and -2 <= v <= 2, "a number between -2 and 2"),
        ("stop_sequences", lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), "a list of strings"),
        ("stream", lambda v: isinstance(v, bool), "a boolean"),
        ("system", lambda v: isinstance(v, str), "a string"),
        ("metadata", lambda v: isinstance(v, dict), "an object"),
        ("tools", lambda v: isinstance(v, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("input_schema"), dict) and isinstance(t.get("description", ""), str) for t in v), "a list of {name, description, input_schema}"),
    ]  # fmt: skip
    for name, ok, what in checks:
        if name in body and not ok(body[name]):
            return name, f"{name} must be {what}"
    if "tool_choice" in body:
        tc = body["tool_choice"]
        names = {t["name"] for t in body.get("tools") or ()}
        kind = tc.get("type") if isinstance(tc, dict) else None
        if not (
            kind in ("auto", "none", "required") or (kind == "tool" and tc.get("name") in names)
        ):
            return (
                "tool_choice",
                'tool_choice must be {"type": "auto"|"none"|"required"} or {"type": "tool", "name": <a tool>}',
            )
    return None


def known_model(model: str) -> bool:
    """Whether the gateway serves this model (else 404)."""
    return model in MODELS or "/" in model or model.startswith(("gpt-", "claude"))
