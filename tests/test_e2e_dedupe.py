"""Dedupe and the response cache end to end: the real CLI against the real simulator on
127.0.0.1, whose request counter proves what was sent."""

from __future__ import annotations

import json
import random
import re
import sqlite3
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from batchrun.pricing import PriceTable
from batchrun.simulate import completion_for
from tests.conftest import ROOT, kill_at_random_moments, run_cli, write_jsonl

pytestmark = pytest.mark.e2e


def repeating_rows(n: int, repeat_share: float = 0.4, seed: int = 3) -> list[dict[str, Any]]:
    """``n`` rows of which about ``repeat_share`` repeat the prompt of an earlier row."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    distinct = 0
    for i in range(n):
        if i and rng.random() < repeat_share:
            prompt = rows[rng.randrange(i)]["prompt"]
        else:
            prompt = f"Label item {distinct} in one word."
            distinct += 1
        rows.append({"id": f"r{i:05d}", "prompt": prompt})
    return rows


def first_positions(rows: list[dict[str, Any]]) -> dict[str, int]:
    first: dict[str, int] = {}
    for i, r in enumerate(rows):
        first.setdefault(r["prompt"], i)
    return first


def expected_text(prompt: str, **params: Any) -> str:
    body = {
        "model": "anthropic/claude-3-opus",
        "max_tokens": 512,
        **params,
        "messages": [{"role": "user", "content": prompt}],
    }
    return completion_for(body)[0]


def run(src: Path, out: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "run", "--input", str(src), "--output", str(out), "--base-url", url,
        "--concurrency", "32", "--quiet", *extra,
    )  # fmt: skip


def summary_of(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(out.with_suffix(".summary.json").read_text())
    return data


def check_served(out: Path, rows: list[dict[str, Any]], **params: Any) -> list[dict[str, Any]]:
    """Every row has the answer its own prompt gets, and served_by names the first row with
    its prompt (null on that row itself)."""
    got = pq.read_table(out).to_pylist()
    assert [g["id"] for g in got] == [r["id"] for r in rows]
    first = first_positions(rows)
    texts: dict[str, str] = {}
    for i, (g, r) in enumerate(zip(got, rows, strict=True)):
        prompt = r["prompt"]
        if prompt not in texts:
            texts[prompt] = expected_text(prompt, **params)
        assert g["status"] == "ok", g
        assert g["completion"] == texts[prompt], (i, g)
        leader = first[prompt]
        assert g["served_by"] == (None if leader == i else leader), (i, g["served_by"], leader)
        if g["served_by"] is not None:
            assert g["attempts"] == 0 and g["latency_ms"] is None and g["cached"] is False
    return got


def test_ten_thousand_rows_with_40_percent_repeats_send_one_request_per_distinct_prompt(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory()
    rows = repeating_rows(10_000)
    distinct = len(first_positions(rows))
    assert 5_500 <= distinct <= 6_500
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    proc = run(src, out, sim.url, "--temperature", "0")
    assert proc.returncode == 0, proc.stderr
    assert sim.stats.requests == distinct
    got = check_served(out, rows, temperature=0)
    s = summary_of(out)
    assert s["requests_sent"] == distinct
    assert s["rows_served_by_dedupe"] == len(rows) - distinct
    assert s["rows_served_by_cache"] == 0
    # Tokens and cost count the rows that paid; the followers' are saved.
    paid = [g for g in got if g["served_by"] is None]
    assert s["total_tokens"] == sum(g["total_tokens"] for g in paid)
    assert s["prompt_tokens"] == sim.stats.prompt_tokens
    assert s["tokens_saved"] == sum(g["total_tokens"] for g in got if g["served_by"] is not None)
    assert s["estimated_cost_saved_usd"] > 0
    assert "by dedupe" in proc.stdout
    # The report says the same from the output alone.
    report = run_cli("report", str(out))
    assert report.returncode == 0, report.stderr
    served_line = next(x for x in report.stdout.splitlines() if "served by dedupe" in x)
    assert served_line.split()[-1] == f"{len(rows) - distinct:,}"


def test_at_temperature_0_7_each_row_is_sent_unless_dedupe_is_forced(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory()
    rows = repeating_rows(2_000, seed=5)
    distinct = len(first_positions(rows))
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    proc = run(src, tmp_path / "a.parquet", sim.url, "--temperature", "0.7")
    assert proc.returncode == 0, proc.stderr
    assert sim.stats.requests == len(rows)
    assert pq.read_table(tmp_path / "a.parquet").column("served_by").null_count == len(rows)
    forced = run(src, tmp_path / "b.parquet", sim.url, "--temperature", "0.7", "--dedupe")
    assert forced.returncode == 0, forced.stderr
    assert sim.stats.requests == len(rows) + distinct
    check_served(tmp_path / "b.parquet", rows, temperature=0.7)
    # --no-dedupe at temperature 0 sends every row.
    off = run(src, tmp_path / "c.parquet", sim.url, "--temperature", "0", "--no-dedupe")
    assert off.returncode == 0, off.stderr
    assert sim.stats.requests == 2 * len(rows) + distinct


def test_a_second_run_with_the_cache_sends_nothing_and_max_tokens_changes_the_key(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory()
    rows = repeating_rows(1_000, seed=11)
    distinct = len(first_positions(rows))
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    cache = tmp_path / "cache"
    first = run(src, tmp_path / "one.parquet", sim.url, "--temperature", "0", "--cache", str(cache))
    assert first.returncode == 0, first.stderr
    assert sim.stats.requests == distinct
    second = run(
        src, tmp_path / "two.parquet", sim.url, "--temperature", "0", "--cache", str(cache)
    )
    assert second.returncode == 0, second.stderr
    assert sim.stats.requests == distinct  # zero requests
    one = pq.read_table(tmp_path / "one.parquet").to_pylist()
    two = check_served(tmp_path / "two.parquet", rows, temperature=0)
    assert [r["completion"] for r in one] == [r["completion"] for r in two]
    # Leaders came from the cache; followers from their leader, as in the first run.
    assert all(t["cached"] == (t["served_by"] is None) for t in two)
    s = summary_of(tmp_path / "two.parquet")
    assert s["requests_sent"] == 0 and s["total_tokens"] == 0
    assert s["estimated_cost_usd"] == 0
    assert s["rows_served_by_cache"] == distinct
    assert s["tokens_saved"] == sum(r["total_tokens"] for r in one)
    # Without dedupe every row is a cache hit.
    nodd = run(src, tmp_path / "nd.parquet", sim.url, "--no-dedupe", "--temperature", "0",
               "--cache", str(cache))  # fmt: skip
    assert nodd.returncode == 0 and sim.stats.requests == distinct
    assert summary_of(tmp_path / "nd.parquet")["rows_served_by_cache"] == len(rows)
    # Another max_tokens is another request: every row misses.
    third = run(src, tmp_path / "three.parquet", sim.url, "--temperature", "0",
                "--cache", str(cache), "--max-tokens", "64")  # fmt: skip
    assert third.returncode == 0, third.stderr
    assert sim.stats.requests == 2 * distinct
    assert summary_of(tmp_path / "three.parquet")["rows_served_by_cache"] == 0
    # The dry run says what the cache and dedupe would serve.
    dry = run(src, tmp_path / "four.parquet", sim.url, "--temperature", "0",
              "--cache", str(cache), "--dry-run")  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert f"{len(rows) - distinct:,} rows repeat an earlier row's request" in dry.stdout
    assert f"would serve {distinct:,} rows" in dry.stdout
    assert sim.stats.requests == 2 * distinct
    # And what that saves, priced from the first run's output at the model's list prices.
    price = PriceTable.default().get("anthropic/claude-3-opus")
    assert price is not None
    usd_in, usd_out = price.input_per_mtok / 1e6, price.output_per_mtok / 1e6
    leaders = [r for r in one if r["served_by"] is None]
    followers = [r for r in one if r["served_by"] is not None]
    cache_saved = sum(
        r["prompt_tokens"] * usd_in + r["completion_tokens"] * usd_out for r in leaders
    )
    got = re.search(r"would serve [\d,]+ rows \(\$([\d,.]+) at list prices\)", dry.stdout)
    assert got and float(got[1]) == pytest.approx(cache_saved, abs=5e-5), dry.stdout
    dedupe = re.search(r"saves \$([\d,.]+) for the prompts, up to \$([\d,.]+) with the answers",
                       dry.stdout)  # fmt: skip
    assert dedupe, dry.stdout
    prompts, most = float(dedupe[1]), float(dedupe[2])
    # The dry run prices the followers' prompts by the estimate, which counts a token more
    # than the simulator does where a prompt's length is a multiple of 4 characters.
    paid = sum(r["prompt_tokens"] for r in followers) * usd_in
    assert paid - 5e-5 <= prompts <= paid + len(followers) * usd_in + 5e-5
    # "Up to": each follower's answer at --max-tokens (512) on top.
    assert most == pytest.approx(prompts + len(followers) * 512 * usd_out, abs=1e-4)


def test_read_only_adds_nothing_and_refresh_sends_everything(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory()
    rows = [{"id": i, "prompt": f"p{i}"} for i in range(50)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    cache = tmp_path / "cache"
    ro = run(
        src, tmp_path / "a.parquet", sim.url, "--cache", str(cache), "--cache-mode", "read-only"
    )
    assert ro.returncode == 0, ro.stderr
    stats = run_cli("cache", "stats", str(cache))
    assert stats.returncode == 0 and "0 answers" in stats.stdout
    rw = run(src, tmp_path / "b.parquet", sim.url, "--cache", str(cache))
    assert rw.returncode == 0 and sim.stats.requests == 100
    refresh = run(src, tmp_path / "c.parquet", sim.url, "--cache", str(cache),
                  "--cache-mode", "refresh")  # fmt: skip
    assert refresh.returncode == 0 and sim.stats.requests == 150
    assert "50 answers" in run_cli("cache", "stats", str(cache)).stdout
    hit = run(
        src, tmp_path / "d.parquet", sim.url, "--cache", str(cache), "--cache-mode", "read-only"
    )
    assert hit.returncode == 0 and sim.stats.requests == 150


def test_error_answers_are_never_cached_and_a_failed_leader_fails_its_followers(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(error_500_rate=1.0)
    rows = [{"id": i, "prompt": f"same {i % 3}"} for i in range(9)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    cache = tmp_path / "cache"
    out = tmp_path / "out.parquet"
    proc = run(src, out, sim.url, "--temperature", "0", "--cache", str(cache),
               "--max-attempts", "1", "--max-failure-rate", "1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sim.stats.requests == 3
    got = pq.read_table(out).to_pylist()
    assert all(g["status"] == "error" and g["error_type"] == "server_error" for g in got)
    assert [g["served_by"] for g in got] == [None] * 3 + [0, 1, 2] * 2
    assert {g["error"] for g in got[3:]} <= {g["error"] for g in got[:3]}
    assert summary_of(out)["rows_served_by_dedupe"] == 6
    assert "0 answers" in run_cli("cache", "stats", str(cache)).stdout


def test_followers_do_not_count_against_the_token_cap(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory()
    rows = [{"id": i, "prompt": f"label {i % 5}"} for i in range(100)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    # Five requests' worst case (prompt estimate + 16) fits under 200; a hundred would not.
    proc = run(src, tmp_path / "out.parquet", sim.url, "--temperature", "0",
               "--max-tokens", "16", "--max-tokens-total", "200")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sim.stats.requests == 5
    s = summary_of(tmp_path / "out.parquet")
    assert s["rows_ok"] == 100 and s["total_tokens"] <= 200
    off = run(src, tmp_path / "off.parquet", sim.url, "--temperature", "0", "--no-dedupe",
              "--max-tokens", "16", "--max-tokens-total", "200")  # fmt: skip
    assert off.returncode == 4, off.stderr  # the cap stops the undeduped run


def test_followers_of_a_recorded_leader_are_completed_from_the_journal_with_no_request(
    tmp_path: Path, sim_factory: Any
) -> None:
    """The state a kill -9 between the leader's row and its followers' would leave (the
    run commits them together, so the test makes it by hand): the rerun sends nothing."""
    sim = sim_factory()
    rows = repeating_rows(300, seed=2)
    distinct = len(first_positions(rows))
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    assert run(src, out, sim.url, "--temperature", "0").returncode == 0
    journal = tmp_path / "out.checkpoint" / "journal.sqlite"
    with sqlite3.connect(journal) as db:
        gone = db.execute("DELETE FROM results WHERE served_by IS NOT NULL").rowcount
    assert gone == len(rows) - distinct
    again = run(src, out, sim.url, "--temperature", "0")
    assert again.returncode == 0, again.stderr
    assert sim.stats.requests == distinct  # nothing sent by the rerun
    check_served(out, rows, temperature=0)
    # A checkpoint made without dedupe gets its plan on the rerun that turns it on: the
    # rows left (beyond --limit) that repeat a recorded row are served by it.
    out2 = tmp_path / "limited.parquet"
    assert (
        run(src, out2, sim.url, "--temperature", "0", "--no-dedupe", "--limit", "100").returncode
        == 0
    )
    sent = sim.stats.requests
    rest = run(src, out2, sim.url, "--temperature", "0")
    assert rest.returncode == 0, rest.stderr
    new_prompts = {r["prompt"] for r in rows[100:]} - {r["prompt"] for r in rows[:100]}
    assert sim.stats.requests - sent == len(new_prompts)
    got = pq.read_table(out2).to_pylist()
    first = first_positions(rows)
    for i, (g, r) in enumerate(zip(got, rows, strict=True)):
        assert g["completion"] == expected_text(r["prompt"], temperature=0)
        if i >= 100:
            leader = first[r["prompt"]]
            assert g["served_by"] == (None if leader == i else leader)


def test_kill_9_during_a_deduped_run_loses_no_row_and_pays_no_leader_twice(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(latency_ms=25, jitter_ms=15, honor_idempotency=True, record_bodies=True)
    rows = repeating_rows(1_500, seed=9)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    args = [
        sys.executable, "-m", "batchrun", "run", "--input", str(src), "--output", str(out),
        "--base-url", sim.url, "--concurrency", "16", "--temperature", "0", "--quiet",
    ]  # fmt: skip
    rng = random.Random(13)
    env = {"AIMLAPI_KEY": "test-key", "PATH": "/usr/bin:/bin"}
    kills = kill_at_random_moments(args, env, rng)
    assert kills >= 2
    final = run_cli(*args[3:])
    assert final.returncode == 0, final.stderr
    check_served(out, rows, temperature=0)
    # Each distinct prompt went out under one Idempotency-Key (a row resent after a kill
    # reuses its key; a follower never goes out), and no key was billed twice.
    keys: dict[str, set[str]] = defaultdict(set)
    for seen in sim.stats.bodies:
        keys[seen["body"]["messages"][-1]["content"]].add(seen["headers"]["Idempotency-Key"])
    assert set(keys) == {r["prompt"] for r in rows}
    assert all(len(k) == 1 for k in keys.values()), [p for p, k in keys.items() if len(k) > 1]
    assert sim.stats.billed_twice == 0


def test_two_runs_filling_one_cache_at_once_both_finish_and_share_it(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(latency_ms=5)
    cache = tmp_path / "cache"
    procs = []
    for name, start in (("a", 0), ("b", 200)):  # prompts 200..399 are in both inputs
        rows = [{"id": i, "prompt": f"p{start + i}"} for i in range(400)]
        src = write_jsonl(tmp_path / f"{name}.jsonl", rows)
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "batchrun",
                    "run",
                    "--input",
                    str(src),
                    "--output",
                    str(tmp_path / f"{name}.parquet"),
                    "--base-url",
                    sim.url,
                    "--cache",
                    str(cache),
                    "--concurrency",
                    "8",
                    "--quiet",
                ],
                cwd=ROOT,
                env={"AIMLAPI_KEY": "k", "PATH": "/usr/bin:/bin"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    stats = run_cli("cache", "stats", str(cache))
    assert "600 answers" in stats.stdout, stats.stdout
    # Every prompt of both is now answered from the cache.
    again = run(tmp_path / "b.jsonl", tmp_path / "b2.parquet", sim.url, "--cache", str(cache))
    assert again.returncode == 0 and summary_of(tmp_path / "b2.parquet")["requests_sent"] == 0


def test_a_dry_run_makes_no_cache(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "prompt": "same"} for i in range(5)])
    cache = tmp_path / "cache"
    dry = run_cli("run", "--input", str(src), "--temperature", "0", "--cache", str(cache),
                  "--dry-run")  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "dedupe: on; 4 rows repeat an earlier row's request" in dry.stdout
    assert "empty (made by the first run)" in dry.stdout and not cache.exists()
