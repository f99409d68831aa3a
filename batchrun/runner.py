"""The run: a short driver over the stages; ``run_job`` is the library entry point.

prepare (lock, journal, checks, scan) → send (:mod:`batchrun.send` with the journal plugged
into its hooks, or :mod:`batchrun.batchmode`) → finalize (one Parquet file) → summarize. The
producer walks the input, skips recorded rows and reserves the budget; the pool takes a slot
before it creates each task; every outcome goes to the one journal writer. A failed row is a
row, never an exception out of the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import time

from batchrun.batchmode import BatchMode
from batchrun.budget import NO_USAGE_NOTICE, BudgetGate, RowBudget, start_gate
from batchrun.checkpoint import Checkpoint
from batchrun.connect import ClientFactory, default_client, get_api_key
from batchrun.errors import (
    BatchrunError,
    CheckpointError,
    Interrupted,
    JournalFailed,
    NotSent,
    OutputNotWritten,
    RunStopped,
    SendFailed,
)
from batchrun.events import Event, EventSink, Progress
from batchrun.finalize import write_output
from batchrun.job import Budget, Job
from batchrun.modelcheck import check_model_before_send, retired_note
from batchrun.prepare import Prepared, check_input_unchanged, prepare
from batchrun.pricing import PriceTable
from batchrun.produce import BUDGET_HINT, Producer
from batchrun.records import OK, Request, RowResult
from batchrun.send import Limiter, Outcome, Pool
from batchrun.send.attempt import RowSender
from batchrun.send.reask import ReaskingSender, ReaskState, load_states
from batchrun.serve import Shortcuts, open_shortcuts
from batchrun.sink import JournalWriter
from batchrun.structured import AnswerCheck
from batchrun.summarize import summarize
from batchrun.summary import Summary

#: Seconds in-flight requests get to finish after the first SIGINT/SIGTERM/SIGHUP.
GRACE_S = 5.0
#: Seconds between heartbeat events while sending (the progress line off a terminal).
TICK_S = 10.0
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Run:
    """One run of a job; it is also the send path's hooks (journal, progress, stops)."""

    def __init__(self, job: Job, on_event: EventSink, api_key: str,
                 client_factory: ClientFactory, limiter: Limiter | None) -> None:  # fmt: skip
        self.job = job
        self.client_factory = client_factory
        self.emit = on_event
        self.api_key = api_key
        self.progress = Progress()
        #: Said once a run: answers come without usage.
        self.said_no_usage = False
        self.limiter = limiter or Limiter(
            job.limits,
            pause_initial_s=max(0.5, job.retry.backoff_initial_s),
            pause_max_s=job.retry.backoff_max_s,
        )
        self.progress.limiter = self.limiter
        self.ckpt = Checkpoint(job.checkpoint_dir)
        self.pool: Pool[Request, Outcome] = Pool(self.limiter, self.stopping)
        self.writer: JournalWriter | None = None
        self.stop_error: BatchrunError | None = None
        self._stopping = False
        self.same_error: tuple[str, int] = ("", 0)
        self.possibly_charged_twice = 0
        self.signals = 0
        #: Reported whatever stopped the run first: rows after it were not recorded.
        self.journal_error: CheckpointError | None = None
        self.prices = PriceTable.load(job.prices_path) if job.prices_path else PriceTable.default()
        # The real gate, with the price and what was spent, is made once the journal is open.
        self.budget = RowBudget(
            BudgetGate(Budget(), None, model=job.params.model, spent_usd=0, spent_tokens=0)
        )
        self._ticker: asyncio.TimerHandle | None = None
        self.batch: BatchMode | None = None
        #: Answers without a request: dedupe's followers, the response cache.
        self.shortcuts: Shortcuts | None = None

    def notice(self, message: str) -> None:
        self.emit(Event("notice", self.progress, message=message))

    # --- stopping ---------------------------------------------------------------------------

    def stopping(self) -> bool:
        return self._stopping or self.limiter.stopped  # a Ray shard's: the cluster's stop

    def stop(self, error: BatchrunError) -> None:
        """Stop starting requests; the first reason given is the one reported."""
        if self.stop_error is None:
            self.stop_error = error
            self.emit(Event("notice", self.progress, message=f"stopping: {error.message}"))
        self._stopping = True
        # Nothing waits on: not the producer for a slot or for the budget, not a row for
        # a slot, a pause or a rate limit.
        self.limiter.stop()
        self.budget.gate.settled.set()
        if self.batch is not None:
            self.batch.wake.set()  # a poll's wait ends

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
            asyncio.get_running_loop().call_later(GRACE_S, self.pool.cancel)
        else:
            self.pool.cancel()
        if self.batch is not None:
            self.batch.interrupt(now=self.signals > 1, grace_s=GRACE_S)

    def journal_failed(self, exc: BaseException) -> None:
        """Nothing more can be recorded: stop at once rather than pay for rows that would
        be lost. What was committed stays; a rerun resumes from it."""
        self.journal_error = JournalFailed(exc, path=self.ckpt.path)
        self.stop(self.journal_error)
        self.pool.cancel()

    def resume_hint(self, retry_failed: bool = False) -> str:
        extra = " --retry-failed" if retry_failed else ""
        return f"fix the cause, then rerun the same command{extra} to resume"

    # --- the send path's hooks --------------------------------------------------------------

    async def before_new_key(self, position: int, key: str) -> None:
        assert self.writer is not None
        try:
            await self.writer.mark_inflight(position, key)
        except JournalFailed:
            raise NotSent from None  # the run is stopping (see journal_failed)

    def resent_in_doubt(self, position: int) -> None:
        assert self.writer is not None
        self.possibly_charged_twice += 1
        self.writer.count_doubt(position)

    def sending(self, position: int) -> None:
        self.progress.sending_since[position] = time.monotonic()

    def sent(self, attempt: int, failure: SendFailed | None) -> None:
        p = self.progress
        p.requests += 1
        if attempt > 1:
            p.retries += 1
        if failure is not None and failure.status == 429:
            p.rate_limited += 1

    def failed_for_good(self, error_type: str, message: str) -> None:
        """Stop the run when row after row fails for good with the very same error (an
        unknown model, a server that answers 500 to everything): sending the rest would
        only fail them one by one."""
        sig = f"{error_type}: {message}"
        count = self.same_error[1] + 1 if self.same_error[0] == sig else 1
        self.same_error = (sig, count)
        if count >= self.job.retry.same_error_stop_after:
            why = f"{count} rows in a row failed with the same error ({message})"
            # A retired snapshot is the likely cause: the line that stops the run says so.
            if note := retired_note(self.job.params.model, aliases=False):
                why += f"; note: {note}"
            self.stop(RunStopped(why, hint=self.resume_hint(retry_failed=True)))

    def succeeded(self) -> None:
        self.same_error = ("", 0)

    def cancelled(self, outcome: Outcome) -> None:
        self.on_outcome(outcome)

    async def before_reask(
        self, request: Request, previous: Request, answer: RowResult, state: ReaskState
    ) -> None:
        """An invalid answer is to be asked again: settle the answered send, record the
        re-ask's state (the answered send's key leaves flight with it), admit the re-ask."""
        assert self.writer is not None
        self.progress.reasks += 1
        self.budget.answered(previous, answer, (*state.spent, state.reported_cost_usd))
        try:
            await self.writer.record_reask(request.position, state.to_json(), *state.spent)
        except JournalFailed:
            raise NotSent from None  # the run is stopping (see journal_failed)
        if self.budget.active:
            why = await self.budget.admit(request, self.stopping)
            if why is not None:
                if not self.stopping():  # else the stop's own reason stands
                    self.stop(RunStopped(f"budget: {why}", hint=BUDGET_HINT))
                raise NotSent

    # --- outcomes ---------------------------------------------------------------------------

    def on_outcome(self, outcome: Outcome) -> None:
        """Settle the budget, record the row (or leave it for the next run), count it."""
        assert self.writer is not None
        request, result, p = outcome.request, outcome.result, self.progress
        p.sending_since.pop(request.position, None)
        self.budget.settle(outcome)
        if outcome.stop is not None:
            self.stop(
                RunStopped(
                    f"the API refused the request: {outcome.stop.message}",
                    hint=self.resume_hint(),
                )
            )
        served = self.shortcuts.answered(request.position, result) if self.shortcuts else []
        if result is None:
            # Left for the next run. Its in-flight mark stays if the server may hold its
            # key: the resend reuses it and the row counts as possibly charged twice.
            if not outcome.maybe_billed:
                self.writer.forget_inflight(request.position)
            return
        self.writer.record(result, keep_key=outcome.maybe_billed)
        if result.status == OK and result.total_tokens is None and not self.said_no_usage:
            self.said_no_usage = True
            self.notice(NO_USAGE_NOTICE)
        self.count(result)
        # Queued in the same loop turn as the leader's row, so the writer commits them in
        # the same transaction: no crash leaves a leader recorded and its followers not.
        self.record_served(served)

    def record_served(self, rows: list[RowResult]) -> None:
        """Record rows answered without a request (followers, cache hits)."""
        assert self.writer is not None
        for row in rows:
            self.writer.record(row)
            self.count(row, paid=False)

    def count(self, result: RowResult, *, paid: bool = True) -> None:
        self.progress.count(result, paid=paid)
        self.emit(Event("row", self.progress, result=result))

    async def send(self, prep: Prepared) -> None:
        if self.job.mode == "batch":
            self.batch = BatchMode(self, self.job, self.ckpt, prep, self.api_key)
            return await self.batch.drive()
        async with self.client_factory(self.job, self.api_key) as client:
            fresh = not prep.resumed and not prep.inflight_keys  # (it heeds --no-model-check)
            if warning := await check_model_before_send(self.job, client, self.ckpt, fresh):
                self.emit(Event("warning", self.progress, message=warning))
            self.writer = writer = JournalWriter(self.ckpt, on_failure=self.journal_failed)
            writer.start()
            self._ticker = asyncio.get_running_loop().call_later(TICK_S, self.tick)
            try:
                sender = RowSender(client, self.limiter, self.job.retry, self, prep.inflight_keys)
                worker = sender.send
                schema = self.job.params.schema
                if schema is not None:
                    states = load_states(self.ckpt.between_reasks(prep.total))
                    self.budget.resume(states)
                    reasking = ReaskingSender(
                        sender, AnswerCheck(schema), self.job.max_reasks, self, states
                    )
                    worker = reasking.send
                producer = Producer(self.job, prep, self.ckpt, self.budget, self.shortcuts,
                                    stopping=self.stopping, stop=self.stop,
                                    record_served=self.record_served)  # fmt: skip
                async with contextlib.aclosing(producer.requests()) as requests:
                    await self.pool.run(requests, worker, self.on_outcome)
            finally:
                if self._ticker is not None:
                    self._ticker.cancel()
                if self.shortcuts is not None:
                    self.shortcuts.close()
                await writer.close()

    def tick(self) -> None:
        """A heartbeat while sending (a display off a terminal shows stalled answers)."""
        self.emit(Event("tick", self.progress))
        self._ticker = asyncio.get_running_loop().call_later(TICK_S, self.tick)

    # --- the whole run ----------------------------------------------------------------------

    async def run(self) -> Summary:
        job, ckpt, p = self.job, self.ckpt, self.progress
        started = time.monotonic()
        try:
            try:
                prep = prepare(job, ckpt)
            except sqlite3.OperationalError as exc:  # a full disk while the journal is set up
                raise JournalFailed(exc, path=ckpt.path) from None
            total = prep.total
            if job.retry_failed:
                self.emit(Event("notice", p, message=f"retrying {prep.retrying:,} failed rows"))
            self.possibly_charged_twice = prep.possibly_charged_twice
            self.shortcuts = open_shortcuts(job, ckpt, prep.followers, self.notice)
            if prep.followers:
                self.notice(
                    f"dedupe: {len(prep.followers):,} rows repeat an earlier row's request "
                    "and get its answer without a request"
                )
            p.total, p.already_done, p.to_send = total, prep.resumed, total - prep.resumed
            mean_prompt = prep.scan.estimated_prompt_tokens // max(1, prep.scan.total_rows)
            self.budget = RowBudget(start_gate(ckpt, self.prices, job.budget, model=job.params.model,
                                               max_tokens=job.params.max_tokens, total=total,
                                               mean_prompt_estimate=mean_prompt))  # fmt: skip
            self.limiter.use_budget(self.budget.gate)
            if (
                prep.already_complete
                and ckpt.get_meta("finalized") == prep.finished_marker
                and job.output_path.exists()
            ):
                self.emit(Event("notice", p, message="already complete: nothing to send"))
                return self.finish(prep, started)
            self.emit(Event("start", p))
            if not prep.already_complete:
                await self.send(prep)
            done = ckpt.done_count(below=total)
            self.emit(Event("finalizing", p))
            if self.journal_error is not None:
                raise self.journal_error  # no output can be made from the journal now
            if self.stop_error is not None and self.signals > 1:
                raise self.stop_error  # second signal: leave at once, the journal has every row
            # The output re-reads the input: it must still be the input that was validated,
            # before the write and right before the new file takes the output's place.
            check_input_unchanged(job, ckpt)
            try:
                write_output(
                    job,
                    ckpt,
                    prep.scan,
                    total,
                    partial=done < total,
                    before_replace=lambda: check_input_unchanged(job, ckpt),
                )
            except OSError as exc:
                raise OutputNotWritten(job.output_path, exc) from None
            if done == total:
                ckpt.set_meta(finalized=prep.finished_marker)
            return self.finish(prep, started)
        finally:
            ckpt.close()

    def finish(self, prep: Prepared, started: float) -> Summary:
        total = prep.total
        done = self.ckpt.done_count(below=total)
        summary = summarize(self.job, self.ckpt, self.progress, self.prices, total=total,
                            resumed=prep.resumed, possibly_charged_twice=self.possibly_charged_twice,
                            wall_s=time.monotonic() - started,
                            state="complete" if done == total else "partial",
                            batch_ignored=self.batch.ignored_total if self.batch else 0)  # fmt: skip
        error = self.stop_error
        if error is not None:
            summary.stop_reason = str(error)
            summary.exit_code = error.exit_code
        elif summary.rows_error > self.job.max_failure_rate * total:
            summary.exit_code = 3
        try:
            summary.write(self.job.summary_path, self.job.checkpoint_dir / "summary.json")
        except OSError as exc:  # a full disk must not hide the run's own result
            self.emit(Event("notice", self.progress, message=f"summary not written: {exc}"))
        if error is not None:
            error.summary = summary
            raise error
        return summary


async def run_job(
    job: Job,
    *,
    on_event: EventSink | None = None,
    handle_signals: bool = False,
    client_factory: ClientFactory = default_client,
    limiter: Limiter | None = None,
) -> Summary:
    """Run a job to the end (or to a stop) and return its summary. ``limiter``: limits
    from elsewhere (a Ray shard leases its share of the cluster's).

    Raises UsageError/InvalidInput (nothing sent), CheckpointError, RunStopped or Interrupted;
    the last two carry ``.summary`` and leave a resumable checkpoint.
    """
    api_key = get_api_key(job)
    run = _Run(job, on_event or (lambda _: None), api_key, client_factory, limiter)
    loop = asyncio.get_running_loop()
    installed = list(SIGNALS) if handle_signals else []
    for sig in installed:
        loop.add_signal_handler(sig, run.on_signal, sig)
    try:
        return await run.run()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
