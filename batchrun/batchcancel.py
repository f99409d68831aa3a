"""``batchrun cancel``: cancel the open batches of a job (``--mode batch``).

It reads the journal (read-only: a run polling the same batches may hold the lock) and asks
the API to cancel every batch whose id is recorded and whose results are not. The requests
not yet processed end ``canceled``; the next run (or the one polling) records them as
``batch_canceled`` error rows, which ``--retry-failed`` sends again.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from batchrun.batchjournal import OPEN, PENDING
from batchrun.batchmode import make_client
from batchrun.checks import check_base_url
from batchrun.errors import CheckpointError, SendFailed, UsageError
from batchrun.send.transport import HttpTransport


def open_batches(
    checkpoint: Path, output: str
) -> tuple[str, str, list[tuple[str, str | None, str]]]:
    """(base URL, batch API shape, [(chunk name, batch id, state)]) of the job writing
    ``output``, whose journal is in ``checkpoint`` (the job's ``checkpoint_dir``: beside a
    local output, on the local disk for one in object storage)."""
    journal = checkpoint / "journal.sqlite"
    if not journal.is_file():
        raise UsageError(
            f"{output} has no checkpoint ({journal} not found)",
            hint="name the OUTPUT of a batch run",
        )
    try:
        db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM meta WHERE key='fingerprint'").fetchone()
            api = db.execute("SELECT value FROM meta WHERE key='batch_api'").fetchone()
            rows = db.execute(
                "SELECT chunk, first_position, last_position, batch_id, state FROM batches"
                " WHERE state IN (?, ?) ORDER BY chunk",
                (PENDING, OPEN),
            ).fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise CheckpointError(f"checkpoint {journal} is unreadable ({exc})") from None
    if row is None:
        raise CheckpointError(f"checkpoint {journal} holds no job")
    base_url = str(json.loads(row[0])["base_url"])
    return (
        base_url,
        json.loads(api[0]) if api else "gateway",
        [(f"chunk {c} (rows {a}-{b})", bid, state) for c, a, b, bid, state in rows],
    )


async def cancel_batches(
    checkpoint: Path,
    output: str,
    api_key: str,
    *,
    base_url: str | None = None,
    api_key_env: str = "",
) -> list[str]:
    """Cancel the open batches of the job writing ``output`` (its journal in
    ``checkpoint``); one line of news each."""
    recorded_url, api, batches = open_batches(checkpoint, output)
    url = base_url or recorded_url
    check_base_url(url, api_key_env)
    if not batches:
        return ["no open batches"]
    lines: list[str] = []
    async with HttpTransport(url, api_key, concurrency=2, timeout_s=120.0) as transport:
        client = make_client(api, transport, api_key)
        for name, bid, _state in batches:
            if bid is None:
                lines.append(
                    f"{name}: its create was not answered when a run stopped (no id recorded);"
                    " rerun the job to learn its id, then cancel"
                )
                continue
            try:
                status = await client.cancel(bid)
            except SendFailed as exc:
                lines.append(f"{name} {bid}: not canceled: {exc.message}")
                continue
            lines.append(f"{name} {bid}: {status.processing_status}")
    return lines
