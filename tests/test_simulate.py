"""The simulator over a real socket on 127.0.0.1: reasoning_content, streamed and not; the
answer key."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from batchrun.simulate import SimConfig, completion_for, start_simulator
from batchrun.simulate.graded import AnswerKey
from tests.conftest import run_cli, write_jsonl

pytestmark = pytest.mark.e2e

_AUTH = {"Authorization": "Bearer test-key"}


def _body(i: int, *, stream: bool = False, **extra: Any) -> dict[str, Any]:
    prompt = f"Label item {i} in one word."
    messages = [{"role": "user", "content": prompt}]
    return {"model": "gpt-4o", "messages": messages, "stream": stream, **extra}


def _events(raw: bytes) -> list[dict[str, Any]]:
    """The JSON events of an SSE body, up to ``[DONE]``."""
    events = []
    for block in raw.decode().split("\n\n"):
        data = block.removeprefix("data: ")
        if not block.startswith("data: ") or data == "[DONE]":
            continue
        events.append(json.loads(data))
    return events


def _ask(config: SimConfig, bodies: list[dict[str, Any]]) -> list[tuple[int, bytes]]:
    """Each body sent once, in order, to a fresh simulator: (status, raw answer)."""

    async def main() -> list[tuple[int, bytes]]:
        out = []
        timeout = aiohttp.ClientTimeout(total=30)
        async with (
            start_simulator(config) as sim,
            aiohttp.ClientSession(timeout=timeout) as session,
        ):
            for body in bodies:
                url = f"{sim.url}/chat/completions"
                async with session.post(url, json=body, headers=_AUTH) as resp:
                    out.append((resp.status, await resp.read()))
        return out

    return asyncio.run(main())


def _reasoning(status: int, raw: bytes) -> str | None:
    """The reasoning of one answer; for a stream, its pieces joined (checked to come first)."""
    if status == 201:
        message = json.loads(raw)["choices"][0]["message"]
        assert message.get("reasoning_content", "absent") is not None  # absent, never null
        return message.get("reasoning_content")
    assert status == 200
    deltas = [e["choices"][0]["delta"] for e in _events(raw) if e.get("choices")]
    pieces = [d["reasoning_content"] for d in deltas if "reasoning_content" in d]
    if not pieces:
        return None
    assert 1 <= len(pieces) <= 3
    assert all(pieces)
    kinds = [next(iter(d)) for d in deltas if d]
    # role, then every reasoning piece, then the content (or the tool call)
    assert kinds[: len(pieces) + 1] == ["role"] + ["reasoning_content"] * len(pieces)
    assert kinds[len(pieces) + 1] in ("content", "tool_calls")
    return "".join(pieces)


def test_a_share_of_answers_near_the_knob_carries_reasoning() -> None:
    answers = _ask(SimConfig(reasoning_rate=0.25), [_body(i) for i in range(400)])
    reasoned = [r for r in (_reasoning(*a) for a in answers) if r is not None]
    assert 70 <= len(reasoned) <= 130  # 100 expected
    assert len(set(reasoned)) > 1
    assert all(json.loads(raw)["choices"][0]["message"]["content"] for _, raw in answers)


def test_the_same_prompt_gets_the_same_reasoning_streamed_or_not_and_on_a_rerun() -> None:
    config = SimConfig(reasoning_rate=0.5)
    n = 60
    plain = [_reasoning(*a) for a in _ask(config, [_body(i) for i in range(n)])]
    streamed_raw = _ask(config, [_body(i, stream=True) for i in range(n)])
    streamed = [_reasoning(*a) for a in streamed_raw]
    again = [_reasoning(*a) for a in _ask(config, [_body(i) for i in range(n)])]
    assert plain == streamed == again
    assert 0 < sum(r is not None for r in plain) < n
    # the stream splits the text, sometimes into one piece, sometimes more
    counts = set()
    for _, raw in streamed_raw:
        deltas = [e["choices"][0]["delta"] for e in _events(raw) if e.get("choices")]
        counts.add(sum("reasoning_content" in d for d in deltas))
    assert len(counts - {0}) > 1


def test_reasoning_comes_with_tool_calls_too() -> None:
    tools = [{"name": "lookup", "input_schema": {"type": "object"}}]
    bodies = [
        _body(i, stream=s, tools=tools, tool_choice={"type": "required"})
        for i in range(20)
        for s in (False, True)
    ]
    answers = _ask(SimConfig(reasoning_rate=1), bodies)
    reasoning = [_reasoning(*a) for a in answers]
    assert all(r is not None for r in reasoning)
    assert reasoning[0::2] == reasoning[1::2]
    for _, raw in answers[0::2]:
        assert json.loads(raw)["choices"][0]["message"]["tool_calls"]


def test_rate_zero_sends_no_reasoning() -> None:
    bodies = [_body(i, stream=i % 2 == 1) for i in range(100)]
    answers = _ask(SimConfig(reasoning_rate=0), bodies)
    assert all(_reasoning(*a) is None for a in answers)
    assert all(b"reasoning_content" not in raw for _, raw in answers)


def test_simulate_rejects_a_reasoning_rate_out_of_range() -> None:
    result = run_cli("simulate", "--port", "0", "--reasoning-rate", "1.5", timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "batchrun: error: reasoning_rate must be between 0 and 1, got 1.5"
    )


# --- the answer key (--answers-file, --correct-rate, --answers-seed) ----------------------------


def _eval_rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "messages": [
                {"role": "user", "content": f"Q{i}: which? Answer with one of: a{i}, b{i}, c{i}."}
            ],
            "answer": f"b{i}",
        }
        for i in range(n)
    ]


def _content(raw: bytes) -> str:
    return str(json.loads(raw)["choices"][0]["message"]["content"])


def test_answer_key_answers_the_chosen_share_right_and_the_rest_wrong(tmp_path: Path) -> None:
    rows = _eval_rows(200)
    key = write_jsonl(tmp_path / "eval.jsonl", rows)
    config = SimConfig(answers_file=str(key), correct_rate=0.5, answers_seed=4, reasoning_rate=0)
    bodies = [{"model": "gpt-4o", "messages": r["messages"]} for r in rows]
    answers = [_content(raw) for _, raw in _ask(config, bodies)]
    choice = AnswerKey.load(key, "answer", correct_rate=0.5, seed=4)
    right = [a == r["answer"] for a, r in zip(answers, rows, strict=True)]
    assert right == [choice.answers_correctly(r["messages"][0]["content"]) for r in rows]
    assert 75 <= sum(right) <= 125  # 100 expected
    # A wrong answer is another option the prompt offers, never the expected one.
    for a, r, ok in zip(answers, rows, right, strict=True):
        if not ok:
            assert a in (f"a{r['id']}", f"c{r['id']}")
    # Streamed answers are the same; a prompt not in the key gets the usual answer.
    streamed = _ask(config, [{**bodies[0], "stream": True}])[0][1]
    deltas = [e["choices"][0]["delta"] for e in _events(streamed) if e.get("choices")]
    assert "".join(d.get("content") or "" for d in deltas) == answers[0]
    unkeyed = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello?"}]}
    assert _content(_ask(config, [unkeyed])[0][1]) == completion_for(unkeyed)[0]


def test_a_lower_correct_rate_only_turns_right_answers_wrong(tmp_path: Path) -> None:
    prompts = [r["messages"][0]["content"] for r in _eval_rows(300)]
    key = {p: "x" for p in prompts}

    def right(rate: float, seed: int = 1) -> set[str]:
        return {p for p in prompts if AnswerKey(key, rate, seed).answers_correctly(p)}

    assert right(0.3) < right(0.7) < right(1.0) == set(prompts)
    assert right(0.0) == set()
    assert right(0.7, seed=1) != right(0.7, seed=2)


def test_simulate_rejects_an_answers_file_it_cannot_use(tmp_path: Path) -> None:
    missing = run_cli("simulate", "--port", "0", "--answers-file", str(tmp_path / "no.jsonl"))
    assert missing.returncode == 2 and "no.jsonl not found" in missing.stderr
    keyless = write_jsonl(tmp_path / "k.jsonl", [{"prompt": "hi", "label": "x"}])
    wrong_column = run_cli("simulate", "--port", "0", "--answers-file", str(keyless))
    assert wrong_column.returncode == 2
    assert "no row has a prompt (messages or prompt) and a value in column 'answer'" in (
        wrong_column.stderr
    )


# --- tracing: x-client-request-id -----------------------------------------------------------------


def test_only_a_valid_client_request_id_is_echoed_and_the_others_are_counted() -> None:
    ids = ["bad id!", "a" * 129, "job-1:row.2_ok"]

    async def main() -> tuple[list[str | None], Any]:
        echoed = []
        async with start_simulator(SimConfig()) as sim, aiohttp.ClientSession() as session:
            for i, cid in enumerate(ids):
                headers = {**_AUTH, "X-Client-Request-Id": cid}
                url = f"{sim.url}/chat/completions"
                async with session.post(url, json=_body(i), headers=headers) as resp:
                    assert resp.status == 201 and resp.headers.get("x-inference-id")
                    echoed.append(resp.headers.get("x-client-request-id"))
            return echoed, sim.stats

    echoed, stats = asyncio.run(main())
    # The gateway silently drops an id outside 1-128 of A-Z a-z 0-9 . _ : -
    assert echoed == [None, None, "job-1:row.2_ok"]
    assert stats.client_request_ids == 1 and stats.client_request_ids_invalid == 2
