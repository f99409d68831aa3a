"""The Ray driver: validate once, cut K shards, run each as an ordinary batchrun run in a
Ray task under one coordinator, merge the parts, write one summary.

Beside OUTPUT (a file or an object): ``OUTPUT.manifest.json`` (see
:mod:`batchrun.cluster.manifest`) and the store ``OUTPUT.shards/`` (see
:mod:`batchrun.cluster.store`). Rerunning the same command skips complete shards and
resumes the others from their journals.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

from batchrun.cluster.allowance import caps_of, spent_before
from batchrun.cluster.coordinator import Coordinator
from batchrun.cluster.manifest import COMPLETE, PENDING, Manifest
from batchrun.cluster.options import EngineOptions, check_supported
from batchrun.cluster.shards import (
    keep_as_dataset,
    merge_parts,
    ranges,
    shard_format,
    write_shard_inputs,
)
from batchrun.cluster.store import Store
from batchrun.cluster.summaries import ThisRun, merge_summaries
from batchrun.cluster.worker import ShardSpec, journal_name, run_shard, shard_job
from batchrun.connect import get_api_key
from batchrun.errors import (
    BatchrunError,
    CheckpointError,
    Interrupted,
    OutputNotWritten,
    RunStopped,
    UsageError,
)
from batchrun.grading import accuracy
from batchrun.io.files import check_input
from batchrun.io.publish import publish
from batchrun.io.remote import RemotePath, state_dir
from batchrun.io.signature import InputSignature
from batchrun.job import Job
from batchrun.prepare import validate
from batchrun.summary import Summary, latency_percentiles

#: Times a shard whose worker died (a lost node, an OOM kill) is started again in one run.
_SHARD_ATTEMPTS = 3
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class RayRun:
    def __init__(self, job: Job, opts: EngineOptions, say: Callable[[str], None], quiet: bool):
        # Absolute paths: a worker runs elsewhere (another folder, another node). The rows'
        # tracing ids name the job's output, as one process's would, not a shard's part.
        output = job.output_path.resolve()
        job = replace(job, input_path=job.input_path.resolve(), output_path=output,
                      trace_output=str(output))  # fmt: skip
        self.job, self.opts, self.say, self.quiet = job, opts, say, quiet
        self.output = job.output_path
        self.manifest_path = self.output.with_suffix(".manifest.json")
        self.store = Store(self.output.with_suffix(".shards"))
        # The driver's local folder: its lock, and files on their way to object storage.
        key = hashlib.blake2b(str(self.output).encode(), digest_size=8).hexdigest()
        self.local = state_dir() / "ray" / f"driver-{key}"
        self.signum: int | None = None
        self.signals = 0
        self.spent: dict[int, dict[str, float]] = {}

    @property
    def staging(self) -> Path:
        """Where shard inputs are written before they go into the store: in it, if local."""
        base = self.store.base
        return base if isinstance(base, Path) else self.local / "staging"

    def lock(self) -> int:
        """One driver an output (the shards' own journals are locked by their runs)."""
        self.local.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.local / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CheckpointError(
                f"another batchrun is running the Ray job for {self.output}",
                hint="wait for it to finish, or stop it first",
            ) from None
        return fd

    def plan(self) -> Manifest:
        """The manifest: the stored one if it matches, else a fresh cut (after validating)."""
        job = self.job
        check_input(job.input_path, "input file")
        if job.restart:
            self.forget()
        digest = InputSignature.of(job.input_path).digest
        fingerprint = job.fingerprint_fields()
        stored = Manifest.load(self.manifest_path)
        if stored is not None:
            stored.check_same(self.manifest_path, digest, self.opts.shards, fingerprint)
            return stored
        if self.output.exists():
            raise CheckpointError(
                f"{self.output} exists but its Ray manifest {self.manifest_path} is missing",
                hint="use --restart to send every row again and replace it, or another --output",
            )
        scan = validate(job)  # exit 2 naming file, line and column: nothing is sent
        total = min(scan.total_rows, job.limit) if job.limit else scan.total_rows
        spans = ranges(total, self.opts.shards)
        self.store.clear()  # the leftovers of a cut that never got its manifest
        write_shard_inputs(job, scan, spans, self.store, self.staging)
        m = Manifest(digest, self.opts.shards, fingerprint, spans, [PENDING] * len(spans),
                     run_id=secrets.token_hex(8))  # fmt: skip
        m.save(self.manifest_path, self.local / "manifest.json")
        return m

    def forget(self) -> None:
        """--restart: the manifest, the store and this machine's shard journals go."""
        old = Manifest.load(self.manifest_path) if self._manifest_readable() else None
        if isinstance(self.manifest_path, RemotePath):
            fs, key = self.manifest_path.fs()
            if self.manifest_path.exists():
                fs.delete_file(key)
        else:
            self.manifest_path.unlink(missing_ok=True)
        self.store.clear()
        if old is not None:
            shutil.rmtree(state_dir() / "ray" / old.run_id, ignore_errors=True)

    def _manifest_readable(self) -> bool:
        try:
            Manifest.load(self.manifest_path)
        except CheckpointError:
            return False
        return True

    def run(self) -> Summary:
        check_supported(self.job)
        get_api_key(self.job)  # missing: exit 2 here, not once a shard
        # Ray's core logs its connection retries to stderr, a line a second (what went wrong
        # is said once, below); and a Ray batchrun starts sends no usage stats anywhere.
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            import ray
        except ImportError:
            raise UsageError("--engine ray needs Ray", hint="pip install 'batchrun[ray]'") from None
        fd = self.lock()
        try:
            m = self.plan()
            started = time.monotonic()
            if not self.job.retry_failed and all(s == COMPLETE for s in m.states):
                if self.output.exists():
                    self.say("batchrun: already complete: nothing to send")
                return self.finish(m, [], started, ThisRun())  # no Ray needed
            # The budget's caps, and what each shard spent in earlier runs (allowance.py).
            caps = caps_of(self.job)
            journals = [(journal_name(i), b - a, shard_job(spec).checkpoint_dir / "journal.sqlite")
                        for i, ((a, b), spec) in enumerate(zip(m.ranges, self.specs(m), strict=True))]  # fmt: skip
            self.spent = spent_before(self.job, self.store, journals) if caps else {}
            own, t0 = self.opts.ray_address is None, time.monotonic()
            self.connect(ray, own)
            self.say(f"batchrun: Ray {'started' if own else 'joined'} in "
                     f"{time.monotonic() - t0:.1f} s; {len(m.ranges)} shards, "
                     f"{self.opts.workers} at a time")  # fmt: skip
            old = {s: signal.signal(s, self.on_signal) for s in _SIGNALS}
            try:
                return self.drive(ray, m, started)
            finally:
                for s, h in old.items():
                    signal.signal(s, h)
                # A local Ray batchrun started goes with it, on errors and signals too.
                ray.shutdown()
        finally:
            os.close(fd)

    def connect(self, ray: Any, own: bool) -> None:
        """Start a local Ray, or join the cluster at --ray-address; one line, exit 2, if
        that cannot be done. "local" always starts a new one: without it, Ray joins a
        cluster already running on this machine (or named by RAY_ADDRESS), whose CPUs
        are not batchrun's to set."""
        if not own:
            probe_address(self.opts.ray_address or "")
        try:
            ray.init(address="local" if own else self.opts.ray_address,
                     num_cpus=max(2, self.opts.workers) if own else None,
                     include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR)  # fmt: skip
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError …
            where = (
                "start a local Ray" if own else f"reach the Ray cluster at {self.opts.ray_address}"
            )
            reason = " ".join(str(exc).split())[:300]
            raise UsageError(
                f"cannot {where}: {reason}",
                hint=(
                    "check the address, and that this machine may join it (Ray's version, "
                    "its auth token)"
                    if not own
                    else "see Ray's logs under /tmp/ray"
                ),
            ) from None

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        self.signum = signum
        if self.signals > 1:  # leave now: every shard's journal has its rows
            raise Interrupted(f"interrupted by {signal.Signals(signum).name} (twice)",
                              signal_number=signum,
                              hint="every finished row is recorded; rerunning resumes")  # fmt: skip

    def specs(self, m: Manifest) -> list[ShardSpec]:
        fmt = shard_format(self.job)
        copy_s = float(os.environ.get("BATCHRUN_JOURNAL_COPY_S", "30"))
        return [ShardSpec(i, self.job, self.store.base, fmt, m.run_id, copy_s)
                for i in range(len(m.ranges))]  # fmt: skip

    def drive(self, ray: Any, m: Manifest, started: float) -> Summary:
        job, opts = self.job, self.opts
        specs = self.specs(m)
        limits = job.limits
        coord = ray.remote(num_cpus=0)(Coordinator).remote(
            limits.concurrency, limits.requests_per_minute, limits.tokens_per_minute,
            caps=caps_of(job), spent=self.spent,
        )  # fmt: skip
        task = ray.remote(num_cpus=0, max_retries=0)(run_shard)
        pending = [i for i, s in enumerate(m.states) if s != COMPLETE or job.retry_failed]
        running: dict[Any, int] = {}
        attempts = dict.fromkeys(pending, 0)
        this_run = ThisRun()
        errors: list[tuple[int, str, int]] = []
        total = m.ranges[-1][1]
        done_rows = {i: b - a for i, ((a, b), s) in enumerate(zip(m.ranges, m.states, strict=True))
                     if s == COMPLETE and not job.retry_failed}  # fmt: skip
        bar = None
        if not self.quiet:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="row", dynamic_ncols=True, desc=f"{len(m.ranges)} shards")
        stopping = False
        try:
            while pending or running:
                if self.signals and not stopping:
                    stopping = True
                    coord.stop.remote(-1)
                while pending and len(running) < opts.workers and not stopping:
                    i = pending.pop(0)
                    attempts[i] += 1
                    running[task.remote(specs[i], coord)] = i
                if not running:
                    break  # stopping before anything more was started
                # The first shard to end is taken at once: the next starts without waiting out
                # a poll (its start-up is the one gap in a worker's sending).
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.2)
                for ref in ready:
                    i = running.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:  # raised by batchrun itself: a bug
                        cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                        errors.append((i, "it failed (a bug in batchrun: please report it): "
                                       f"{type(cause).__name__}: {str(cause)[:300]}", 1))  # fmt: skip
                        continue
                    except ray.exceptions.RayError as exc:  # the worker died (a lost node, OOM)
                        if attempts[i] < _SHARD_ATTEMPTS and not stopping:
                            self.say(f"batchrun: shard {i}'s worker was lost ({type(exc).__name__}); "
                                     "starting it again from its journal")  # fmt: skip
                            seen = ray.get(coord.reported.remote(i))
                            this_run.lost(i, seen)
                            specs[i] = ShardSpec(**{**specs[i].__dict__,
                                                    "reported_done": seen.get("done", 0)})  # fmt: skip
                            pending.insert(0, i)
                        else:
                            errors.append((i, f"its worker was lost: {type(exc).__name__}", 1))
                        continue
                    summary = result.get("summary") or {}
                    this_run.ended(i, summary)
                    if "error" in result:  # its own stop: a shard the cluster stops ends partial
                        errors.append((i, result["error"], result["exit_code"]))
                    if result.get("restored"):
                        r = result["restored"]
                        self.say(f"batchrun: shard {i} resumed from its journal copy "
                                 f"({r['done']:,} rows); {r['at_risk']:,} rows counted as "
                                 "possibly charged twice")  # fmt: skip
                    if summary.get("state") == "complete":
                        m.states[i] = COMPLETE
                        m.save(self.manifest_path, self.local / "manifest.json")
                        done_rows[i] = m.ranges[i][1] - m.ranges[i][0]
                if errors or ray.get(coord.state.remote())["stopped_by"] is not None:
                    stopping = True
                    pending.clear()
                if bar is not None:
                    live = ray.get(coord.progress.remote()).get("done", 0)
                    bar.n = min(total, sum(done_rows.values()) + live)
                    bar.refresh()
        except ray.exceptions.RayActorError:  # the coordinator's node died (an OOM kill)
            errors.insert(0, (-1, "the cluster's coordinator was lost: every shard stops", 1))
        if bar is not None:
            bar.close()
        return self.finish(m, errors, started, this_run)

    def finish(
        self, m: Manifest, errors: list[tuple[int, str, int]], started: float, run: ThisRun
    ) -> Summary:
        """Merge the parts (when every shard is complete) and the summaries, with what this
        run did (``run``; the rows of shards it did not start count as resumed)."""
        job = self.job
        complete = all(s == COMPLETE for s in m.states)
        merged_local: Path | None = None
        if complete and isinstance(self.output, Path) and not self.opts.output_dataset:
            merged_local = self.output  # made by an earlier run, or below
        if complete and (run.counts or not self.output.exists()):
            try:
                merged_local = self.write_output(len(m.ranges))
            except OSError as exc:
                raise OutputNotWritten(self.output, exc) from None
        summary = merge_summaries(str(self.output), self.store, m, run)
        summary.state = "complete" if complete else "partial"
        summary.wall_time_s = round(time.monotonic() - started, 3)
        done = summary.rows_ok + summary.rows_error - summary.rows_resumed
        summary.rows_per_s = round(done / summary.wall_time_s, 2) if summary.wall_time_s else 0.0
        if merged_local is not None:
            summary.latency_ms = latency_percentiles(merged_local)
            if job.grading is not None:
                summary.graded_rows, summary.accuracy, summary.accuracy_by_group = accuracy(
                    merged_local, job.grading.group_by
                )
        error: BatchrunError | None = None
        if errors:
            i, message, code = errors[0]
            error = RunStopped(f"shard {i} stopped: {message}" if i >= 0 else message,
                               hint="fix the cause, then rerun the same command to resume")  # fmt: skip
            error.exit_code = code
        elif self.signum is not None:
            name = signal.Signals(self.signum).name
            error = Interrupted(f"interrupted by {name}", signal_number=self.signum,
                                hint="every finished row is recorded; rerunning resumes")  # fmt: skip
        if error is not None:
            summary.stop_reason, summary.exit_code = str(error), error.exit_code
        elif summary.rows_error > job.max_failure_rate * summary.rows_total:
            summary.exit_code = 3
        summary.write(job.summary_path, self.local / "summary.json")
        if error is not None:
            error.summary = summary
            raise error
        return summary

    def write_output(self, count: int) -> Path | None:
        """The parts as one file (or a dataset folder); the merged local file, if any."""
        job_key = json.dumps(self.job.identity(), sort_keys=True).encode()
        if self.opts.output_dataset:
            keep_as_dataset(self.store, count, self.output)
            return None
        if isinstance(self.output, RemotePath):
            local = self.local / "output.parquet"
            merge_parts(self.store, count, local, job_key)
            publish(local, self.output)
            return local
        merge_parts(self.store, count, self.output, job_key)
        return self.output


def probe_address(address: str) -> None:
    """A cluster named by host and port must answer on it within seconds (Ray itself
    retries a dead address for minutes)."""
    m = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)/?", address.strip())
    if m is None:
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=5).close()
    except OSError as exc:
        raise UsageError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}",
            hint="check the address (host:port of the head, or ray://host:10001)",
        ) from None


def run_on_ray(job: Job, opts: EngineOptions, say: Callable[[str], None], quiet: bool) -> Summary:
    try:
        return RayRun(job, opts, say, quiet).run()
    except KeyboardInterrupt:  # Ctrl-C outside the driver's own handler (validating, cutting)
        raise Interrupted("interrupted by SIGINT", signal_number=signal.SIGINT,
                          hint="every finished row is recorded; rerunning resumes") from None  # fmt: skip
