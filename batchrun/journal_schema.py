"""The journal's tables as this batchrun writes them, and how an older journal's are
brought up to date (:class:`batchrun.checkpoint.Checkpoint` applies both)."""

from __future__ import annotations

from batchrun.records import RESULT_COLUMNS

JOURNAL_VERSION = "9"
#: How an older journal becomes the current one (in one transaction), rather than being
#: refused: refusing would leave --restart, which pays for every row again. Result columns
#: an older journal lacks are added by :meth:`Checkpoint.open` (null in earlier rows): 2
#: added reported_cost_usd, 4 reasoning_content, 5 client_request_id, inference_id and
#: credits_used, 6 served_by and cached (and the followers table, made by the schema
#: script), 8 arguments (and the reasks table), 9 max_tokens (a row's own, for budgets on
#: resume). 3 counts each in-flight mark once as
#: possibly charged twice. 7 adds the batch tables (see batchjournal): a batchrun that
#: knows no batches must refuse it.
ADD_COUNTED = "ALTER TABLE inflight ADD COLUMN counted INTEGER NOT NULL DEFAULT 0"
MIGRATIONS: dict[str, tuple[str, ...]] = {
    "1": (ADD_COUNTED,),
    "2": (ADD_COUNTED,),
    "3": (),
    "4": (),
    "5": (),
    "6": (),
    "7": (),
    "8": (),
}

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    position INTEGER PRIMARY KEY,
    {", ".join(RESULT_COLUMNS)}
);
CREATE TABLE IF NOT EXISTS inflight (
    position INTEGER PRIMARY KEY, idempotency_key TEXT NOT NULL,
    -- 1 once a run has counted the row as possibly charged twice (it is counted once)
    counted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS followers (position INTEGER PRIMARY KEY, leader INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS reasks (
    position INTEGER PRIMARY KEY, state TEXT NOT NULL,
    -- what the row's earlier answers used, for budgets on resume
    prompt_tokens INTEGER, completion_tokens INTEGER
);
"""

#: Rows that paid for their own answer (not served by dedupe or the cache). ``cached`` is
#: null in rows recorded before journal version 5.
PAID = "served_by IS NULL AND NOT coalesce(cached, 0)"
