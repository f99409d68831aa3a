"""Structured outputs, pure parts: loading and checking a schema, the forced tool, --choices,
checking answers (and the follow-ups that re-ask), the Arrow types of the typed columns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pyarrow as pa
import pytest

from batchrun.builder import request_params
from batchrun.errors import UsageError
from batchrun.job import RequestParams
from batchrun.settings import job_from_settings, load_job_file
from batchrun.structured import AnswerCheck, choices_schema, load_schema, tool_fields
from batchrun.typed import column_names, kind_of, typed_arrays, typed_columns

SCHEMA: dict[str, Any] = {
    "title": "record_review",
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "rating": {"type": "integer", "minimum": 1, "maximum": 5},
        "confidence": {"type": "number"},
        "recommends": {"type": "boolean"},
        "topics": {"type": "array", "items": {"type": "string"}},
        "item": {
            "type": "object",
            "properties": {"kind": {"type": "string"}, "count": {"type": "integer"}},
            "required": ["kind"],
        },
    },
    "required": ["sentiment", "rating"],
}
VALID = {
    "sentiment": "positive",
    "rating": 4,
    "confidence": 0.9,
    "recommends": True,
    "topics": ["price", "noise"],
    "item": {"kind": "kettle", "count": 2},
}


def _calls(args: Any, name: str = "record_review", call_id: str | None = "call_1") -> str:
    call: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": args}}
    if call_id is not None:
        call["id"] = call_id
    return json.dumps([call])


# --- the schema ---------------------------------------------------------------------------------


def test_a_schema_loads_inline_or_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps(SCHEMA))
    assert load_schema(str(path)) == SCHEMA
    assert load_schema(json.dumps(SCHEMA)) == SCHEMA
    assert load_schema(SCHEMA) == SCHEMA


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ('{"type": "object", ', "schema is not valid JSON"),
        ('{"type": "object", "properties": {"a": {"type": "strng"}}}', "not a valid JSON Schema"),
        ('{"type": "object", "properties": {"a": {"minimum": "one"}}}', "not a valid JSON Schema"),
        ('{"type": "array", "items": {}}', "must describe an object"),
        ('{"type": "object", "properties": {}}', "has no properties"),
        ('{"type": "object"}', "must describe an object"),
    ],
)
def test_a_schema_that_is_no_object_schema_is_refused(schema: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load_schema(schema)


def test_a_missing_schema_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"nope\.json"):
        load_schema(str(tmp_path / "nope.json"))


def test_the_job_file_schema_path_resolves_against_its_folder(tmp_path: Path) -> None:
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "s.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "in.jsonl").write_text('{"prompt": "hi"}\n')
    job_file = tmp_path / "job.toml"
    job_file.write_text('input = "in.jsonl"\nschema = "schemas/s.json"\n')
    job = job_from_settings(load_job_file(job_file))
    assert job.params.schema == SCHEMA


def test_choices_make_one_required_enum_property_label() -> None:
    schema = choices_schema("positive, negative ,neutral")
    assert schema["properties"] == {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]}
    }
    assert schema["required"] == ["label"] and schema["additionalProperties"] is False
    assert choices_schema(["a", "b"])["properties"]["label"]["enum"] == ["a", "b"]
    for bad in ("one", "a,a", ""):
        with pytest.raises(UsageError, match="choices"):
            choices_schema(bad)


def test_schema_and_choices_exclude_each_other_and_tools(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "hi"}\n')
    with pytest.raises(UsageError, match="only one of --schema and --choices"):
        job_from_settings({"input": str(src), "choices": "a,b", "schema": json.dumps(SCHEMA)})
    tools = '[{"name": "t", "input_schema": {"type": "object"}}]'
    with pytest.raises(UsageError, match="drop --tools"):
        job_from_settings({"input": str(src), "choices": "a,b", "tools": tools})


def test_the_schema_is_the_one_tool_forced_in_the_documented_form() -> None:
    params = request_params(RequestParams(model="m", schema=SCHEMA))
    assert params["tools"] == [
        {
            "name": "record_review",
            "description": tool_fields(SCHEMA)["tools"][0]["description"],
            "input_schema": SCHEMA,
        }
    ]
    assert params["tool_choice"] == {"type": "function", "function": {"name": "record_review"}}
    # A schema without a usable title gets the default name.
    untitled = {**SCHEMA, "title": "has spaces"}
    assert tool_fields(untitled)["tools"][0]["name"] == "record_answer"


@pytest.mark.parametrize(
    "choice",
    [
        {"type": "function", "function": {"name": "t"}},
        {"type": "tool", "name": "t"},
        {"type": "auto"},
        {"type": "required"},
    ],
)
def test_tool_choice_takes_the_documented_and_the_anthropic_forms(choice: dict[str, Any]) -> None:
    tools = ({"name": "t", "input_schema": {"type": "object"}},)
    RequestParams(tools=tools, tool_choice=choice)


@pytest.mark.parametrize(
    "choice",
    [{"type": "function", "function": {"name": "other"}}, {"type": "tool", "name": "other"}],
)
def test_tool_choice_naming_no_tool_is_refused(choice: dict[str, Any]) -> None:
    tools = ({"name": "t", "input_schema": {"type": "object"}},)
    with pytest.raises(UsageError, match="which is not one of the tools: t"):
        RequestParams(tools=tools, tool_choice=choice)


# --- answers ------------------------------------------------------------------------------------


def test_a_valid_answer_gives_its_arguments() -> None:
    verdict = AnswerCheck(SCHEMA)(None, _calls(json.dumps(VALID)))
    assert verdict.violation is None and json.loads(verdict.arguments or "") == VALID
    # Some servers send the arguments as an object rather than JSON text.
    assert AnswerCheck(SCHEMA)(None, _calls(VALID)).arguments is not None


@pytest.mark.parametrize(
    ("args", "violation"),
    [
        ({k: v for k, v in VALID.items() if k != "rating"}, "'rating' is a required property"),
        ({**VALID, "rating": "four"}, "'four' is not of type 'integer' (at $.rating)"),
        ({**VALID, "sentiment": "meh"}, "'meh' is not one of"),
        ({**VALID, "item": {"count": 1}}, "'kind' is a required property (at $.item)"),
        ({**VALID, "item": {"kind": "k", "count": 2**70}}, "does not fit a 64-bit integer"),
        ('{"sentiment": "positive", ', "the tool-call arguments are not JSON"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_an_invalid_answer_names_its_violation_and_is_followed_up(
    args: Any, violation: str
) -> None:
    raw = args if isinstance(args, str) else json.dumps(args)
    verdict = AnswerCheck(SCHEMA)(None, _calls(raw))
    assert verdict.arguments is None and violation in (verdict.violation or "")
    assistant, reply = verdict.followup
    assert assistant["role"] == "assistant" and assistant["tool_calls"][0]["id"] == "call_1"
    assert reply["role"] == "tool" and reply["tool_call_id"] == "call_1"
    assert violation in reply["content"] and "record_review" in reply["content"]


def test_of_several_violations_the_least_deep_is_named_not_the_first_found() -> None:
    # jsonschema finds $.topics[1] first (schema order); best_match prefers the shallower
    # $.item, as the README says.
    args = {**VALID, "topics": ["price", 5], "item": "kettle"}
    verdict = AnswerCheck(SCHEMA)(None, _calls(json.dumps(args)))
    assert verdict.violation == "'kettle' is not of type 'object' (at $.item)"


def test_an_answer_without_the_tool_call_is_asked_to_call_it() -> None:
    for calls in (None, _calls("{}", name="other_tool")):
        verdict = AnswerCheck(SCHEMA)("I think it is positive.", calls)
        assert verdict.violation == "the answer did not call the tool record_review"
        assistant, reply = verdict.followup
        assert assistant == {"role": "assistant", "content": "I think it is positive."}
        assert reply["role"] == "user" and "Call the tool record_review" in reply["content"]


def test_a_call_without_an_id_is_followed_up_in_a_user_message() -> None:
    verdict = AnswerCheck(SCHEMA)(None, _calls('{"rating": 1}', call_id=None))
    assistant, reply = verdict.followup
    assert "tool_calls" not in assistant and reply["role"] == "user"
    assert "'sentiment' is a required property" in reply["content"]


# --- typed columns ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("node", "arrow"),
    [
        ({"type": "string"}, pa.string()),
        ({"type": "string", "enum": ["a", "b"]}, pa.string()),
        ({"enum": ["a", None]}, pa.string()),
        ({"type": "integer"}, pa.int64()),
        ({"type": ["integer", "null"]}, pa.int64()),
        ({"type": "number"}, pa.float64()),
        ({"type": ["integer", "number"]}, pa.float64()),
        ({"type": "boolean"}, pa.bool_()),
        ({"enum": [1, 2]}, pa.int64()),
        ({"type": "array", "items": {"type": "integer"}}, pa.list_(pa.int64())),
        (
            {"type": "object", "properties": {"a": {"type": "boolean"}}},
            pa.struct([("a", pa.bool_())]),
        ),
        ({"$ref": "#/$defs/n"}, pa.float64()),
        ({"type": ["string", "integer"]}, pa.string()),  # JSON text
        ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, pa.string()),
        ({"type": "object"}, pa.string()),
        ({"type": "array"}, pa.string()),
    ],
)
def test_schema_nodes_map_to_arrow_types(node: dict[str, Any], arrow: pa.DataType) -> None:
    root = {"$defs": {"n": {"type": "number"}}}
    assert kind_of(node, root).arrow == arrow


def test_typed_columns_are_named_by_property_and_prefixed_on_a_clash() -> None:
    columns = typed_columns({"type": "object", "properties": {"status": {}, "text": {}, "x": {}}})
    assert column_names(columns, {"id", "status", "text", "output_text"}) == [
        "output_status",
        "output_output_text",
        "x",
    ]


def test_typed_arrays_hold_every_type_and_null_on_error_rows() -> None:
    columns = typed_columns(SCHEMA)
    arrays = typed_arrays(
        columns, [json.dumps(VALID), None, '{"sentiment": "neutral", "rating": 2.0}']
    )
    assert [a.type for a in arrays] == [
        pa.string(),
        pa.int64(),
        pa.float64(),
        pa.bool_(),
        pa.list_(pa.string()),
        pa.struct([("kind", pa.string()), ("count", pa.int64())]),
    ]
    rows = pa.Table.from_arrays(arrays, names=[c.prop for c in columns]).to_pylist()
    assert rows[0] == VALID
    assert rows[1] == dict.fromkeys(VALID)
    assert rows[2]["rating"] == 2 and rows[2]["topics"] is None
    # What the typed columns hold is valid against the schema.
    jsonschema.validate({k: v for k, v in rows[0].items() if v is not None}, SCHEMA)
