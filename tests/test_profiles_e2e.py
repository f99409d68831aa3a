"""The simulator's flavours behave like the servers they stand in for, and runs through
them with each profile: stream usage only when asked, tools in the server's shape, a
stream without usage is unknown cost (never $0), and budgets book it at an estimate."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli, write_jsonl

pytestmark = pytest.mark.e2e

OPENAI_TOOL = {
    "type": "function",
    "function": {"name": "look", "parameters": {"type": "object", "properties": {}}},
}


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    async def go() -> tuple[int, dict[str, str], bytes]:
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                url + "/chat/completions", json=body, headers={"Authorization": "Bearer k"}
            ) as r,
        ):
            return r.status, dict(r.headers), await r.read()

    return asyncio.run(go())


def _events(raw: bytes) -> list[dict[str, Any]]:
    return [
        json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: {")
    ]


BASE = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9}


def test_openai_flavour_answers_200_and_streams_usage_only_when_asked(sim_factory: Any) -> None:
    sim = sim_factory(flavor="openai")
    status, _, raw = _post(sim.url, BASE)
    assert status == 200 and json.loads(raw)["usage"]["total_tokens"] > 0
    status, _, raw = _post(sim.url, {**BASE, "stream": True})
    assert status == 200 and not any("usage" in e for e in _events(raw))
    asked = {**BASE, "stream": True, "stream_options": {"include_usage": True}}
    usage = [e for e in _events(_post(sim.url, asked)[2]) if e.get("usage")]
    assert len(usage) == 1 and usage[0]["choices"] == []


def test_gateway_flavour_answers_201_with_usage_and_refuses_undocumented_fields(
    sim_factory: Any,
) -> None:
    sim = sim_factory()
    assert _post(sim.url, BASE)[0] == 201
    assert any(e.get("usage") for e in _events(_post(sim.url, {**BASE, "stream": True})[2]))
    # Its Claude schema refuses what it does not document.
    claude = {**BASE, "model": "anthropic/claude-3-haiku", "stream": True}
    status, _, raw = _post(sim.url, {**claude, "stream_options": {"include_usage": True}})
    assert status == 400 and "'stream_options' should not exist" in json.loads(raw)["message"]
    # It takes its documented tool shapes, not OpenAI's.
    status, _, raw = _post(sim.url, {**BASE, "tools": [OPENAI_TOOL]})
    assert status == 400 and json.loads(raw)["message"].startswith("tools")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"system": "x"}, "system"),
        ({"top_k": 3}, "top_k"),
        ({"stop_sequences": ["x"]}, "stop_sequences"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
        ({"tools": [{"name": "look", "input_schema": {}}]}, "tools"),
        ({"tools": [OPENAI_TOOL], "tool_choice": {"type": "tool", "name": "look"}}, "tool_choice"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_openai_flavour_refuses_what_openai_refuses_in_its_error_shape(
    sim_factory: Any, extra: dict[str, Any], param: str
) -> None:
    sim = sim_factory(flavor="openai")
    status, _, raw = _post(sim.url, {**BASE, **extra})
    assert status == 400
    error = json.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param


def test_openai_flavour_takes_string_and_function_tool_choices(sim_factory: Any) -> None:
    sim = sim_factory(flavor="openai")
    for choice in ("required", {"type": "function", "function": {"name": "look"}}):
        status, _, raw = _post(sim.url, {**BASE, "tools": [OPENAI_TOOL], "tool_choice": choice})
        assert status == 200, raw
        message = json.loads(raw)["choices"][0]
        assert message["finish_reason"] == "tool_calls"
        assert message["message"]["tool_calls"][0]["function"]["name"] == "look"
    status, _, raw = _post(sim.url, {**BASE, "stop": "reply"})
    assert status == 200 and json.loads(raw)["choices"][0]["message"]["content"] == "sim "


def _run(tmp_path: Path, url: str, name: str, *args: str, rows: int = 60) -> Any:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"question {i}"} for i in range(rows)])
    out = tmp_path / f"{name}.parquet"
    proc = run_cli("run", "--input", str(src), "--output", str(out), "--base-url", url, *args)
    return proc, out


@pytest.mark.parametrize("provider", ["openai", "vllm"])
def test_openai_profile_streams_with_usage_and_matches_the_plain_answers(
    tmp_path: Path, sim_factory: Any, provider: str
) -> None:
    sim = sim_factory(flavor="openai", record_bodies=True)
    common = ("--provider", provider, "--model", "gpt-4o-mini", "--system", "be brief")
    plain, plain_out = _run(tmp_path, sim.url, "plain", *common, "--no-stream")
    streamed, streamed_out = _run(tmp_path, sim.url, "streamed", *common, "--stream")
    assert plain.returncode == 0, plain.stderr
    assert streamed.returncode == 0, streamed.stderr
    a, b = pq.read_table(plain_out), pq.read_table(streamed_out)
    assert a.column("completion").to_pylist() == b.column("completion").to_pylist()
    for table in (a, b):
        assert None not in table.column("total_tokens").to_pylist()
    summary = json.loads((tmp_path / "streamed.summary.json").read_text())
    assert summary["rows_without_usage"] == 0 and summary["estimated_cost_usd"] > 0
    sent = [r["body"] for r in sim.stats.bodies]
    assert all(b["messages"][0]["role"] == "system" and "system" not in b for b in sent)
    assert [b.get("stream_options") for b in sent if b.get("stream")] == [
        {"include_usage": True}
    ] * 60


def test_tools_of_either_shape_reach_an_openai_server_in_its_shape(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(flavor="openai", record_bodies=True)
    tools = json.dumps([{"name": "look", "input_schema": {"type": "object", "properties": {}}}])
    proc, out = _run(
        tmp_path, sim.url, "tools", "--provider", "openai", "--model", "gpt-4o-mini",
        "--tools", tools, "--tool-choice", "required", "--stream", rows=20,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    calls = [json.loads(c) for c in pq.read_table(out).column("tool_calls").to_pylist()]
    assert all(c[0]["function"]["name"] == "look" for c in calls)
    body = sim.stats.bodies[0]["body"]
    assert body["tools"] == [OPENAI_TOOL] and body["tool_choice"] == "required"


@pytest.mark.parametrize(
    ("flag", "sent"),
    [
        ("required", "required"),
        ('{"type": "tool", "name": "look"}', {"type": "function", "function": {"name": "look"}}),
    ],
)
def test_the_gateway_gets_tool_choices_in_its_documented_forms(
    tmp_path: Path, sim_factory: Any, flag: str, sent: Any
) -> None:
    sim = sim_factory(record_bodies=True)
    tool = {"name": "look", "input_schema": {"type": "object", "properties": {}}}
    proc, out = _run(
        tmp_path, sim.url, "tools", "--model", "anthropic/claude-3-opus",
        "--tools", json.dumps([tool]), "--tool-choice", flag, rows=10,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    calls = [json.loads(c) for c in pq.read_table(out).column("tool_calls").to_pylist()]
    assert all(c[0]["function"]["name"] == "look" for c in calls)
    body = sim.stats.bodies[0]["body"]
    assert body["tools"] == [tool] and body["tool_choice"] == sent


def test_a_stream_without_usage_is_unknown_cost_never_zero(
    tmp_path: Path, sim_factory: Any
) -> None:
    # The gateway profile does not ask for stream usage; an OpenAI server then sends none.
    sim = sim_factory(flavor="openai")
    proc, out = _run(
        tmp_path, sim.url, "nousage", "--provider", "gateway", "--model", "gpt-4o-mini",
        "--stream", rows=25,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(out)
    assert set(table.column("total_tokens").to_pylist()) == {None}
    summary = json.loads((tmp_path / "nousage.summary.json").read_text())
    assert summary["estimated_cost_usd"] is None
    assert summary["rows_without_usage"] == 25
    assert "25 rows without usage, not counted" in proc.stdout
    assert "estimated unknown (25 rows without usage)" in proc.stdout
    assert "$0.0000" not in proc.stdout
    assert proc.stderr.count("answers come without usage") == 1
    assert "--provider openai" in proc.stderr


def test_max_cost_books_answers_without_usage_at_an_estimate_not_the_worst_case(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(flavor="openai")
    # gpt-4o-mini: $0.15 in / $0.60 out per million. A prompt of ~"question NN" is an
    # estimate of 6 tokens; max_tokens 500 makes the worst case ~$0.000301 a row. A cap of
    # $0.003 holds 9 worst cases; an answer is ~8 words (~30 tokens counted with any
    # reasoning), so about 100 rows fit at the estimate.
    proc, _ = _run(
        tmp_path, sim.url, "capped", "--provider", "gateway", "--model", "gpt-4o-mini",
        "--stream", "--max-tokens", "500", "--max-cost", "0.003", "--concurrency", "2",
        rows=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "capped.summary.json").read_text())
    assert summary["rows_ok"] == 60 and summary["rows_without_usage"] == 60


def test_a_resume_books_rows_recorded_without_usage_at_the_same_estimate(
    tmp_path: Path, sim_factory: Any
) -> None:
    from batchrun.budget import output_estimate
    from batchrun.pricing import PriceTable

    sim = sim_factory(flavor="openai")
    args = ("--provider", "gateway", "--model", "gpt-4o-mini", "--stream", "--max-tokens", "500")
    first, out = _run(tmp_path, sim.url, "resumed", *args, "--limit", "40")
    assert first.returncode == 0, first.stderr
    table = pq.read_table(out)
    price = PriceTable.default().get("gpt-4o-mini")
    assert price is not None
    answers = zip(
        table.column("completion").to_pylist(),
        table.column("reasoning_content").to_pylist(),
        strict=True,
    )
    outputs = sum(output_estimate(texts, 500, False) for texts in answers)
    prompts = [len(f"question {i}") // 4 + 4 for i in range(60)]
    booked = price.cost(sum(prompts) // 60 * 40, outputs)
    worst = price.cost(6, 500)
    # The recorded rows leave room for half a worst case: nothing more may start. (Booked
    # at nothing, 20 more rows would be sent; at their worst case, the cap is long passed.)
    capped = run_cli(
        "run", "--input", str(tmp_path / "in.jsonl"), "--output", str(out),
        "--base-url", sim.url, *args, "--max-cost", f"{booked + worst / 2:.9f}",
    )  # fmt: skip
    assert capped.returncode == 4, capped.stderr
    assert "cost cap" in capped.stderr
    assert f"spent ${booked:,.4f}" in capped.stderr
    done = run_cli(
        "run", "--input", str(tmp_path / "in.jsonl"), "--output", str(out),
        "--base-url", sim.url, *args, "--max-cost", f"{booked + 21 * worst:.9f}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_a_resume_books_a_row_without_usage_at_its_own_max_tokens(
    tmp_path: Path, sim_factory: Any
) -> None:
    from batchrun.budget import output_estimate

    sim = sim_factory(flavor="openai")
    # The job's --max-tokens 2 cuts every answer to 2 words (booked at 2); the even rows
    # of the first 40 ask for 400 of their own and get the whole answer, booked at what
    # is counted of it (~8 words), which the job's cap of 2 would cut to 2.
    rows = [
        {"prompt": f"question {i}", "opts": {"max_tokens": 400} if i < 40 and i % 2 == 0 else None}
        for i in range(60)
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "own.parquet"
    args = (
        "--input", str(src), "--output", str(out), "--base-url", sim.url,
        "--provider", "gateway", "--model", "gpt-4o-mini", "--stream", "--max-tokens", "2",
        "--params-column", "opts",
    )  # fmt: skip
    first = run_cli("run", *args, "--limit", "40")
    assert first.returncode == 0, first.stderr
    table = pq.read_table(out).to_pylist()
    assert {r["finish_reason_normalized"] for r in table[1::2]} == {"length"}
    assert {r["finish_reason_normalized"] for r in table[::2]} == {"stop"}
    outputs = sum(
        output_estimate(
            (r["completion"], r["tool_calls"], r["reasoning_content"]),
            400 if i % 2 == 0 else 2,
            r["finish_reason_normalized"] == "length",
        )
        for i, r in enumerate(table)
    )
    prompts = [len(f"question {i}") // 4 + 4 for i in range(60)]
    booked = sum(prompts) // 60 * 40 + outputs
    # Room for less than the next row's worst case (its prompt estimate + 2): nothing starts.
    capped = run_cli("run", *args, "--max-tokens-total", str(booked + 3))
    assert capped.returncode == 4, capped.stderr
    assert f"({booked:,} tokens used so far)" in capped.stderr
