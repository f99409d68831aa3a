"""Dedupe's pieces: the compared body, the plan (follower → leader), the bookkeeping."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from batchrun.dedupe import Followers, digest, find_followers, request_body
from batchrun.errors import UsageError
from batchrun.images import ImageRef
from batchrun.records import Request, RowResult
from batchrun.send import ChatCompletions
from batchrun.settings import job_from_settings, resolve_settings
from tests.conftest import run_cli, write_jsonl


def _request(content: str, **params: object) -> Request:
    return Request(
        position=0,
        messages=[{"role": "user", "content": content}],
        params={"model": "m", "max_tokens": 8, **params},
        max_tokens=8,
        prompt_tokens=3,
    )


def test_the_body_compared_is_the_wire_body_with_sorted_keys_and_no_stream_flag() -> None:
    dialect = ChatCompletions()
    plain = request_body(dialect, _request("hi", temperature=0))
    assert request_body(dialect, _request("hi", temperature=0, stream=True)) == plain
    reordered = Request(0, [{"content": "hi", "role": "user"}],
                        {"temperature": 0, "max_tokens": 8, "model": "m"}, 8, 3)  # fmt: skip
    assert request_body(dialect, reordered) == plain
    # Every parameter, and the message, is part of it.
    for other in (
        _request("hi", temperature=0.5),
        _request("hi", temperature=0, top_p=0.9),
        _request("hi!", temperature=0),
        Request(
            0,
            [{"role": "user", "content": "hi"}],
            {"model": "m", "max_tokens": 9, "temperature": 0},
            9,
            3,
        ),
    ):
        assert digest(request_body(dialect, other)) != digest(plain)
    # A system prompt sent as a message is the body that goes.
    as_message = request_body(ChatCompletions(system_as_message=True), _request("hi", system="s"))
    assert b'"role":"system"' in as_message and b'"system":"s"' not in as_message
    # Integers beyond 64 bits are written by the standard library, not refused.
    assert b"18446744073709551616" in request_body(dialect, _request("hi", metadata={"n": 2**64}))


def test_followers_are_every_later_row_with_a_digest_and_their_leader_the_first() -> None:
    rng = random.Random(4)
    keys = [rng.randrange(50) for _ in range(1_000)]
    digests = b"".join(digest(str(k).encode()) for k in keys)
    followers, leaders = find_followers(digests, len(keys))
    first: dict[int, int] = {}
    expected = []
    for i, k in enumerate(keys):
        if k in first:
            expected.append((i, first[k]))
        else:
            first[k] = i
    assert list(zip(followers, leaders, strict=True)) == expected
    distinct = b"".join(digest(str(i).encode()) for i in range(100))
    assert find_followers(distinct, 100) == ([], [])
    assert find_followers(digest(b"x"), 1) == ([], [])


def _ok(position: int, text: str) -> RowResult:
    return RowResult(position=position, status="ok", completion=text, attempts=1, latency_ms=5.0,
                     prompt_tokens=3, completion_tokens=2, total_tokens=5, reported_cost_usd=0.1)  # fmt: skip


def test_followers_wait_for_a_leader_in_flight_and_its_answer_is_kept_only_while_needed() -> None:
    f = Followers({2: 0, 3: 0, 5: 0, 4: 1})
    f.sending(0)
    assert f.wait_for(2, 0) and f.wait_for(3, 0)
    served = f.finished(0, _ok(0, "yes"))
    assert [(r.position, r.served_by, r.completion) for r in served] == [
        (2, 0, "yes"),
        (3, 0, "yes"),
    ]
    assert all(
        r.attempts == 0 and r.latency_ms is None and r.reported_cost_usd is None for r in served
    )
    assert all(r.total_tokens == 5 for r in served)  # the answer's usage, not billed again
    assert f.answer_of(0) is not None  # row 5 is still to come
    late = f.serve(5, 0, f.answers[0])
    assert late.served_by == 0 and f.answer_of(0) is None
    # A leader left for the next run leaves its followers too.
    f.sending(1)
    assert f.wait_for(4, 1)
    assert f.finished(1, None) == [] and 1 in f.left


def test_dedupe_is_on_at_temperature_0_unless_told_and_the_settings_are_checked(
    tmp_path: Path,
) -> None:
    base = {"input": str(tmp_path / "in.jsonl")}
    assert job_from_settings({**base, "temperature": 0}).dedupe_enabled
    assert not job_from_settings({**base, "temperature": 0.7}).dedupe_enabled
    assert not job_from_settings(base).dedupe_enabled  # the server's default temperature
    assert job_from_settings({**base, "temperature": 0.7, "dedupe": True}).dedupe_enabled
    assert not job_from_settings({**base, "temperature": 0, "dedupe": False}).dedupe_enabled
    with pytest.raises(UsageError, match="dedupe must be true or false"):
        job_from_settings({**base, "dedupe": "yes"})
    with pytest.raises(UsageError, match="cache_mode must be one of"):
        job_from_settings({**base, "cache": "c", "cache_mode": "write-only"})
    job_file = tmp_path / "jobs" / "j.toml"
    job_file.parent.mkdir()
    job_file.write_text('input = "in.jsonl"\ncache = "../cache"\ncache_mode = "read-only"\n')
    job = job_from_settings(resolve_settings(job_file, {}))
    assert job.cache_dir == tmp_path / "cache" and job.cache_mode == "read-only"


def test_rows_with_the_same_text_and_other_images_are_other_requests(tmp_path: Path) -> None:
    # The images are read only when a row is sent, so the encoded body lacks them: the
    # compared body must still tell them apart (else one row's answer goes to another's).
    dialect = ChatCompletions()
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(png + b"a")
    b.write_bytes(png + b"b")

    def with_images(*refs: ImageRef) -> bytes:
        request = _request("what is in the picture?", temperature=0)
        return digest(request_body(dialect, dataclasses.replace(request, images=refs)))

    text_only = with_images()
    by_path = {p: with_images(ImageRef("path", str(p), p.name)) for p in (a, b)}
    assert len({text_only, *by_path.values()}) == 3
    assert with_images(ImageRef("path", str(a), "a.png")) == by_path[a]  # the same file
    # Bytes (a Parquet binary column) and data URLs by their content.
    assert with_images(ImageRef("bytes", png, "")) == with_images(ImageRef("bytes", png, "x"))
    assert with_images(ImageRef("bytes", png, "")) != with_images(ImageRef("bytes", png + b"!", ""))
    url = "data:image/png;base64,AAAA"
    assert with_images(ImageRef("data", url, "")) != with_images(ImageRef("data", url + "BB", ""))
    assert with_images(ImageRef("url", "https://x/1.png", "")) != with_images(
        ImageRef("url", "https://x/2.png", "")
    )
    # A file edited between runs is another image (the cache must miss).
    before = by_path[a]
    a.write_bytes(png + b"edited")
    assert with_images(ImageRef("path", str(a), "a.png")) != before


@pytest.mark.e2e
def test_rows_with_one_prompt_and_other_per_row_max_tokens_are_other_requests(
    tmp_path: Path, sim_factory: Any
) -> None:
    # A per-row parameter changes the body that goes: the rows must not share an answer.
    sim = sim_factory(record_bodies=True)
    rows = [
        {"id": "a", "prompt": "Label this.", "opts": {"max_tokens": 16}},
        {"id": "b", "prompt": "Label this.", "opts": {"max_tokens": 32}},
        {"id": "c", "prompt": "Label this.", "opts": {"max_tokens": 16}},  # repeats row a
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    proc = run_cli(
        "run", "--input", str(src), "--output", str(out), "--base-url", sim.url,
        "--temperature", "0", "--params-column", "opts", "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sim.stats.requests == 2
    assert sorted(b["body"]["max_tokens"] for b in sim.stats.bodies) == [16, 32]
    got = pq.read_table(out).to_pylist()
    assert [g["served_by"] for g in got] == [None, None, 0]
