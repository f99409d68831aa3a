"""The run: checkpoint, validation pass, the worker pool, finalize. ``run_job`` is the library
entry point; the CLI is a thin layer over it.

The pool: the producer walks the input, skips recorded rows, takes an in-flight slot from
the limiter and only then creates the task, inside one TaskGroup. Workers return results to
the single journal writer. A failed row is a row, never an exception out of the pool.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from batchrun.budget import BudgetGate, recorded_cost
from batchrun.builder import RequestBuilder
from batchrun.checkpoint import Checkpoint, InputSignature
from batchrun.client import ApiClient
from batchrun.errors import (
    BatchrunError,
    CheckpointError,
    Interrupted,
    InvalidInput,
    RunStopped,
    UsageError,
)
from batchrun.finalize import write_output
from batchrun.grading import accuracy
from batchrun.io.readers import iter_batches
from batchrun.job import Budget, Job
from batchrun.limits import Limiter, Stopped
from batchrun.pricing import PriceTable
from batchrun.records import OK, Completion, Request, RowResult
from batchrun.retrying import (
    RequestFailed,
    Retryable,
    RowFailed,
    StopRun,
    WaitRetryAfterOrBackoff,
)
from batchrun.scan import Scan, scan_input
from batchrun.sink import JournalFailed, JournalWriter
from batchrun.summary import Summary, latency_percentiles

#: Seconds in-flight requests get to finish after the first SIGINT/SIGTERM.
GRACE_S = 5.0
BUDGET_HINT = "raise --max-cost / --max-tokens-total and rerun the same command to continue"


@dataclass
class Progress:
    """Live counters of a run, shared with whoever draws progress."""

    total: int = 0
    already_done: int = 0
    to_send: int = 0
    ok: int = 0
    error: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    limiter: Limiter | None = None

    @property
    def done(self) -> int:
        return self.ok + self.error


@dataclass
class Event:
    """Something the presentation layer may show. ``kind``: start, row, notice, finalizing."""

    kind: str
    progress: Progress
    message: str | None = None
    result: RowResult | None = None


EventSink = Callable[[Event], None]


class CompletionClient(Protocol):
    """What the pool needs of a client: one attempt per call (see :class:`ApiClient`)."""

    async def complete(self, body: dict[str, Any], idempotency_key: str) -> Completion: ...


#: Builds the run's client from (job, api_key); an async context manager.
ClientFactory = Callable[[Job, str], AbstractAsyncContextManager[CompletionClient]]


def default_client(job: Job, api_key: str) -> AbstractAsyncContextManager[CompletionClient]:
    return ApiClient(
        job.base_url,
        api_key,
        concurrency=job.limits.concurrency,
        timeout_s=job.retry.timeout_s,
        read_timeout_s=job.retry.read_timeout_s if job.params.stream else None,
        cost_header=job.cost_header,
    )


def _ignore(_: Event) -> None:
    pass


def get_api_key(job: Job) -> str:
    key = os.environ.get(job.api_key_env, "").strip()
    if not key:
        raise UsageError(
            f"environment variable {job.api_key_env} is not set",
            hint=f"export {job.api_key_env}=<your key> (the key is never a flag), or name another with --api-key-env",
        )
    return key


def _fingerprint_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += [f"{key}.{k}" for k in _fingerprint_diff(a, b)]
        elif a != b:
            changed.append(key)
    return changed


class _Run:
    def __init__(
        self, job: Job, on_event: EventSink, api_key: str, client_factory: ClientFactory
    ) -> None:
        self.job = job
        self.client_factory = client_factory
        self.emit = on_event
        self.api_key = api_key
        self.progress = Progress()
        self.limiter = Limiter(
            job.limits,
            pause_initial_s=max(0.5, job.retry.backoff_initial_s),
            pause_max_s=job.retry.backoff_max_s,
        )
        self.progress.limiter = self.limiter
        self.ckpt = Checkpoint(job.checkpoint_dir)
        self.stop_error: BatchrunError | None = None
        self.stopping = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.inflight_keys: dict[int, str] = {}
        self.same_error: tuple[str, int] = ("", 0)
        self.possibly_charged_twice = 0
        self.signals = 0
        #: Reported whatever stopped the run first: rows after it were not recorded.
        self.journal_error: CheckpointError | None = None
        self.prices = PriceTable.load(job.prices_path) if job.prices_path else PriceTable.default()
        self.gate = BudgetGate(
            Budget(), None, model=job.params.model, spent_usd=0.0, spent_tokens=0
        )
        self.wait = WaitRetryAfterOrBackoff(job.retry)
        # Attempts after the first: the first one runs outside tenacity (see attempts()).
        self.retry_rest = AsyncRetrying(
            stop=stop_after_attempt(max(1, job.retry.max_attempts - 1)),
            retry=retry_if_exception_type(Retryable),
            wait=WaitRetryAfterOrBackoff(job.retry, attempt_offset=1),
            reraise=True,
        )

    # --- stopping ---------------------------------------------------------------------------

    def stop(self, error: BatchrunError) -> None:
        """Stop starting requests; the first reason given is the one reported."""
        if self.stop_error is None:
            self.stop_error = error
            self.emit(Event("notice", self.progress, message=f"stopping: {error.message}"))
        self.stopping.set()
        # Nothing waits on: not the producer for a slot or for the budget, not a row for
        # a slot, a pause or a rate limit.
        self.limiter.stop()
        self.gate.settled.set()

    def on_signal(self, signum: int) -> None:
        self.signals += 1
        name = signal.Signals(signum).name
        if self.signals == 1:
            self.stop(
                Interrupted(
                    f"interrupted by {name}",
                    signal_number=signum,
                    hint="every finished row is recorded; rerunning without --restart resumes",
                )
            )
            asyncio.get_running_loop().call_later(GRACE_S, self.cancel_in_flight)
        else:
            self.cancel_in_flight()

    def journal_failed(self, exc: BaseException) -> None:
        """Nothing more can be recorded: stop at once rather than pay for rows that would
        be lost. What was committed stays; a rerun resumes from it."""
        self.journal_error = CheckpointError(
            f"the checkpoint journal {self.ckpt.path} cannot be written ({exc})",
            hint="free disk space or fix the folder's permissions, then rerun the same command to resume",
        )
        self.stop(self.journal_error)
        self.cancel_in_flight()

    def cancel_in_flight(self) -> None:
        for task in self.tasks:
            task.cancel()

    # --- one row ----------------------------------------------------------------------------

    async def send_row(
        self, request: Request, client: CompletionClient, writer: JournalWriter
    ) -> None:
        row = _RowSend(self, request, client, writer)
        result: RowResult | None = None
        try:
            result = await self.attempts(row)
        except StopRun as exc:
            row.leave()
            self.stop(
                RunStopped(f"the API refused the request: {exc.message}", hint=self.resume_hint())
            )
            return
        except _NotSent:
            row.leave()
            return
        except JournalFailed:
            return  # not sent; the run is stopping (see journal_failed)
        except asyncio.CancelledError:  # at the end of the grace, or a second signal
            row.leave()
            raise
        except Exception as exc:
            # Something no one foresaw (a bug, most likely): the row fails, the run goes on
            # (and stops if every row fails so).
            message = f"unexpected {type(exc).__name__}: {exc}"[:300]
            result = RowResult.failure(
                request.position,
                error_type="internal_error",
                error=message,
                attempts=row.attempts,
                latency_ms=row.latency_ms,
                finished_at=time.time(),
            )
            self.count_same_error("internal_error", message)
        finally:
            if row.holds_slot:
                self.limiter.release_slot()
            if self.gate.active:
                max_tokens = self.job.params.max_tokens
                # What was (or may have been) paid for: an answer, even one that could not be
                # used, or a send whose outcome is unknown.
                answered = result is not None and (
                    result.status == OK
                    or result.error_type in ("invalid_response", "internal_error")
                    or row.maybe_billed
                )
                self.gate.settle(
                    request.estimated_tokens - max_tokens,
                    max_tokens,
                    answered,
                    result.prompt_tokens if result else None,
                    result.completion_tokens if result else None,
                )
        writer.record(result, keep_key=result.status != OK and row.maybe_billed)
        p = self.progress
        if result.status == OK:
            p.ok += 1
            p.prompt_tokens += result.prompt_tokens or 0
            p.completion_tokens += result.completion_tokens or 0
        else:
            p.error += 1
        self.emit(Event("row", p, result=result))

    async def attempts(self, row: _RowSend) -> RowResult:
        """Send one row until it succeeds, fails for good, or its attempts run out."""
        request = row.request
        try:
            try:
                completion = await row.once()
            except Retryable as first:
                # Most rows succeed at once; tenacity takes over only for those that do not,
                # which keeps its per-attempt machinery off the hot path.
                if self.job.retry.max_attempts <= 1:
                    raise
                await row.sleep(self.wait.seconds(first, 1))
                completion = await self.retry_rest.copy(sleep=row.sleep)(row.once)
        except (Retryable, RowFailed) as exc:
            n = row.attempts
            message = exc.message if n < 2 else f"{exc.message} (after {n} attempts)"
            self.count_same_error(exc.error_type, exc.message)
            return RowResult.failure(
                request.position,
                error_type=exc.error_type,
                error=message,
                attempts=n,
                latency_ms=row.latency_ms,
                finished_at=time.time(),
            )
        self.limiter.after_send(request.estimated_tokens, completion.total_tokens)
        self.limiter.on_success()
        self.same_error = ("", 0)
        return RowResult.success(
            request.position,
            completion,
            attempts=row.attempts,
            latency_ms=row.latency_ms or 0.0,
            finished_at=time.time(),
        )

    def on_failure(self, exc: RequestFailed, attempt: int) -> None:
        if exc.status == 429:
            self.progress.rate_limited += 1
            self.limiter.on_rate_limited(exc.retry_after_s)
        if exc.retry_after_s is not None and exc.retry_after_s > self.job.retry.max_retry_after_s:
            raise StopRun(
                exc.error_type,
                f"the server asked to wait {exc.retry_after_s:.0f} s (more than --max-retry-after "
                f"{self.job.retry.max_retry_after_s:g} s): {exc.message}",
                status=exc.status,
            )

    def count_same_error(self, error_type: str, message: str) -> None:
        """Stop the run when row after row fails for good with the very same error (an
        unknown model, a server that answers 500 to everything): sending the rest would
        only fail them one by one."""
        sig = f"{error_type}: {message}"
        count = self.same_error[1] + 1 if self.same_error[0] == sig else 1
        self.same_error = (sig, count)
        if count >= self.job.retry.same_error_stop_after:
            self.stop(
                RunStopped(
                    f"{count} rows in a row failed with the same error ({message})",
                    hint=self.resume_hint(retry_failed=True),
                )
            )

    def resume_hint(self, retry_failed: bool = False) -> str:
        extra = " --retry-failed" if retry_failed else ""
        return f"fix the cause, then rerun the same command{extra} to resume"

    # --- the pool ---------------------------------------------------------------------------

    async def pool(self, scan: Scan, total: int) -> None:
        job = self.job
        max_tokens = job.params.max_tokens
        bits = self.ckpt.done_bitmap(total)
        builder = RequestBuilder(job, str(job.input_path))
        builder.mode, builder.column, builder.id_column = scan.mode, scan.column, scan.id_column
        writer = JournalWriter(self.ckpt, on_failure=self.journal_failed)
        writer.start()
        try:
            async with self.client_factory(job, self.api_key) as client, asyncio.TaskGroup() as tg:
                for batch in iter_batches(job.input_path):
                    if self.stopping.is_set() or batch.start >= total:
                        break
                    for offset, row in enumerate(batch.rows):
                        pos = batch.start + offset
                        if pos >= total or self.stopping.is_set():
                            break
                        if bits[pos >> 3] & (1 << (pos & 7)):
                            continue
                        assert row is not None  # the scan proved every row valid
                        request = builder.build(row, pos, batch.where(offset))
                        if self.gate.active:
                            why = await self.admit(request.estimated_tokens - max_tokens)
                            if why is not None:
                                self.stop(RunStopped(f"budget: {why}", hint=BUDGET_HINT))
                                break
                        try:
                            await self.limiter.slot()
                        except Stopped:
                            break
                        if self.stopping.is_set():
                            self.limiter.release_slot()
                            break
                        task = tg.create_task(self.send_row(request, client, writer))
                        self.tasks.add(task)
                        task.add_done_callback(self.tasks.discard)
                    await asyncio.sleep(0)  # let workers run between input batches
        finally:
            await writer.close()

    async def admit(self, prompt_estimate: int) -> str | None:
        """Reserve a request's worst case under the budget. One that does not fit beside
        the requests in flight waits for them to settle at what they really used; the cap
        stops the run only when it does not fit even with nothing in flight."""
        gate, max_tokens = self.gate, self.job.params.max_tokens
        while True:
            gate.settled.clear()
            why = gate.admit(prompt_estimate, max_tokens)
            if why is None or gate.in_flight == 0 or self.stopping.is_set():
                return why
            await gate.settled.wait()

    # --- the whole run ----------------------------------------------------------------------

    def open_checkpoint(self) -> Scan:
        job, ckpt = self.job, self.ckpt
        ckpt.lock()
        if job.restart:
            ckpt.discard()
        existed = ckpt.open()
        fingerprint = job.fingerprint_fields()
        stored = ckpt.get_meta("fingerprint") if existed else None
        if stored is None:
            signature = InputSignature.of(job.input_path)
            scan = self.validate()
            ckpt.set_meta(
                fingerprint=fingerprint,
                input={
                    "size": signature.size,
                    "mtime_ns": signature.mtime_ns,
                    "digest": signature.digest,
                },
                scan=scan.to_meta(),
            )
            return scan
        changed = _fingerprint_diff(stored, fingerprint)
        if changed:
            raise CheckpointError(
                f"the job changed since the checkpoint in {ckpt.dir} was made ({', '.join(changed)} differ)",
                hint="use --restart to start over (every row is sent again) or another --output",
            )
        known = InputSignature(**ckpt.get_meta("input"))
        current = InputSignature.of(job.input_path, known=known)
        if not current.same_content(known):
            raise CheckpointError(
                f"the input {job.input_path} changed since the checkpoint in {ckpt.dir} was made",
                hint="use --restart to start over (every row is sent again) or another --output",
            )
        if current != known:
            ckpt.set_meta(
                input={"size": current.size, "mtime_ns": current.mtime_ns, "digest": current.digest}
            )
        return Scan.from_meta(ckpt.get_meta("scan"))

    def validate(self) -> Scan:
        scan = scan_input(self.job)
        if scan.errors:
            raise InvalidInput(scan.errors, scan.invalid_rows)
        return scan

    def summary(self, total: int, started: float, resumed: int, state: str) -> Summary:
        agg = self.ckpt.aggregate(total)
        p = self.progress
        wall = time.monotonic() - started
        sent_rows = p.done
        summary = Summary(
            output=str(self.job.output_path),
            state=state,
            rows_total=total,
            rows_ok=agg["ok"],
            rows_error=agg["error"],
            rows_pending=total - agg["rows"],
            rows_resumed=resumed,
            requests_sent=p.requests,
            retries=p.retries,
            rate_limited=p.rate_limited,
            rows_possibly_charged_twice=self.possibly_charged_twice,
            prompt_tokens=agg["prompt_tokens"],
            completion_tokens=agg["completion_tokens"],
            total_tokens=agg["total_tokens"],
            wall_time_s=round(wall, 3),
            rows_per_s=round(sent_rows / wall, 2) if wall > 0 else 0.0,
            latency_ms=latency_percentiles(self.job.output_path)
            if self.job.output_path.exists()
            else {},
            errors_by_type=agg["errors_by_type"],
            finish_reasons=agg["finish_reasons"],
            estimated_cost_usd=_round(
                recorded_cost(self.ckpt, self.prices, self.job.params.model, total)
            ),
            reported_cost_usd=_round(agg["reported_cost_usd"]),
            rows_cost_reported=agg["rows_cost_reported"],
        )
        grading = self.job.grading
        if grading is not None and self.job.output_path.exists():
            summary.graded_rows, summary.accuracy, summary.accuracy_by_group = accuracy(
                self.job.output_path, grading.group_by
            )
        return summary

    async def run(self) -> Summary:
        job, ckpt, p = self.job, self.ckpt, self.progress
        started = time.monotonic()
        try:
            scan = self.open_checkpoint()
            total = min(scan.total_rows, job.limit) if job.limit else scan.total_rows
            if job.retry_failed:
                n = ckpt.forget_failed(job.only_error_types)
                self.emit(Event("notice", p, message=f"retrying {n:,} failed rows"))
            resumed = ckpt.done_count(below=total)
            self.inflight_keys = ckpt.inflight_keys()
            self.possibly_charged_twice = ckpt.count_possibly_charged_twice(below=total)
            p.total, p.already_done, p.to_send = total, resumed, total - resumed
            self.check_grading(scan)
            agg = ckpt.aggregate(total)
            self.gate = BudgetGate(
                job.budget,
                self.prices.get(job.params.model),
                model=job.params.model,
                spent_usd=recorded_cost(ckpt, self.prices, job.params.model, total) or 0.0,
                spent_tokens=agg["total_tokens"],
            )
            finished = {"rows": total, "grading": repr(job.grading)}
            if (
                resumed == total
                and ckpt.get_meta("finalized") == finished
                and job.output_path.exists()
            ):
                self.emit(Event("notice", p, message="already complete: nothing to send"))
                return self.finish(total, started, resumed)
            self.emit(Event("start", p))
            if resumed < total:
                await self.pool(scan, total)
            done = ckpt.done_count(below=total)
            self.emit(Event("finalizing", p))
            if self.journal_error is not None:
                raise self.journal_error  # no output can be made from the journal now
            if self.stop_error is not None and self.signals > 1:
                raise self.stop_error  # second signal: leave at once, the journal has every row
            write_output(job, ckpt, scan, total, partial=done < total)
            if done == total:
                ckpt.set_meta(finalized=finished)
            return self.finish(total, started, resumed)
        finally:
            ckpt.close()

    def check_grading(self, scan: Scan) -> None:
        grading = self.job.grading
        if grading is None:
            return
        names = scan.schema.names
        for what, col in (
            ("expected-answer", grading.expected_column),
            ("group-by", grading.group_by),
        ):
            if col is not None and col not in names:
                raise UsageError(
                    f"{self.job.input_path}: {what} column {col!r} not found; columns are: {', '.join(names)}"
                )

    def finish(self, total: int, started: float, resumed: int) -> Summary:
        done = self.ckpt.done_count(below=total)
        summary = self.summary(total, started, resumed, "complete" if done == total else "partial")
        error = self.stop_error
        if error is not None:
            summary.stop_reason = str(error)
            summary.exit_code = error.exit_code
        elif summary.rows_error > self.job.max_failure_rate * total:
            summary.exit_code = 3
        summary.write(self.job.summary_path)
        if error is not None:
            error.summary = summary
            raise error
        return summary


class _RowSend:
    """The attempts of one row: its Idempotency-Key, attempt count and last latency."""

    __slots__ = (
        "attempts",
        "client",
        "doubt",
        "fresh_key",
        "holds_slot",
        "in_send",
        "key",
        "last",
        "latency_ms",
        "request",
        "run",
        "writer",
    )

    def __init__(
        self, run: _Run, request: Request, client: CompletionClient, writer: JournalWriter
    ) -> None:
        self.run = run
        self.request = request
        self.client = client
        self.writer = writer
        # A row that was in flight when an earlier run died keeps the key it was sent with.
        key = run.inflight_keys.pop(request.position, None)
        self.fresh_key = key is None
        self.key = key or _new_key()
        #: Some send of this row, here or in a run that died, has an outcome unknown to us
        #: (the server may have billed it): sticky, whatever later sends are answered.
        self.doubt = key is not None
        self.in_send = False
        self.attempts = 0
        self.latency_ms: float | None = None
        self.last: RequestFailed | None = None
        #: The producer took an in-flight slot for this row before creating its task.
        self.holds_slot = True

    async def sleep(self, seconds: float) -> None:
        """Wait before a retry without holding an in-flight slot: a row waiting out its
        backoff is not in flight, so other rows may use the slot meanwhile. A stop ends
        the wait at once."""
        limiter = self.run.limiter
        limiter.release_slot()
        self.holds_slot = False
        try:
            await limiter.sleep(seconds)
            await limiter.slot()
        except Stopped:
            raise _NotSent from None
        self.holds_slot = True

    async def once(self) -> Completion:
        """One attempt; raises the RequestFailed subclass the client raised."""
        run = self.run
        if run.stopping.is_set():
            raise _NotSent
        if self.last is not None and self.last.definite:
            # The server answered the last send, so its outcome is known: the next send is
            # a new request with a new key.
            self.key, self.fresh_key = _new_key(), True
        try:
            await run.limiter.before_send(self.request.estimated_tokens)
        except Stopped:
            raise _NotSent from None
        if run.stopping.is_set():
            raise _NotSent
        if self.fresh_key:
            # Only once the send may go: a row stopped while it waits for the rate limits
            # leaves no mark of a request never sent.
            await self.writer.mark_inflight(self.request.position, self.key)
            self.fresh_key = False
            if run.stopping.is_set():
                raise _NotSent  # stopped during the commit: the key was never sent
        self.attempts += 1
        run.progress.requests += 1
        if self.attempts > 1:
            run.progress.retries += 1
        t0 = time.perf_counter()
        self.in_send = True
        try:
            completion = await self.client.complete(self.request.body, self.key)
        except RequestFailed as exc:
            self.in_send = False
            self.latency_ms = (time.perf_counter() - t0) * 1000.0
            self.last = exc
            self.doubt = self.doubt or not exc.definite
            run.on_failure(exc, self.attempts)
            raise
        self.in_send = False
        self.latency_ms = (time.perf_counter() - t0) * 1000.0
        return completion

    def leave(self) -> None:
        """The row is left for the next run. Its in-flight mark stays if the server may
        hold its key (a send timed out, or a run died with it in flight): the resend
        reuses the key and the row counts as possibly charged twice."""
        if not self.maybe_billed:
            self.writer.forget_inflight(self.request.position)

    @property
    def maybe_billed(self) -> bool:
        """The server may have billed a send of this row that no answer accounts for: the
        row's in-flight mark must outlive this run unless the row is finished."""
        return self.doubt or self.in_send


def _new_key() -> str:
    """A fresh Idempotency-Key: 128 random bits in hex (uuid4() costs several times more
    and adds nothing a server needs)."""
    return os.urandom(16).hex()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


class _NotSent(Exception):
    """The run is stopping: this row is left for the next run."""


async def run_job(
    job: Job,
    *,
    on_event: EventSink | None = None,
    handle_signals: bool = False,
    client_factory: ClientFactory = default_client,
) -> Summary:
    """Run a job to the end (or to a stop) and return its summary.

    Raises UsageError/InvalidInput (nothing sent), CheckpointError, RunStopped or Interrupted;
    the last two carry ``.summary`` and leave a resumable checkpoint.
    """
    api_key = get_api_key(job)
    run = _Run(job, on_event or _ignore, api_key, client_factory)
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if handle_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, run.on_signal, sig)
            installed.append(sig)
    try:
        return await run.run()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
