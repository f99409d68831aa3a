"""The journal's record of batch mode: which rows went into which batch, and each batch's id.

Two tables in the checkpoint's SQLite journal (created with the others, journal version 5):

- ``batches``: one row a chunk of the job. It is committed, with its ``Idempotency-Key``,
  *before* the create request leaves; ``batch_id`` is committed the moment the create
  answers. A chunk without an id after a crash is the one window that cannot be closed:
  the server may have created it. The rerun creates it again with the same key (a server
  that honours it returns the batch it made) and counts its rows once as possibly charged
  twice (``in_doubt``).
- ``batch_rows``: the rows of each chunk with their ``custom_id``; results are joined on it,
  and rows answered through a batch are priced at the batch rate.

States of a chunk: ``pending`` (recorded, id not known), ``open`` (id known, polling),
``done`` (every row of it recorded).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batchrun.errors import CheckpointError

if TYPE_CHECKING:
    from batchrun.checkpoint import Checkpoint

BATCH_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    chunk INTEGER PRIMARY KEY, idempotency_key TEXT NOT NULL, batch_id TEXT,
    state TEXT NOT NULL, rows INTEGER NOT NULL, first_position INTEGER NOT NULL,
    last_position INTEGER NOT NULL, status TEXT, counts TEXT,
    -- 1 once a run has counted the chunk's rows as possibly charged twice
    in_doubt INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS batch_rows (
    position INTEGER PRIMARY KEY, chunk INTEGER NOT NULL, custom_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS batch_rows_by_chunk ON batch_rows (chunk);
"""

PENDING, OPEN, DONE = "pending", "open", "done"
#: What a done chunk's status says: how its batch ended, in the provider's words (the
#: gateway's ended, canceled, expired; OpenAI's completed, failed, expired, cancelled), or
#: refused (its create was refused for good: no batch). A journal written before these were
#: kept holds the last status seen while the batch ran: such a chunk is only "done".
FINAL_STATES = frozenset(
    {"ended", "canceled", "expired", "completed", "failed", "cancelled", "refused"}
)


@dataclass
class Chunk:
    """One batch of the job, as the journal has it."""

    chunk: int
    key: str
    batch_id: str | None
    state: str
    rows: int
    first: int
    last: int
    status: str | None = None
    counts: dict[str, int] | None = None
    in_doubt: bool = False

    def name(self) -> str:
        return f"chunk {self.chunk} (rows {self.first}-{self.last}" + (
            f", {self.batch_id})" if self.batch_id else ")"
        )


def chunks(ckpt: Checkpoint, states: Iterable[str] = (PENDING, OPEN, DONE)) -> list[Chunk]:
    wanted = tuple(states)
    marks = ",".join("?" * len(wanted))
    rows = ckpt.db.execute(
        "SELECT chunk, idempotency_key, batch_id, state, rows, first_position, last_position,"
        f" status, counts, in_doubt FROM batches WHERE state IN ({marks}) ORDER BY chunk",
        wanted,
    ).fetchall()
    return [
        Chunk(
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            r[6],
            r[7],
            json.loads(r[8]) if r[8] else None,
            bool(r[9]),
        )
        for r in rows
    ]


def open_chunks(ckpt: Checkpoint) -> int:
    """Chunks not done: a live run must not send their rows (they may be answered yet)."""
    return int(
        ckpt.db.execute("SELECT count(*) FROM batches WHERE state != ?", (DONE,)).fetchone()[0]
    )


