"""The response cache: answers kept across runs, so an identical request is paid once.

``DIR/cache.sqlite`` is one SQLite file (WAL, a busy timeout), safe with several runs
reading and writing it at once. Its key is a digest of the base URL and the full request
body (the ``stream`` flag aside: see :func:`batchrun.dedupe.request_body`); it stores the
answer and its usage, never the prompt, the headers or the API key. Only good answers are
stored: an error is never served from the cache.

The cache is a stage of its own: :meth:`ResponseCache.get` before a request would be sent,
:meth:`ResponseCache.put` after a good answer. It knows nothing of the journal or the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchrun.errors import UsageError
from batchrun.records import Completion

FILE_NAME = "cache.sqlite"
CACHE_VERSION = "1"
#: Seconds a writer waits for another process's transaction before giving up.
BUSY_TIMEOUT_S = 30.0
#: Answers buffered before they are written in one transaction (a lost buffer only costs
#: a later run a request: the cache is an optimisation, the journal is the record).
FLUSH_EVERY = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS answers (
    key BLOB PRIMARY KEY,
    created_at REAL NOT NULL,
    completion TEXT, finish_reason TEXT, tool_calls TEXT,
    prompt_tokens INTEGER, completion_tokens INTEGER, total_tokens INTEGER,
    model TEXT, response_id TEXT, reasoning_content TEXT
);
CREATE INDEX IF NOT EXISTS answers_created ON answers (created_at);
"""
_FIELDS = (
    "completion",
    "finish_reason",
    "tool_calls",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "model",
    "response_id",
    "reasoning_content",
)


def cache_key(base_url: str, body: bytes) -> bytes:
    """The key of a request: where it goes and what it asks (32 bytes)."""
    h = hashlib.blake2b(digest_size=32)
    h.update(base_url.rstrip("/").encode())
    h.update(b"\n")
    h.update(body)
    return h.digest()


@dataclass(frozen=True)
class CacheStats:
    """What ``batchrun cache stats`` shows. Times are Unix seconds."""

    path: str
    entries: int
    file_bytes: int
    prompt_tokens: int
    completion_tokens: int
    oldest: float | None
    newest: float | None
    by_model: dict[str, int]

    def lines(self) -> list[str]:
        def when(t: float | None) -> str:
            return "n/a" if t is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))

        out = [
            f"cache {self.path}: {self.entries:,} answers, {self.file_bytes / 1e6:,.1f} MB on disk",
            f"  tokens stored: {self.prompt_tokens:,} prompt + {self.completion_tokens:,} completion",
            f"  oldest {when(self.oldest)}, newest {when(self.newest)}",
        ]
        if self.by_model:
            out.append("  models: " + ", ".join(f"{m} {n:,}" for m, n in self.by_model.items()))
        return out


