"""The gateway's ways, piece by piece: tracing ids, spend values, error bodies, the stream's
meta.usage event, image checks and blocks, strict bodies, the model check's suggestions."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from aioresponses import aioresponses

from batchrun.builder import RequestBuilder, request_params
from batchrun.errors import InputError, RowFailed, SendFailed
from batchrun.images import (
    ImageProblem,
    ImageRef,
    check_ref,
    dimensions,
    image_tokens,
    refs_of,
    sniff,
)
from batchrun.job import Job, RequestParams
from batchrun.modelcheck import closest, family, retired_note
from batchrun.records import Completion, Request
from batchrun.send.client import ApiClient
from batchrun.send.dialect import ChatCompletions
from batchrun.send.images import LoadedImage
from batchrun.send.spend import Spend, from_headers, from_meta, parse_credits, parse_usd
from batchrun.send.tracing import client_request_id, is_valid_id, job_tag, server_id
from batchrun.simulate.validate import CLAUDE_FIELDS, content_problem, strict_problem
from tests.imagefiles import jpeg, padded_png, png, webp

BASE = "https://api.example.test/v1"
URL = f"{BASE}/chat/completions"
KEY = "sk-secret-0123456789abcdef"
OK = {
    "id": "r1",
    "object": "chat.completion",
    "model": "m",
    "created": 1,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}  # fmt: skip


# --- tracing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row_id", [0, 17, -3, 10**40, "abc-1.2:x_y", "has space", "ü", "x" * 500, "", "\ud800"]
)
def test_client_request_ids_are_always_valid(row_id: Any) -> None:
    cid = client_request_id("0123456789ab", row_id)
    assert is_valid_id(cid) and len(cid) <= 128
    assert cid == client_request_id("0123456789ab", row_id)  # stable


def test_client_request_ids_are_unique_across_rows_and_jobs() -> None:
    ids = [0, 1, "1", "s1", "i1", "a b", "a_b", "x" * 200, "x" * 201, "h" + "0" * 32]
    seen = {client_request_id("t1", r) for r in ids} | {client_request_id("t2", r) for r in ids}
    assert len(seen) == 2 * len(ids)
    # A raw id with unsafe characters never reaches the header.
    assert "a b" not in client_request_id("t1", "a b")


def test_job_tag_follows_the_job_and_the_output(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    a = Job(input_path=src, output_path=tmp_path / "a.parquet")
    b = Job(input_path=src, output_path=tmp_path / "b.parquet")
    c = Job(input_path=src, output_path=tmp_path / "a.parquet", params=RequestParams(max_tokens=3))
    tags = {job_tag(j.fingerprint_fields(), str(j.output_path)) for j in (a, b, c)}
    assert len(tags) == 3
    assert job_tag(a.fingerprint_fields(), str(a.output_path)) in tags


@pytest.mark.parametrize(
    "value, kept",
    [
        ("3f1c-aa:01.x_y", "3f1c-aa:01.x_y"),
        ("  abc  ", "abc"),
        ("a" * 128, "a" * 128),
        ("a" * 129, None),
        ("has space", None),
        ("<script>", None),
        ("", None),
        (None, None),
        (12345, "12345"),
        ({"x": 1}, None),
    ],
)
def test_server_ids_are_kept_only_when_short_and_safe(value: Any, kept: str | None) -> None:
    assert server_id(value) == kept


# --- spend --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, usd",
    [
        ("0.0012", 0.0012),
        ("$0.5", 0.5),
        (0.25, 0.25),
        ("nan", None),
        ("inf", None),
        ("-1", None),
        ("1e400", None),
        ("1" * 100, None),
        ("1e9", None),  # no request costs a billion
        (True, None),
        ("abc", None),
    ],
)
def test_usd_values_are_validated(value: Any, usd: float | None) -> None:
    assert parse_usd(value) == usd


@pytest.mark.parametrize(
    "value, credits",
    [("2400", 2400), (2400, 2400), (2400.0, 2400), ("2400.5", None), ("-5", None),
     ("nan", None), (10**20, None), (False, None), ("", None)],
)  # fmt: skip
def test_credit_values_are_validated(value: Any, credits: int | None) -> None:
    assert parse_credits(value) == credits


def test_spend_from_headers_and_meta() -> None:
    gw = {"x-aimlapi-usd-spent": "0.0012", "x-aimlapi-credits-used": "2400"}
    assert from_headers(gw, "x-aimlapi-usd-spent") == Spend(0.0012, 2400)
    # Credits alone say the USD; another header named reads that one.
    assert from_headers({"x-aimlapi-credits-used": "2000000"}, None) == Spend(1.0, 2000000)
    assert from_headers({"x-litellm-response-cost": "0.3"}, "x-litellm-response-cost") == Spend(
        0.3, None
    )
    assert from_meta({"meta": {"usage": {"credits_used": 10, "usd_spent": 0.000005}}}) == Spend(
        0.000005, 10
    )
    assert from_meta({"meta": {"usage": {"credits_used": "x", "usd_spent": -1}}}) is None
    assert from_meta({"choices": []}) is None


def _run_client(setup: Any, request: Request) -> Any:
    async def main() -> Any:
        with aioresponses() as mocked:
            setup(mocked)
            async with ApiClient(BASE, KEY, concurrency=2, timeout_s=5) as client:
                try:
                    return await client.complete(request, "k1"), mocked
                except SendFailed as exc:
                    return exc, mocked

    return asyncio.run(main())


def _request(**extra: Any) -> Request:
    return Request(
        position=0,
        messages=[{"role": "user", "content": "hi"}],
        params={"model": "anthropic/claude-3-opus", "max_tokens": 5},
        max_tokens=5,
        prompt_tokens=1,
        **extra,
    )


def test_the_client_sends_the_request_id_and_keeps_the_gateways_ids_and_spend() -> None:
    headers = {
        "x-inference-id": "inf-0001",
        "x-aimlapi-usd-spent": "0.00075",
        "x-aimlapi-credits-used": "1500",
    }
    result, mocked = _run_client(
        lambda m: m.post(URL, payload=OK, status=201, headers=headers),
        _request(client_request_id="br:abc:i0"),
    )
    assert isinstance(result, Completion)
    assert (result.inference_id, result.reported_cost_usd, result.credits_used) == (
        "inf-0001",
        0.00075,
        1500,
    )
    sent = next(iter(mocked.requests.values()))[0].kwargs["headers"]
    assert sent["X-Client-Request-Id"] == "br:abc:i0"


@pytest.mark.parametrize(
    "headers",
    [
        {"x-inference-id": "x" * 500, "x-aimlapi-usd-spent": "nan", "x-aimlapi-credits-used": "-3"},
        {"x-inference-id": "bad id\t", "x-aimlapi-usd-spent": "1e400"},
        {"x-inference-id": KEY, "x-aimlapi-usd-spent": "$"},
    ],
)
def test_hostile_header_values_are_not_stored(headers: dict[str, str]) -> None:
    result, _ = _run_client(
        lambda m: m.post(URL, payload=OK, status=201, headers=headers), _request()
    )
    assert isinstance(result, Completion)
    assert result.reported_cost_usd is None and result.credits_used is None
    assert result.inference_id is None or KEY not in result.inference_id


def test_a_gateway_error_body_keeps_its_message_and_request_id() -> None:
    body = {
        "message": "Body validation error!",
        "path": "/v1/chat/completions",
        "requestId": "8b1f2c3d-aaaa-bbbb-cccc-000000000001",
        "statusCode": 400,
        "timestamp": "2026-12-02T10:00:00.000Z",
    }
    exc, _ = _run_client(
        lambda m: m.post(URL, payload=body, status=400, headers={"x-inference-id": "inf-9"}),
        _request(),
    )
    assert isinstance(exc, RowFailed) and exc.error_type == "bad_request"
    assert "Body validation error!" in exc.message
    assert exc.request_id == body["requestId"] and exc.inference_id == "inf-9"


def test_an_error_body_sent_with_201_and_a_string_status_code_is_an_error() -> None:
    body = {"message": ["max_tokens must be > 0"], "statusCode": "422", "requestId": "r-7"}
    exc, _ = _run_client(lambda m: m.post(URL, payload=body, status=201), _request())
    assert isinstance(exc, RowFailed) and exc.status == 422 and exc.error_type == "unprocessable"
    assert "max_tokens must be > 0" in exc.message and exc.request_id == "r-7"


def test_the_streams_meta_usage_event_is_the_spend() -> None:
    events = [
        {"id": "s", "model": "m", "choices": [{"index": 0, "delta": {"content": "hi"}}]},
        {"id": "s", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"id": "s", "model": "m", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}},
        {"meta": {"usage": {"credits_used": 42, "usd_spent": 0.000021}}},
    ]  # fmt: skip
    raw = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    result, _ = _run_client(
        lambda m: m.post(
            URL,
            body=raw,
            status=200,
            content_type="text/event-stream",
            headers={"x-inference-id": "inf-s"},
        ),
        _request(),
    )
    assert isinstance(result, Completion) and result.text == "hi"
    assert (result.credits_used, result.reported_cost_usd, result.inference_id) == (
        42,
        0.000021,
        "inf-s",
    )


# --- images -------------------------------------------------------------------------------


def test_sniff_and_dimensions() -> None:
    assert sniff(png()) == "image/png" and dimensions(png(10, 20)) == (10, 20)
    assert sniff(jpeg()) == "image/jpeg" and dimensions(jpeg(640, 480)) == (640, 480)
    assert sniff(webp()) == "image/webp" and dimensions(webp(300, 200)) == (300, 200)
    assert sniff(b"GIF89a" + b"\x10\x00\x08\x00") == "image/gif"
    assert sniff(b"hello, I am text") is None
    assert image_tokens((750, 1)) == 1 and image_tokens((4000, 4000)) == 1600
    assert image_tokens(None) == 1600


def test_image_refs_and_checks(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png(30, 25))
    (tmp_path / "fake.png").write_text("not an image at all")
    (tmp_path / "big.png").write_bytes(padded_png(6 * 1024 * 1024))
    refs = refs_of(["a.png", "https://x.test/i.jpg", png(), None], tmp_path)
    assert [r.kind for r in refs] == ["path", "url", "bytes"]
    assert refs[0].value == str(tmp_path / "a.png") and refs[0].label == "a.png"
    assert check_ref(refs[0], 5 * 2**20) == 1  # 30 x 25 / 750
    data_url = "data:image/png;base64," + base64.b64encode(png()).decode()
    assert check_ref(refs_of(data_url, tmp_path)[0], 5 * 2**20) == 1
    problems = {
        "missing.png": "not found",
        "fake.png": "is not a JPEG, PNG, GIF or WebP",
        "big.png": "the limit for this model",
        "ftp://x/y.png": "only http(s) and data: URLs",
        "data:image/jpeg;base64," + base64.b64encode(png()).decode(): "says image/jpeg",
        "data:image/png;base64,@@@": "not valid base64",
    }
    for value, words in problems.items():
        with pytest.raises(ImageProblem, match=re.escape(words)):
            for ref in refs_of(value, tmp_path):
                check_ref(ref, 5 * 2**20)
    with pytest.raises(ImageProblem, match="not int"):
        refs_of(5, tmp_path)


def test_the_builder_names_file_line_and_column_of_a_bad_image(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    job = Job(input_path=src, output_path=tmp_path / "o.parquet", image_columns=("img",))
    b = RequestBuilder(job, str(src))
    b.resolve(["prompt", "img"])
    with pytest.raises(InputError) as info:
        b.build({"prompt": "p", "img": "nope.png"}, 0, {"line": 1})
    assert str(info.value).startswith(f"{src}, line 1, column 'img': image file nope.png")


def test_blocks_for_claude_and_for_others() -> None:
    data = png()
    req = Request(
        position=0,
        messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "look"}],
        params={"model": "anthropic/claude-3-opus", "max_tokens": 5},
        max_tokens=5,
        prompt_tokens=1,
    )
    d = ChatCompletions()
    claude = d.encode(req, [LoadedImage("image/png", data)])
    parts = claude["messages"][1]["content"]
    assert parts[0] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(data).decode()},
    }  # fmt: skip
    assert parts[1] == {"type": "text", "text": "look"}
    assert req.messages[1]["content"] == "look"  # the request itself is unchanged
    assert content_problem(claude) is None
    req.params = {"model": "gpt-4o", "max_tokens": 5}
    other = d.encode(
        req, [LoadedImage("image/png", data), LoadedImage(None, None, "https://x/i.png")]
    )
    parts = other["messages"][1]["content"]
    assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert parts[1] == {"type": "image_url", "image_url": {"url": "https://x/i.png"}}
    assert content_problem(other) is None


def test_the_simulator_refuses_bad_image_blocks() -> None:
    def body(part: dict[str, Any], model: str = "anthropic/claude-3-opus") -> dict[str, Any]:
        return {"model": model, "messages": [{"role": "user", "content": [part]}]}

    text = base64.b64encode(b"plain text").decode()
    bad = [
        body({"type": "image_url", "image_url": {"url": "https://x/i.png"}}),
        body({"type": "image", "source": {"type": "url", "url": "https://x"}}),
        body({"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": text}}),
        body({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": text}}),
        body({"type": "image_url", "image_url": {"url": "data:image/png;base64," + text}}, "gpt-4o"),
    ]  # fmt: skip
    for b in bad:
        problem = content_problem(b)
        assert problem is not None and problem.startswith("Body validation error!")


def test_batchrun_sends_only_documented_fields_to_claude(tmp_path: Path) -> None:
    params = RequestParams(
        temperature=0, top_p=0.5, top_k=3, frequency_penalty=0.1, stop_sequences=("x",),
        stream=True, system="s", metadata={"a": 1},
        tools=({"name": "t", "description": "d", "input_schema": {"type": "object"}},),
        tool_choice={"type": "auto"},
    )  # fmt: skip
    body = ChatCompletions().encode(
        Request(
            position=0, messages=[], params=request_params(params), max_tokens=1, prompt_tokens=1
        )
    )
    assert set(body) <= CLAUDE_FIELDS and strict_problem(body) is None
    extra = request_params(RequestParams(extra_body={"service_tier": "auto"}))
    assert extra["service_tier"] == "auto"
    assert strict_problem({**extra, "messages": []}) is not None


def test_images_loaded_at_send_time_fail_the_row_when_the_file_changed(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_text("now text")
    req = _request(images=(ImageRef("path", str(path), "a.png"),))
    exc, mocked = _run_client(lambda m: m.post(URL, payload=OK, status=201), req)
    assert isinstance(exc, RowFailed) and exc.error_type == "invalid_image"
    assert not any(mocked.requests.values())  # the API never saw it


# --- the model check ----------------------------------------------------------------------


def test_aliases_are_one_model_and_retirements_are_named() -> None:
    listed = [
        "anthropic/claude-3-opus",
        "claude-3-opus",
        "claude-3-opus-latest",
        "gpt-4o",
        "gpt-4o-mini",
    ]
    assert family("claude-3-opus-20240229") == family("anthropic/claude-3-opus")
    near = closest("claude-3-opus-20240229", listed)
    assert near[0] == "anthropic/claude-3-opus (also claude-3-opus, claude-3-opus-latest)"
    assert retired_note("claude-3-opus-20240229") == (
        "Anthropic retired claude-3-opus-20240229 on 2026-01-05"
    )
    assert retired_note("gpt-4o") is None
    assert math.isfinite(len(closest("zzz", listed)))


def test_a_hostile_model_list_is_bounded_and_redacted() -> None:
    async def main(payload: Any, status: int = 200) -> Any:
        with aioresponses() as mocked:
            mocked.get(f"{BASE}/models", payload=payload, status=status)
            async with ApiClient(BASE, KEY, concurrency=1, timeout_s=5) as client:
                try:
                    return await client.list_models()
                except SendFailed as exc:
                    return exc

    names = asyncio.run(main({"data": [{"id": f"m-{KEY}"}, {"id": "x" * 1000}, {"id": 5}, "s"]}))
    assert len(names) == 2 and all(KEY not in n and len(n) <= 201 for n in names)
    bad = asyncio.run(main({"models": []}))
    assert isinstance(bad, SendFailed) and "not {data: [{id}]}" in bad.message
    refused = asyncio.run(main({"message": f"no {KEY}"}, 500))
    assert isinstance(refused, SendFailed) and KEY not in refused.message


def test_the_budget_counts_reported_spend_where_there_is_one() -> None:
    from batchrun.budget import BudgetGate
    from batchrun.job import Budget
    from batchrun.pricing import Price

    gate = BudgetGate(
        Budget(max_cost_usd=1.0), Price(1_000_000.0, 0.0), model="m", spent_usd=0, spent_tokens=0
    )
    assert gate.admit(0, 0) is None
    gate.settle(0, 0, True, 10, 0, reported_usd=0.25)  # the estimate would say $10
    assert gate.spent_usd == 0.25
    assert gate.admit(0, 0) is None
    gate.settle(0, 0, True, 0, 0)  # nothing reported: the estimate ($0 here)
    assert gate.spent_usd == 0.25