def submitted_bitmap(ckpt: Checkpoint, total: int) -> bytearray:
    """One bit a position, set where the row is in a chunk (pending, open or done)."""
    bits = bytearray((total + 7) // 8)
    for (pos,) in ckpt.db.execute("SELECT position FROM batch_rows WHERE position < ?", (total,)):
        bits[pos >> 3] |= 1 << (pos & 7)
    return bits


def record_chunk(ckpt: Checkpoint, key: str, rows: list[tuple[int, str]]) -> Chunk:
    """Commit a new chunk and its rows (before its create request leaves)."""
    with ckpt.transaction() as db:
        number = int(db.execute("SELECT coalesce(max(chunk), -1) + 1 FROM batches").fetchone()[0])
        first, last = rows[0][0], rows[-1][0]
        db.execute(
            "INSERT INTO batches (chunk, idempotency_key, state, rows, first_position, last_position)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (number, key, PENDING, len(rows), first, last),
        )
        db.executemany(
            "INSERT OR REPLACE INTO batch_rows (position, chunk, custom_id) VALUES (?, ?, ?)",
            [(p, number, c) for p, c in rows],
        )
    return Chunk(number, key, None, PENDING, len(rows), first, last)


def chunk_rows(ckpt: Checkpoint, chunk: int) -> dict[str, int]:
    """custom_id → position for the rows of one chunk."""
    return dict(
        ckpt.db.execute("SELECT custom_id, position FROM batch_rows WHERE chunk=?", (chunk,))
    )


def chunk_positions(ckpt: Checkpoint, chunk: int) -> list[int]:
    return [
        r[0]
        for r in ckpt.db.execute(
            "SELECT position FROM batch_rows WHERE chunk=? ORDER BY position", (chunk,)
        )
    ]


def mark_doubt(ckpt: Checkpoint, chunk: Chunk) -> int:
    """Count a pending chunk's rows as possibly charged twice (once over every run);
    returns how many were newly counted."""
    with ckpt.transaction() as db:
        changed = db.execute(
            "UPDATE batches SET in_doubt=1 WHERE chunk=? AND in_doubt=0", (chunk.chunk,)
        ).rowcount
        if not changed:
            return 0
        row = db.execute("SELECT value FROM meta WHERE key='possibly_charged_twice'").fetchone()
        total = int(json.loads(row[0]) if row else 0) + chunk.rows
        db.execute(
            "INSERT OR REPLACE INTO meta VALUES ('possibly_charged_twice', ?)", (json.dumps(total),)
        )
    chunk.in_doubt = True
    return chunk.rows


def set_batch(
    ckpt: Checkpoint, chunk: Chunk, batch_id: str, status: str, counts: dict[str, int]
) -> None:
    """Commit the id the create answered with: from now on the rerun polls, never creates."""
    with ckpt.transaction() as db:
        db.execute(
            "UPDATE batches SET batch_id=?, state=?, status=?, counts=? WHERE chunk=?",
            (batch_id, OPEN, status, json.dumps(counts), chunk.chunk),
        )
    chunk.batch_id, chunk.state, chunk.status, chunk.counts = batch_id, OPEN, status, counts


def set_status(ckpt: Checkpoint, chunk: Chunk, status: str, counts: dict[str, int]) -> None:
    with ckpt.transaction() as db:
        db.execute(
            "UPDATE batches SET status=?, counts=? WHERE chunk=?",
            (status, json.dumps(counts), chunk.chunk),
        )
    chunk.status, chunk.counts = status, counts


def set_done(ckpt: Checkpoint, chunk: Chunk, counts: dict[str, int] | None, final: str) -> None:
    """The chunk's rows are all recorded; ``counts``: the request counts it ended with,
    ``final``: how it ended (one of FINAL_STATES)."""
    with ckpt.transaction() as db:
        db.execute(
            "UPDATE batches SET state=?, status=?, counts=coalesce(?, counts) WHERE chunk=?",
            (DONE, final, None if counts is None else json.dumps(counts), chunk.chunk),
        )
    chunk.state, chunk.status = DONE, final
    if counts is not None:
        chunk.counts = counts


def forget_unanswered(db: sqlite3.Connection) -> None:
    """Rows of finished chunks without a result (--retry-failed took it away) are free to
    be sent again, in a new chunk or live (in the caller's transaction)."""
    db.execute(
        "DELETE FROM batch_rows WHERE position NOT IN (SELECT position FROM results)"
        " AND chunk IN (SELECT chunk FROM batches WHERE state=?)",
        (DONE,),
    )


def batch_summary(ckpt: Checkpoint) -> dict[str, Any]:
    """What the summary says of the job's batches: how many in each state, with the
    provider's last seen status for open ones and how it ended for done ones (``done
    (canceled)``), and the chunks counted as possibly created twice."""
    states: dict[str, int] = {}
    for state, status, n in ckpt.db.execute(
        "SELECT state, coalesce(status, ''), count(*) FROM batches GROUP BY 1, 2"
    ):
        if state == OPEN:
            label = f"open ({status or 'unknown'})"
        elif state == DONE and status in FINAL_STATES:
            label = f"done ({status})"
        else:
            label = state
        states[label] = states.get(label, 0) + n
    doubt = [c.name() for c in chunks(ckpt) if c.in_doubt]
    return {"batches": states, "batches_in_doubt": doubt}


def check_mode(mode: str, ckpt: Checkpoint) -> None:
    """A live run must not send rows that open batches may still answer (paying twice)."""
    waiting = open_chunks(ckpt)
    if mode == "live" and waiting:
        raise CheckpointError(
            f"the checkpoint in {ckpt.dir} has {waiting} batch(es) not finished",
            hint="rerun with --mode batch to collect them, or cancel them (batchrun cancel) "
            "and rerun with --mode batch",
        )
