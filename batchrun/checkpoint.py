"""The checkpoint: a SQLite journal (WAL) beside the output recording every finished row.

Layout: ``OUTPUT.checkpoint/`` (``out/labels.parquet`` → ``out/labels.checkpoint/``) holds
``journal.sqlite`` and ``lock``. The journal has three tables:

- ``meta``: the job fingerprint, the input's signature and what the scan learned of it;
- ``results``: one row per finished input row (key: 0-based position), the output columns;
- ``inflight``: rows sent whose outcome is not recorded yet, with their Idempotency-Key.
  An entry is committed *before* its request leaves, so after a crash it tells which rows
  may have been paid for already, and the resend reuses the key;
- ``followers``: with dedupe, each row whose request repeats an earlier row's, and that
  row (its leader, the first with that request). Worked out once per checkpoint, so a
  rerun after a crash serves the followers of a recorded leader from the journal;
- ``reasks``: rows of a ``--schema`` job being asked again: the follow-up and what earlier
  answers used, committed (ending the answered send's in-flight mark) before the re-ask
  leaves, so a rerun resends that very re-ask and the row keeps what was paid.

WAL with ``synchronous=NORMAL``: a commit survives the process being killed (``kill -9``);
only an operating-system crash may lose the last few milliseconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import operator
import os
import shutil
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from batchrun.batchjournal import BATCH_SCHEMA, forget_unanswered
from batchrun.errors import BatchrunError, CheckpointError, UsageError
from batchrun.io.files import why_unwritable
from batchrun.journal_schema import JOURNAL_VERSION as JOURNAL_VERSION
from batchrun.journal_schema import MIGRATIONS, SCHEMA
from batchrun.journal_schema import PAID as PAID
from batchrun.records import RESULT_COLUMNS as RESULT_COLUMNS
from batchrun.records import RowResult

#: A row about to be asked again: (position, state JSON, prompt tokens, completion tokens).
Reask = tuple[int, str, int | None, int | None]


class Checkpoint:
    """The journal of one output, held under an exclusive lock for the life of the run."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.path = directory / "journal.sqlite"
        self._lock_fd: int | None = None
        self._db: sqlite3.Connection | None = None
        #: The reasks table may hold rows (it had some when opened, or some were written):
        #: only then does a finished row's write look there (a statement a row otherwise).
        self._reasks = False

    # --- lifecycle ----------------------------------------------------------------------------

    def lock(self) -> None:
        """Take the run lock; the kernel releases it if this process dies."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _unusable_dir(self.dir, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise CheckpointError(
                f"another batchrun run (pid {holder or '?'}) is writing this output ({self.dir})",
                hint="wait for it to finish, or use another --output",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def discard(self) -> None:
        """Throw the journal away (``--restart``); the lock is kept."""
        self.close_db()
        for name in ("journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm"):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / name).unlink()

    def open(self) -> bool:
        """Open (or create) the journal; True if it already existed."""
        existed = self.path.exists()
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA + BATCH_SCHEMA)
            version = db.execute("SELECT value FROM meta WHERE key='journal_version'").fetchone()
            if version is None:
                db.execute("INSERT INTO meta VALUES ('journal_version', ?)", (JOURNAL_VERSION,))
            elif version[0] in MIGRATIONS:
                db.execute("BEGIN IMMEDIATE")
                for statement in MIGRATIONS[version[0]]:
                    db.execute(statement)
                have = {r[1] for r in db.execute("PRAGMA table_info(results)")}
                for name in RESULT_COLUMNS:
                    if name not in have:
                        db.execute(f"ALTER TABLE results ADD COLUMN {name}")
                db.execute(
                    "UPDATE meta SET value=? WHERE key='journal_version'", (JOURNAL_VERSION,)
                )
                db.execute("COMMIT")
            elif version[0] != JOURNAL_VERSION:
                raise CheckpointError(
                    f"checkpoint {self.path} has journal version {version[0]}, this batchrun writes {JOURNAL_VERSION}",
                    hint="finish the job with the batchrun that started it, or use --restart (every row is sent again)",
                )
        except sqlite3.DatabaseError as exc:
            if not _corrupt(exc):
                # A full disk or a read-only folder: the journal itself is intact, and
                # --restart would pay for every recorded row again.
                raise CheckpointError(
                    f"checkpoint {self.path} cannot be opened for writing ({exc})",
                    hint="free disk space or fix the folder's permissions, then rerun the same "
                    "command (the recorded rows are kept; --restart would send them again)",
                ) from None
            raise CheckpointError(
                f"checkpoint {self.path} is unreadable ({exc})",
                hint="use --restart to discard it (every row is sent again) or another --output",
            ) from None
        self._db = db
        self._reasks = db.execute("SELECT EXISTS (SELECT 1 FROM reasks)").fetchone()[0] == 1
        return existed

    def close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def close(self) -> None:
        self.close_db()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "checkpoint not open"
        return self._db

    # --- meta ---------------------------------------------------------------------------------

    def get_meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, **items: Any) -> None:
        with self.transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [(k, json.dumps(v, sort_keys=True)) for k, v in items.items()],
            )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- rows ---------------------------------------------------------------------------------

    def done_count(self, below: int | None = None) -> int:
        if below is None:
            return int(self.db.execute("SELECT count(*) FROM results").fetchone()[0])
        return int(
            self.db.execute("SELECT count(*) FROM results WHERE position < ?", (below,)).fetchone()[
                0
            ]
        )

    def done_bitmap(self, total: int) -> bytearray:
        """One bit per input position, set where a result is recorded (1M rows = 125 KB)."""
        bits = bytearray((total + 7) // 8)
        for (pos,) in self.db.execute("SELECT position FROM results WHERE position < ?", (total,)):
            bits[pos >> 3] |= 1 << (pos & 7)
        return bits

    def inflight_keys(self) -> dict[int, str]:
        return dict(self.db.execute("SELECT position, idempotency_key FROM inflight"))

    def count_possibly_charged_twice(self, below: int) -> int:
        """Add the in-flight marks no run has counted yet (rows in flight when a run died,
        now to be sent again) to the stored total, once each; return the total. A mark
        kept by a recorded row counts only once the row is to be sent again."""
        with self.transaction() as db:
            new = db.execute(
                "UPDATE inflight SET counted=1 WHERE counted=0 AND position < ?"
                " AND position NOT IN (SELECT position FROM results)",
                (below,),
            ).rowcount
            total = add_meta_count(db, "possibly_charged_twice", new)
        return total

    def forget_failed(self, error_types: tuple[str, ...]) -> int:
        """Delete error rows (of these types, or all) so the run sends them again."""
        with self.transaction() as db:
            if error_types:
                marks = ",".join("?" * len(error_types))
                cur = db.execute(
                    f"DELETE FROM results WHERE status='error' AND error_type IN ({marks})",
                    error_types,
                )
            else:
                cur = db.execute("DELETE FROM results WHERE status='error'")
            forget_unanswered(db)
        return cur.rowcount

    def write(
        self,
        inflight: list[tuple[int, str]],
        results: list[RowResult],
        forget: Sequence[int] = (),
        keep: Sequence[int] = (),
        doubts: Sequence[int] = (),
        reasks: Sequence[Reask] = (),
    ) -> None:
        """Record in one transaction: rows now in flight, finished rows (leaving flight, but
        for those in ``keep``), and rows taken out of flight unsent. ``reasks``: rows about
        to be asked again (their answered send's key is spent; a finished row's state goes).

        ``keep``: failed rows whose last send's outcome is unknown (a timeout): the key stays
        for the resend that --retry-failed makes. ``doubts``: rows sent again after a send
        of unknown outcome, counted as possibly charged twice unless counted already."""
        with self.transaction() as db:
            if doubts:
                new = sum(
                    db.execute(
                        "UPDATE inflight SET counted=1 WHERE position=? AND counted=0", (p,)
                    ).rowcount
                    for p in doubts
                )
                if new:
                    add_meta_count(db, "possibly_charged_twice", new)
            if reasks:
                self._reasks = True
                db.executemany("INSERT OR REPLACE INTO reasks VALUES (?, ?, ?, ?)", reasks)
                db.executemany("DELETE FROM inflight WHERE position=?", [(r[0],) for r in reasks])
            if inflight:
                db.executemany(
                    "INSERT OR REPLACE INTO inflight (position, idempotency_key) VALUES (?, ?)",
                    inflight,
                )
            if results:
                db.executemany(_INSERT_RESULT, map(_result_tuple, results))
                kept = set(keep)
                db.executemany(
                    "DELETE FROM inflight WHERE position=?",
                    [(r.position,) for r in results if r.position not in kept],
                )
                if self._reasks:
                    db.executemany(
                        "DELETE FROM reasks WHERE position=?", [(r.position,) for r in results]
                    )
            if forget:
                db.executemany("DELETE FROM inflight WHERE position=?", [(p,) for p in forget])

    def between_reasks(self, below: int) -> list[Reask]:
        """Rows left between their re-asks (not recorded): position, state, tokens used."""
        return self.db.execute(
            "SELECT position, state, prompt_tokens, completion_tokens FROM reasks"
            " WHERE position < ? AND position NOT IN (SELECT position FROM results)",
            (below,),
        ).fetchall()

    def results_between(self, start: int, stop: int) -> list[tuple[Any, ...]]:
        """Recorded results with start <= position < stop, in position order."""
        return self.db.execute(
            f"SELECT position, {_COLUMN_LIST} FROM results"
            " WHERE position >= ? AND position < ? ORDER BY position",
            (start, stop),
        ).fetchall()

    def aggregate(self, below: int) -> dict[str, Any]:
        """Counts and sums over recorded rows with position < below, for the summary."""
        db = self.db
        row = db.execute(
            "SELECT count(*), sum(status='ok'), sum(status='error'),"
            f" sum(CASE WHEN {PAID} THEN prompt_tokens END),"
            f" sum(CASE WHEN {PAID} THEN completion_tokens END),"
            f" sum(CASE WHEN {PAID} THEN total_tokens END),"
            " sum(attempts), sum(reported_cost_usd), count(reported_cost_usd),"
            " sum(credits_used), count(served_by), sum(served_by IS NULL AND coalesce(cached, 0)),"
            f" sum(CASE WHEN NOT ({PAID}) THEN total_tokens END)"
            " FROM results WHERE position < ?",
            (below,),
        ).fetchone()
        errors = dict(
            db.execute(
                "SELECT error_type, count(*) FROM results WHERE status='error' AND position < ? GROUP BY error_type",
                (below,),
            ).fetchall()
        )
        reasons = dict(
            db.execute(
                "SELECT coalesce(finish_reason_normalized, 'unknown'), count(*) FROM results WHERE position < ?"
                " GROUP BY 1",
                (below,),
            ).fetchall()
        )
        return {
            "rows": row[0] or 0,
            "ok": row[1] or 0,
            "error": row[2] or 0,
            "prompt_tokens": row[3] or 0,
            "completion_tokens": row[4] or 0,
            "total_tokens": row[5] or 0,
            "attempts": row[6] or 0,
            "reported_cost_usd": row[7],
            "rows_cost_reported": row[8] or 0,
            "credits_used": row[9],
            "rows_served_by_dedupe": row[10] or 0,
            "rows_served_by_cache": row[11] or 0,
            "tokens_saved": row[12] or 0,
            "errors_by_type": errors,
            "finish_reasons": reasons,
        }

    def result_at(self, position: int) -> RowResult | None:
        """The recorded result of one row, or None."""
        row = self.db.execute(
            f"SELECT position, {_COLUMN_LIST} FROM results WHERE position=?", (position,)
        ).fetchone()
        if row is None:
            return None
        result = RowResult(**dict(zip(("position", *RESULT_COLUMNS), row, strict=True)))
        result.cached = bool(result.cached)
        return result

    def latencies(self, below: int) -> list[float]:
        return [
            r[0]
            for r in self.db.execute(
                "SELECT latency_ms FROM results WHERE position < ? AND latency_ms IS NOT NULL",
                (below,),
            )
        ]


_COLUMN_LIST = ", ".join(RESULT_COLUMNS)
_result_tuple = operator.attrgetter("position", *RESULT_COLUMNS)
_INSERT_RESULT = (
    f"INSERT OR REPLACE INTO results (position, {_COLUMN_LIST})"
    f" VALUES ({', '.join('?' * (len(RESULT_COLUMNS) + 1))})"
)


#: SQLite's codes for a damaged file (SQLITE_CORRUPT, SQLITE_NOTADB).
_CORRUPT_CODES = frozenset({11, 26})


def _corrupt(exc: sqlite3.DatabaseError) -> bool:
    """Whether the journal file is damaged (rather than the disk full or read-only)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _CORRUPT_CODES
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


def add_meta_count(db: sqlite3.Connection, key: str, n: int) -> int:
    """Add ``n`` to the count stored under ``key`` (in the caller's transaction)."""
    row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    total = int(json.loads(row[0]) if row else 0) + n
    if n:
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(total)))
    return total


def _unusable_dir(directory: Path, exc: OSError) -> BatchrunError:
    """Why the checkpoint folder beside the output cannot be made or locked, in one line."""
    if directory.exists() and not directory.is_dir():
        return CheckpointError(
            f"the checkpoint folder {directory} is a file",
            hint="move that file away, or use another --output",
        )
    return UsageError(
        f"cannot create the checkpoint {directory} beside the output: {why_unwritable(directory, exc)}",
        hint="use an --output in a folder you can write to",
    )


def remove_checkpoint(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
