"""Tool-call arguments for a forced tool, generated from its ``input_schema``: deterministic
per conversation, valid against the schema, except for a share ``invalid_rate`` made
invalid in one of the chosen ways (which ones, and how: a digest of the fault seed and the
conversation, so a re-ask, whose conversation is longer, draws again)."""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

#: The ways an answer can be made invalid (``--invalid-kinds``).
INVALID_KINDS = ("missing_required", "wrong_type", "outside_enum", "not_json")
_WORDS = ("alpha", "bravo", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "iris")
_MAX_DEPTH = 8


def _seed(*parts: str) -> int:
    h = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big")


def _mix(seed: int, salt: int) -> int:
    return _seed(str(seed), str(salt))


def _resolve(node: Any, root: dict[str, Any]) -> Any:
    ref = node.get("$ref") if isinstance(node, dict) else None
    if isinstance(ref, str) and ref.startswith("#/"):
        for part in ref[2:].split("/"):
            root = root.get(part, {}) if isinstance(root, dict) else {}
        return root
    return node


def value_for(node: Any, root: dict[str, Any], seed: int, depth: int = 0) -> Any:
    """A value valid against ``node`` (for the keywords a labeling schema uses)."""
    node = _resolve(node, root)
    if not isinstance(node, dict) or depth > _MAX_DEPTH:
        return None
    if "const" in node:
        return node["const"]
    if isinstance(node.get("enum"), list) and node["enum"]:
        return node["enum"][seed % len(node["enum"])]
    for key in ("anyOf", "oneOf"):
        if isinstance(node.get(key), list) and node[key]:
            return value_for(node[key][0], root, seed, depth + 1)
    kind = node.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in node else "array" if "items" in node else "string"
    if kind == "integer":
        lo = int(node.get("minimum", node.get("exclusiveMinimum", -1) + 1))
        hi = int(node.get("maximum", node.get("exclusiveMaximum", lo + 101) - 1))
        return lo + seed % max(1, hi - lo + 1)
    if kind == "number":
        low = float(node.get("minimum", 0.0))
        top = float(node.get("maximum", low + 1.0))
        return round(low + (seed % 1000) / 1000 * (top - low), 3)
    if kind == "boolean":
        return bool(seed & 1)
    if kind == "null":
        return None
    if kind == "array":
        low = int(node.get("minItems", 1))
        high = int(node.get("maxItems", low + 2))
        n = low + seed % max(1, high - low + 1)
        items = [value_for(node.get("items"), root, _mix(seed, i), depth + 1) for i in range(n)]
        if node.get("uniqueItems"):
            unique: list[Any] = []
            for item in items:
                if item not in unique:
                    unique.append(item)
            items = unique
        return items
    if kind == "object":
        props = node.get("properties") or {}
        return {
            k: value_for(v, root, _mix(seed, i), depth + 1)
            for i, (k, v) in enumerate(props.items())
        }
    words = [_WORDS[(seed >> (4 * i)) % len(_WORDS)] for i in range(1 + seed % 3)]
    text = " ".join(words)
    return text[: int(node["maxLength"])] if "maxLength" in node else text


def _wrong_type(value: Any) -> Any:
    if isinstance(value, str):
        return 12345
    if isinstance(value, int | float):  # bool included
        return "not a number"
    if isinstance(value, list):
        return "not a list"
    return 7


def spoil(args: dict[str, Any], schema: dict[str, Any], kind: str) -> dict[str, Any] | str:
    """``args`` made invalid the ``kind`` way (a kind the schema gives no hold for — no
    required property, no enum — falls back to a wrong type); ``not_json`` gives text."""
    spoiled = dict(args)
    props = schema.get("properties") or {}
    if kind == "not_json":
        return json.dumps(args)[:-1]
    required = [r for r in schema.get("required") or () if r in spoiled]
    if kind == "missing_required" and required:
        del spoiled[required[0]]
        return spoiled
    enum_props = [k for k, v in props.items() if isinstance(v, dict) and "enum" in v]
    if kind == "outside_enum" and enum_props:
        spoiled[enum_props[0]] = "not-an-option"
        return spoiled
    if spoiled:
        first = next(iter(spoiled))
        spoiled[first] = _wrong_type(spoiled[first])
    else:
        spoiled["unexpected"] = 1
    return spoiled


def arguments_for(
    schema: Any,
    conversation: str,
    *,
    invalid_rate: float = 0.0,
    invalid_kinds: tuple[str, ...] = INVALID_KINDS,
    seed: int = 0,
) -> tuple[str, str | None]:
    """(arguments JSON text, the way it was made invalid or None) for a conversation;
    ``seed`` picks another set of invalid answers (the valid ones stay the same)."""
    if not isinstance(schema, dict):
        schema = {}
    args = value_for(schema, schema, _seed("args", conversation))
    if not isinstance(args, dict):
        args = {}
    draw = _seed("invalid", str(seed), conversation)
    if not invalid_kinds or draw >= invalid_rate * 2**64:
        return json.dumps(args), None
    kind = invalid_kinds[draw % len(invalid_kinds)]
    spoiled = spoil(args, schema, kind)
    return (spoiled if isinstance(spoiled, str) else json.dumps(spoiled)), kind


def followup_of(body: dict[str, Any]) -> str | None:
    """The follow-up a request carries, if it answers an earlier answer: a tool result, or a
    user turn after an assistant's (the text of its last message)."""
    messages = body.get("messages") or []
    roles = [m.get("role") for m in messages if isinstance(m, dict)]
    if "tool" not in roles and not any(
        a == "assistant" and b == "user" for a, b in itertools.pairwise(roles)
    ):
        return None
    content = messages[-1].get("content") if isinstance(messages[-1], dict) else None
    return content if isinstance(content, str) else json.dumps(content)
