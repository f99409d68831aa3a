"""The pool with a fake client: in-flight bound, retries without sleeping, keys, stops."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from batchrun.errors import CheckpointError, RunStopped
from batchrun.job import Job, Limits, RequestParams, RetryPolicy
from batchrun.records import Completion
from batchrun.retrying import Retryable, RowFailed, StopRun
from batchrun.runner import run_job
from tests.conftest import write_jsonl

NO_WAIT = RetryPolicy(backoff_initial_s=0, backoff_max_s=0, max_attempts=4)


class FakeClient:
    """Answers after a short await; records in-flight peak, keys and calls."""

    def __init__(
        self, fail: Callable[[dict[str, Any], int], Exception | None] | None = None
    ) -> None:
        self.in_flight = 0
        self.peak = 0
        self.calls: list[tuple[str, str]] = []
        self.fail = fail
        self.attempts: dict[str, int] = {}

    async def complete(self, body: dict[str, Any], idempotency_key: str) -> Completion:
        prompt = body["messages"][-1]["content"]
        self.calls.append((prompt, idempotency_key))
        n = self.attempts[prompt] = self.attempts.get(prompt, 0) + 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(0.001)
            if self.fail is not None and (exc := self.fail(body, n)) is not None:
                raise exc
            return Completion(
                f"answer to {prompt}", "stop", None, 3, 2, 5, body["model"], f"id-{prompt}"
            )
        finally:
            self.in_flight -= 1

    def factory(self) -> Any:
        @contextlib.asynccontextmanager
        async def make(job: Job, key: str) -> AsyncIterator[FakeClient]:
            yield self

        return make


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIMLAPI_KEY", "k")


def _job(tmp_path: Path, n: int, **kw: Any) -> Job:
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "prompt": f"p{i}"} for i in range(n)])
    kw.setdefault("limits", Limits(concurrency=8))
    kw.setdefault("retry", NO_WAIT)
    return Job(input_path=src, output_path=tmp_path / "out.parquet", **kw)


def test_in_flight_never_exceeds_and_reaches_the_concurrency(tmp_path: Path) -> None:
    client = FakeClient()
    summary = asyncio.run(run_job(_job(tmp_path, 200), client_factory=client.factory()))
    assert client.peak == 8
    assert summary.rows_ok == 200
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("id").to_pylist() == list(range(200))
    assert table.column("completion").to_pylist() == [f"answer to p{i}" for i in range(200)]


def test_retries_keep_the_key_after_unknown_outcomes_and_change_it_after_answers(
    tmp_path: Path,
) -> None:
    def fail(body: dict[str, Any], n: int) -> Exception | None:
        prompt = body["messages"][-1]["content"]
        if prompt == "p0" and n <= 2:
            return Retryable("timeout", "slow", definite=False)
        if prompt == "p1" and n <= 2:
            return Retryable("server_error", "HTTP 500", status=500)
        return None

    client = FakeClient(fail)
    asyncio.run(run_job(_job(tmp_path, 3), client_factory=client.factory()))
    keys = {p: [k for q, k in client.calls if q == p] for p in ("p0", "p1")}
    assert len(keys["p0"]) == 3 and len(set(keys["p0"])) == 1
    assert len(keys["p1"]) == 3 and len(set(keys["p1"])) == 3
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("attempts").to_pylist() == [3, 3, 1]
    assert set(table.column("status").to_pylist()) == {"ok"}


def test_row_failures_are_rows_and_exhausted_retries_say_so(tmp_path: Path) -> None:
    def fail(body: dict[str, Any], n: int) -> Exception | None:
        prompt = body["messages"][-1]["content"]
        if prompt == "p1":
            return RowFailed("bad_request", "HTTP 400: bad", status=400)
        if prompt == "p2":
            return Retryable("server_error", "HTTP 500: boom", status=500)
        return None

    client = FakeClient(fail)
    summary = asyncio.run(
        run_job(_job(tmp_path, 4, max_failure_rate=1.0), client_factory=client.factory())
    )
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok", "error", "error", "ok"]
    assert rows[1]["error_type"] == "bad_request" and rows[1]["attempts"] == 1
    assert rows[2]["error"] == "HTTP 500: boom (after 4 attempts)" and rows[2]["attempts"] == 4
    assert rows[1]["finish_reason_normalized"] == "error" and rows[1]["completion"] is None
    assert summary.rows_error == 2 and summary.exit_code == 0


def test_403_stops_with_exit_4_and_a_rerun_resumes(tmp_path: Path) -> None:
    broke = FakeClient(
        lambda body, n: StopRun("permission_denied", "HTTP 403: no credits", status=403)
    )
    job = _job(tmp_path, 100)
    with pytest.raises(RunStopped) as info:
        asyncio.run(run_job(job, client_factory=broke.factory()))
    assert info.value.exit_code == 4
    assert len(broke.calls) <= 8
    assert info.value.summary.rows_ok == 0
    healthy = FakeClient()
    summary = asyncio.run(run_job(job, client_factory=healthy.factory()))
    assert summary.rows_ok == 100 and len(healthy.calls) == 100
    assert summary.rows_possibly_charged_twice == 0  # 403s were answers: nothing in doubt


def test_resume_sends_only_the_rest_and_a_finished_output_sends_nothing(tmp_path: Path) -> None:
    client = FakeClient()
    asyncio.run(run_job(_job(tmp_path, 120, limit=50), client_factory=client.factory()))
    assert len(client.calls) == 50
    asyncio.run(run_job(_job(tmp_path, 120), client_factory=client.factory()))
    assert len(client.calls) == 120
    assert sorted(p for p, _ in client.calls) == sorted(f"p{i}" for i in range(120))
    asyncio.run(run_job(_job(tmp_path, 120), client_factory=client.factory()))
    assert len(client.calls) == 120


def test_retry_failed_resends_only_failed_rows_of_the_given_types(tmp_path: Path) -> None:
    def fail(body: dict[str, Any], n: int) -> Exception | None:
        i = int(body["messages"][-1]["content"][1:])
        if i % 10 == 0:
            return RowFailed("bad_request", "HTTP 400", status=400)
        if i % 10 == 1:
            return Retryable("timeout", "slow", definite=False)
        return None

    first = FakeClient(fail)
    asyncio.run(run_job(_job(tmp_path, 50, max_failure_rate=1.0), client_factory=first.factory()))
    second = FakeClient()
    job = _job(tmp_path, 50, retry_failed=True, only_error_types=("timeout",))
    asyncio.run(run_job(job, client_factory=second.factory()))
    assert sorted(p for p, _ in second.calls) == sorted(f"p{i}" for i in range(50) if i % 10 == 1)
    statuses = pq.read_table(tmp_path / "out.parquet").column("status").to_pylist()
    assert statuses.count("error") == 5  # the 400s were not retried


def test_changed_job_is_refused_before_any_call(tmp_path: Path) -> None:
    client = FakeClient()
    asyncio.run(run_job(_job(tmp_path, 5), client_factory=client.factory()))
    other = _job(tmp_path, 5, params=RequestParams(model="another/model"))
    with pytest.raises(CheckpointError, match=r"params\.model"):
        asyncio.run(run_job(other, client_factory=client.factory()))
    assert len(client.calls) == 5
