"""The journal across batchrun versions: an older journal is migrated in place, an unknown
one refused, never silently reused or thrown away."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from batchrun.batchjournal import open_chunks, record_chunk
from batchrun.budget import recorded_cost, unknown_usage
from batchrun.checkpoint import JOURNAL_VERSION, RESULT_COLUMNS, Checkpoint
from batchrun.errors import CheckpointError
from batchrun.pricing import PriceTable
from batchrun.records import RowResult


def _journal(tmp_path: Path) -> Checkpoint:
    ckpt = Checkpoint(tmp_path / "out.checkpoint")
    ckpt.lock()
    assert ckpt.open() is False
    return ckpt


def _closed_journal(tmp_path: Path, *statements: str | tuple[str, tuple[object, ...]]) -> None:
    """A fresh journal, closed, then changed behind batchrun's back by ``statements``
    (SQL, or SQL with its parameters)."""
    ckpt = _journal(tmp_path)
    ckpt.close()
    db = sqlite3.connect(ckpt.path)
    with db:
        for st in statements:
            sql, params = (st, ()) if isinstance(st, str) else st
            db.execute(sql, params)
    db.close()


def _reopen(tmp_path: Path) -> Checkpoint:
    again = Checkpoint(tmp_path / "out.checkpoint")
    again.lock()
    return again


def test_a_version_1_journal_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    # What batchrun 1 left: no reported_cost_usd column, version 1, one finished row.
    cols = ("position", *RESULT_COLUMNS[: RESULT_COLUMNS.index("finished_at") + 1])
    later = RESULT_COLUMNS[len(cols) - 1 :]
    values = (0, "ok", "yes", "stop", "stop", None, 3, 1, 4, "m", "r0", 1, 5.0, None, None, 1.0)
    assert len(values) == len(cols)
    _closed_journal(
        tmp_path,
        "ALTER TABLE results DROP COLUMN max_tokens",
        "ALTER TABLE results DROP COLUMN arguments",
        "ALTER TABLE results DROP COLUMN cached",
        "ALTER TABLE results DROP COLUMN served_by",
        "ALTER TABLE results DROP COLUMN credits_used",
        "ALTER TABLE results DROP COLUMN inference_id",
        "ALTER TABLE results DROP COLUMN client_request_id",
        "ALTER TABLE results DROP COLUMN reasoning_content",
        "ALTER TABLE results DROP COLUMN reported_cost_usd",
        "ALTER TABLE inflight DROP COLUMN counted",
        "DROP TABLE followers",
        "INSERT INTO inflight VALUES (5, 'key-5')",
        "UPDATE meta SET value='1' WHERE key='journal_version'",
        (f"INSERT INTO results ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", values),
    )
    again = _reopen(tmp_path)
    assert again.open() is True
    assert again.get_meta("journal_version") == int(JOURNAL_VERSION)
    rows = again.results_between(0, 10)
    assert len(rows) == 1 and rows[0][:3] == (0, "ok", "yes")
    assert rows[0][len(cols) :] == (None,) * len(later)
    # New rows go in with the new columns.
    again.write(
        [],
        [
            RowResult(
                position=1,
                status="ok",
                completion="no",
                finished_at=2.0,
                reported_cost_usd=0.5,
                reasoning_content="because",
                inference_id="inf-1",
                credits_used=1000,
            )
        ],
    )
    new = dict(zip(RESULT_COLUMNS, again.results_between(1, 2)[0][1:], strict=True))
    assert (new["reported_cost_usd"], new["reasoning_content"]) == (0.5, "because")
    assert (new["inference_id"], new["credits_used"]) == ("inf-1", 1000)
    assert again.aggregate(10)["rows"] == 2
    assert again.inflight_keys() == {5: "key-5"}
    assert again.count_possibly_charged_twice(below=10) == 1
    again.close()


def test_each_in_flight_mark_is_counted_once_as_possibly_charged_twice(tmp_path: Path) -> None:
    ckpt = _journal(tmp_path)
    ckpt.write([(1, "k1"), (2, "k2"), (30, "k30")], [])
    assert ckpt.count_possibly_charged_twice(below=10) == 2  # 30 is beyond --limit 10
    assert ckpt.count_possibly_charged_twice(below=10) == 2  # a rerun counts them no more
    ckpt.write([(3, "k3")], [])  # a new send in flight at the next crash
    assert ckpt.count_possibly_charged_twice(below=10) == 3
    assert ckpt.count_possibly_charged_twice(below=100) == 4  # 30 once the limit admits it
    ckpt.close()


def test_a_version_2_journal_gains_the_counted_column(tmp_path: Path) -> None:
    _closed_journal(
        tmp_path,
        "ALTER TABLE inflight DROP COLUMN counted",
        "UPDATE meta SET value='2' WHERE key='journal_version'",
        "INSERT INTO inflight VALUES (3, 'key-3')",
    )
    again = _reopen(tmp_path)
    assert again.open() is True
    assert again.get_meta("journal_version") == int(JOURNAL_VERSION)
    assert again.count_possibly_charged_twice(below=10) == 1
    assert again.count_possibly_charged_twice(below=10) == 1
    again.close()


def test_a_version_6_journal_gains_the_batch_tables_and_is_priced_at_list_price(
    tmp_path: Path,
) -> None:
    _closed_journal(
        tmp_path,
        "DROP TABLE batch_rows",
        "DROP TABLE batches",
        "UPDATE meta SET value='6' WHERE key='journal_version'",
        "INSERT INTO results (position, status, model, prompt_tokens, completion_tokens)"
        " VALUES (0, 'ok', 'anthropic/claude-3-opus', 1000000, 0)",
    )
    again = _reopen(tmp_path)
    assert again.open() is True
    assert again.get_meta("journal_version") == int(JOURNAL_VERSION) == 9
    assert open_chunks(again) == 0
    prices = PriceTable.default()
    assert recorded_cost(again, prices, "anthropic/claude-3-opus", 10) == 15.0
    # A row answered through a batch is priced at the batch rate.
    record_chunk(again, "k", [(0, "r0")])
    assert recorded_cost(again, prices, "anthropic/claude-3-opus", 10) == 7.5
    again.close()


def test_a_version_8_journal_gains_max_tokens_and_its_rows_are_booked_at_the_jobs(
    tmp_path: Path,
) -> None:
    # Two ok rows without usage, stopped for length: each is booked at its whole max_tokens.
    _closed_journal(
        tmp_path,
        "ALTER TABLE results DROP COLUMN max_tokens",
        "UPDATE meta SET value='8' WHERE key='journal_version'",
        "INSERT INTO results (position, status, completion, finish_reason_normalized)"
        " VALUES (0, 'ok', 'cut', 'length')",
    )
    again = _reopen(tmp_path)
    assert again.open() is True
    assert again.get_meta("journal_version") == int(JOURNAL_VERSION)
    again.write(
        [],
        [
            RowResult(
                position=1,
                status="ok",
                completion="cut",
                finish_reason_normalized="length",
                finished_at=1.0,
                max_tokens=400,
            )
        ],
    )
    # The older row at the job's max_tokens (all that is known of it), the new at its own.
    assert unknown_usage(again, 10, 16) == (2, 16 + 400)
    again.close()


def test_a_journal_of_an_unknown_version_stops_with_exit_5_and_a_way_out(tmp_path: Path) -> None:
    _closed_journal(tmp_path, "UPDATE meta SET value='99' WHERE key='journal_version'")
    again = _reopen(tmp_path)
    with pytest.raises(CheckpointError) as err:
        again.open()
    again.close()
    assert err.value.exit_code == 5
    assert "journal version 99" in err.value.message
    assert err.value.hint is not None and "--restart" in err.value.hint


def test_reopening_a_journal_of_this_version_keeps_it(tmp_path: Path) -> None:
    ckpt = _journal(tmp_path)
    ckpt.set_meta(fingerprint={"model": "m"})
    ckpt.close()
    again = _reopen(tmp_path)
    assert again.open() is True
    assert again.get_meta("fingerprint") == {"model": "m"}
    again.close()
