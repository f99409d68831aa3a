"""Re-asks of a structured-output job through the real runner with a fake client: the
follow-up carries the violation, re-asks count in attempts, tokens and budgets, a row still
invalid is an invalid_output error row, --retry-failed --only invalid_output, a kill in the
middle of a re-ask, and per-row parameters reaching exactly their rows."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from batchrun.errors import InvalidInput, RunStopped, StopRun
from batchrun.job import Budget, Job, Limits, RequestParams, RetryPolicy
from batchrun.records import Completion, Request
from batchrun.runner import run_job
from batchrun.structured import choices_schema

KEY_ENV = "BATCHRUN_TEST_KEY"
NO_WAIT = RetryPolicy(backoff_initial_s=0, backoff_max_s=0, max_attempts=3)
#: (prompt, number of this prompt's call) → the tool-call arguments the client answers.
Answer = Callable[[str, int], str]


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test-reask")


class LabelClient:
    """Answers every request with a call of the ``label`` tool; records each request."""

    def __init__(
        self, answer: Answer, cost: float | None = None, credits: int | None = None
    ) -> None:
        self.answer = answer
        self.cost = cost  # what each answer reports it cost (USD), and in credits
        self.credits = credits
        self.requests: list[tuple[str, str, Request]] = []

    async def complete(self, request: Request, idempotency_key: str) -> Completion:
        prompt = request.messages[0]["content"]
        self.requests.append((prompt, idempotency_key, request))
        n = sum(1 for p, _, _ in self.requests if p == prompt)
        await asyncio.sleep(0)
        call = {
            "id": f"call-{prompt}-{n}",
            "type": "function",
            "function": {"name": "label", "arguments": self.answer(prompt, n)},
        }
        return Completion(
            text=None,
            finish_reason="tool_use",
            tool_calls=json.dumps([call]),
            prompt_tokens=10,
            completion_tokens=4,
            total_tokens=14,
            model="test/model",
            response_id=f"r-{prompt}-{n}",
            reported_cost_usd=self.cost,
            credits_used=self.credits,
        )

    def of(self, prompt: str) -> list[tuple[str, Request]]:
        return [(k, r) for p, k, r in self.requests if p == prompt]

    def factory(self) -> Callable[[Job, str], contextlib.AbstractAsyncContextManager[Any]]:
        @contextlib.asynccontextmanager
        async def make(job: Job, api_key: str) -> AsyncIterator[LabelClient]:
            yield self

        return make


def _job(tmp_path: Path, n: int, **kw: Any) -> Job:
    src = tmp_path / "in.jsonl"
    if not src.exists():
        src.write_text("".join(json.dumps({"id": i, "prompt": f"p{i}"}) + "\n" for i in range(n)))
    params = kw.pop("params", {})
    return Job(
        input_path=src,
        output_path=tmp_path / "out" / "labels.parquet",
        api_key_env=KEY_ENV,
        params=RequestParams(
            model="test/model", max_tokens=8, schema=choices_schema("yes,no"), **params
        ),
        retry=NO_WAIT,
        limits=kw.pop("limits", Limits(concurrency=4)),
        **kw,
    )


def _run(job: Job, client: LabelClient) -> Any:
    return asyncio.run(asyncio.wait_for(run_job(job, client_factory=client.factory()), 20))


def _rows(job: Job) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = pq.read_table(job.output_path).to_pylist()
    return rows


YES = json.dumps({"label": "yes"})
MEH = json.dumps({"label": "meh"})


def test_an_invalid_answer_is_asked_again_with_the_violation(tmp_path: Path) -> None:
    client = LabelClient(lambda p, n: MEH if p == "p1" and n == 1 else YES)
    job = _job(tmp_path, 3)
    summary = _run(job, client)
    rows = _rows(job)
    assert [r["label"] for r in rows] == ["yes"] * 3 and {r["status"] for r in rows} == {"ok"}
    first, again = client.of("p1")
    assert first[0] != again[0]  # a re-ask is another request: its own key
    followup = again[1].messages[1:]
    assert followup[0]["role"] == "assistant" and followup[0]["tool_calls"][0]["id"] == "call-p1-1"
    assert followup[1]["role"] == "tool" and followup[1]["tool_call_id"] == "call-p1-1"
    assert "'meh' is not one of ['yes', 'no']" in followup[1]["content"]
    assert again[1].prompt_tokens > first[1].prompt_tokens  # the follow-up is in the estimate
    # Re-asks count in attempts and tokens.
    assert [r["attempts"] for r in rows] == [1, 2, 1]
    assert [r["total_tokens"] for r in rows] == [14, 28, 14]
    assert summary.reasks == 1 and summary.requests_sent == 4 and summary.total_tokens == 56


def test_reasks_count_in_cost_and_credits(tmp_path: Path) -> None:
    client = LabelClient(lambda p, n: MEH if p == "p1" and n < 3 else YES, cost=0.5, credits=1000)
    job = _job(tmp_path, 3)
    summary = _run(job, client)
    rows = _rows(job)
    assert [r["attempts"] for r in rows] == [1, 3, 1]
    # The re-asked row holds what its three sends cost, not just the last answer.
    assert [r["reported_cost_usd"] for r in rows] == [0.5, 1.5, 0.5]
    assert [r["credits_used"] for r in rows] == [1000, 3000, 1000]
    assert summary.credits_used == 5000 and summary.reported_cost_usd == pytest.approx(2.5)


def test_a_reask_state_recorded_without_credits_still_loads() -> None:
    from batchrun.send.reask import ReaskState

    # A journal written before credits_used was kept: the key is absent.
    old = '{"followup":[],"reasks":1,"attempts":1,"prompt_tokens":10,"completion_tokens":4,'
    old += '"total_tokens":14,"reported_cost_usd":0.5}'
    state = ReaskState.from_json(old)
    assert state.credits_used is None and state.reported_cost_usd == 0.5
    assert ReaskState.from_json(state.to_json()) == state


def test_a_row_still_invalid_after_the_reasks_is_an_invalid_output_row(tmp_path: Path) -> None:
    client = LabelClient(lambda p, n: MEH if p in ("p0", "p2") else YES)
    job = _job(tmp_path, 4, max_failure_rate=1.0)
    summary = _run(job, client)
    rows = _rows(job)
    assert [r["status"] for r in rows] == ["error", "ok", "error", "ok"]
    bad = rows[0]
    assert bad["error_type"] == "invalid_output" and bad["label"] is None
    assert bad["error"] == (
        "invalid output (after 2 re-asks): 'meh' is not one of ['yes', 'no'] (at $.label)"
    )
    assert bad["attempts"] == 3 and bad["total_tokens"] == 42
    assert "meh" in bad["tool_calls"]  # the last answer shows what was wrong
    assert len(client.of("p0")) == 3  # the answer and two re-asks
    assert summary.errors_by_type == {"invalid_output": 2}
    # --retry-failed --only invalid_output re-sends just those rows.
    healthy = LabelClient(lambda p, n: YES)
    again = _job(tmp_path, 4, retry_failed=True, only_error_types=("invalid_output",))
    summary = _run(again, healthy)
    assert sorted(p for p, _, _ in healthy.requests) == ["p0", "p2"]
    assert [r["label"] for r in _rows(again)] == ["yes"] * 4 and summary.rows_error == 0


def test_max_reasks_zero_fails_the_first_invalid_answer(tmp_path: Path) -> None:
    client = LabelClient(lambda p, n: "not json")
    job = _job(tmp_path, 1, max_reasks=0, max_failure_rate=1.0)
    _run(job, client)
    (row,) = _rows(job)
    assert row["error"].startswith("invalid output: the tool-call arguments are not JSON")
    assert len(client.requests) == 1


def test_a_kill_during_a_reask_resends_that_reask_with_its_key(tmp_path: Path) -> None:
    """The journal as a kill -9 leaves it while a re-ask is in flight (copied at that
    instant): the rerun sends the same conversation with the same key, and the row keeps
    the answer paid for before it."""
    job = _job(tmp_path, 3, limits=Limits(concurrency=1))
    snapshot = tmp_path / "snapshot"

    class Crashing(LabelClient):
        async def complete(self, request: Request, idempotency_key: str) -> Completion:
            if len(request.messages) > 1:  # the re-ask is leaving: the process dies here
                shutil.copytree(job.checkpoint_dir, snapshot)
                self.requests.append((request.messages[0]["content"], idempotency_key, request))
                raise StopRun("permission_denied", "HTTP 403", status=403)
            return await super().complete(request, idempotency_key)

    crashing = Crashing(lambda p, n: MEH)
    with pytest.raises(RunStopped):
        _run(job, crashing)
    (_, _), (reask_key, reask) = crashing.of("p0")
    shutil.rmtree(job.checkpoint_dir)
    shutil.copytree(snapshot, job.checkpoint_dir)
    (job.checkpoint_dir / "lock").unlink()
    job.output_path.unlink(missing_ok=True)

    healthy = LabelClient(lambda p, n: YES)
    summary = _run(job, healthy)
    ((key, resent),) = healthy.of("p0")
    assert key == reask_key and resent.messages == reask.messages
    rows = _rows(job)
    assert [r["label"] for r in rows] == ["yes"] * 3
    assert rows[0]["attempts"] == 2 and rows[0]["total_tokens"] == 28  # the paid answer stays
    assert summary.rows_possibly_charged_twice == 1


def test_reasks_count_in_the_token_budget(tmp_path: Path) -> None:
    # Each request reserves 12 (prompt estimate) + 8 (max_tokens) = 20 tokens and uses 14;
    # every row needs a re-ask, so a cap of 100 covers 3 rows, not the 5 it would without.
    client = LabelClient(lambda p, n: MEH if n == 1 else YES)
    job = _job(tmp_path, 10, limits=Limits(concurrency=1), budget=Budget(max_tokens_total=100))
    with pytest.raises(RunStopped, match="budget"):
        _run(job, client)
    assert 14 * len(client.requests) <= 100 and len(client.requests) < 8
    rows = _rows(job)
    assert all(r["attempts"] == 2 and r["total_tokens"] == 28 for r in rows)
    # Raised, the rest goes on, a row stopped between its answer and its re-ask included.
    more = LabelClient(lambda p, n: YES)
    summary = _run(_job(tmp_path, 10, limits=Limits(concurrency=1)), more)
    assert summary.rows_ok == 10
    assert summary.total_tokens == sum(r["total_tokens"] for r in _rows(job))


# --- per-row parameters ---------------------------------------------------------------------------


def _params_input(tmp_path: Path, rows: list[dict[str, Any]]) -> None:
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_per_row_parameters_reach_exactly_their_rows(tmp_path: Path) -> None:
    _params_input(
        tmp_path,
        [
            {"id": 0, "prompt": "p0", "opts": {"max_tokens": 50, "temperature": 0.5}},
            {"id": 1, "prompt": "p1"},
            {"id": 2, "prompt": "p2", "opts": {"system": "Be brief.", "stop_sequences": ["\n"]}},
            {"id": 3, "prompt": "p3", "opts": None},
        ],
    )
    client = LabelClient(lambda p, n: YES)
    job = _job(tmp_path, 4, params_column="opts", params={"temperature": 0.0})
    _run(job, client)
    by_prompt = {p: r for p, _, r in client.requests}
    assert by_prompt["p0"].params["max_tokens"] == 50 and by_prompt["p0"].max_tokens == 50
    assert by_prompt["p0"].params["temperature"] == 0.5
    assert by_prompt["p2"].params["system"] == "Be brief."
    assert by_prompt["p2"].params["stop_sequences"] == ["\n"]
    for plain in ("p1", "p3"):
        assert by_prompt[plain].params["max_tokens"] == 8
        assert by_prompt[plain].params["temperature"] == 0.0
        assert "system" not in by_prompt[plain].params
    assert by_prompt["p0"].estimated_tokens > by_prompt["p1"].estimated_tokens


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"temperature": 1.5}, "params: temperature must be between 0 and 1, got 1.5"),
        ({"max_tokens": 0}, "params: max_tokens must be an integer >= 1"),
        ({"top_k": -1}, "params: top_k must be an integer >= 0"),
        ({"model": "other"}, "params has unknown key 'model'"),
        ({"stop_sequences": "x"}, "stop_sequences must be a list of strings"),
        ("{max_tokens: 5", "params is a string but not a JSON object"),
        ("[1]", "params must be an object"),
        (7, "params must be an object"),
    ],
)
def test_an_out_of_range_row_parameter_names_line_and_column_and_sends_nothing(
    tmp_path: Path, opts: Any, message: str
) -> None:
    _params_input(tmp_path, [{"prompt": "p0"}, {"prompt": "p1", "opts": opts}])
    client = LabelClient(lambda p, n: YES)
    with pytest.raises(InvalidInput) as info:
        _run(_job(tmp_path, 2, params_column="opts"), client)
    text = str(info.value)
    assert "line 2" in text and "opts" in text and message in text
    assert client.requests == []


def test_the_dry_run_names_the_typed_columns_and_counts_each_rows_max_tokens(
    tmp_path: Path,
) -> None:
    from batchrun.plan import dry_run

    _params_input(
        tmp_path,
        [{"id": 0, "prompt": "p0", "opts": {"max_tokens": 100}}, {"id": 1, "prompt": "p1"}],
    )
    text = dry_run(_job(tmp_path, 2, params_column="opts"))
    assert "up to 108 completion" in text  # 100 for row 0, the job's 8 for row 1
    assert "structured output: label (string); invalid answers asked again up to 2" in text
