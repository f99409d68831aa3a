"""The pool with a fake client: the in-flight bound (a concurrency spy, like aiometer's
TestMaxAtOnce), output order, retries without sleeping, Idempotency-Keys, stops, resume,
--retry-failed, checkpoint conflicts, the summary and the exit code."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from batchrun.checkpoint import Checkpoint
from batchrun.errors import CheckpointError, Retryable, RowFailed, RunStopped, StopRun, UsageError
from batchrun.job import Budget, Job, Limits, RequestParams, RetryPolicy
from batchrun.records import Completion, Request
from batchrun.runner import Event, run_job

KEY_ENV = "BATCHRUN_TEST_KEY"
KEY = "sk-test-runner-key"
RUN_TIMEOUT_S = 20.0
NO_WAIT = RetryPolicy(backoff_initial_s=0, backoff_max_s=0, max_attempts=4)

#: fail(prompt, attempt) → the exception this attempt raises, or None to answer.
Fail = Callable[[str, int], Exception | None]


def _index(prompt: str) -> int:
    return int(prompt[1:])


class FakeClient:
    """Answers after a short, row-dependent await (so rows finish out of input order);
    records every call, its key, and the in-flight count and peak."""

    def __init__(self, fail: Fail | None = None, *, delay_ms: Callable[[int], float] | None = None):
        self.fail = fail
        self.delay_ms = delay_ms or (lambda i: (i * 7) % 3)
        self.in_flight = 0
        self.peak = 0
        self.calls: list[tuple[str, str]] = []
        self.finished: list[str] = []
        self.attempts: Counter[str] = Counter()
        self.opened = 0
        self.closed = 0
        self.api_keys: list[str] = []

    async def complete(self, request: Request, idempotency_key: str) -> Completion:
        prompt = request.messages[-1]["content"]
        self.calls.append((prompt, idempotency_key))
        self.attempts[prompt] += 1
        n = self.attempts[prompt]
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.delay_ms(_index(prompt)) / 1000)
            if self.fail is not None and (exc := self.fail(prompt, n)) is not None:
                raise exc
            self.finished.append(prompt)
            return Completion(
                text=f"answer to {prompt}",
                finish_reason="end_turn",
                tool_calls=None,
                prompt_tokens=3,
                completion_tokens=2,
                total_tokens=5,
                model=request.params["model"],
                response_id=f"id-{prompt}",
            )
        finally:
            self.in_flight -= 1

    def prompts(self) -> list[str]:
        return [p for p, _ in self.calls]

    def keys_of(self, prompt: str) -> list[str]:
        return [k for p, k in self.calls if p == prompt]

    def factory(self) -> Callable[[Job, str], contextlib.AbstractAsyncContextManager[FakeClient]]:
        @contextlib.asynccontextmanager
        async def make(job: Job, api_key: str) -> AsyncIterator[FakeClient]:
            self.opened += 1
            self.api_keys.append(api_key)
            try:
                yield self
            finally:
                self.closed += 1

        return make


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def _write_input(path: Path, n: int) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"id": i, "prompt": f"p{i}", "label": f"L{i % 3}"}) + "\n")
    return path


def _job(tmp_path: Path, n: int, **kw: Any) -> Job:
    src = tmp_path / "in.jsonl"
    if not src.exists():
        _write_input(src, n)
    kw.setdefault("limits", Limits(concurrency=8))
    kw.setdefault("retry", NO_WAIT)
    return Job(
        input_path=src,
        output_path=tmp_path / "out" / "labels.parquet",
        api_key_env=KEY_ENV,
        params=kw.pop("params", RequestParams(model="test/model", max_tokens=8)),
        **kw,
    )


def _run(job: Job, client: FakeClient, **kw: Any) -> Any:
    # A deadlocked pool fails the test instead of hanging the suite.
    run = run_job(job, client_factory=client.factory(), **kw)
    return asyncio.run(asyncio.wait_for(run, timeout=RUN_TIMEOUT_S))


def _rows(job: Job) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = pq.read_table(job.output_path).to_pylist()
    return rows


def _prompts(indices: Any) -> list[str]:
    return [f"p{i}" for i in indices]


# --- the pool ------------------------------------------------------------------------------------


def test_in_flight_never_exceeds_and_reaches_the_concurrency(tmp_path: Path) -> None:
    client = FakeClient()
    job = _job(tmp_path, 200)
    summary = _run(job, client)
    assert client.peak <= 8
    assert client.peak == 8  # the pool is actually used, not run one by one
    assert len(client.calls) == 200 and summary.rows_ok == 200
    assert client.opened == client.closed == 1  # one client (session) per run
    assert client.api_keys == [KEY]


def test_in_flight_bound_holds_while_rows_retry(tmp_path: Path) -> None:
    def fail(prompt: str, n: int) -> Exception | None:
        if _index(prompt) % 3 == 0 and n == 1:
            return Retryable("server_error", "HTTP 503: busy", status=503)
        return None

    client = FakeClient(fail)
    job = _job(tmp_path, 120)
    summary = _run(job, client)
    assert client.peak == 8
    assert summary.rows_ok == 120 and summary.retries == 40
    attempts = [r["attempts"] for r in _rows(job)]
    assert attempts == [2 if i % 3 == 0 else 1 for i in range(120)]


def test_concurrency_one_sends_strictly_one_at_a_time_in_input_order(tmp_path: Path) -> None:
    client = FakeClient()
    job = _job(tmp_path, 30, limits=Limits(concurrency=1))
    _run(job, client)
    assert client.peak == 1
    assert client.prompts() == _prompts(range(30))


def test_output_has_one_row_per_input_row_in_input_order(tmp_path: Path) -> None:
    client = FakeClient(delay_ms=lambda i: (i * 13) % 5)
    job = _job(tmp_path, 200)
    _run(job, client)
    assert client.finished != _prompts(range(200))  # rows did finish out of order...
    rows = _rows(job)
    assert len(rows) == 200  # ...yet the output is in input order, each answer on its row
    assert [r["id"] for r in rows] == list(range(200))
    assert [r["prompt"] for r in rows] == _prompts(range(200))
    assert [r["label"] for r in rows] == [f"L{i % 3}" for i in range(200)]
    assert [r["completion"] for r in rows] == [f"answer to p{i}" for i in range(200)]
    assert [r["response_id"] for r in rows] == [f"id-p{i}" for i in range(200)]
    first = rows[0]
    assert first["status"] == "ok"
    assert first["finish_reason"] == "end_turn"
    assert first["finish_reason_normalized"] == "stop"
    assert first["model"] == "test/model"
    assert (first["prompt_tokens"], first["completion_tokens"], first["total_tokens"]) == (3, 2, 5)
    assert first["attempts"] == 1
    assert first["error_type"] is None and first["error"] is None
    assert first["latency_ms"] >= 0


def test_events_report_start_each_row_and_finalizing(tmp_path: Path) -> None:
    events: list[Event] = []
    _run(_job(tmp_path, 12), FakeClient(), on_event=events.append)
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "finalizing"
    assert kinds.count("row") == 12
    assert events[-1].progress.ok == 12


# --- retries and Idempotency-Keys ----------------------------------------------------------------


def test_retries_keep_the_key_after_unknown_outcomes_and_change_it_after_answers(
    tmp_path: Path,
) -> None:
    def fail(prompt: str, n: int) -> Exception | None:
        if prompt == "p0" and n <= 2:
            return Retryable("timeout", "no complete answer within 5 s", definite=False)
        if prompt == "p1" and n <= 2:
            return Retryable("server_error", "HTTP 500: oops", status=500)
        if prompt == "p2" and n == 1:
            return Retryable("connection_error", "connection reset", definite=False)
        if prompt == "p2" and n == 2:
            return Retryable("server_error", "HTTP 500: oops", status=500)
        return None

    client = FakeClient(fail)
    job = _job(tmp_path, 4)
    summary = _run(job, client)
    p0, p1, p2 = client.keys_of("p0"), client.keys_of("p1"), client.keys_of("p2")
    assert len(p0) == 3 and len(set(p0)) == 1  # outcome unknown: same key each time
    assert len(p1) == 3 and len(set(p1)) == 3  # the server answered: a new key each time
    assert len(p2) == 3 and p2[0] == p2[1] != p2[2]
    all_keys = {k for _, k in client.calls}
    assert len(all_keys) == 1 + 3 + 2 + 1  # no key shared between rows
    rows = _rows(job)
    assert [r["attempts"] for r in rows] == [3, 3, 3, 1]
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert summary.requests_sent == 10 and summary.retries == 6


def test_row_failed_is_an_error_row_not_an_exception(tmp_path: Path) -> None:
    def fail(prompt: str, n: int) -> Exception | None:
        if prompt == "p1":
            return RowFailed("bad_request", "HTTP 400: max_tokens too large", status=400)
        return None

    client = FakeClient(fail)
    job = _job(tmp_path, 4, max_failure_rate=1.0)
    summary = _run(job, client)
    rows = _rows(job)
    assert [r["status"] for r in rows] == ["ok", "error", "ok", "ok"]
    bad = rows[1]
    assert bad["error_type"] == "bad_request"
    assert bad["error"] == "HTTP 400: max_tokens too large"
    assert bad["attempts"] == 1 and client.attempts["p1"] == 1  # not retried
    assert bad["completion"] is None and bad["finish_reason_normalized"] == "error"
    assert summary.rows_error == 1 and summary.rows_ok == 3 and summary.exit_code == 0


def test_exhausted_retries_become_an_error_row_saying_how_many_attempts(tmp_path: Path) -> None:
    def fail(prompt: str, n: int) -> Exception | None:
        if prompt == "p2":
            return Retryable("server_error", "HTTP 500: boom", status=500)
        return None

    client = FakeClient(fail)
    job = _job(tmp_path, 4, max_failure_rate=1.0)
    summary = _run(job, client)
    rows = _rows(job)
    assert rows[2]["status"] == "error"
    assert rows[2]["error_type"] == "server_error"
    assert rows[2]["error"] == "HTTP 500: boom (after 4 attempts)"
    assert rows[2]["attempts"] == 4 and client.attempts["p2"] == 4
    assert summary.errors_by_type == {"server_error": 1}


def test_a_single_attempt_policy_does_not_retry(tmp_path: Path) -> None:
    client = FakeClient(lambda p, n: Retryable("timeout", "slow", definite=False))
    retry = RetryPolicy(backoff_initial_s=0, backoff_max_s=0, max_attempts=1)
    job = _job(tmp_path, 3, retry=retry, max_failure_rate=1.0)
    _run(job, client)
    assert len(client.calls) == 3
    rows = _rows(job)
    assert [(r["attempts"], r["error"]) for r in rows] == [(1, "slow")] * 3


def test_a_retry_after_beyond_the_maximum_stops_the_run(tmp_path: Path) -> None:
    def fail(prompt: str, n: int) -> Exception | None:
        return Retryable("rate_limited", "HTTP 429: later", status=429, retry_after_s=3600)

    client = FakeClient(fail)
    job = _job(tmp_path, 20, limits=Limits(concurrency=2))
    with pytest.raises(RunStopped, match="3600 s") as info:
        _run(job, client)
    assert info.value.exit_code == 4
    assert len(client.calls) <= 2


# --- stopping ------------------------------------------------------------------------------------


def test_403_stops_the_run_with_exit_4_and_a_rerun_resumes(tmp_path: Path) -> None:
    first_403: list[int] = []  # how many calls had been made when the first 403 came back

    def fail(prompt: str, n: int) -> Exception | None:
        if _index(prompt) >= 30:
            if not first_403:
                first_403.append(len(broke.calls))
            return StopRun("permission_denied", "HTTP 403: out of credits", status=403)
        return None

    broke = FakeClient(fail)
    job = _job(tmp_path, 100)
    with pytest.raises(RunStopped) as info:
        _run(job, broke)
    stopped = info.value
    assert stopped.exit_code == 4
    assert "out of credits" in str(stopped)
    assert len(broke.calls) - first_403[0] <= 8  # no more calls than the concurrency
    assert broke.opened == broke.closed == 1  # the session was closed on the way out
    summary = stopped.summary
    assert summary is not None
    assert summary.exit_code == 4 and summary.state == "partial"
    assert summary.rows_ok == 30 and summary.rows_error == 0
    assert summary.rows_pending == 70
    on_disk = json.loads(job.summary_path.read_text())
    assert on_disk["exit_code"] == 4 and on_disk["rows_ok"] == 30

    healthy = FakeClient()
    summary = _run(job, healthy)
    assert sorted(healthy.prompts(), key=_index) == _prompts(range(30, 100))  # only the rest
    assert summary.rows_ok == 100 and summary.rows_resumed == 30
    assert summary.exit_code == 0 and summary.state == "complete"
    assert summary.rows_possibly_charged_twice == 0  # 403s were answers: nothing in doubt
    assert [r["completion"] for r in _rows(job)] == [f"answer to p{i}" for i in range(100)]


def test_a_timed_out_row_left_by_a_stop_is_resent_with_the_same_key(tmp_path: Path) -> None:
    stopped = asyncio.Event()

    class Client(FakeClient):
        async def complete(self, request: Request, idempotency_key: str) -> Completion:
            prompt = request.messages[-1]["content"]
            if prompt == "p0":
                self.calls.append((prompt, idempotency_key))
                await stopped.wait()  # answered only once p1's 403 has stopped the run
                raise Retryable("timeout", "no answer", definite=False)
            if prompt == "p1":
                self.calls.append((prompt, idempotency_key))
                stopped.set()
                raise StopRun("permission_denied", "HTTP 403: no credits", status=403)
            return await super().complete(request, idempotency_key)

    broke = Client()
    job = _job(tmp_path, 10, limits=Limits(concurrency=2))
    with pytest.raises(RunStopped):
        _run(job, broke)
    assert broke.prompts() == ["p0", "p1"]
    healthy = FakeClient()
    summary = _run(job, healthy)
    assert sorted(healthy.prompts(), key=_index) == _prompts(range(10))
    assert healthy.keys_of("p0") == broke.keys_of("p0")  # the outcome was unknown: same key
    assert healthy.keys_of("p1") != broke.keys_of("p1")  # the 403 was an answer: a new key
    assert summary.rows_possibly_charged_twice == 1


def test_a_resumed_key_survives_a_run_that_stops_before_resending_it(tmp_path: Path) -> None:
    stopped = asyncio.Event()

    class FirstRun(FakeClient):
        """p0 and p1 time out (outcome unknown) once p2's 403 has stopped the run."""

        async def complete(self, request: Request, idempotency_key: str) -> Completion:
            prompt = request.messages[-1]["content"]
            self.calls.append((prompt, idempotency_key))
            if prompt == "p2":
                stopped.set()
                raise StopRun("permission_denied", "HTTP 403: no credits", status=403)
            await stopped.wait()
            raise Retryable("timeout", "no answer", definite=False)

    class SecondRun(FakeClient):
        """p0 is refused at once: the run stops before p1 (whose key the server may
        hold from the first run) is sent again."""

        async def complete(self, request: Request, idempotency_key: str) -> Completion:
            prompt = request.messages[-1]["content"]
            self.calls.append((prompt, idempotency_key))
            if prompt == "p0":
                raise StopRun("permission_denied", "HTTP 403: no credits", status=403)
            return await super().complete(request, idempotency_key)

    first = FirstRun()
    with pytest.raises(RunStopped):
        _run(_job(tmp_path, 10, limits=Limits(concurrency=3)), first)
    assert sorted(first.prompts()) == ["p0", "p1", "p2"]
    second = SecondRun()
    with pytest.raises(RunStopped):
        _run(_job(tmp_path, 10, limits=Limits(concurrency=2)), second)
    assert second.prompts() == ["p0"]  # p1 was never sent again
    healthy = FakeClient()
    summary = _run(_job(tmp_path, 10, limits=Limits(concurrency=2)), healthy)
    assert healthy.keys_of("p1") == first.keys_of("p1")  # still the first run's key
    assert sorted(healthy.prompts(), key=_index) == _prompts(range(10))
    assert summary.rows_possibly_charged_twice == 2  # p0 and p1, each counted once


