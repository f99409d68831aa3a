"""The journal: a checkpoint from another journal version is refused, never reused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from batchrun.checkpoint import JOURNAL_VERSION, Checkpoint
from batchrun.errors import CheckpointError


def test_a_journal_of_another_version_stops_with_exit_5_and_a_way_out(tmp_path: Path) -> None:
    ckpt = Checkpoint(tmp_path / "out.checkpoint")
    ckpt.lock()
    assert ckpt.open() is False
    ckpt.close()
    db = sqlite3.connect(ckpt.path)
    with db:
        db.execute("UPDATE meta SET value='1' WHERE key='journal_version'")
    db.close()
    assert JOURNAL_VERSION != "1"
    again = Checkpoint(tmp_path / "out.checkpoint")
    again.lock()
    with pytest.raises(CheckpointError) as err:
        again.open()
    again.close()
    assert err.value.exit_code == 5
    assert "journal version 1" in err.value.message
    assert err.value.hint is not None and "--restart" in err.value.hint


def test_reopening_a_journal_of_this_version_keeps_it(tmp_path: Path) -> None:
    ckpt = Checkpoint(tmp_path / "out.checkpoint")
    ckpt.lock()
    ckpt.open()
    ckpt.set_meta(fingerprint={"model": "m"})
    ckpt.close()
    again = Checkpoint(tmp_path / "out.checkpoint")
    again.lock()
    assert again.open() is True
    assert again.get_meta("fingerprint") == {"model": "m"}
    again.close()
