"""The Batch API dialect and client on their own (a fake transport, no journal), the batch
price, and the job-level checks of --mode batch."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from batchrun.batchopts import BatchOptions
from batchrun.errors import RowFailed, StopRun, UsageError
from batchrun.job import Budget, Job, RequestParams
from batchrun.pricing import PriceTable
from batchrun.records import Request
from batchrun.send.batch import (
    CUSTOM_ID,
    BatchClient,
    GatewayBatches,
    batch_problem,
    custom_id_for,
)
from batchrun.send.batch_openai import OpenAIBatches
from batchrun.send.redact import Redactor

KEY = "sk-canary-0123456789abcdefghij"


def _request(pos: int = 0, **params: Any) -> Request:
    return Request(
        position=pos,
        messages=[{"role": "user", "content": f"q{pos}"}],
        params={"model": "anthropic/claude-3-opus", "max_tokens": 8, **params},
        max_tokens=8,
        prompt_tokens=5,
    )


class _Reply:
    def __init__(self, status: int, body: bytes, piece: int = 7) -> None:
        self.status = status
        self.headers: Mapping[str, str] = {}
        self.content_type = "application/json"
        self._body = body
        self._piece = piece  # small reads: lines cross read boundaries

    async def read(self, limit: int | None = None) -> bytes:
        n = min(limit or len(self._body), self._piece) if self._body else 0
        out, self._body = self._body[:n], self._body[n:]
        return out

    def lines(self) -> AsyncIterator[bytes]:
        raise NotImplementedError


class _Transport:
    def __init__(self, replies: list[_Reply]) -> None:
        self.replies = replies
        self.sent: list[tuple[str, str, bytes, dict[str, str]]] = []

    @contextlib.asynccontextmanager
    async def post(
        self, path: str, body: bytes | AsyncIterable[bytes], headers: Mapping[str, str]
    ) -> AsyncIterator[_Reply]:
        if isinstance(body, bytes):
            data = body
        else:
            pieces = [p async for p in body]
            assert len(pieces) >= 1
            data = b"".join(pieces)
        self.sent.append(("POST", path, data, dict(headers)))
        yield self.replies.pop(0)

    @contextlib.asynccontextmanager
    async def stream_get(
        self, path: str, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[_Reply]:
        self.sent.append(("GET", path, b"", dict(headers or {})))
        yield self.replies.pop(0)


def _batch(state: str = "in_progress", **counts: int) -> bytes:
    return json.dumps(
        {"id": "msgbatch_01", "type": "message_batch", "processing_status": state,
         "request_counts": {"processing": 1, **counts}}
    ).encode()  # fmt: skip


def _line(cid: str, text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {
        "custom_id": cid,
        "result": {
            "type": "succeeded",
            "message": {
                "id": "msg_1", "model": "claude-3-opus", "role": "assistant",
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                "usage": {"input_tokens": 3, "output_tokens": 2},
            },
        },
        **extra,
    }  # fmt: skip


def test_custom_ids_fit_anthropics_rule_and_requests_carry_only_messages_params() -> None:
    assert CUSTOM_ID.match(custom_id_for(10**15))
    line = json.loads(
        GatewayBatches().line(
            "r3", _request(3, temperature=0.2, tool_choice={"type": "required"}, stream=True)
        )
    )
    assert line == {
        "custom_id": "r3",
        "params": {
            "model": "anthropic/claude-3-opus", "max_tokens": 8, "temperature": 0.2,
            "tool_choice": {"type": "any"}, "messages": [{"role": "user", "content": "q3"}],
        },
    }  # fmt: skip


def test_what_a_batch_request_cannot_carry_is_named() -> None:
    assert batch_problem(_request()) is None
    two = _request()
    two.messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert "one user message" in (batch_problem(two) or "")
    system = _request()
    system.messages = [{"role": "system", "content": "a"}]
    assert "'system'" in (batch_problem(system) or "")
    parts = _request()
    parts.messages = [{"role": "user", "content": [{"type": "image_url"}]}]
    assert "images" in (batch_problem(parts) or "")


def test_the_create_body_is_streamed_in_pieces_and_is_the_documented_shape() -> None:
    transport = _Transport([_Reply(200, _batch())])
    client = BatchClient(transport, KEY)  # type: ignore[arg-type]
    dialect = GatewayBatches()

    async def lines() -> AsyncIterator[bytes]:
        for i in range(3000):
            yield dialect.line(custom_id_for(i), _request(i))

    status = asyncio.run(client.create(lines(), "key-1"))
    assert status.id == "msgbatch_01" and status.processing_status == "in_progress"
    method, path, data, headers = transport.sent[0]
    assert (method, path, headers) == ("POST", "/batches", {"Idempotency-Key": "key-1"})
    body = json.loads(data)
    assert [r["custom_id"] for r in body["requests"]] == [f"r{i}" for i in range(3000)]


def test_pieces_of_the_body_are_bounded() -> None:
    dialect = GatewayBatches()

    async def lines() -> AsyncIterator[bytes]:
        for i in range(20_000):
            yield dialect.line(custom_id_for(i), _request(i))

    async def pieces() -> list[bytes]:
        return [p async for p in dialect.body(lines())]

    got = asyncio.run(pieces())
    assert len(got) > 1 and max(map(len, got)) < (1 << 20) + 1000


def _poll(replies: list[_Reply]) -> tuple[Any, list[Any], int]:
    client = BatchClient(_Transport(replies), KEY)  # type: ignore[arg-type]

    async def go() -> tuple[Any, list[Any], int]:
        async with client.poll("msgbatch_01") as p:
            if p.status is not None:
                return p.status, [], 0
            return None, [r async for r in p.results()], p.bad_lines

    return asyncio.run(go())


def test_a_running_batch_gives_its_counts_even_pretty_printed() -> None:
    pretty = json.dumps(json.loads(_batch(succeeded=4)), indent=2).encode()
    status, _, _ = _poll([_Reply(200, pretty)])
    assert status.request_counts == {"processing": 1, "succeeded": 4}


def test_results_lines_are_read_across_pieces_and_bad_lines_counted() -> None:
    tool = _line("r2")
    tool["result"]["message"]["content"] = [
        {"type": "tool_use", "id": "call_1", "name": "f", "input": {"q": 1}}
    ]
    tool["result"]["message"]["stop_reason"] = "tool_use"
    lines = [
        json.dumps(_line("r1", "one")),
        json.dumps(tool),
        json.dumps({"custom_id": "r3", "result": {"type": "errored", "error": {"type": "error", "error": {"message": f"bad {KEY}"}}}}),
        json.dumps({"custom_id": "r4", "result": {"type": "expired"}}),
        "not json",
        json.dumps({"custom_id": "../etc", "result": {"type": "succeeded"}}),
        json.dumps({"custom_id": "r5", "result": {"type": "weird"}}),
    ]  # fmt: skip
    status, results, bad = _poll([_Reply(200, ("\n".join(lines) + "\n").encode())])
    assert status is None and bad == 3
    one, two, three, four = results
    assert one.completion.text == "one" and one.completion.total_tokens == 5
    assert one.completion.finish_reason == "end_turn"
    assert json.loads(two.completion.tool_calls) == [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"q": 1}'}}
    ]
    assert three.error_type == "batch_errored" and KEY not in (three.error or "")
    assert "bad" in (three.error or "")
    assert four.error_type == "batch_expired" and four.completion is None


def test_a_single_result_without_a_line_break_is_a_result() -> None:
    status, results, _ = _poll([_Reply(200, json.dumps(_line("r9")).encode())])
    assert status is None and [r.custom_id for r in results] == ["r9"]


def test_poll_statuses_map_to_failure_classes_and_nonsense_is_refused() -> None:
    with pytest.raises(StopRun):
        _poll([_Reply(401, b'{"error": {"message": "no"}}')])
    with pytest.raises(RowFailed, match="neither a batch"):
        _poll([_Reply(200, b"<html>hello</html>")])
    with pytest.raises(RowFailed, match="not a batch object"):
        _poll([_Reply(200, b'{"id": "a b/../c", "processing_status": "ended"}')])


def test_batch_prices_default_to_half_and_a_price_file_can_set_them(tmp_path: Path) -> None:
    price = PriceTable.default().get("anthropic/claude-3-opus")
    assert price is not None
    assert price.batch().cost(1_000_000, 1_000_000) == pytest.approx(45.0)
    f = tmp_path / "p.toml"
    f.write_text('[models."anthropic/claude-3-opus"]\nbatch_input = 1.0\nbatch_output = 2.0\n')
    custom = PriceTable.load(f).get("anthropic/claude-3-opus")
    assert custom is not None and custom.input_per_mtok == 15.0
    assert custom.batch().cost(1_000_000, 1_000_000) == pytest.approx(3.0)


SCHEMA = {"type": "object", "properties": {"label": {"enum": ["a", "b"]}}, "required": ["label"]}


def _job(tmp_path: Path, **kw: Any) -> Job:
    return Job(
        input_path=tmp_path / "in.jsonl", output_path=tmp_path / "o.parquet", mode="batch", **kw
    )


def test_batch_jobs_refuse_what_the_batch_shape_cannot_carry(tmp_path: Path) -> None:
    assert _job(tmp_path).batch == BatchOptions()
    for params, word in (
        (RequestParams(stream=True), "stream"),
        (RequestParams(frequency_penalty=0.5), "frequency_penalty"),
        (RequestParams(extra_body={"service_tier": "x"}), "service_tier"),
    ):
        with pytest.raises(UsageError, match=word):
            _job(tmp_path, params=params)
    with pytest.raises(UsageError, match="max-cost"):
        _job(tmp_path, budget=Budget(max_cost_usd=1.0))
    with pytest.raises(UsageError, match="batch_size"):
        _job(tmp_path, batch=BatchOptions(size=100_001))
    # A batch sends every row it holds: nothing can wait for another row's answer.
    with pytest.raises(UsageError, match="--dedupe and --cache"):
        _job(tmp_path, dedupe=True)
    with pytest.raises(UsageError, match="--dedupe and --cache"):
        _job(tmp_path, cache_dir=tmp_path / "cache")
    # Re-asks and per-row parameters need live requests.
    with pytest.raises(UsageError, match="--schema, --choices and --params-column"):
        _job(tmp_path, params=RequestParams(schema=SCHEMA))
    with pytest.raises(UsageError, match="--schema, --choices and --params-column"):
        _job(tmp_path, params_column="params")
    # The cache keeps no validated arguments: a hit would be an ok row without its fields.
    with pytest.raises(UsageError, match="--cache does not keep"):
        Job(input_path=tmp_path / "in.jsonl", output_path=tmp_path / "o.parquet",
            params=RequestParams(schema=SCHEMA), cache_dir=tmp_path / "cache")  # fmt: skip
    # Dedupe's default (on at temperature 0) does not apply to a batch.
    assert not _job(tmp_path, params=RequestParams(temperature=0)).dedupe_enabled
    live = Job(input_path=tmp_path / "in.jsonl", output_path=tmp_path / "o.parquet",
               params=RequestParams(temperature=0))  # fmt: skip
    assert live.dedupe_enabled
    with pytest.raises(UsageError, match="mode"):
        Job(input_path=tmp_path / "in.jsonl", output_path=tmp_path / "o.parquet", mode="fast")


def test_openai_result_lines_become_rows_or_error_rows() -> None:
    shape = OpenAIBatches()
    redact = Redactor([KEY])
    chat = {
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "yes"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }  # fmt: skip
    ok = shape.result(
        json.dumps({"custom_id": "r1", "response": {"status_code": 200, "body": chat}}).encode(),
        redact,
    )
    assert ok.completion is not None and ok.completion.text == "yes"
    assert ok.completion.total_tokens == 4
    expired = shape.result(
        json.dumps(
            {"custom_id": "r2", "error": {"code": "batch_expired", "message": KEY}}
        ).encode(),
        redact,
    )
    assert expired.error_type == "batch_expired" and KEY not in (expired.error or "")
    failed = shape.result(
        json.dumps(
            {
                "custom_id": "r3",
                "response": {"status_code": 400, "body": {"error": {"message": "bad"}}},
            }
        ).encode(),
        redact,
    )
    assert failed.error_type == "batch_errored" and "bad" in (failed.error or "")
    line = json.loads(shape.line("r4", _request(4)))
    assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
    assert line["body"]["messages"] == [{"role": "user", "content": "q4"}]
    status, files = shape.status(
        {"id": "batch_1", "status": "completed", "request_counts": {"total": 2, "completed": 2},
         "output_file_id": "file-1", "error_file_id": "../x"},
        redact,
    )  # fmt: skip
    assert status.ended and files == {"output_file_id": "file-1"}  # a path is no file id


def test_openai_batch_lines_are_in_openai_shapes_whatever_the_base_url_implies() -> None:
    # The job's profile may be the gateway's (an unknown host): the OpenAI Batch API still
    # takes OpenAI's names and shapes in every line.
    from batchrun.profiles import GATEWAY, OPENAI

    tool = {"name": "label", "description": "d", "input_schema": {"type": "object"}}
    request = Request(
        0,
        [{"role": "user", "content": "hi"}],
        {"model": "gpt-4o", "max_tokens": 8, "stop_sequences": ["\n"], "system": "be brief",
         "tools": [tool], "tool_choice": {"type": "tool", "name": "label"}},
        8,
        3,
    )  # fmt: skip
    for profile in (GATEWAY, OPENAI, None):
        body = json.loads(OpenAIBatches(profile=profile).line("r0", request))["body"]
        assert body["stop"] == ["\n"] and "stop_sequences" not in body
        assert body["tools"] == [
            {"type": "function", "function": {"name": "label", "description": "d",
                                              "parameters": {"type": "object"}}}
        ]  # fmt: skip
        assert body["tool_choice"] == {"type": "function", "function": {"name": "label"}}
        assert body["messages"][0] == {"role": "system", "content": "be brief"}
        assert "system" not in body