def test_a_stop_ends_a_retry_wait_at_once(tmp_path: Path) -> None:
    # p0 waits out a 30 s backoff when p1's 403 stops the run: the run must not wait too.
    def fail(prompt: str, n: int) -> Exception | None:
        if prompt == "p0":
            return Retryable("rate_limited", "HTTP 429", status=429, retry_after_s=30.0)
        if prompt == "p1":
            return StopRun("permission_denied", "HTTP 403: no credits", status=403)
        return None

    client = FakeClient(fail, delay_ms=lambda i: 0 if i == 0 else 50)
    slow = RetryPolicy(backoff_initial_s=30, backoff_max_s=30)
    job = _job(tmp_path, 10, limits=Limits(concurrency=2), retry=slow)
    t0 = time.monotonic()
    with pytest.raises(RunStopped):
        _run(job, client)
    assert time.monotonic() - t0 < 5
    assert client.prompts().count("p0") == 1


def test_the_same_error_row_after_row_stops_the_run(tmp_path: Path) -> None:
    client = FakeClient(lambda p, n: RowFailed("not_found", "HTTP 404: no such model"))
    retry = RetryPolicy(backoff_initial_s=0, backoff_max_s=0, same_error_stop_after=5)
    job = _job(tmp_path, 40, limits=Limits(concurrency=1), retry=retry)
    with pytest.raises(RunStopped, match="5 rows in a row") as info:
        _run(job, client)
    assert info.value.exit_code == 4
    assert "--retry-failed" in str(info.value)  # the hint names the way back
    assert len(client.calls) == 5
    assert info.value.summary.rows_error == 5