class ResponseCache:
    """One cache folder. ``mode``: read-write, read-only (never adds) or refresh (never
    serves; replaces what it holds with the new answers)."""

    def __init__(self, directory: Path, mode: str = "read-write") -> None:
        self.dir = directory
        self.path = directory / FILE_NAME
        self.mode = mode
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[Any, ...]] = []
        self.hits = 0
        self.misses = 0
        self.stored = 0

    def __repr__(self) -> str:
        return (
            f"ResponseCache({str(self.path)!r}, mode={self.mode}, hits={self.hits}, "
            f"misses={self.misses}, stored={self.stored}, pending={len(self._pending)})"
        )

    @property
    def reads(self) -> bool:
        return self.mode != "refresh"

    @property
    def writes(self) -> bool:
        return self.mode != "read-only"

    # --- lifecycle ----------------------------------------------------------------------------

    def open(self, *, create: bool = True) -> bool:
        """Open the cache (made if ``create``); False if there is none and none was made."""
        if not create and not self.path.exists():
            return False
        try:
            if create:
                self.dir.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('cache_version', ?)", (CACHE_VERSION,))
            version = db.execute("SELECT value FROM meta WHERE key='cache_version'").fetchone()
        except (OSError, sqlite3.DatabaseError) as exc:
            raise UsageError(
                f"cannot open the response cache {self.path}: {exc}",
                hint="give --cache a folder you can write to, or remove a damaged cache.sqlite",
            ) from None
        if version[0] != CACHE_VERSION:
            db.close()
            raise UsageError(
                f"the response cache {self.path} has version {version[0]}, this batchrun "
                f"reads {CACHE_VERSION}",
                hint="use another --cache folder",
            )
        self._db = db
        return True

    def close(self) -> None:
        if self._db is None:
            return
        try:
            self.flush()
        finally:
            self._db.close()
            self._db = None

    def discard(self) -> None:
        """Close without writing what is buffered (the cache failed)."""
        self._pending.clear()
        with contextlib.suppress(sqlite3.Error):
            self.close()

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "cache not open"
        return self._db

    # --- answers ------------------------------------------------------------------------------

    def get(self, key: bytes) -> Completion | None:
        """The stored answer of a request, or None (always None in refresh mode)."""
        if not self.reads:
            return None
        row = self.db.execute(
            f"SELECT {', '.join(_FIELDS)} FROM answers WHERE key=?", (key,)
        ).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        values = dict(zip(_FIELDS, row, strict=True))
        return Completion(
            text=values["completion"],
            finish_reason=values["finish_reason"],
            tool_calls=values["tool_calls"],
            prompt_tokens=values["prompt_tokens"],
            completion_tokens=values["completion_tokens"],
            total_tokens=values["total_tokens"],
            model=values["model"],
            response_id=values["response_id"],
            reasoning_content=values["reasoning_content"],
        )

    def contains(self, key: bytes) -> bool:
        return self.db.execute("SELECT 1 FROM answers WHERE key=?", (key,)).fetchone() is not None

    def usage(self, key: bytes) -> tuple[str | None, int, int] | None:
        """(model, prompt tokens, completion tokens) of a stored answer, or None."""
        row = self.db.execute(
            "SELECT model, prompt_tokens, completion_tokens FROM answers WHERE key=?", (key,)
        ).fetchone()
        return None if row is None else (row[0], row[1] or 0, row[2] or 0)

    def put(self, key: bytes, answer: Completion) -> None:
        """Keep a good answer (buffered; see :data:`FLUSH_EVERY`). Nothing in read-only mode."""
        if not self.writes:
            return
        self._pending.append(
            (
                key,
                time.time(),
                answer.text,
                answer.finish_reason,
                answer.tool_calls,
                answer.prompt_tokens,
                answer.completion_tokens,
                answer.total_tokens,
                answer.model,
                answer.response_id,
                answer.reasoning_content,
            )
        )
        if len(self._pending) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Write the buffered answers in one transaction (waiting for another writer up to
        the busy timeout). Raises sqlite3.Error; the buffer is dropped either way."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        verb = "INSERT OR REPLACE" if self.mode == "refresh" else "INSERT OR IGNORE"
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.executemany(
                f"{verb} INTO answers (key, created_at, {', '.join(_FIELDS)})"
                f" VALUES ({', '.join('?' * (len(_FIELDS) + 2))})",
                pending,
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        self.stored += max(cur.rowcount, 0)

    # --- maintenance --------------------------------------------------------------------------

    def stats(self) -> CacheStats:
        db = self.db
        row = db.execute(
            "SELECT count(*), sum(prompt_tokens), sum(completion_tokens), min(created_at),"
            " max(created_at) FROM answers"
        ).fetchone()
        models = dict(
            db.execute(
                "SELECT coalesce(model, '(unknown)'), count(*) FROM answers GROUP BY 1"
                " ORDER BY 2 DESC, 1 LIMIT 10"
            ).fetchall()
        )
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                size += Path(f"{self.path}{suffix}").stat().st_size
        return CacheStats(
            str(self.path), row[0], size, row[1] or 0, row[2] or 0, row[3], row[4], models
        )

    def clear(self, older_than_days: float | None = None) -> int:
        """Remove every answer, or those stored more than ``older_than_days`` ago; returns
        how many went."""
        db = self.db
        if older_than_days is None:
            count = db.execute("DELETE FROM answers").rowcount
        else:
            cutoff = time.time() - older_than_days * 86400
            count = db.execute("DELETE FROM answers WHERE created_at < ?", (cutoff,)).rowcount
        # Give the space back when nothing else holds the file open (another run's
        # transaction makes VACUUM wait, then fail: the rows are gone all the same).
        with contextlib.suppress(sqlite3.OperationalError):
            db.execute("VACUUM")
        return count
