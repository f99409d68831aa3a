"""The simulator's forced tool calls: arguments from the tool's schema, deterministic per
conversation, a share made invalid in the chosen ways, follow-ups logged."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import jsonschema
import pytest

from batchrun.simulate import SimConfig, start_simulator
from batchrun.simulate.toolargs import INVALID_KINDS, arguments_for

pytestmark = pytest.mark.e2e

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["a", "b", "c"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "share": {"type": "number", "minimum": 0, "maximum": 1},
        "flag": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "item": {"type": "object", "properties": {"kind": {"$ref": "#/$defs/kind"}}},
    },
    "required": ["label", "score"],
    "$defs": {"kind": {"type": "string", "maxLength": 5}},
}


def test_generated_arguments_are_valid_and_deterministic_per_conversation() -> None:
    seen = set()
    for i in range(200):
        text, spoiled = arguments_for(SCHEMA, f"conversation {i}")
        assert spoiled is None and text == arguments_for(SCHEMA, f"conversation {i}")[0]
        jsonschema.validate(json.loads(text), SCHEMA)
        seen.add(json.loads(text)["label"])
    assert seen == {"a", "b", "c"}


@pytest.mark.parametrize("kind", INVALID_KINDS)
def test_each_invalid_kind_spoils_the_arguments_its_way(kind: str) -> None:
    spoiled = [
        arguments_for(SCHEMA, f"c{i}", invalid_rate=1.0, invalid_kinds=(kind,)) for i in range(20)
    ]
    assert {way for _, way in spoiled} == {kind}
    for text, _ in spoiled:
        if kind == "not_json":
            with pytest.raises(ValueError):
                json.loads(text)
            continue
        errors = list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(json.loads(text)))
        expected = {"missing_required": "required", "wrong_type": "type", "outside_enum": "enum"}
        assert errors and errors[0].validator == expected[kind]


def test_the_invalid_share_follows_the_rate_and_the_seed() -> None:
    def invalid(seed: int) -> set[int]:
        return {
            i
            for i in range(2000)
            if arguments_for(SCHEMA, f"c{i}", invalid_rate=0.1, seed=seed)[1] is not None
        }

    assert 150 < len(invalid(0)) < 250
    assert invalid(0) != invalid(1)


def test_a_forced_call_is_answered_from_its_schema_and_follow_ups_are_logged() -> None:
    lines: list[str] = []
    tools = [{"name": "rec", "description": "", "input_schema": SCHEMA}]
    first = [{"role": "user", "content": "label this"}]

    async def main() -> list[dict[str, Any]]:
        out = []
        async with (
            start_simulator(SimConfig(), log=lines.append) as sim,
            aiohttp.ClientSession() as session,
        ):
            followup = [
                *first,
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "rec", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "Error: 'label' is a required property"},
            ]  # fmt: skip
            for messages, choice in (
                (first, {"type": "function", "function": {"name": "rec"}}),
                (first, {"type": "tool", "name": "rec"}),
                (followup, {"type": "function", "function": {"name": "rec"}}),
            ):
                body = {
                    "model": "gpt-4o",
                    "messages": messages,
                    "tools": tools,
                    "tool_choice": choice,
                }
                url = f"{sim.url}/chat/completions"
                headers = {"Authorization": "Bearer k"}
                async with session.post(url, json=body, headers=headers) as resp:
                    assert resp.status == 201
                    out.append(json.loads(await resp.read()))
            assert sim.stats.followups == 1
        return out

    answers = asyncio.run(main())
    calls = [a["choices"][0]["message"]["tool_calls"][0]["function"] for a in answers]
    assert calls[0] == calls[1] and calls[0]["name"] == "rec"  # both forms, the same answer
    jsonschema.validate(json.loads(calls[0]["arguments"]), SCHEMA)
    assert answers[0]["choices"][0]["finish_reason"] == "tool_calls"
    assert lines == ["follow-up #1: Error: 'label' is a required property"]


#: What the gateway's documentation lists for tool_choice, and the Anthropic objects it
#: takes too, each with whether it forces the tool.
GATEWAY_CHOICES: list[tuple[Any, bool]] = [
    ("auto", False),
    ("none", False),
    ("required", True),
    ({"type": "function", "function": {"name": "rec"}}, True),
    ({"type": "auto"}, False),
    ({"type": "none"}, False),
    ({"type": "required"}, True),
    ({"type": "tool", "name": "rec"}, True),
]


def _post_choices(choices: list[Any]) -> list[tuple[int, dict[str, Any]]]:
    tools = [{"name": "rec", "description": "", "input_schema": SCHEMA}]

    async def main() -> list[tuple[int, dict[str, Any]]]:
        out = []
        async with start_simulator(SimConfig()) as sim, aiohttp.ClientSession() as session:
            for choice in choices:
                body = {
                    "model": "anthropic/claude-3-opus",
                    "messages": [{"role": "user", "content": "label this"}],
                    "tools": tools,
                    "tool_choice": choice,
                }
                url = f"{sim.url}/chat/completions"
                async with session.post(url, json=body, headers={"Authorization": "Bearer k"}) as r:
                    out.append((r.status, json.loads(await r.read())))
        return out

    return asyncio.run(main())


def test_the_gateway_flavour_takes_every_documented_tool_choice() -> None:
    answers = _post_choices([choice for choice, _ in GATEWAY_CHOICES])
    for (choice, forces), (status, answer) in zip(GATEWAY_CHOICES, answers, strict=True):
        assert status == 201, (choice, answer)
        message = answer["choices"][0]["message"]
        called = [c["function"]["name"] for c in message.get("tool_calls") or ()]
        assert called == (["rec"] if forces else []), choice


@pytest.mark.parametrize(
    "choice",
    ["any", "sometimes", {"type": "function", "function": {"name": "nope"}}, {"type": "tool"}, 3],
)
def test_the_gateway_flavour_refuses_other_tool_choices(choice: Any) -> None:
    ((status, answer),) = _post_choices([choice])
    assert status == 400 and answer["message"].startswith("tool_choice must be")