def test_different_errors_or_a_success_between_them_do_not_stop_the_run(tmp_path: Path) -> None:
    def fail(prompt: str, n: int) -> Exception | None:
        i = _index(prompt)
        if i % 3 == 2:
            return None  # a success every third row resets the streak
        return RowFailed("not_found", "HTTP 404: no such model")

    client = FakeClient(fail)
    retry = RetryPolicy(backoff_initial_s=0, backoff_max_s=0, same_error_stop_after=3)
    job = _job(tmp_path, 30, limits=Limits(concurrency=1), retry=retry, max_failure_rate=1.0)
    summary = _run(job, client)
    assert len(client.calls) == 30
    assert summary.rows_error == 20 and summary.rows_ok == 10


# --- resume --------------------------------------------------------------------------------------


def test_resume_sends_only_the_rest_and_a_finished_output_sends_nothing(tmp_path: Path) -> None:
    first = FakeClient()
    summary = _run(_job(tmp_path, 120, limit=50), first)
    assert first.prompts() and sorted(first.prompts(), key=_index) == _prompts(range(50))
    assert summary.rows_total == 50 and summary.rows_ok == 50

    second = FakeClient()
    job = _job(tmp_path, 120)
    summary = _run(job, second)
    assert sorted(second.prompts(), key=_index) == _prompts(range(50, 120))
    assert summary.rows_resumed == 50 and summary.rows_ok == 120
    assert [r["completion"] for r in _rows(job)] == [f"answer to p{i}" for i in range(120)]

    third = FakeClient()
    summary = _run(job, third)
    assert third.calls == []
    assert summary.rows_ok == 120 and summary.rows_resumed == 120 and summary.exit_code == 0


