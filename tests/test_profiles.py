"""Provider profiles: chosen from the base URL or named; tools and tool choices of either
shape accepted and sent in the shape the profile takes; stop, system, stream usage, retry
and cost headers per profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batchrun.errors import UsageError
from batchrun.job import Job, RequestParams
from batchrun.profiles import GATEWAY, LITELLM, OPENAI, PROFILES, get_profile, profile_for_url
from batchrun.records import Request
from batchrun.send.dialect import ChatCompletions
from batchrun.send.retrying import parse_retry_after
from batchrun.settings import job_from_settings, load_job_file
from batchrun.tools import normalize_tool_choice, normalize_tools

SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}}
ANTHROPIC_TOOL = {"name": "look", "description": "look it up", "input_schema": SCHEMA}
OPENAI_TOOL = {
    "type": "function",
    "function": {"name": "look", "description": "look it up", "parameters": SCHEMA},
}


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://api.aimlapi.com/v1", "gateway"),
        ("https://api.openai.com/v1", "openai"),
        ("https://me.openai.azure.com/openai/v1", "openai"),
        ("http://127.0.0.1:4000/v1", "litellm"),
        ("http://localhost:4000", "litellm"),
        ("http://127.0.0.1:8000/v1", "gateway"),  # unknown: the documented API, strict
    ],
)
def test_profile_from_the_base_url(url: str, name: str) -> None:
    assert profile_for_url(url).name == name
    assert get_profile(None, url).name == name
    assert get_profile("vllm", url).name == "vllm"  # a name wins


def test_an_unknown_provider_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as err:
        _job(tmp_path, provider="anthropic")
    assert "unknown provider 'anthropic'" in err.value.message
    assert err.value.hint is not None and all(n in err.value.hint for n in PROFILES)


@pytest.mark.parametrize("tool", [ANTHROPIC_TOOL, OPENAI_TOOL])
def test_both_tool_shapes_become_the_neutral_one(tool: dict[str, Any]) -> None:
    assert normalize_tools([tool]) == (ANTHROPIC_TOOL,)


def test_a_function_without_parameters_takes_an_empty_object_schema() -> None:
    (tool,) = normalize_tools([{"type": "function", "function": {"name": "ping"}}])
    assert tool == {"name": "ping", "input_schema": {"type": "object", "properties": {}}}


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        ([{"type": "function"}], "no 'function' object"),
        ([{"type": "function", "function": {"parameters": {}}}], "needs a non-empty 'name'"),
        ([{"type": "function", "function": {"name": "a", "strict": True}}], "'strict' cannot"),
        ([{"name": "a"}], "needs a 'input_schema' object"),
        ([{"type": "function", "function": {"name": "a", "parameters": 1}}], "'parameters'"),
        ([ANTHROPIC_TOOL, OPENAI_TOOL], "two tools are named 'look'"),
        (["look"], "tools[0] must be an object"),
    ],
)
def test_bad_tools_are_named(tools: list[Any], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("[", r"\[")):
        normalize_tools(tools)


#: Every tool-choice form the seed's documentation and OpenAI's list, and the neutral shape.
CHOICES = [
    ("auto", {"type": "auto"}),
    ("none", {"type": "none"}),
    ("required", {"type": "required"}),
    ("any", {"type": "required"}),
    ({"type": "auto"}, {"type": "auto"}),
    ({"type": "none"}, {"type": "none"}),
    ({"type": "required"}, {"type": "required"}),
    ({"type": "any"}, {"type": "required"}),
    ({"type": "tool", "name": "look"}, {"type": "tool", "name": "look"}),
    ({"type": "function", "function": {"name": "look"}}, {"type": "tool", "name": "look"}),
    ({"type": "function", "name": "look"}, {"type": "tool", "name": "look"}),
]
#: What each neutral choice is sent as, to every profile: the forms the gateway documents
#: (OpenAI's). The job keeps the neutral one (its fingerprint).
SENT = {
    "auto": "auto",
    "none": "none",
    "required": "required",
    "tool": {"type": "function", "function": {"name": "look"}},
}


@pytest.mark.parametrize(("given", "neutral"), CHOICES)
@pytest.mark.parametrize("tool", [ANTHROPIC_TOOL, OPENAI_TOOL])
def test_every_tool_choice_form_is_accepted_and_sent_in_the_profiles_shape(
    tmp_path: Path, given: Any, neutral: dict[str, Any], tool: dict[str, Any]
) -> None:
    import json

    flag = given if isinstance(given, str) else json.dumps(given)  # as --tool-choice has it
    for value in (flag, given):  # the command line's text, a job file's value
        job = _job(tmp_path, tools=json.dumps([tool]), tool_choice=value)
        assert job.params.tool_choice == neutral
        gateway = _body(job, GATEWAY)
        assert gateway["tools"] == [ANTHROPIC_TOOL]
        assert gateway["tool_choice"] == SENT[neutral["type"]]
        openai = _body(job, OPENAI)
        assert openai["tools"] == [OPENAI_TOOL]
        assert openai["tool_choice"] == SENT[neutral["type"]]


def test_tool_choices_from_a_toml_job_file(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"prompt": "hi"}\n')
    for line, neutral in [
        ('tool_choice = "required"', {"type": "required"}),
        ('tool_choice = {type = "function", function = {name = "look"}}', {"type": "tool", "name": "look"}),
        ('tool_choice = {type = "tool", name = "look"}', {"type": "tool", "name": "look"}),
    ]:  # fmt: skip
        job_file = tmp_path / "job.toml"
        job_file.write_text(
            'input = "in.jsonl"\n'
            "[[tools]]\n"
            'type = "function"\n'
            'function = {name = "look", parameters = {type = "object"}}\n'
        )
        # A top-level key must come before the array of tables: write it first.
        job_file.write_text(line + "\n" + job_file.read_text())
        job = job_from_settings(load_job_file(job_file))
        assert job.params.tool_choice == neutral
        assert job.params.tools == ({"name": "look", "input_schema": {"type": "object"}},)


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        ("sometimes", "tool_choice must be"),
        ({"type": "tool", "name": "other"}, "'other', which is not one of the tools: look"),
        ({"type": "function", "function": {"name": "other"}}, "not one of the tools"),
        ({"type": "auto", "extra": 1}, "tool_choice must be"),
        (3, "tool_choice must be"),
    ],
)
def test_bad_tool_choices_are_refused(choice: Any, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        normalize_tool_choice(choice, [ANTHROPIC_TOOL])


def test_a_named_choice_without_tools_says_there_are_none() -> None:
    with pytest.raises(UsageError, match=r"no tools given"):
        normalize_tool_choice({"type": "tool", "name": "look"}, None)


def test_the_fingerprint_does_not_depend_on_the_shape_the_tools_were_written_in(
    tmp_path: Path,
) -> None:
    import json

    a = _job(tmp_path, tools=json.dumps([ANTHROPIC_TOOL]), tool_choice='{"type": "required"}')
    b = _job(tmp_path, tools=json.dumps([OPENAI_TOOL]), tool_choice="required")
    assert a.fingerprint_fields() == b.fingerprint_fields()
    assert "provider" not in a.fingerprint_fields()  # gateway: checkpoints from before resume
    c = _job(tmp_path, provider="openai")
    assert c.fingerprint_fields()["provider"] == "openai"
    assert "provider" not in c.identity()  # where requests went, like the base URL


def test_openai_refuses_top_k_before_anything_is_sent(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as err:
        _job(tmp_path, provider="openai", top_k=5)
    assert "openai provider does not take top_k" in err.value.message
    assert _job(tmp_path, provider="vllm", top_k=5).params.top_k == 5


def test_gateway_body_is_the_documented_one_and_never_asks_for_stream_usage(
    tmp_path: Path,
) -> None:
    job = _job(tmp_path, stream=True, system="be brief", stop=["\n"])
    body = _body(job, GATEWAY)
    assert body["system"] == "be brief"
    assert body["stop_sequences"] == ["\n"]
    assert "stream_options" not in body and "stop" not in body
    assert body["messages"] == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("profile", [OPENAI, LITELLM, PROFILES["vllm"]])
def test_openai_compatible_bodies(tmp_path: Path, profile: Any) -> None:
    job = _job(tmp_path, stream=True, system="be brief", stop=["\n"])
    body = _body(job, profile)
    assert body["stream_options"] == {"include_usage": True}
    assert body["stop"] == ["\n"] and "stop_sequences" not in body
    assert "system" not in body
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    no_stream = _body(_job(tmp_path), profile)
    assert "stream_options" not in no_stream and "stream" not in no_stream


def test_the_job_params_are_translated_once_not_once_a_row(tmp_path: Path) -> None:
    dialect = ChatCompletions(profile=OPENAI)
    params = {"model": "m", "max_tokens": 3, "stop_sequences": ["x"]}
    first = dialect.encode(Request(0, [{"role": "user", "content": "a"}], params, 3, 1))
    calls: list[Any] = []
    original = dialect.wire_params
    dialect.wire_params = lambda p: calls.append(p) or original(p)  # type: ignore[method-assign]
    second = dialect.encode(Request(1, [{"role": "user", "content": "b"}], params, 3, 1))
    assert calls == [] and first["stop"] == second["stop"] == ["x"]
    assert second["messages"] == [{"role": "user", "content": "b"}]


@pytest.mark.parametrize(
    ("headers", "profile", "seconds"),
    [
        ({"llm_provider-retry-after": "3"}, LITELLM, 3.0),
        ({"llm_provider-retry-after-ms": "2500"}, LITELLM, 2.5),
        ({"llm_provider-retry-after": "3", "llm_provider-retry-after-ms": "3000"}, LITELLM, 3.0),
        ({"retry-after": "1", "llm_provider-retry-after": "3"}, LITELLM, 1.0),  # its own first
        ({"llm_provider-retry-after": "nonsense"}, LITELLM, None),
        ({"llm_provider-retry-after": "3"}, GATEWAY, None),  # not a header the gateway sends
        ({"llm_provider-retry-after": "3"}, OPENAI, None),
        ({"retry-after-ms": "500", "retry-after": "9"}, OPENAI, 0.5),
    ],
)
def test_retry_headers_per_profile(
    headers: dict[str, str], profile: Any, seconds: float | None
) -> None:
    assert parse_retry_after(headers, names=profile.retry_headers) == seconds


def test_the_dry_run_names_the_profile(tmp_path: Path) -> None:
    from batchrun.plan import dry_run

    text = dry_run(_job(tmp_path, base_url="http://127.0.0.1:4000/v1", stream=True))
    assert "provider: litellm (from the base URL" in text
    assert '"include_usage": true' in text
    assert "provider: openai (--provider)" in dry_run(_job(tmp_path, provider="openai"))


def _job(tmp_path: Path, **settings: Any) -> Job:
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "hi"}\n')
    return job_from_settings({"input": str(src), **settings})


def _body(job: Job, profile: Any) -> dict[str, Any]:
    from batchrun.builder import request_params

    dialect = ChatCompletions(profile=profile, system_as_message=job.params.system_as_message)
    params = request_params(job.params)
    return dialect.encode(Request(0, [{"role": "user", "content": "hi"}], params, 3, 1))


def test_request_params_keeps_the_neutral_shape() -> None:
    p = RequestParams(tools=(OPENAI_TOOL,), tool_choice="required")  # type: ignore[arg-type]
    assert p.tools == (ANTHROPIC_TOOL,) and p.tool_choice == {"type": "required"}


def _stream(*chunks: dict[str, Any]) -> Any:
    import asyncio
    import json

    async def lines() -> Any:
        for c in chunks:
            yield b"data: " + json.dumps(c).encode() + b"\n"
        yield b"data: [DONE]\n"

    return asyncio.run(ChatCompletions(profile=LITELLM).decode_stream(lines()))


def test_a_streams_usage_chunk_gives_tokens_and_cost_as_litellm_sends_them() -> None:
    done = {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}
    usage = {"prompt_tokens": 4, "completion_tokens": 7, "total_tokens": 11, "cost": 4.8e-6}
    # LiteLLM's usage chunk has an empty delta in its choices, not an empty list.
    c = _stream(done, {"choices": [{"index": 0, "delta": {}}], "usage": usage})
    assert (c.text, c.total_tokens, c.reported_cost_usd) == ("hi", 11, 4.8e-6)
    without = _stream(done)
    assert (without.prompt_tokens, without.total_tokens, without.reported_cost_usd) == (
        None,
        None,
        None,
    )
    hostile = _stream(done, {"choices": [], "usage": ["not", "an", "object"]})
    assert hostile.total_tokens is None and hostile.text == "hi"


def test_extra_body_tools_already_in_the_servers_shape_are_sent_as_given(tmp_path: Path) -> None:
    import json

    extra = {
        "tools": [OPENAI_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "look"}},
    }
    job = _job(tmp_path, provider="openai", extra_body=json.dumps(extra))
    body = _body(job, OPENAI)
    assert body["tools"] == [OPENAI_TOOL] and body["tool_choice"] == extra["tool_choice"]


def test_a_refused_parameter_names_only_the_providers_that_take_it() -> None:
    from batchrun.errors import UsageError
    from batchrun.settings import job_from_settings

    with pytest.raises(UsageError) as err:
        job_from_settings({"input": "x.jsonl", "top_k": 5, "provider": "litellm"})
    assert "litellm provider does not take top_k" in str(err.value)
    assert err.value.hint is not None and "(gateway, vllm)" in err.value.hint
