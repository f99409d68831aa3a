"""The send path on its own: rows through batchrun.send with a fake transport and a
recording hooks object, no journal, no runner (the way a Ray worker or a batch submitter
uses it); the package imports none of the run's other stages; redaction."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import dataclasses
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import batchrun.send
from batchrun.errors import NotSent, SendFailed
from batchrun.pacing import Limits, RetryPolicy
from batchrun.records import Completion, Request
from batchrun.send import ApiClient, Limiter, Outcome, Pool, Redactor, RowSender
from batchrun.send.redact import MIN_RUN

KEY = "sk-canary-0123456789abcdefghij"
NO_WAIT = RetryPolicy(backoff_initial_s=0, backoff_max_s=0, max_attempts=3)
FORBIDDEN = ("batchrun.checkpoint", "batchrun.sink", "batchrun.runner", "batchrun.cli")
FORBIDDEN_TOP = ("click", "tqdm")


def test_the_send_package_imports_nothing_of_the_journal_runner_or_cli() -> None:
    folder = Path(batchrun.send.__file__).parent
    seen = 0
    for path in folder.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                seen += 1
                assert not name.startswith(FORBIDDEN), f"{path.name} imports {name}"
                assert name.split(".")[0] not in FORBIDDEN_TOP, f"{path.name} imports {name}"
    assert seen > 20  # the walk did look at the package's imports


# Modules a worker that only sends must not pay for: the static walk above misses what
# batchrun/__init__.py or a shared module (job.py) drags in when the package is imported.
NOT_LOADED = (
    "batchrun.runner",
    "batchrun.checkpoint",
    "batchrun.sink",
    "batchrun.journal_schema",
    "batchrun.prepare",
    "batchrun.cli",
    "click",
    "tqdm",
)


def test_importing_the_send_package_loads_nothing_of_the_journal_runner_or_cli() -> None:
    # A fresh interpreter: this one has imported the whole package already.
    code = "import batchrun.send, sys; print(sorted(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = set(ast.literal_eval(out))
    assert "batchrun.send.attempt" in loaded  # the list is the real one
    assert sorted(loaded.intersection(NOT_LOADED)) == []


class FakeReply:
    def __init__(self, status: int, body: bytes, headers: Mapping[str, str] | None = None):
        self.status = status
        self._body = body
        self.headers = dict(headers or {})
        self.content_type = self.headers.get("Content-Type", "application/json")

    async def read(self, limit: int | None = None) -> bytes:
        return self._body if limit is None else self._body[:limit]

    async def _lines(self) -> AsyncIterator[bytes]:
        for line in self._body.splitlines(keepends=True):
            yield line

    def lines(self) -> AsyncIterator[bytes]:
        return self._lines()


class FakeTransport:
    """Answers from a script: prompt → list of (status, body) per attempt."""

    def __init__(self, script: dict[str, list[tuple[int, bytes]]]) -> None:
        self.script = script
        self.sent: list[tuple[str, dict[str, Any], str]] = []

    @contextlib.asynccontextmanager
    async def post(
        self, path: str, body: bytes, headers: Mapping[str, str]
    ) -> AsyncIterator[FakeReply]:
        payload = json.loads(body)
        prompt = payload["messages"][-1]["content"]
        self.sent.append((path, payload, headers["Idempotency-Key"]))
        await asyncio.sleep(0)
        answers = self.script.get(prompt) or [(201, _ok(prompt))]
        n = sum(1 for _, p, _ in self.sent if p["messages"][-1]["content"] == prompt)
        status, raw = answers[min(n, len(answers)) - 1]
        yield FakeReply(status, raw)


def _ok(prompt: str, **extra: Any) -> bytes:
    message = {"role": "assistant", "content": f"re: {prompt}", **extra}
    return json.dumps(
        {
            "id": f"id-{prompt}",
            "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "end_turn"}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5},
        }
    ).encode()


class RecordingHooks:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.stop = False

    def stopping(self) -> bool:
        return self.stop

    async def before_new_key(self, position: int, key: str) -> None:
        self.events.append(("new_key", position, key))

    def resent_in_doubt(self, position: int) -> None:
        self.events.append(("doubt", position))

    def sending(self, position: int) -> None:
        self.events.append(("sending", position))

    def sent(self, attempt: int, failure: SendFailed | None) -> None:
        self.events.append(("sent", attempt, failure.error_type if failure else None))

    def failed_for_good(self, error_type: str, message: str) -> None:
        self.events.append(("failed", error_type))

    def succeeded(self) -> None:
        self.events.append(("ok",))

    def cancelled(self, outcome: Outcome) -> None:
        self.events.append(("cancelled", outcome.request.position))


def _request(i: int) -> Request:
    return Request(
        position=i,
        messages=[{"role": "user", "content": f"p{i}"}],
        params={"model": "m", "max_tokens": 8},
        max_tokens=8,
        prompt_tokens=3,
    )


async def _send_all(
    transport: FakeTransport, hooks: RecordingHooks, n: int, concurrency: int = 4
) -> list[Outcome]:
    limiter = Limiter(Limits(concurrency=concurrency))
    client = ApiClient(
        "http://unused.invalid/v1", KEY, concurrency=4, timeout_s=5, transport=transport
    )
    sender = RowSender(client, limiter, NO_WAIT, hooks)
    outcomes: list[Outcome] = []

    async def items() -> AsyncIterator[Request]:
        for i in range(n):
            yield _request(i)

    await Pool[Request, Outcome](limiter, hooks.stopping).run(items(), sender.send, outcomes.append)
    assert limiter.in_flight == 0  # every slot given back
    return outcomes


def test_rows_go_through_the_send_package_with_a_fake_transport_and_no_journal() -> None:
    transport = FakeTransport(
        {
            "p1": [(500, b'{"error": {"message": "busy"}}'), (201, _ok("p1"))],
            "p2": [(400, b'{"error": {"message": "bad field"}}')],
        }
    )
    hooks = RecordingHooks()
    outcomes = asyncio.run(_send_all(transport, hooks, 5))
    by_pos = {o.request.position: o for o in outcomes}
    assert sorted(by_pos) == [0, 1, 2, 3, 4]
    assert by_pos[0].result is not None and by_pos[0].result.completion == "re: p0"
    assert by_pos[1].result is not None and by_pos[1].result.status == "ok"
    assert by_pos[1].result.attempts == 2
    failed = by_pos[2].result
    assert (
        failed is not None
        and failed.error_type == "bad_request"
        and "bad field" in (failed.error or "")
    )
    assert all(path == "/chat/completions" for path, _, _ in transport.sent)
    # The 500 was answered (a definite outcome): the resend is a new request, new key.
    keys_p1 = [k for _, p, k in transport.sent if p["messages"][-1]["content"] == "p1"]
    assert len(keys_p1) == 2 and keys_p1[0] != keys_p1[1]
    assert [e for e in hooks.events if e[0] == "new_key"].__len__() == 6
    assert ("failed", "bad_request") in hooks.events and ("doubt", 1) not in hooks.events
    assert sum(1 for e in hooks.events if e[0] == "sent") == 6


def test_a_resend_after_an_unknown_outcome_keeps_the_key_and_is_reported_once() -> None:
    class Flaky(FakeTransport):
        calls = 0

        @contextlib.asynccontextmanager
        async def post(
            self, path: str, body: bytes, headers: Mapping[str, str]
        ) -> AsyncIterator[FakeReply]:
            self.calls += 1
            self.sent.append((path, json.loads(body), headers["Idempotency-Key"]))
            if self.calls <= 2:
                from batchrun.errors import Retryable

                raise Retryable("timeout", "no answer", definite=False)
            yield FakeReply(201, _ok("p0"))

    transport = Flaky({})
    hooks = RecordingHooks()
    (outcome,) = asyncio.run(_send_all(transport, hooks, 1))
    assert outcome.result is not None and outcome.result.status == "ok"
    assert outcome.result.attempts == 3
    assert len({k for _, _, k in transport.sent}) == 1  # the server may hold the key
    assert hooks.events.count(("doubt", 0)) == 1  # counted once a row


def test_a_stopping_driver_leaves_rows_unsent() -> None:
    hooks = RecordingHooks()
    hooks.stop = True
    transport = FakeTransport({})
    outcomes = asyncio.run(_send_all(transport, hooks, 3))
    assert transport.sent == [] and outcomes == []


def test_hooks_can_refuse_a_send() -> None:
    class Refusing(RecordingHooks):
        async def before_new_key(self, position: int, key: str) -> None:
            raise NotSent

    transport = FakeTransport({})
    outcomes = asyncio.run(_send_all(transport, Refusing(), 2))
    assert transport.sent == []
    assert [o.result for o in outcomes] == [None, None]
    assert not any(o.maybe_billed for o in outcomes)


def test_reasoning_content_is_kept_from_answers() -> None:
    transport = FakeTransport({"p0": [(201, _ok("p0", reasoning_content="think first"))]})
    outcomes = asyncio.run(_send_all(transport, RecordingHooks(), 2))
    got = {o.request.position: o.result.reasoning_content for o in outcomes if o.result}
    assert got == {0: "think first", 1: None}


def _completion(**fields: Any) -> Completion:
    base: dict[str, Any] = dict.fromkeys(
        (
            "text",
            "finish_reason",
            "tool_calls",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "model",
            "response_id",
        )
    )
    return Completion(**{**base, **fields})


@pytest.mark.parametrize("cut", [0, 1, 5, len(KEY) - MIN_RUN])
def test_redaction_before_the_cut_leaves_no_run_of_the_key(cut: int) -> None:
    redact = Redactor([KEY])
    text = "x" * 100 + f"Bearer {KEY} and more"
    for limit in range(100, 100 + 7 + len(KEY) + 5):
        cleaned = redact.clean(text, limit)
        for i in range(len(KEY) - MIN_RUN + 1):
            assert KEY[i : i + MIN_RUN] not in cleaned
    # A part of the key a server sent on its own is masked too.
    assert KEY[cut : cut + MIN_RUN] not in redact("echo " + KEY[cut:])


def test_redaction_of_every_text_field_of_an_answer() -> None:
    redact = Redactor([KEY])
    c = _completion(text="ok", model=KEY, response_id=f"id-{KEY[3:]}", tool_calls=f'["{KEY}"]')
    cleaned = redact.fields(c)
    assert cleaned.text == "ok"
    for value in (cleaned.model, cleaned.response_id, cleaned.tool_calls):
        assert value is not None and KEY[:MIN_RUN] not in value and KEY[-MIN_RUN:] not in value
    clean = _completion(text="nothing secret here")
    assert redact.fields(clean) is clean  # the fast path copies nothing


def test_every_text_field_of_an_answer_is_redacted_whichever_holds_the_key() -> None:
    redact = Redactor([KEY])
    texts = [f.name for f in dataclasses.fields(Completion) if "str" in str(f.type)]
    assert {"text", "model", "reasoning_content", "inference_id"} <= set(texts)
    for name in texts:
        cleaned = redact.fields(_completion(**{"text": "ok", name: f"x {KEY} y"}))
        assert KEY[:MIN_RUN] not in str(getattr(cleaned, name)), name
        assert name == "text" or cleaned.text == "ok"


def test_an_error_body_with_a_lone_surrogate_is_quoted_as_text() -> None:
    from batchrun.send import ChatCompletions

    message = ChatCompletions().error_message(b'{"error": {"message": "bad \\ud800 thing"}}')
    message.encode("utf-8")  # the journal can store it
    assert "bad" in message