def test_retry_failed_resends_exactly_the_failed_rows_of_the_given_types(tmp_path: Path) -> None:
    def fail(prompt: str, n: int) -> Exception | None:
        i = _index(prompt)
        if i % 10 == 0:
            return RowFailed("bad_request", "HTTP 400: bad", status=400)
        if i % 10 == 1:
            return Retryable("timeout", "slow", definite=False)
        return None

    _run(_job(tmp_path, 50, max_failure_rate=1.0), FakeClient(fail))

    timeouts = FakeClient()
    job = _job(tmp_path, 50, retry_failed=True, only_error_types=("timeout",))
    summary = _run(job, timeouts)
    assert sorted(timeouts.prompts(), key=_index) == _prompts(range(1, 50, 10))
    assert summary.errors_by_type == {"bad_request": 5}

    rest = FakeClient()
    summary = _run(_job(tmp_path, 50, retry_failed=True), rest)
    assert sorted(rest.prompts(), key=_index) == _prompts(range(0, 50, 10))
    assert summary.rows_ok == 50 and summary.rows_error == 0

    again = FakeClient()
    _run(_job(tmp_path, 50, retry_failed=True), again)
    assert again.calls == []
    assert [r["status"] for r in _rows(job)] == ["ok"] * 50


# --- checkpoint conflicts ------------------------------------------------------------------------


