"""One shard, on a Ray worker: an ordinary run of its rows, its limits leased from the
coordinator, its journal on the worker's own disk and copied to the store.

The journal needs a local disk (SQLite in WAL mode, fcntl locks), so it lives under the
worker's state folder (``$BATCHRUN_STATE_DIR/ray/…``). A consistent copy (SQLite's backup
API, a snapshot even while rows are written) goes to the store every ``copy_every_s``
seconds and when the shard ends. A shard started where its journal is not (another node,
a lost disk) resumes from the copy: the rows answered after the copy are sent again and
are counted as possibly charged twice: the coordinator's count of rows the shard had
answered when known, else the copy's own rate over the longest a shard sends without a
copy (an interval, plus the lease lapse after which a shard without its driver stops;
see :func:`restore`). An estimate from a measured rate, not a proof.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sqlite3
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from batchrun.checkpoint import add_meta_count
from batchrun.cluster.coordinator import LEASE_S, LEASE_TTL_S
from batchrun.cluster.lease import LeasedLimiter
from batchrun.cluster.shards import input_name, part_name
from batchrun.cluster.store import Store
from batchrun.errors import BatchrunError, CheckpointError
from batchrun.events import Event
from batchrun.io.remote import Location, state_dir
from batchrun.job import Job

#: Seconds between copies of a running shard's journal to the store.
COPY_EVERY_S = 30.0
#: Meta key of a journal copy: when it was made, rows done, rows answered per second.
_COPY_META = "ray_copy"


def journal_name(index: int) -> str:
    return f"journal-{index:05d}.sqlite"


def summary_name(index: int) -> str:
    return f"summary-{index:05d}.json"


@dataclass(frozen=True)
class ShardSpec:
    """What a worker needs to run shard ``index`` (pickled to the worker by Ray; it holds
    no key: the worker reads the API key from its own environment)."""

    index: int
    job: Job
    store: Location
    fmt: str
    #: Names the run's folder under the worker's state folder.
    run_key: str
    copy_every_s: float = COPY_EVERY_S
    #: Rows the coordinator last heard this shard had done (a rerun after a lost worker).
    reported_done: int = 0


def local_folder(spec: ShardSpec) -> Path:
    return state_dir() / "ray" / spec.run_key / f"shard-{spec.index:05d}"


def shard_job(spec: ShardSpec) -> Job:
    store = Store(spec.store)
    return replace(
        spec.job,
        input_path=store.at(input_name(spec.index, spec.fmt)),
        output_path=local_folder(spec) / "part.parquet",
        limit=None, restart=False, dry_run=False,
    )  # fmt: skip


def run_shard(spec: ShardSpec, coordinator: Any) -> dict[str, Any]:
    """The Ray task: run the shard, copy its part, summary and journal to the store."""
    try:
        return asyncio.run(_shard(spec, coordinator))
    except BatchrunError as exc:  # before its run began: its journal copy is unusable
        return {"index": spec.index, "error": str(exc), "exit_code": exc.exit_code}


async def _shard(spec: ShardSpec, coordinator: Any) -> dict[str, Any]:
    from batchrun.runner import run_job  # in the worker: Ray pickles the task, not this

    store, index = Store(spec.store), spec.index
    job = shard_job(spec)
    journal = job.checkpoint_dir / "journal.sqlite"
    restored = None if journal.exists() else restore(spec, store, journal)
    stats: dict[str, int] = {}
    copies = JournalCopier(journal, store, index)

    def on_event(event: Event) -> None:
        p = event.progress
        if event.kind == "start":
            copies.started, copies.started_done = time.time(), p.already_done
        stats.update(done=p.already_done + p.ok + p.error, requests=p.requests,
                     rate_limited=p.rate_limited, resumed=p.already_done)  # fmt: skip

    async def renew(
        in_flight: int, wants: bool, accepted: int, saturated: bool, budget: dict[str, Any] | None
    ) -> dict[str, Any]:
        ref = coordinator.lease.remote(
            index, in_flight, wants, dict(stats), accepted, saturated, budget
        )
        return await ref  # type: ignore[no-any-return]

    limiter = LeasedLimiter(
        job.limits, renew,
        on_storm=lambda s: coordinator.pause.remote(s),
        on_stop=lambda: coordinator.stop.remote(index),
        pause_initial_s=max(0.5, job.retry.backoff_initial_s),
        pause_max_s=job.retry.backoff_max_s,
    )  # fmt: skip
    renewer = asyncio.create_task(limiter.renew_forever(LEASE_S, LEASE_TTL_S))
    copier = asyncio.create_task(copies.forever(spec.copy_every_s))
    result: dict[str, Any] = {"index": index, "restored": restored}
    try:
        summary = await run_job(job, on_event=on_event, limiter=limiter)
        result["summary"] = asdict(summary)
    except BatchrunError as exc:
        result.update(error=str(exc), exit_code=exc.exit_code,
                      summary=asdict(exc.summary) if exc.summary is not None else None)  # fmt: skip
    finally:
        limiter.done = True
        renewer.cancel()
        copier.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await copier
        # What it did not spend of its budget allowance goes back to the others.
        coordinator.release.remote(index, limiter.budget.spent())
    result["cluster_stopped"] = limiter.cluster_stopped
    await asyncio.to_thread(_publish, job, copies, result)
    return result


def _publish(job: Job, copies: JournalCopier, result: dict[str, Any]) -> None:
    """The shard's journal copy, and when it is complete its part, then its summary (the
    driver takes a shard for complete only from its summary, so the part is in first)."""
    store, index = copies.store, copies.index
    copies.copy()
    summary = result.get("summary")
    if summary is None:
        return
    if summary.get("state") == "complete":
        assert isinstance(job.output_path, Path)
        store.put(job.output_path, part_name(index))
    assert isinstance(job.summary_path, Path)
    if job.summary_path.exists():
        store.put(job.summary_path, summary_name(index))


class JournalCopier:
    """Copies a shard's journal to the store: a consistent snapshot (SQLite's backup API,
    taken while rows are written) stamped with when it was made, the rows it holds and how
    fast rows were being answered — for counting the rows at risk if it is ever restored.
    It only reads the live journal: the run is its one writer."""

    def __init__(self, journal: Path, store: Store, index: int) -> None:
        self.journal, self.store, self.index = journal, store, index
        self.last: tuple[float, int] | None = None  # (when, rows done) of the last copy
        self.started = time.time()
        self.started_done: int | None = None

    async def forever(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            with contextlib.suppress(OSError, sqlite3.Error):  # the next copy will do
                await asyncio.to_thread(self.copy)

    def copy(self) -> None:
        if not self.journal.exists():
            return
        tmp = self.journal.with_name(f"copy.{os.getpid()}.sqlite")
        tmp.unlink(missing_ok=True)
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.journal}?mode=ro", uri=True)) as src, \
                    contextlib.closing(sqlite3.connect(tmp)) as dst:  # fmt: skip
                src.backup(dst)
                now = time.time()
                done = int(dst.execute("SELECT count(*) FROM results").fetchone()[0])
                since, before = self.last or (self.started, self.started_done or 0)
                rate = max(0, done - before) / (now - since) if now > since else 0.0
                with dst:
                    dst.execute(
                        "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                        (_COPY_META, json.dumps({"at": now, "done": done, "rate": rate})),
                    )
            self.store.put(tmp, journal_name(self.index))
            self.last = (now, done)
        finally:
            tmp.unlink(missing_ok=True)


def restore(spec: ShardSpec, store: Store, journal: Path) -> dict[str, Any] | None:
    """Put the store's copy of the journal in place (a shard starting where its journal is
    not). The rows answered after the copy are lost and will be sent again: counted as
    possibly charged twice. Returns what was restored, or None if there is no copy."""
    name = journal_name(spec.index)
    if not store.get(name, journal):
        return None
    try:
        with contextlib.closing(sqlite3.connect(journal)) as db, db:
            row = db.execute("SELECT value FROM meta WHERE key=?", (_COPY_META,)).fetchone()
            info = json.loads(row[0]) if row else {"at": time.time(), "done": 0, "rate": 0.0}
            pending = _rows_in_shard(db, info)
            # Rows answered after the copy: until the next copy was due, or until the shard
            # noticed its coordinator gone (a lease lapses) and stopped.
            estimate = math.ceil(info["rate"] * (spec.copy_every_s + LEASE_TTL_S + LEASE_S))
            at_risk = max(estimate, spec.reported_done - info["done"])
            at_risk = max(0, min(at_risk, pending))
            add_meta_count(db, "possibly_charged_twice", int(at_risk))
    except (sqlite3.Error, ValueError, KeyError, TypeError) as exc:
        journal.unlink(missing_ok=True)  # not left where the shard's run would open it
        raise CheckpointError(
            f"shard {spec.index}'s journal copy {name} in {spec.store} cannot be read "
            f"({type(exc).__name__}: {str(exc)[:200]})",
            hint="delete it and rerun: that shard's rows are sent again (they may be billed twice)",
        ) from None
    return {"copied_at": info["at"], "done": info["done"], "at_risk": at_risk}


def _rows_in_shard(db: sqlite3.Connection, info: dict[str, Any]) -> int:
    """Rows the copy has not recorded (what a lost worker may have answered since)."""
    row = db.execute("SELECT value FROM meta WHERE key='scan'").fetchone()
    total = int(json.loads(row[0]).get("total_rows", 0)) if row else 0
    return max(0, total - int(info["done"]))
