"""The pieces of a Ray run that need no Ray: the coordinator's leases, the leased limiter,
the row ranges, the manifest, the store and the merge of the parts."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun.budget import BudgetGate
from batchrun.cluster.allowance import ShardBudget
from batchrun.cluster.coordinator import LEASE_TTL_S, SLACK_PER_SHARD_RPM, Coordinator
from batchrun.cluster.lease import LeasedLimiter
from batchrun.cluster.manifest import Manifest
from batchrun.cluster.options import pop_engine_options
from batchrun.cluster.shards import merge_parts, part_name, ranges
from batchrun.cluster.store import Store
from batchrun.cluster.summaries import ThisRun
from batchrun.cluster.worker import ShardSpec, journal_name, restore, run_shard, shard_job
from batchrun.errors import CheckpointError, Stopped, UsageError
from batchrun.io.writers import JOB_KEY
from batchrun.job import Budget, Job, Limits
from batchrun.pricing import Price

PRICE = Price(input_per_mtok=10.0, output_per_mtok=30.0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_ranges_cover_every_row_once_in_order() -> None:
    for total in (1, 7, 8, 9, 1000):
        for k in (1, 3, 8, 50):
            spans = ranges(total, k)
            assert spans[0][0] == 0 and spans[-1][1] == total
            assert all(a < b for a, b in spans)  # no empty shard
            assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))
            sizes = [b - a for a, b in spans]
            assert max(sizes) - min(sizes) <= 1
            assert len(spans) == min(k, total)


def test_shares_never_exceed_the_cluster_totals_and_come_back_when_a_shard_ends() -> None:
    clock = Clock()
    c = Coordinator(concurrency=10, rpm=600, tpm=None, clock=clock)
    leases = {s: c.lease(s, 0, True) for s in range(3)}
    # The first shard took all it was fair to take at the time; the others what was left.
    assert sum(le["slots"] for le in leases.values()) <= 10
    assert sum(le["rpm"] for le in leases.values()) <= 600
    for _ in range(3):  # a few renewals: every shard settles on its fair share
        leases = {s: c.lease(s, 0, True) for s in range(3)}
    assert sorted(le["slots"] for le in leases.values()) == [3, 3, 4]
    # Less one request a shard per 2 s: independent throttles cannot overrun a window.
    assert sum(le["rpm"] for le in leases.values()) == pytest.approx(600 - 3 * SLACK_PER_SHARD_RPM)
    # Shard 0 has 4 requests in flight and wants no more: its share is free, its flight not.
    c.lease(0, 4, False)
    one = c.lease(1, 0, True)
    two = c.lease(2, 0, True)
    assert one["slots"] + two["slots"] + 4 <= 10
    c.lease(0, 0, False)
    one, two = c.lease(1, 0, True), c.lease(2, 0, True)
    assert one["slots"] + two["slots"] == 10
    assert one["rpm"] + two["rpm"] == pytest.approx(600 - 2 * SLACK_PER_SHARD_RPM)
    c.release(2)
    assert c.lease(1, 0, True)["slots"] == 10


def test_a_dead_shards_lease_lapses() -> None:
    clock = Clock()
    c = Coordinator(concurrency=8, rpm=None, tpm=1000, clock=clock)
    for _ in range(3):
        a, b = c.lease(0, 0, True), c.lease(1, 0, True)
    assert a["slots"] + b["slots"] == 8 and a["tpm"] + b["tpm"] == pytest.approx(1000)
    clock.now += LEASE_TTL_S + 0.1  # shard 1 died without a word
    assert c.lease(0, 0, True)["slots"] == 8
    assert c.lease(0, 0, True)["tpm"] == pytest.approx(1000)


def test_one_storm_pauses_the_cluster_once_and_sets_one_pace() -> None:
    clock = Clock()
    c = Coordinator(concurrency=20, rpm=None, tpm=None, clock=clock)
    for _ in range(10):  # 10 s of 30 accepted answers a second, over two shards
        c.lease(0, 5, True, accepted=15)
        c.lease(1, 5, True, accepted=15)
        clock.now += 1.0
    assert c.lease(0, 0, True)["rpm"] is None  # no pace before a storm
    c.pause(2.0)
    c.pause(2.0)  # the other shard's report of the same storm
    assert c.pauses == 1
    assert c.rate == pytest.approx(0.9 * 300 / 10)  # 90 % of what was accepted
    assert c.window == 17
    a = c.lease(0, 0, True)
    assert a["pause_s"] == pytest.approx(2.0)
    b = c.lease(1, 0, True)
    a = c.lease(0, 0, True)
    assert a["rpm"] + b["rpm"] == pytest.approx(c.rate * 60 - 2 * SLACK_PER_SHARD_RPM)
    clock.now += 5.0  # after the pause, without a storm: the pace grows
    c.lease(0, 0, True)
    assert c.rate > 0.9 * 30


def test_a_stop_reaches_every_shard() -> None:
    c = Coordinator(concurrency=4, rpm=None, tpm=None)
    assert not c.lease(0, 0, True)["stop"]
    c.stop(1)
    c.stop(2)
    assert c.state()["stopped_by"] == 1
    assert c.lease(0, 0, True)["stop"]


def test_the_leased_limiter_waits_for_its_share_and_paces_at_it() -> None:
    async def main() -> None:
        storms: list[float] = []
        stops: list[bool] = []

        async def renew(in_flight: int, wants: bool, accepted: int, sat: bool) -> dict[str, Any]:
            return {"slots": 2, "rpm": 600.0, "tpm": None, "pause_s": 0.0, "stop": False}

        lim = LeasedLimiter(
            Limits(concurrency=50), renew, storms.append, lambda: stops.append(True)
        )
        slot = asyncio.ensure_future(lim.slot())
        await asyncio.sleep(0.01)
        assert not slot.done()  # no lease yet: no slot
        lim.apply(await renew(0, True, 0, True))
        await asyncio.wait_for(slot, 1)
        await lim.slot()
        third = asyncio.ensure_future(lim.slot())
        await asyncio.sleep(0.01)
        assert not third.done()  # the lease's two slots are taken
        lim.release_slot()
        await asyncio.wait_for(third, 1)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for _ in range(6):
            await lim.before_send(1)
        # 600/min is one request every 0.1 s: six sends take at least half a second.
        assert loop.time() - start >= 0.45
        lim.stop()
        assert stops == [True]  # its own stop is the cluster's
        lim.apply({"slots": 1, "rpm": None, "tpm": None, "pause_s": 0.0, "stop": True})
        assert not lim.cluster_stopped  # the cluster's stop it caused is still its own
        lim2 = LeasedLimiter(
            Limits(concurrency=5), renew, storms.append, lambda: stops.append(True)
        )
        lim2.apply({"slots": 1, "rpm": None, "tpm": None, "pause_s": 0.0, "stop": True})
        assert lim2.cluster_stopped and stops == [True]  # the cluster's stop is not re-sent

    asyncio.run(main())


def test_engine_options_are_checked() -> None:
    opts = pop_engine_options({"engine": "ray", "shards": 4, "workers": 3})
    assert (opts.engine, opts.shards, opts.workers) == ("ray", 4, 3)
    with pytest.raises(UsageError, match="engine must be one of"):
        pop_engine_options({"engine": "spark"})
    with pytest.raises(UsageError, match="shards must be an integer"):
        pop_engine_options({"engine": "ray", "shards": 0})
    with pytest.raises(UsageError, match="need --engine ray"):
        pop_engine_options({"shards": 4})
    settings = {"engine": "local", "model": "m"}
    pop_engine_options(settings)
    assert settings == {"model": "m"}  # the engine keys are taken out, the rest left


def test_the_manifest_names_what_changed(tmp_path: Path) -> None:
    path = tmp_path / "out.manifest.json"
    m = Manifest("d1", 4, {"params": {"max_tokens": 10}}, [(0, 5), (5, 9)], ["pending"] * 2)
    m.save(path, tmp_path / "staging.json")
    loaded = Manifest.load(path)
    assert loaded == m
    with pytest.raises(CheckpointError, match=r"the input and --shards \(4 then, 8 now\)"):
        m.check_same(path, "d2", 8, {"params": {"max_tokens": 10}})
    with pytest.raises(CheckpointError, match=r"the job \(params.max_tokens\)"):
        m.check_same(path, "d1", 4, {"params": {"max_tokens": 11}})
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match="cannot be read"):
        Manifest.load(path)
    assert Manifest.load(tmp_path / "none.json") is None


def test_the_store_writes_whole_files_and_reads_them_back(tmp_path: Path) -> None:
    store = Store(tmp_path / "out.shards")
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 1000)
    store.put(src, "a.bin")
    assert src.exists() and store.exists("a.bin")
    store.move_in(src, "b.bin")
    assert not src.exists() and store.exists("b.bin")
    back = tmp_path / "back" / "b.bin"
    assert store.get("b.bin", back) and back.read_bytes() == b"x" * 1000
    assert not store.get("none", tmp_path / "none")
    assert store.read_text("none") is None
    assert not list((tmp_path / "out.shards").glob("*.tmp"))
    store.clear()
    assert not (tmp_path / "out.shards").exists()


def test_parts_merge_in_shard_order_with_unified_types(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    (tmp_path / "s").mkdir()
    parts = [
        pa.table({"id": [0, 1], "x": pa.array([None, None], pa.null()), "y": ["a", "b"]}),
        pa.table({"id": [2], "x": pa.array([1.5]), "y": ["c"]}),
        pa.table({"id": [3, 4], "x": pa.array([2.0, None]), "y": ["d", "e"]}),
    ]
    for i, t in enumerate(parts):
        pq.write_table(
            t.replace_schema_metadata({JOB_KEY: b'{"shard": 1}'}), store.at(part_name(i))
        )
    out = tmp_path / "out.parquet"
    merge_parts(store, 3, out, json.dumps({"job": "whole"}).encode())
    t = pq.read_table(out)
    assert t.column("id").to_pylist() == [0, 1, 2, 3, 4]
    assert t.column("x").to_pylist() == [None, None, 1.5, 2.0, None]
    assert t.schema.field("x").type == pa.float64()
    assert json.loads(t.schema.metadata[JOB_KEY]) == {"job": "whole"}


def test_a_shard_whose_coordinator_is_gone_stops() -> None:
    async def main() -> None:
        calls = 0

        async def renew(in_flight: int, wants: bool, accepted: int, sat: bool, budget: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                return {"slots": 4, "rpm": None, "tpm": None, "pause_s": 0.0, "stop": False}
            raise ConnectionError("the actor died with its driver")

        lim = LeasedLimiter(Limits(concurrency=4), renew, lambda s: None, lambda: None)
        task = asyncio.ensure_future(lim.renew_forever(0.01, lapse_s=0.1))
        await asyncio.sleep(0.05)
        assert lim.window == 4 and not lim.cluster_stopped  # a lost renewal: the lease holds
        await asyncio.sleep(0.2)
        assert lim.cluster_stopped  # none for longer than the lapse: stopped
        with pytest.raises(Stopped):
            await lim.slot()
        task.cancel()

    asyncio.run(main())


def test_slots_a_shard_does_not_use_go_to_those_that_wait() -> None:
    c = Coordinator(concurrency=64, rpm=None, tpm=None)
    for _ in range(3):  # the first shard's 64 shrink to 32 once it asked again
        a, b = c.lease(0, 32, True), c.lease(1, 32, True)
    assert (a["slots"], b["slots"]) == (32, 32)
    # Shard 0 is down to its last 3 rows in flight, no row waits for a slot.
    a = c.lease(0, 3, True, saturated=False)
    assert a["slots"] == 4  # what it uses and one more
    b = c.lease(1, 32, True)
    assert b["slots"] == 32  # shard 0 may use its 32 until the 4 reached it
    a = c.lease(0, 3, True, saturated=False)  # it asked again: it has the 4
    b = c.lease(1, 32, True)
    assert b["slots"] == 60  # the rest
    # Saturated again (a new row waits): an even split once the other's flight allows.
    a = c.lease(0, 4, True, saturated=True)
    assert a["slots"] == 4  # shard 1 holds 60: nothing more is free yet
    b = c.lease(1, 40, True)
    assert b["slots"] == 32
    a = c.lease(0, 4, True)
    assert a["slots"] == 4  # shard 1 may still use its 60 until the 32 reached it
    b = c.lease(1, 40, True)
    a = c.lease(0, 4, True)
    assert b["slots"] == 32 and a["slots"] == 24  # shard 1's 40 in flight still count


def test_no_grant_lets_the_shards_exceed_the_totals_while_it_travels() -> None:
    """A shard asks again only once it applied its last grant; until then it may use the
    one before. At every moment, what each shard may use summed stays within the totals."""
    rng = random.Random(7)
    c = Coordinator(concurrency=16, rpm=600, tpm=None)
    applied: dict[int, tuple[int, float]] = {}  # what each shard has in force
    granted: dict[int, tuple[int, float]] = {}  # the grant on its way to it
    for _ in range(2000):
        s = rng.randrange(3)
        if s in granted:  # its last grant reached it before it asks again
            applied[s] = granted[s]
        slots_now = applied.get(s, (0, 0.0))[0]
        lease = c.lease(s, rng.randint(0, slots_now), True, saturated=rng.random() < 0.7)
        granted[s] = (lease["slots"], lease["rpm"] or 0.0)
        # Each shard may use the larger of the grant it applied and the one travelling.
        usable = [
            tuple(map(max, applied.get(k, (0, 0.0)), granted.get(k, (0, 0.0)))) for k in range(3)
        ]
        assert sum(u[0] for u in usable) <= 16
        assert sum(u[1] for u in usable) <= 600 + 1e-9


def _report(cap: float | None, spent: float, reserved: float = 0.0, in_flight: int = 0,
            need: float | None = None) -> dict[str, Any]:  # fmt: skip
    return {"cap": None if cap is None else {"usd": cap}, "spent": {"usd": spent},
            "reserved": {"usd": reserved}, "in_flight": in_flight,
            "need": None if need is None else {"usd": need}}  # fmt: skip


def test_budget_allowances_never_sum_above_the_cap_through_the_shards_gates() -> None:
    # Three shards' real gates under one coordinator, requests admitted and settled at
    # random: at every step the shards' spent + reserved, and what the shard that is not
    # running spent before, stay within the cap, and the run ends only on exhaustion.
    rng = random.Random(7)
    cap = 1.0
    c = Coordinator(8, None, None, caps={"usd": cap}, spent={3: {"usd": 0.25}})
    gates, budgets = [], []
    for _ in range(3):
        gate = BudgetGate(Budget(max_cost_usd=cap), PRICE, model="m", spent_usd=0, spent_tokens=0)
        sb = ShardBudget()
        sb.attach(gate)
        gates.append(gate)
        budgets.append(sb)
    flight: list[tuple[int, int]] = []
    stopped = False
    for _ in range(3000):
        s = rng.randrange(3)
        gate = gates[s]
        action = rng.random()
        if action < 0.3:
            budgets[s].apply(c.lease(s, 0, True, budget=budgets[s].report())["budget"])
        elif action < 0.7:
            prompt = rng.randrange(100, 2000)
            if gate.admit(prompt, 1000) is None:
                flight.append((s, prompt))
        elif flight:
            s, prompt = flight.pop(rng.randrange(len(flight)))
            gates[s].settle(prompt, 1000, True, prompt, rng.randrange(0, 1000))
        total = sum(g.spent_usd + g.reserved_usd for g in gates) + 0.25
        assert total <= cap + 1e-12
        assert sum(h["usd"] for h in c.budget.held.values()) <= cap + 1e-12  # type: ignore[union-attr]
        if not flight and all(g.wanted for g in gates):
            replies = [c.lease(i, 0, True, budget=budgets[i].report())["budget"] for i in range(3)]
            for i in range(3):
                budgets[i].apply(c.lease(i, 0, True, budget=budgets[i].report())["budget"])
            if any(r["exhausted"] for r in replies) or not any(g.wait_for_more for g in gates):
                stopped = True
                break
    assert stopped  # the budget ran out, and was said to have run out
    spent = sum(g.spent_usd for g in gates) + 0.25
    # Nothing more fits: what is left is less than one request's worst case.
    assert cap - spent < max(g.wanted[0] for g in gates if g.wanted)
    assert spent > 0.5 * cap


def test_a_finished_shards_allowance_comes_back_and_exhaustion_waits_for_flights() -> None:
    c = Coordinator(8, None, None, caps={"usd": 1.0}, spent={2: {"usd": 0.2}})
    a = c.lease(0, 0, True, budget=_report(None, 0.0))["budget"]
    b = c.lease(1, 0, True, budget=_report(None, 0.0))["budget"]
    assert a["cap"]["usd"] + b["cap"]["usd"] <= 0.8  # never above the cap less shard 2's
    # Shard 0 ends having spent 0.1 of its allowance: the rest is free for shard 1.
    c.release(0, {"usd": 0.1})
    big = c.lease(1, 0, True, budget=_report(b["cap"]["usd"], 0.0, need=0.6))["budget"]
    assert big["cap"]["usd"] == pytest.approx(0.6) and not big["exhausted"]
    # Shard 1 spent 0.55 and has 0.05 in flight; its next request needs 0.3, which does
    # not fit the 0.1 free: it waits, not exhausted while something is in flight.
    r = c.lease(1, 0, True, budget=_report(0.6, 0.55, 0.05, in_flight=1, need=0.3))["budget"]
    assert r["cap"]["usd"] == pytest.approx(0.6) and not r["exhausted"]
    # Nothing in flight, its slack given back: now the cluster's budget is spent.
    r = c.lease(1, 0, True, budget=_report(0.58, 0.58, need=0.3))["budget"]
    assert r["exhausted"] and r["cap"]["usd"] == pytest.approx(0.58)
    assert r["spent"]["usd"] == pytest.approx(0.1 + 0.58 + 0.2)
    # Another shard holding slack (it may use it) keeps the budget from being exhausted.
    c.lease(3, 0, True, budget=_report(None, 0.0))
    r = c.lease(1, 0, True, budget=_report(0.58, 0.58, need=0.3))["budget"]
    assert not r["exhausted"]
    # A smaller request still fits what is free: granted, not exhausted.
    c.release(3, {"usd": 0.0})
    r = c.lease(1, 0, True, budget=_report(0.58, 0.58, need=0.05))["budget"]
    assert not r["exhausted"] and r["cap"]["usd"] >= 0.58 + 0.05 - 1e-12


def test_a_shard_started_twice_in_one_run_counts_both_attempts() -> None:
    run = ThisRun()
    # Its worker died after 300 requests (the last report), 100 rows done before the run.
    run.lost(0, {"done": 390, "requests": 300, "rate_limited": 4, "resumed": 100})
    # The second attempt resumed from the journal: its own summary knows only itself.
    run.ended(0, {"requests_sent": 220, "retries": 3, "rate_limited": 1, "rows_resumed": 390})
    run.ended(1, {"requests_sent": 50, "rows_resumed": 0})
    assert run.counts[0] == {"requests_sent": 520, "retries": 3, "rate_limited": 5, "reasks": 0}
    assert run.resumed == {0: 100, 1: 0}  # rows done before this run, not before the attempt


def test_a_journal_copy_that_cannot_be_read_is_one_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHRUN_STATE_DIR", str(tmp_path / "state"))
    store = Store(tmp_path / "out.shards")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not a journal at all" * 100)
    store.put(garbage, journal_name(3))
    job = Job(input_path=tmp_path / "in.jsonl", output_path=tmp_path / "out.parquet")
    spec = ShardSpec(3, job, tmp_path / "out.shards", "jsonl", "run-1")
    journal = shard_job(spec).checkpoint_dir / "journal.sqlite"
    with pytest.raises(CheckpointError) as caught:
        restore(spec, store, journal)
    assert "shard 3's journal copy journal-00003.sqlite" in caught.value.message
    assert not journal.exists()  # not left where the shard's run would open it
    # The Ray task returns it as the shard's error (exit 5), not as a crash of the task,
    # which the driver would take for a lost worker or a bug. The journal copy is read
    # before the coordinator is ever asked anything.
    result = run_shard(spec, coordinator=None)
    assert result["exit_code"] == 5 and "cannot be read" in result["error"]