def test_a_changed_job_is_refused_before_any_call(tmp_path: Path) -> None:
    _run(_job(tmp_path, 5), FakeClient())
    client = FakeClient()
    other = _job(tmp_path, 5, params=RequestParams(model="another/model", max_tokens=8))
    with pytest.raises(CheckpointError, match=r"params\.model") as info:
        _run(other, client)
    assert info.value.exit_code == 5
    assert "--restart" in str(info.value)
    assert client.calls == [] and client.opened == 0


def test_changed_input_content_is_refused_before_any_call(tmp_path: Path) -> None:
    job = _job(tmp_path, 5)
    _run(job, FakeClient())
    text = job.input_path.read_text()
    job.input_path.write_text(text.replace('"p3"', '"q3"'))  # same size, other content
    client = FakeClient()
    with pytest.raises(CheckpointError, match="changed") as info:
        _run(job, client)
    assert info.value.exit_code == 5
    assert client.calls == [] and client.opened == 0


def test_an_input_only_touched_is_not_a_change(tmp_path: Path) -> None:
    job = _job(tmp_path, 5)
    _run(job, FakeClient())
    st = job.input_path.stat()
    os.utime(job.input_path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    client = FakeClient()
    summary = _run(job, client)
    assert client.calls == [] and summary.rows_ok == 5


def test_a_missing_key_is_a_usage_error_before_anything_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV)
    client = FakeClient()
    with pytest.raises(UsageError, match=KEY_ENV) as info:
        _run(_job(tmp_path, 3), client)
    assert info.value.exit_code == 2
    assert client.opened == 0


# --- summary and exit code -----------------------------------------------------------------------


