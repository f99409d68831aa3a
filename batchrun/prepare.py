"""Prepare a run: take the lock, open the journal, refuse a changed job or input, validate
the input (once per checkpoint), and learn what is left to send.

Nothing is sent here; every refusal is a :class:`CheckpointError` (exit 5) or a
:class:`UsageError` (exit 2) naming the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from batchrun.batchjournal import check_mode
from batchrun.checkpoint import Checkpoint
from batchrun.dedupe import (
    DigestCollector,
    collect_digests,
    find_followers,
    store_followers,
    unrecorded_followers,
)
from batchrun.errors import CheckpointError, InputError, InvalidInput, UsageError
from batchrun.io.files import regular_file
from batchrun.io.readers import iter_batches
from batchrun.io.signature import InputSignature
from batchrun.job import Job
from batchrun.scan import MAX_REPORTED_ERRORS, Scan, regex_error, scan_input

RESTART_HINT = "use --restart to start over (every row is sent again) or another --output"


@dataclass
class Prepared:
    """What a run starts from."""

    scan: Scan
    #: Rows this run covers (the input's, or --limit's).
    total: int
    #: Rows recorded by earlier runs.
    resumed: int
    #: Rows in flight when an earlier run died (or kept for a resend), with their keys.
    inflight_keys: dict[int, str]
    #: Rows possibly charged twice so far, over every run of this output.
    possibly_charged_twice: int
    #: Rows --retry-failed took out of the journal to send again.
    retrying: int
    #: What the journal records once the output is complete, to rerun a finished job in
    #: an instant.
    finished_marker: dict[str, Any]
    #: With dedupe: rows not recorded yet whose request repeats an earlier row's → that row.
    followers: dict[int, int] = field(default_factory=dict)

    @property
    def already_complete(self) -> bool:
        return self.resumed == self.total


def fingerprint_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys (dotted for nested ones) whose values differ."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += [f"{key}.{k}" for k in fingerprint_diff(a, b)]
        elif a != b:
            changed.append(key)
    return changed


def input_meta(signature: InputSignature) -> dict[str, Any]:
    return {"size": signature.size, "mtime_ns": signature.mtime_ns, "digest": signature.digest}


def check_input_unchanged(job: Job, ckpt: Checkpoint) -> None:
    """Refuse to go on when the input is no longer the one the checkpoint validated: rows
    would be written beside answers to other prompts."""
    known = InputSignature(**ckpt.get_meta("input"))
    current = InputSignature.of(job.input_path, known=known)
    if not current.same_content(known):
        raise CheckpointError(
            f"the input {job.input_path} changed since the checkpoint in {ckpt.dir} was made",
            hint="restore the input and rerun the same command (recorded rows are kept), or "
            + RESTART_HINT,
        )
    if current != known:
        ckpt.set_meta(input=input_meta(current))


def prepare(job: Job, ckpt: Checkpoint) -> Prepared:
    """Lock and open the checkpoint, check it belongs to this job and input, validate."""
    # Before the checkpoint folder is made: a refusal leaves nothing behind.
    regular_file(job.input_path, "input file")
    ckpt.lock()
    if job.restart:
        ckpt.discard()
    existed = ckpt.open()
    fingerprint = job.fingerprint_fields()
    stored = ckpt.get_meta("fingerprint") if existed else None
    if stored is None:
        if not job.restart and job.output_path.exists():
            # The journal is gone (deleted, or emptied): starting afresh would pay for
            # every row again and overwrite the output made from them.
            raise CheckpointError(
                f"{job.output_path} exists but its checkpoint {ckpt.dir} is "
                + ("empty" if existed else "missing"),
                hint="use --restart to send every row again and replace it, or another --output",
            )
        # Dedupe's digests are taken in the validation pass: no second read of the input.
        collector = DigestCollector(job) if job.dedupe_enabled else None
        scan = validate(job, collector)
        ckpt.set_meta(
            fingerprint=fingerprint,
            input=input_meta(InputSignature.of(job.input_path)),
            scan=scan.to_meta(),
        )
        if collector is not None:
            store_plan(ckpt, collector)
    else:
        changed = fingerprint_diff(stored, fingerprint)
        if changed:
            raise CheckpointError(
                f"the job changed since the checkpoint in {ckpt.dir} was made ({', '.join(changed)} differ)",
                hint=RESTART_HINT,
            )
        check_input_unchanged(job, ckpt)
        scan = Scan.from_meta(ckpt.get_meta("scan"))
        # Grading is not part of the fingerprint (it changes no request), so the scan that
        # made the checkpoint may not have checked the patterns of a --match regex added now.
        if job.grading is not None and job.grading.match == "regex":
            check_patterns(job, job.grading.expected_column)
        if job.dedupe_enabled and ckpt.get_meta("dedupe_plan") is None:
            store_plan(ckpt, collect_digests(job, scan))  # started without dedupe
    check_mode(job.mode, ckpt)
    checked = ckpt.get_meta("batch_checked") or []
    if job.mode == "batch" and job.batch.api not in checked:
        if stored is not None:  # made by a run that did not check this batch shape
            validate(job)
        ckpt.set_meta(batch_checked=[*checked, job.batch.api])
    total = min(scan.total_rows, job.limit) if job.limit else scan.total_rows
    retrying = ckpt.forget_failed(job.only_error_types) if job.retry_failed else 0
    check_grading(job, scan)
    return Prepared(
        scan=scan,
        total=total,
        resumed=ckpt.done_count(below=total),
        inflight_keys=ckpt.inflight_keys(),
        possibly_charged_twice=ckpt.count_possibly_charged_twice(below=total),
        retrying=retrying,
        finished_marker={"rows": total, "grading": repr(job.grading)},
        followers=unrecorded_followers(ckpt, below=total) if job.dedupe_enabled else {},
    )


def store_plan(ckpt: Checkpoint, collector: DigestCollector) -> None:
    """Work out which rows repeat an earlier row's request and store it in the journal."""
    followers, leaders = find_followers(collector.digests, collector.rows)
    store_followers(ckpt, followers, leaders)


def validate(job: Job, collector: DigestCollector | None = None) -> Scan:
    scan = scan_input(job, on_request=None if collector is None else collector.add)
    if scan.errors:
        raise InvalidInput(scan.errors, scan.invalid_rows)
    return scan


def check_patterns(job: Job, column: str) -> None:
    """Refuse (exit 2) expected values that are no regular expression."""
    file = str(job.input_path)
    errors: list[InputError] = []
    invalid = 0
    for batch in iter_batches(job.input_path):
        for offset, row in enumerate(batch.rows):
            if row is not None and column in row:
                error = regex_error(row, file, column, batch.where(offset))
                if error is not None:
                    invalid += 1
                    if len(errors) < MAX_REPORTED_ERRORS:
                        errors.append(error)
    if errors:
        raise InvalidInput(errors, invalid)


def check_grading(job: Job, scan: Scan) -> None:
    grading = job.grading
    if grading is None:
        return
    names = scan.schema.names
    for what, col in (
        ("expected-answer", grading.expected_column),
        ("group-by", grading.group_by),
    ):
        if col is not None and col not in names:
            raise UsageError(
                f"{job.input_path}: {what} column {col!r} not found; columns are: {', '.join(names)}"
            )
