"""Request validation as the real API does it: the first problem, named by its field."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable
from typing import Any

from batchrun.images import MEDIA_TYPES, sniff
from batchrun.simulate.config import MODELS

ROLES = frozenset({"system", "user", "assistant", "tool"})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


#: The body fields OpenAI's chat completions take; it refuses any other.
OPENAI_FIELDS = frozenset(
    [
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "n",
        "stream",
        "stream_options",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "user",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "seed",
        "metadata",
        "store",
        "service_tier",
        "reasoning_effort",
        "modalities",
        "prediction",
        "audio",
        "web_search_options",
    ]
)


def validate(body: Any, flavor: str = "gateway") -> tuple[str, str] | None:
    """(param, message) of the first problem with a request body, as the API reports it."""
    problem = _common(body)
    if problem is not None or flavor != "openai":
        return problem or _gateway(body)
    return _openai(body)


def _unknown(body: dict[str, Any], known: frozenset[str]) -> tuple[str, str] | None:
    extra = sorted(set(body) - known)
    if extra:
        return extra[0], f"Unrecognized request argument supplied: {extra[0]}"
    return None


def _common(body: Any) -> tuple[str, str] | None:
    """What every flavour checks alike: the body, model and messages."""
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
    return None


def _gateway(body: dict[str, Any]) -> tuple[str, str] | None:
    # Unknown fields: refused for Claude models only (strict_problem), as the gateway does.
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
        fn = tc.get("function") if isinstance(tc, dict) else None
        named = (kind == "tool" and tc.get("name") in names) or (
            kind == "function" and isinstance(fn, dict) and fn.get("name") in names
        )
        # The documented forms (the words and the function object) and Anthropic's objects.
        words = ("auto", "none", "required")
        if not (tc in words or kind in words or named):
            return (
                "tool_choice",
                'tool_choice must be "auto", "none", "required", {"type": "function", "function": '
                '{"name": <a tool>}}, {"type": "auto"|"none"|"required"} or {"type": "tool", '
                '"name": <a tool>}',
            )
    return None


def known_model(model: str) -> bool:
    """Whether the gateway serves this model (else 404)."""
    return model in MODELS or "/" in model or model.startswith(("gpt-", "claude"))


#: The body fields of the gateway's schema for Claude models (``additionalProperties: false``).
CLAUDE_FIELDS = frozenset(
    """model messages max_tokens stream stop_sequences frequency_penalty top_k top_p
    temperature system tools tool_choice metadata""".split()  # noqa: SIM905
)
#: What the gateway says of a body its schema refuses.
BODY_VALIDATION = "Body validation error!"


def is_claude(model: str) -> bool:
    return model.startswith(("anthropic/", "claude"))


def strict_problem(body: dict[str, Any]) -> str | None:
    """The gateway's refusal of a field a Claude model's schema lacks."""
    if not is_claude(str(body.get("model", ""))):
        return None
    unknown = sorted(set(body) - CLAUDE_FIELDS)
    if unknown:
        return f"{BODY_VALIDATION} property {unknown[0]!r} should not exist"
    return None


def content_problem(body: dict[str, Any]) -> str | None:
    """The first bad content part: Claude models take text and base64 image blocks of
    jpeg/png/gif/webp whose bytes are what they claim; others text and image_url parts."""
    claude = is_claude(str(body.get("model", "")))
    for i, m in enumerate(body.get("messages") or ()):
        parts = m.get("content")
        if not isinstance(parts, list):
            continue
        for j, part in enumerate(parts):
            where = f"messages[{i}].content[{j}]"
            problem = _part_problem(part, claude)
            if problem is not None:
                return f"{BODY_VALIDATION} {where}: {problem}"
    return None


def _part_problem(part: Any, claude: bool) -> str | None:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        return None if isinstance(part.get("text"), str) else "text must be a string"
    if claude:
        if kind != "image":
            return f"type {kind!r} is not one of text, image"
        source = part.get("source")
        if not isinstance(source, dict) or source.get("type") != "base64":
            return "image source must be {type: base64, media_type, data}"
        media = source.get("media_type")
        if media not in MEDIA_TYPES:
            return f"media_type {media!r} is not one of {', '.join(MEDIA_TYPES)}"
        return _data_problem(source.get("data"), media)
    if kind != "image_url":
        return f"type {kind!r} is not one of text, image_url"
    url = (
        (part.get("image_url") or {}).get("url")
        if isinstance(part.get("image_url"), dict)
        else None
    )
    if not isinstance(url, str):
        return "image_url.url must be a string"
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        if not head.endswith(";base64"):
            return "a data URL must be base64"
        return _data_problem(data, head[5:].removesuffix(";base64"))
    if not url.startswith(("http://", "https://")):
        return "image_url.url must be an http(s) or data: URL"
    return None


def _data_problem(data: Any, media: str) -> str | None:
    if not isinstance(data, str) or not data:
        return "image data must be a non-empty base64 string"
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return "image data is not valid base64"
    found = sniff(raw)
    if found != media:
        return f"image data is {found or 'not an image'}, not {media}"
    return None


def _is_openai_tool(t: Any) -> bool:
    fn = t.get("function") if isinstance(t, dict) else None
    return (
        t.get("type") == "function"
        and isinstance(fn, dict)
        and isinstance(fn.get("name"), str)
        and isinstance(fn.get("description", ""), str)
        and isinstance(fn.get("parameters", {}), dict)
    )


def _openai(body: dict[str, Any]) -> tuple[str, str] | None:
    """OpenAI's checks: its fields only, its ranges, its tool and tool-choice shapes."""
    problem = _unknown(body, OPENAI_FIELDS)
    if problem is not None:
        return problem
    for i, m in enumerate(body["messages"]):
        if m["role"] == "tool" and not isinstance(m.get("tool_call_id"), str):
            return "messages", f"Missing parameter 'tool_call_id' in messages[{i}] (role tool)"
    checks: list[tuple[str, Callable[[Any], bool], str]] = [
        ("max_tokens", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        ("temperature", lambda v: _is_num(v) and 0 <= v <= 2, "a number between 0 and 2"),
        ("top_p", lambda v: _is_num(v) and 0 <= v <= 1, "a number between 0 and 1"),
        ("frequency_penalty", lambda v: _is_num(v) and -2 <= v <= 2, "a number between -2 and 2"),
        ("stop", lambda v: isinstance(v, str) or (isinstance(v, list) and len(v) <= 4 and all(isinstance(s, str) for s in v)), "a string or a list of up to 4 strings"),
        ("stream", lambda v: isinstance(v, bool), "a boolean"),
        ("stream_options", lambda v: isinstance(v, dict) and isinstance(v.get("include_usage", False), bool), "an object {include_usage: bool}"),
        ("metadata", lambda v: isinstance(v, dict), "an object"),
        ("tools", lambda v: isinstance(v, list) and all(_is_openai_tool(t) for t in v), 'a list of {"type": "function", "function": {name, description, parameters}}'),
    ]  # fmt: skip
    for name, ok, what in checks:
        if name in body and not ok(body[name]):
            return name, f"Invalid value for '{name}': must be {what}"
    if "stream_options" in body and not body.get("stream"):
        return "stream_options", "stream_options is only allowed when stream is true"
    if "tool_choice" in body:
        tc = body["tool_choice"]
        names = {t["function"]["name"] for t in body.get("tools") or ()}
        fn = tc.get("function") if isinstance(tc, dict) else None
        if not (
            tc in ("auto", "none", "required")
            or (
                isinstance(tc, dict)
                and tc.get("type") == "function"
                and isinstance(fn, dict)
                and fn.get("name") in names
            )
        ):
            return (
                "tool_choice",
                'Invalid value for \'tool_choice\': must be "auto", "none", "required" or '
                '{"type": "function", "function": {"name": <a tool>}}',
            )
    return None