def test_summary_json_beside_the_output_matches_the_parquet(tmp_path: Path) -> None:
    def fail(prompt: str, n: int) -> Exception | None:
        i = _index(prompt)
        if i % 7 == 0:
            return RowFailed("unprocessable", "HTTP 422: nope", status=422)
        if i % 7 == 1 and n == 1:
            return Retryable("timeout", "slow", definite=False)
        return None

    job = _job(tmp_path, 50, max_failure_rate=0.5)
    summary = _run(job, FakeClient(fail))
    path = tmp_path / "out" / "labels.summary.json"
    assert path == job.summary_path and path.exists()
    on_disk = json.loads(path.read_text())
    rows = _rows(job)
    statuses = Counter(r["status"] for r in rows)
    assert on_disk["rows_total"] == len(rows) == 50
    assert on_disk["rows_ok"] == statuses["ok"] == 42
    assert on_disk["rows_error"] == statuses["error"] == 8
    assert on_disk["rows_pending"] == 0 and on_disk["state"] == "complete"
    errors = Counter(r["error_type"] for r in rows if r["status"] == "error")
    assert on_disk["errors_by_type"] == dict(errors) == {"unprocessable": 8}
    assert on_disk["total_tokens"] == sum(r["total_tokens"] or 0 for r in rows) == 42 * 5
    assert on_disk["requests_sent"] == sum(r["attempts"] for r in rows) == 50 + 7
    assert on_disk["retries"] == 7
    assert on_disk["finish_reasons"] == {"stop": 42, "error": 8}
    assert on_disk["exit_code"] == 0
    assert on_disk == json.loads(summary.to_json())


@pytest.mark.parametrize(
    ("max_failure_rate", "exit_code"),
    [(0.0, 3), (0.1, 3), (0.19, 3), (0.2, 0), (1.0, 0)],
)
def test_max_failure_rate_sets_exit_code_3(
    tmp_path: Path, max_failure_rate: float, exit_code: int
) -> None:
    def fail(prompt: str, n: int) -> Exception | None:
        return RowFailed("bad_request", f"bad {prompt}") if _index(prompt) in (3, 7) else None

    job = _job(tmp_path, 10, max_failure_rate=max_failure_rate)
    summary = _run(job, FakeClient(fail))  # returns: a failed row never raises
    assert summary.rows_error == 2
    assert summary.exit_code == exit_code
    assert json.loads(job.summary_path.read_text())["exit_code"] == exit_code


def test_all_rows_ok_exits_0_even_with_no_failure_allowed(tmp_path: Path) -> None:
    summary = _run(_job(tmp_path, 10), FakeClient())
    assert summary.exit_code == 0 and summary.rows_error == 0


def test_an_unforeseen_exception_fails_its_row_not_the_run(tmp_path: Path) -> None:
    def fail(prompt: str, n: int) -> Exception | None:
        return KeyError("surprise") if prompt == "p3" else None

    client = FakeClient(fail)
    job = _job(tmp_path, 10, max_failure_rate=0.5)
    summary = _run(job, client)
    rows = _rows(job)
    assert [r["status"] for r in rows].count("ok") == 9
    bad = rows[3]
    assert bad["status"] == "error" and bad["error_type"] == "internal_error"
    assert "KeyError" in bad["error"]
    assert summary.exit_code == 0 and summary.rows_error == 1


def _fail_journal_from(
    monkeypatch: pytest.MonkeyPatch, commit: int, message: str
) -> Callable[..., None]:
    """Make the journal's commits fail from the ``commit``-th on; returns the real write."""
    real_write = Checkpoint.write
    commits = 0

    def failing_write(self: Checkpoint, *args: Any, **kwargs: Any) -> None:
        nonlocal commits
        commits += 1
        if commits >= commit:
            raise sqlite3.OperationalError(message)
        real_write(self, *args, **kwargs)

    monkeypatch.setattr(Checkpoint, "write", failing_write)
    return real_write


def test_a_journal_that_cannot_be_written_stops_the_run_and_a_rerun_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = _fail_journal_from(monkeypatch, 6, "database or disk is full")
    client = FakeClient()
    job = _job(tmp_path, 200, limits=Limits(concurrency=4))
    with pytest.raises(CheckpointError, match="disk is full") as info:
        _run(job, client)  # within RUN_TIMEOUT_S: no hang
    assert info.value.exit_code == 5
    sent = len(client.calls)
    assert sent < 200  # stopped, not run to the end with nothing recorded
    monkeypatch.setattr(Checkpoint, "write", real_write)
    healthy = FakeClient()
    summary = _run(job, healthy)
    assert summary.rows_ok == 200
    assert len(healthy.calls) == 200 - summary.rows_resumed
    assert [r["completion"] for r in _rows(job)] == [f"answer to p{i}" for i in range(200)]


