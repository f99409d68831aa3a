"""The response cache: answers kept across runs, several writers at once, never a key."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchrun.cache import FILE_NAME, ResponseCache, cache_key
from batchrun.errors import UsageError
from batchrun.records import Completion
from tests.conftest import ROOT, run_cli
from tests.test_hostile_servers import KEY, Hostile, _leaks, _run, server  # noqa: F401


def _answer(text: str) -> Completion:
    return Completion(text, "stop", None, 3, 2, 5, "m", "r1", reasoning_content="why")


def test_a_kept_answer_is_served_and_the_key_holds_url_and_body(tmp_path: Path) -> None:
    c = ResponseCache(tmp_path / "c")
    c.open()
    k = cache_key("http://h/v1/", b'{"a":1}')
    assert k == cache_key("http://h/v1", b'{"a":1}')  # a trailing slash is the same URL
    assert k != cache_key("http://other/v1", b'{"a":1}') != cache_key("http://h/v1", b'{"a":2}')
    assert c.get(k) is None
    c.put(k, _answer("yes"))
    c.flush()
    got = c.get(k)
    assert got is not None and (got.text, got.total_tokens, got.reasoning_content) == (
        "yes",
        5,
        "why",
    )
    assert c.stats().entries == 1
    c.close()


def test_modes(tmp_path: Path) -> None:
    rw = ResponseCache(tmp_path)
    rw.open()
    rw.put(b"k", _answer("old"))
    rw.put(b"k", _answer("ignored: the first answer stays"))
    rw.close()
    ro = ResponseCache(tmp_path, "read-only")
    ro.open()
    ro.put(b"k2", _answer("never"))
    ro.close()
    refresh = ResponseCache(tmp_path, "refresh")
    refresh.open()
    assert refresh.get(b"k") is None  # refresh never serves
    refresh.put(b"k", _answer("new"))
    refresh.close()
    check = ResponseCache(tmp_path, "read-only")
    check.open()
    assert check.get(b"k2") is None
    answer = check.get(b"k")
    assert answer is not None and answer.text == "new"
    check.close()


def test_clear_everything_or_what_is_older_than_some_days(tmp_path: Path) -> None:
    c = ResponseCache(tmp_path)
    c.open()
    for i in range(10):
        c.put(f"k{i}".encode(), _answer(str(i)))
    c.flush()
    c.db.execute("UPDATE answers SET created_at = ? WHERE key IN (?, ?, ?)",
                 (time.time() - 3 * 86400, b"k0", b"k1", b"k2"))  # fmt: skip
    assert c.clear(older_than_days=2) == 3
    assert c.stats().entries == 7
    assert c.clear() == 7 and c.stats().entries == 0
    c.close()


def test_the_cli_shows_and_clears_and_names_a_missing_cache(tmp_path: Path) -> None:
    c = ResponseCache(tmp_path / "c")
    c.open()
    for i in range(4):
        c.put(f"k{i}".encode(), _answer(str(i)))
    c.close()
    stats = run_cli("cache", "stats", str(tmp_path / "c"))
    assert stats.returncode == 0 and "4 answers" in stats.stdout and "m 4" in stats.stdout
    cleared = run_cli("cache", "clear", str(tmp_path / "c"), "--older-than", "30")
    assert cleared.returncode == 0 and "removed 0 answers older than 30 days" in cleared.stdout
    assert "removed 4 answers" in run_cli("cache", "clear", str(tmp_path / "c")).stdout
    missing = run_cli("cache", "stats", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no response cache in" in missing.stderr
    assert "Traceback" not in missing.stderr and not (tmp_path / "nope").exists()
    bad = run_cli("cache", "clear", str(tmp_path / "c"), "--older-than", "-1")
    assert bad.returncode == 2


def test_a_damaged_cache_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(UsageError) as err:
        ResponseCache(tmp_path).open()
    assert err.value.exit_code == 2 and "cache.sqlite" in err.value.message


_WRITER = """
import sys, time
from pathlib import Path
import batchrun.cache
from batchrun.cache import ResponseCache
from batchrun.records import Completion
batchrun.cache.FLUSH_EVERY = 1  # a transaction an answer: the writers must meet
c = ResponseCache(Path(sys.argv[1]))
c.open()
me = sys.argv[2]
Path(sys.argv[1], "ready-" + me).touch()  # imported and open: the test may start both
while not Path(sys.argv[1], "go").exists():
    time.sleep(0.01)
start = time.time()
for i in range(2000):
    key = (f"shared-{i}" if i % 4 == 0 else f"{me}-{i}").encode()
    c.put(key, Completion(f"{me} {i}", "stop", None, 1, 1, 2, "m", None))
    if i % 7 == 0:
        c.get(b"shared-0")
c.close()
print(start, time.time())
"""


def test_two_processes_writing_one_cache_at_once_lose_nothing(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path), name],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    # Start both only once both have imported and opened the cache: on a loaded machine a
    # fixed sleep let one writer finish before the other had even started.
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{n}").exists() for n in ("a", "b")):
        assert time.monotonic() < deadline, "the writers never got ready"
        assert all(p.poll() is None for p in procs), "a writer died before it was ready"
        time.sleep(0.01)
    (tmp_path / "go").touch()
    spans = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        spans.append(tuple(map(float, out.split())))
    (a0, a1), (b0, b1) = spans
    assert a0 < b1 and b0 < a1, "the writers did not overlap: the test proves nothing"
    c = ResponseCache(tmp_path)
    c.open()
    assert c.stats().entries == 2 * 1500 + 500  # each process's own, and the shared once
    c.close()
    with sqlite3.connect(tmp_path / FILE_NAME) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("mode", ["content", "model_and_id", "tool_calls"])
def test_the_key_never_reaches_the_cache(server: Hostile, tmp_path: Path, mode: str) -> None:  # noqa: F811
    server.mode = mode
    cache = tmp_path / "cache"
    proc, _ = _run(tmp_path, server.url, "--cache", str(cache))
    assert proc.returncode in (0, 3), proc.stderr
    assert server.echoed >= 1, "the server never echoed the key: the test proves nothing"
    blobs = {str(p): p.read_bytes() for p in cache.rglob("*") if p.is_file()}
    c = ResponseCache(cache)
    c.open()
    assert c.stats().entries >= 1  # answers were kept (redacted), so the scan means something
    blobs["values"] = repr(c.db.execute("SELECT * FROM answers").fetchall()).encode()
    c.close()
    assert _leaks(KEY, blobs) == []
