"""Batch mode (``--mode batch``): the job's rows through the provider's Batch API.

The same rows, requests and output as a live run; only the sending differs. The stage:

1. chunks recorded by a run that died before their create answered (the window) are
   created again with the same Idempotency-Key, and their rows counted once as possibly
   charged twice;
2. the rows not yet recorded nor in a chunk are cut into chunks (``--batch-size`` requests,
   at most 256 MB); each chunk's rows are committed to the journal *before* its create
   request leaves, and the batch id the moment the create answers;
3. every open batch is polled (``--poll-interval``, doubled on errors up to 5 minutes)
   until it has ended; its results are joined on ``custom_id`` and recorded as they are
   read. Rows the results leave out, and ``errored``/``canceled``/``expired`` results,
   are error rows (``--retry-failed`` sends them again).

A rerun of the same command after any stop picks up here: it never creates a second batch
for rows whose batch id is recorded. :mod:`batchrun.send.batch` knows the wire shapes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Protocol

from batchrun import batchjournal as bj
from batchrun.batchjournal import Chunk
from batchrun.batchresults import ResultRecorder, crash_point, failed
from batchrun.builder import RequestBuilder
from batchrun.checkpoint import Checkpoint
from batchrun.errors import (
    BatchrunError,
    CheckpointError,
    Retryable,
    RowFailed,
    RunStopped,
    SendFailed,
    StopRun,
)
from batchrun.events import Event, Progress
from batchrun.io.readers import iter_batches
from batchrun.job import Job
from batchrun.prepare import Prepared
from batchrun.records import Request
from batchrun.send import batch_openai as openai
from batchrun.send.attempt import new_key
from batchrun.send.batch import (
    ENVELOPE_BYTES,
    MAX_BYTES,
    MAX_REQUESTS,
    BatchClient,
    GatewayBatches,
    custom_id_for,
)
from batchrun.send.batch_openai import OpenAIBatchClient, OpenAIBatches
from batchrun.send.transport import HttpTransport

#: Longest wait between polls, and between create attempts, after errors.
MAX_WAIT_S = 300.0
#: Results committed to the journal in groups of this many (each group within ms of its read).
GROUP = 256


class BatchHost(Protocol):
    """What the run gives batch mode: its progress, events and stops."""

    progress: Progress
    possibly_charged_twice: int

    def emit(self, event: Event) -> None: ...

    def stop(self, error: BatchrunError) -> None: ...

    def stopping(self) -> bool: ...


class BatchMode:
    """Sends one job's pending rows through the Batch API and records the answers."""

    def __init__(
        self, host: BatchHost, job: Job, ckpt: Checkpoint, prep: Prepared, api_key: str
    ) -> None:
        self.host, self.job, self.ckpt, self.prep = host, job, ckpt, prep
        host.progress.limiter = None  # no live requests: the progress line shows batches
        self.api_key = api_key
        self.dialect: GatewayBatches | OpenAIBatches
        if job.batch.api == "openai":
            self.dialect = OpenAIBatches(
                system_as_message=job.params.system_as_message, profile=job.profile
            )
            room = (openai.MAX_REQUESTS, openai.MAX_BYTES - openai.ENVELOPE_BYTES)
        else:
            self.dialect = GatewayBatches()
            room = (MAX_REQUESTS, MAX_BYTES - ENVELOPE_BYTES)
        self.max_requests, self.max_bytes = min(job.batch.size, room[0]), room[1]
        self.client: BatchClient | None = None
        self._task: asyncio.Task[None] | None = None
        self.builder = RequestBuilder(job, str(job.input_path))
        scan = prep.scan
        self.builder.mode, self.builder.column = scan.mode, scan.column
        self.builder.id_column = scan.id_column
        #: "create" while batches are being made, "poll" while waiting for them.
        self.phase = "create"
        self.wake = asyncio.Event()
        self.results = ResultRecorder(ckpt, host)

    async def drive(self) -> None:
        """The whole stage, over one session; an interruption ends it (see interrupt)."""
        async with batch_transport(self.job, self.api_key) as transport:
            self.client = make_client(self.job.batch.api, transport, self.api_key)
            self._task = asyncio.ensure_future(self.run())
            try:
                await self._task
            except asyncio.CancelledError:
                if not self.host.stopping():
                    raise  # not ours: the caller itself is being cancelled

    def interrupt(self, now: bool, grace_s: float) -> None:
        """A signal: while polling (nothing in flight worth waiting for) leave at once; a
        create in flight gets ``grace_s`` to answer, so its id can be committed."""
        self.wake.set()
        task = self._task
        if task is None:
            return
        if now or self.phase == "poll":
            task.cancel()
        else:
            asyncio.get_running_loop().call_later(grace_s, task.cancel)

    @property
    def ignored_total(self) -> int:
        return sum(self.results.ignored.values())

    def notice(self, message: str) -> None:
        self.host.emit(Event("notice", self.host.progress, message=message))

    async def run(self) -> None:
        recorded = self.ckpt.get_meta("batch_api")
        if bj.open_chunks(self.ckpt) and recorded not in (None, self.job.batch.api):
            raise CheckpointError(
                f"the open batches of {self.ckpt.dir} were made with --batch-api {recorded}",
                hint=f"rerun with --batch-api {recorded} to collect them",
            )
        self.ckpt.set_meta(batch_api=self.job.batch.api)
        for chunk in bj.chunks(self.ckpt, [bj.PENDING]):
            if self.host.stopping():
                return
            counted = bj.mark_doubt(self.ckpt, chunk)
            self.host.possibly_charged_twice += counted
            self.notice(
                f"{chunk.name()} was being created when a run stopped; creating it again with "
                f"the same Idempotency-Key ({chunk.rows:,} rows counted as possibly charged twice)"
            )
            await self.create(chunk)
        for rows in self.plan():
            if self.host.stopping():
                return
            chunk = bj.record_chunk(self.ckpt, new_key(), rows)
            crash_point("before_create")
            await self.create(chunk)
        self.phase = "poll"
        await self.poll_all()

    # --- planning and creating --------------------------------------------------------------

    def _pending(self) -> Iterator[tuple[int, Request]]:
        """Rows neither recorded nor in a batch, as requests, in input order."""
        total = self.prep.total
        done = self.ckpt.done_bitmap(total)
        submitted = bj.submitted_bitmap(self.ckpt, total)
        for batch in iter_batches(self.job.input_path):
            if batch.start >= total:
                return
            for offset, row in enumerate(batch.rows):
                pos = batch.start + offset
                if pos >= total:
                    return
                bit = 1 << (pos & 7)
                if done[pos >> 3] & bit or submitted[pos >> 3] & bit:
                    continue
                assert row is not None  # the scan proved every row valid
                yield pos, self.builder.build(row, pos, batch.where(offset))

    def plan(self) -> Iterator[list[tuple[int, str]]]:
        """The next chunks: (position, custom_id) of each row, cut at the request and byte
        limits. Lines are encoded to be measured, then dropped: the body is made again,
        streamed, when the chunk is created."""
        rows: list[tuple[int, str]] = []
        size = 0
        for pos, request in self._pending():
            cid = custom_id_for(pos)
            n = len(self.dialect.line(cid, request)) + 1
            if rows and (len(rows) >= self.max_requests or size + n > self.max_bytes):
                yield rows
                rows, size = [], 0
            rows.append((pos, cid))
            size += n
        if rows:
            yield rows

    async def lines(self, chunk: Chunk) -> AsyncIterator[bytes]:
        """The chunk's request lines, rebuilt from the input (in position order)."""
        wanted = self.ckpt.db.execute(
            "SELECT position, custom_id FROM batch_rows WHERE chunk=? ORDER BY position",
            (chunk.chunk,),
        ).fetchall()
        i = 0
        for batch in iter_batches(self.job.input_path):
            end = batch.start + len(batch.rows)
            while i < len(wanted) and wanted[i][0] < end:
                pos, cid = wanted[i]
                row = batch.rows[pos - batch.start]
                assert row is not None
                request = self.builder.build(row, pos, batch.where(pos - batch.start))
                yield self.dialect.line(cid, request)
                i += 1
            if i == len(wanted):
                return
            await asyncio.sleep(0)

    async def create(self, chunk: Chunk) -> None:
        """Create the chunk's batch, retrying what is worth it, and commit its id."""
        wait = self.job.batch.poll_interval_s
        maybe_created = False
        for attempt in range(1, self.job.retry.max_attempts + 1):
            self.host.progress.requests += 1
            assert self.client is not None
            try:
                status = await self.client.create(self.lines(chunk), chunk.key)
            except Retryable as exc:
                maybe_created = maybe_created or not exc.definite
                self.notice(f"creating {chunk.name()} failed (attempt {attempt}): {exc.message}")
                if attempt == self.job.retry.max_attempts or self.host.stopping():
                    break
                await self.sleep(exc.retry_after_s or wait)
                wait = min(wait * 2, MAX_WAIT_S)
                continue
            except StopRun as exc:
                self.host.stop(RunStopped(f"the API refused the batch: {exc.message}", hint=_HINT))
                break
            except RowFailed as exc:
                # The server refused this chunk for good: its rows are error rows.
                self.fail_rows(chunk, bj.chunk_positions(self.ckpt, chunk.chunk), exc)
                return
            crash_point("after_create")
            bj.set_batch(
                self.ckpt, chunk, status.id, status.processing_status, status.request_counts
            )
            self.host.progress.batch_counts[chunk.chunk] = status.request_counts
            self.notice(f"created {chunk.name()}: {chunk.rows:,} requests")
            return
        if not maybe_created and not chunk.in_doubt:
            # Every attempt was answered or never connected: no batch exists; the rows go
            # back to the pending ones (so the rerun counts nothing in doubt).
            with self.ckpt.transaction() as db:
                db.execute("DELETE FROM batch_rows WHERE chunk=?", (chunk.chunk,))
                db.execute("DELETE FROM batches WHERE chunk=?", (chunk.chunk,))
        elif not chunk.in_doubt:
            self.host.possibly_charged_twice += bj.mark_doubt(self.ckpt, chunk)
        if not self.host.stopping():
            self.host.stop(RunStopped(f"could not create {chunk.name()}", hint=_HINT))

    def fail_rows(self, chunk: Chunk, positions: list[int], exc: SendFailed) -> None:
        for i in range(0, len(positions), 10_000):
            group = [failed(p, exc.message, exc.error_type) for p in positions[i : i + 10_000]]
            self.results.commit(group)
        bj.set_done(self.ckpt, chunk, None, "refused")
        self.notice(f"{chunk.name()} was refused: {exc.message}")

    # --- polling ----------------------------------------------------------------------------

    async def sleep(self, seconds: float) -> None:
        """Wait, or less if the run stops."""
        self.wake.clear()
        if self.host.stopping():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), seconds)

    async def poll_all(self) -> None:
        waiting = bj.chunks(self.ckpt, [bj.OPEN])
        base = interval = self.job.batch.poll_interval_s
        failed_rounds = 0
        for chunk in waiting:  # a rerun shows the counts the last run saw until its first poll
            if chunk.counts:
                self.host.progress.batch_counts[chunk.chunk] = chunk.counts
        while waiting and not self.host.stopping():
            errors = False
            for chunk in list(waiting):
                if self.host.stopping():
                    return
                try:
                    ended = await self.poll(chunk)
                except Retryable as exc:
                    errors = True
                    self.notice(f"polling {chunk.name()} failed: {exc.message}")
                    continue
                except (StopRun, RowFailed) as exc:
                    self.host.stop(
                        RunStopped(f"polling {chunk.name()} failed: {exc.message}", hint=_HINT)
                    )
                    return
                if ended:
                    waiting.remove(chunk)
            if waiting:
                crash_point("polling")
                self.host.emit(Event("tick", self.host.progress))
                # After a failed round the usual interval, after each next one in a row twice
                # the last, up to 5 minutes (as creates retry); an answered round resets it.
                if errors:
                    interval = min(interval * 2, MAX_WAIT_S) if failed_rounds else base
                    failed_rounds += 1
                else:
                    interval, failed_rounds = base, 0
                await self.sleep(interval)

    async def poll(self, chunk: Chunk) -> bool:
        """One poll of an open batch; True once its results are recorded."""
        assert chunk.batch_id is not None and self.client is not None
        self.host.progress.requests += 1
        async with self.client.poll(chunk.batch_id) as answer:
            status = answer.status
            if status is not None:
                if (status.processing_status, status.request_counts) != (
                    chunk.status,
                    chunk.counts,
                ):
                    bj.set_status(self.ckpt, chunk, status.processing_status, status.request_counts)
                    self.host.progress.batch_counts[chunk.chunk] = status.request_counts
                    self.notice(
                        f"{chunk.name()}: {status.processing_status}"
                        + (f" — {status.counts_text()}" if status.request_counts else "")
                    )
                return False
            await self.results.record(chunk, answer.results(), answer.ended)
            self.results.ignored["not_a_result"] += answer.bad_lines
        return True


def make_client(api: str, transport: HttpTransport, api_key: str) -> BatchClient:
    """The client of a Batch API shape (``--batch-api``)."""
    if api == "openai":
        return OpenAIBatchClient(transport, api_key)
    return BatchClient(transport, api_key)


def batch_transport(job: Job, api_key: str) -> HttpTransport:
    """The session of batch mode: a few connections; a create may upload 256 MB and a
    results download be long, so only silence (--timeout) ends a request."""
    return HttpTransport(
        job.base_url,
        api_key,
        concurrency=4,
        timeout_s=24 * 3600.0,
        read_timeout_s=job.retry.timeout_s,
    )


_HINT = "fix the cause, then rerun the same command to resume (recorded batches are polled, not created again)"