def test_a_token_cap_waits_for_requests_in_flight_before_it_stops_the_run(tmp_path: Path) -> None:
    # Each request reserves its worst case (about 9 tokens) but uses 5. With 8 in flight
    # the reservations alone near the cap; the run must wait for them to settle, not stop.
    job = _job(tmp_path, 20, budget=Budget(max_tokens_total=110))
    summary = _run(job, FakeClient())
    assert summary.rows_ok == 20 and summary.exit_code == 0
    assert summary.total_tokens == 100
    # A cap the rows cannot fit in still stops the run, within the cap.
    (tmp_path / "tight").mkdir()
    tight = _job(tmp_path / "tight", 20, budget=Budget(max_tokens_total=50))
    with pytest.raises(RunStopped, match="token cap") as info:
        _run(tight, FakeClient())
    assert info.value.summary is not None and info.value.summary.total_tokens <= 50


def test_retry_failed_resends_a_timed_out_row_with_the_key_the_server_may_hold(
    tmp_path: Path,
) -> None:
    def fail(prompt: str, n: int) -> Exception | None:
        return Retryable("timeout", "no answer", definite=False) if prompt == "p2" else None

    first = FakeClient(fail)
    job = _job(tmp_path, 6, retry=RetryPolicy(max_attempts=2, backoff_initial_s=0, backoff_max_s=0))
    summary = _run(job, first)
    assert summary.rows_error == 1 and _rows(job)[2]["error_type"] == "timeout"
    assert len(set(first.keys_of("p2"))) == 1  # unknown outcomes keep the key
    # Its second send went with the key of a send that may have been billed.
    assert summary.rows_possibly_charged_twice == 1
    # A plain rerun sends nothing and counts nothing more as charged twice.
    idle = FakeClient()
    assert _run(job, idle).rows_possibly_charged_twice == 1 and idle.calls == []
    retry = FakeClient()
    summary = _run(dataclasses.replace(job, retry_failed=True), retry)
    assert retry.prompts() == ["p2"]
    assert retry.keys_of("p2") == first.keys_of("p2")[:1]  # the key the server may hold
    # The same row, counted once over every run.
    assert summary.rows_possibly_charged_twice == 1 and summary.rows_error == 0


@pytest.mark.parametrize("failing_commit", [1, 2, 3, 5])
@pytest.mark.parametrize("concurrency", [1, 2, 4])
def test_a_journal_failure_with_a_full_pool_and_instant_answers_never_hangs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_commit: int, concurrency: int
) -> None:
    _fail_journal_from(monkeypatch, failing_commit, "disk I/O error")
    job = _job(tmp_path, 50, limits=Limits(concurrency=concurrency))
    with pytest.raises(CheckpointError, match="disk I/O error"):
        _run(job, FakeClient(delay_ms=lambda i: 0))  # RUN_TIMEOUT_S turns a hang into a failure


def test_a_key_in_doubt_stays_in_doubt_after_a_later_answer(tmp_path: Path) -> None:
    """p0's first send times out (it may have been billed); its resend is answered 500;
    the run stops during the backoff. The row must stay marked: the next run counts it as
    possibly charged twice."""
    stopped = asyncio.Event()

    class Client(FakeClient):
        async def complete(self, request: Request, idempotency_key: str) -> Completion:
            prompt = request.messages[-1]["content"]
            self.calls.append((prompt, idempotency_key))
            self.attempts[prompt] += 1
            if prompt == "p0" and self.attempts[prompt] == 1:
                raise Retryable("timeout", "no answer", definite=False)
            if prompt == "p0":
                stopped.set()  # answered: wait 5 s, during which p1's 403 stops the run
                raise Retryable("server_error", "HTTP 500", status=500, retry_after_s=5.0)
            if prompt == "p1":
                await stopped.wait()
                raise StopRun("permission_denied", "HTTP 403: no credits", status=403)
            return await super().complete(request, idempotency_key)

    broke = Client()
    retry = RetryPolicy(backoff_initial_s=0.01, backoff_max_s=0.01)
    job = _job(tmp_path, 4, limits=Limits(concurrency=2), retry=retry)
    with pytest.raises(RunStopped):
        _run(job, broke)
    assert broke.prompts().count("p0") == 2
    healthy = FakeClient()
    summary = _run(job, healthy)
    assert summary.rows_possibly_charged_twice == 1
    assert sorted(healthy.prompts()) == ["p0", "p1"]  # p2 and p3 were answered
    assert healthy.keys_of("p0") == broke.keys_of("p0")[:1]  # the key of the send in doubt


def test_heartbeats_come_while_answers_do_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that does not answer for a while still gets progress events on time,
    saying how long the oldest send has waited."""
    import batchrun.runner as runner_module

    monkeypatch.setattr(runner_module, "TICK_S", 0.05)
    ticks: list[float | None] = []

    def on_event(event: Event) -> None:
        if event.kind == "tick":
            ticks.append(event.progress.oldest_send_s())

    job = _job(tmp_path, 2)
    _run(job, FakeClient(delay_ms=lambda i: 400), on_event=on_event)
    assert len(ticks) >= 3
    waited = [t for t in ticks if t is not None]
    assert waited and max(waited) >= 0.1


def test_the_plain_progress_line_shows_the_oldest_send(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from batchrun.events import Progress
    from batchrun.progress import ProgressView
    from batchrun.send import Limiter

    stream = io.StringIO()
    view = ProgressView(stream=stream)
    p = Progress(total=10, limiter=Limiter(Limits(concurrency=4)))
    p.sending_since[3] = time.monotonic() - 42
    view(Event("tick", p))
    line = stream.getvalue()
    assert "0/10 rows" in line and "oldest=42s" in line


def test_a_full_disk_at_the_final_write_keeps_every_row_and_never_suggests_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import batchrun.finalize

    def full(*args: Any, **kwargs: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    job = _job(tmp_path, 6)
    with monkeypatch.context() as m:
        m.setattr(batchrun.finalize, "write_atomically", full)
        with pytest.raises(CheckpointError) as info:
            _run(job, FakeClient())
    message = str(info.value)
    assert "No space left" in message and "rerun the same command" in message
    assert "--restart" not in message
    idle = FakeClient()
    assert _run(job, idle).rows_ok == 6 and idle.calls == []  # nothing paid twice


def test_a_full_disk_when_the_journal_opens_is_not_called_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import batchrun.checkpoint

    job = _job(tmp_path, 3)
    _run(job, FakeClient())

    def full(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(batchrun.checkpoint.sqlite3, "connect", full)
    with pytest.raises(CheckpointError) as info:
        _run(job, FakeClient())
    message = str(info.value)
    assert "cannot be opened for writing" in message and "use --restart" not in message


def test_an_input_edited_during_the_run_is_refused_at_the_final_write(tmp_path: Path) -> None:
    job = _job(tmp_path, 6)

    class Editing(FakeClient):
        async def complete(self, request: Request, idempotency_key: str) -> Completion:
            if not self.calls:  # one prompt edited while the run sends
                text = job.input_path.read_text(encoding="utf-8").replace('"p5"', '"P5"')
                job.input_path.write_text(text, encoding="utf-8")
            return await super().complete(request, idempotency_key)

    with pytest.raises(CheckpointError, match="changed"):
        _run(job, Editing())
    assert not job.output_path.exists()  # no output pairs new inputs with old answers


def test_an_input_that_shrinks_during_the_run_is_refused(tmp_path: Path) -> None:
    job = _job(tmp_path, 6)

    class Shrinking(FakeClient):
        async def complete(self, request: Request, idempotency_key: str) -> Completion:
            if not self.calls:
                lines = job.input_path.read_text(encoding="utf-8").splitlines(keepends=True)
                job.input_path.write_text("".join(lines[:3]), encoding="utf-8")
            return await super().complete(request, idempotency_key)

    with pytest.raises(CheckpointError, match="changed"):
        _run(job, Shrinking())
    assert not job.output_path.exists()


@pytest.mark.parametrize("how", ["deleted", "emptied"])
def test_a_lost_journal_beside_an_output_is_refused_without_restart(
    tmp_path: Path, how: str
) -> None:
    job = _job(tmp_path, 4)
    _run(job, FakeClient())
    journal = job.checkpoint_dir / "journal.sqlite"
    for extra in ("-wal", "-shm"):
        Path(str(journal) + extra).unlink(missing_ok=True)
    if how == "deleted":
        journal.unlink()
    else:
        journal.write_bytes(b"")
    idle = FakeClient()
    with pytest.raises(CheckpointError, match="--restart") as info:
        _run(job, idle)
    assert ("missing" if how == "deleted" else "empty") in str(info.value)
    assert idle.calls == []
    again = FakeClient()
    assert _run(dataclasses.replace(job, restart=True), again).rows_ok == 4
    assert len(again.calls) == 4
