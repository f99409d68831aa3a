"""batchrun compare: the comparison on small outputs counted by hand, the gates, the renderers,
and the command through click's CliRunner."""

from __future__ import annotations

import json
from collections.abc import Sequence
from fractions import Fraction
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import batchrun.compare as compare_module
import batchrun.mcnemar as mcnemar_module
from batchrun.cli import main
from batchrun.compare import RIGHT_TO_WRONG, WRONG_TO_RIGHT, compare_outputs
from batchrun.compare_gates import Thresholds
from batchrun.compare_html import render_html
from batchrun.compare_read import ColumnWindow
from batchrun.compare_render import render_text, to_json
from batchrun.errors import UsageError
from batchrun.io.writers import RESULT_FIELDS, output_schema
from batchrun.mcnemar import mcnemar_exact
from batchrun.simulate.graded import AnswerKey
from tests.conftest import ROOT, run_cli, write_jsonl

INPUT = pa.schema(
    [
        ("id", pa.int64()),
        ("question", pa.string()),
        ("category", pa.string()),
        ("answer", pa.string()),
    ]
)
JOB: dict[str, Any] = {
    "prompt_column": "question",
    "messages_column": None,
    "template": None,
    "id_column": "id",
    "params": {"model": "gpt-4o-mini", "max_tokens": 8, "temperature": 0, "metadata": None},
    "grading": {"expected_column": "answer", "match": "exact", "group_by": "category"},
}
MODEL = "gpt-4o-mini"  # 0.15 / 0.6 USD per million tokens in the bundled table

# Ten questions graded in two runs, counted by hand. None: the row failed (not graded).
#            id:   0     1     2     3     4      5      6      7      8     9
BASE = [True, True, True, True, False, False, True, False, True, None]
CUR = [True, False, True, True, True, False, False, False, True, True]
# Graded in both: ids 0-8 (9 rows). Baseline correct 6, current 5. Right → wrong: 1 and 6;
# wrong → right: 4. Even ids are category "a" (0 2 4 6 8: base 4 of 5, current 4 of 5,
# flips 6 and 4), odd ids "b" (1 3 5 7: base 2 of 4, current 1 of 4, flip 1).


def row(
    i: int, correct: bool | None, *, tokens: tuple[int, int] = (10, 2), **extra: Any
) -> dict[str, Any]:
    r: dict[str, Any] = {f.name: None for f in RESULT_FIELDS}
    r |= {"id": i, "question": f"what is {i} + 1?", "category": "ab"[i % 2], "answer": str(i + 1)}
    if correct is None:
        r |= {"status": "error", "finish_reason_normalized": "error", "error_type": "timeout"}
    else:
        p, c = tokens
        r |= {
            "status": "ok",
            "completion": str(i + 1) if correct else f"{i + 2}",
            "finish_reason_normalized": "stop",
            "prompt_tokens": p,
            "completion_tokens": c,
            "total_tokens": p + c,
            "model": MODEL,
            "latency_ms": 100.0 + i,
            "correct": correct,
        }
    return r | extra


def write(
    path: Path,
    rows: Sequence[dict[str, Any]],
    *,
    graded: bool = True,
    job: dict[str, Any] | None = JOB,
    version: str = "2",
    drop: Sequence[str] = (),
    add: Sequence[pa.Field] = (),
    input_schema: pa.Schema = INPUT,
) -> Path:
    base = output_schema(input_schema, "id", graded=graded, job=job)
    fields = [f for f in base if f.name not in drop]
    at = fields.index(base.field("completion")) + 1 if add else 0
    fields[at:at] = list(add)
    meta = dict(base.metadata) | {b"batchrun.schema_version": version.encode()}
    sch = pa.schema(fields, metadata=meta)
    pq.write_table(
        pa.Table.from_pylist([{f.name: r.get(f.name) for f in sch} for r in rows], schema=sch), path
    )
    return path


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    base = [row(i, c) for i, c in enumerate(BASE)] + [row(10, True)]
    cur = [row(i, c) for i, c in enumerate(CUR)] + [row(11, False), row(12, True)]
    return write(tmp_path / "base.parquet", base), write(tmp_path / "cur.parquet", cur)


# --- McNemar ---------------------------------------------------------------------------------


def test_mcnemar_exact_matches_hand_sums() -> None:
    # b=10, c=2: 2 * (C(12,0) + C(12,1) + C(12,2)) / 2**12 = 2 * 79 / 4096
    assert mcnemar_exact(10, 2) == 158 / 4096 == 0.03857421875
    assert mcnemar_exact(2, 10) == mcnemar_exact(10, 2)
    # b=20, c=5: 2 * (1 + 25 + 300 + 2300 + 12650 + 53130) / 2**25
    assert mcnemar_exact(20, 5) == pytest.approx(136812 / 2**25, rel=1e-15)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(7, 7) == 1.0
    assert mcnemar_exact(1, 0) == 1.0  # 2 * 1/2
    assert mcnemar_exact(6, 0) == 2 / 64


def test_mcnemar_log_space_path_agrees_with_the_exact_one(monkeypatch: pytest.MonkeyPatch) -> None:
    exact = [mcnemar_exact(b, c) for b, c in ((10, 2), (20, 5), (300, 240), (5, 5))]
    monkeypatch.setattr(mcnemar_module, "_EXACT_MAX", 0)
    logged = [mcnemar_exact(b, c) for b, c in ((10, 2), (20, 5), (300, 240), (5, 5))]
    assert logged == pytest.approx(exact, rel=1e-9)
    # n = 40,000: close to the normal approximation with continuity correction (p ≈ 0.00275).
    assert mcnemar_exact(20_300, 19_700) == pytest.approx(0.002745, rel=0.02)


# --- the comparison --------------------------------------------------------------------------


def test_graded_comparison_counts_match_the_hand_count(pair: tuple[Path, Path]) -> None:
    c = compare_outputs(*pair)
    assert (c.paired_rows, c.only_baseline, c.only_current) == (10, 1, 2)
    assert c.only_baseline_keys == [10] and c.only_current_keys == [11, 12]
    a = c.accuracy
    assert a is not None
    assert (a.rows, a.baseline_correct, a.current_correct) == (9, 6, 5)
    assert (a.right_to_wrong, a.wrong_to_right) == (2, 1)
    assert a.delta_points == Fraction(-100, 9)
    assert a.p_value == 1.0  # 2 * (C(3,0) + C(3,1)) / 8
    assert c.group_by == "category"  # recorded by the job
    ga, gb = c.groups["a"], c.groups["b"]
    assert (
        ga.rows,
        ga.baseline_correct,
        ga.current_correct,
        ga.right_to_wrong,
        ga.wrong_to_right,
    ) == (5, 4, 4, 1, 1)
    assert (
        gb.rows,
        gb.baseline_correct,
        gb.current_correct,
        gb.right_to_wrong,
        gb.wrong_to_right,
    ) == (4, 2, 1, 1, 0)
    assert [(f.key, f.direction) for f in c.flips] == [
        (1, RIGHT_TO_WRONG),
        (6, RIGHT_TO_WRONG),
        (4, WRONG_TO_RIGHT),
    ]
    one = c.flips[0]
    assert (one.prompt, one.expected, one.baseline, one.current, one.group) == (
        "what is 1 + 1?",
        "2",
        "2",
        "3",
        "b",
    )
    assert c.baseline.by_status == {"ok": 10, "error": 1}
    assert c.current.by_status == {"ok": 12, "error": 0}
    assert c.mismatches == [] and c.exit_code == 0


def test_group_by_option_overrides_and_must_exist(pair: tuple[Path, Path]) -> None:
    c = compare_outputs(*pair, group_by="answer")
    assert set(c.groups) == {str(i + 1) for i in range(9)}
    with pytest.raises(UsageError, match="no column 'nope' to group by"):
        compare_outputs(*pair, group_by="nope")


def test_flips_are_listed_up_to_the_limit_but_all_counted(pair: tuple[Path, Path]) -> None:
    c = compare_outputs(*pair, limit=1)
    assert [(f.key, f.direction) for f in c.flips] == [(1, RIGHT_TO_WRONG), (4, WRONG_TO_RIGHT)]
    assert c.flip_count(RIGHT_TO_WRONG) == 2
    assert c.only_current_keys == [11]


@pytest.mark.parametrize(("points", "fails"), [(2.0, False), (1.99, True), (0, True)])
def test_accuracy_gate_is_exact_at_the_threshold(
    tmp_path: Path, points: float, fails: bool
) -> None:
    # 50 paired rows, one right → wrong: exactly 2 points lost.
    base = write(tmp_path / "b.parquet", [row(i, True) for i in range(50)])
    cur = write(tmp_path / "c.parquet", [row(i, i != 7) for i in range(50)])
    c = compare_outputs(base, cur, thresholds=Thresholds(accuracy_drop_points=points))
    assert bool(c.failures) is fails
    assert c.exit_code == (3 if fails else 0)
    if fails:
        assert "accuracy dropped 2.00 points" in c.failures[0]


def test_error_rate_and_cost_gates(tmp_path: Path) -> None:
    base = write(tmp_path / "b.parquet", [row(i, True, tokens=(100, 10)) for i in range(10)])
    # Half again the tokens and one failed row of ten.
    cur_rows = [row(i, True, tokens=(150, 15)) for i in range(9)] + [row(9, None)]
    cur = write(tmp_path / "c.parquet", cur_rows)
    c = compare_outputs(base, cur, thresholds=Thresholds(error_rate_above=0.1, cost_rise=0.4))
    # Cost: 10 x (100 x 0.15 + 10 x 0.6) / 1e6 = 0.00021 → 9 x (150 x 0.15 + 15 x 0.6) / 1e6: +35 %.
    assert c.baseline.estimated_cost_usd == pytest.approx(0.00021)
    assert c.current.estimated_cost_usd == pytest.approx(0.0002835)
    assert c.failures == [] and c.exit_code == 0  # 10 % failed is not above 10 %
    c = compare_outputs(base, cur, thresholds=Thresholds(error_rate_above=0.09, cost_rise=0.3))
    assert [f.split(" ")[0] for f in c.failures] == ["error", "estimated"]
    assert c.failures[0] == "error rate 10.00% (1 of 10 rows) is above 9.00%"
    assert c.failures[1].startswith("estimated cost rose +35.0%") and c.exit_code == 3


def test_a_gate_that_cannot_be_checked_is_exit_2(tmp_path: Path) -> None:
    rows = [row(i, True) | {"model": "some/unpriced-model"} for i in range(3)]
    base, cur = write(tmp_path / "b.parquet", rows), write(tmp_path / "c.parquet", rows)
    c = compare_outputs(base, cur, thresholds=Thresholds(cost_rise=0.1))
    assert c.exit_code == 2 and "--prices" in c.unchecked[0]
    plain = [row(i, True) for i in range(3)]
    base = write(tmp_path / "pb.parquet", plain, graded=False, job=None)
    cur = write(tmp_path / "pc.parquet", plain, graded=False, job=None)
    c = compare_outputs(base, cur, thresholds=Thresholds(accuracy_drop_points=1))
    assert c.exit_code == 2 and "no row is graded in both" in c.unchecked[0]


@pytest.mark.parametrize(
    ("field", "value"),
    [("accuracy_drop_points", -1), ("error_rate_above", 1.5), ("cost_rise", float("nan"))],
)
def test_thresholds_out_of_range_are_usage_errors(field: str, value: float) -> None:
    with pytest.raises(UsageError, match="--fail-if-"):
        Thresholds(**{field: value})


def test_outputs_of_different_jobs_are_refused_unless_forced(tmp_path: Path) -> None:
    rows = [row(i, True) for i in range(4)]
    other = JOB | {"params": JOB["params"] | {"model": "gpt-4o", "max_tokens": 9}}
    base = write(tmp_path / "b.parquet", rows)
    cur = write(tmp_path / "c.parquet", rows, job=other)
    with pytest.raises(UsageError, match="different jobs") as e:
        compare_outputs(base, cur)
    assert "params.max_tokens 8 vs 9" in str(e.value) and "params.model" in str(e.value)
    assert "--force" in str(e.value)
    forced = compare_outputs(base, cur, force=True)
    assert forced.mismatches and forced.exit_code == 0
    # The metadata object and the base URL are not the job: a dated run tag is fine.
    dated = JOB | {"params": JOB["params"] | {"metadata": {"night": "2026-12-01"}}}
    assert compare_outputs(base, write(tmp_path / "d.parquet", rows, job=dated)).mismatches == []


def test_without_a_recorded_job_columns_and_models_decide(tmp_path: Path) -> None:
    rows = [row(i, True) for i in range(4)]
    base = write(tmp_path / "b.parquet", rows, job=None)
    gpt4o = write(
        tmp_path / "m.parquet", [r | {"model": "gpt-4o-2024-08-06"} for r in rows], job=None
    )
    with pytest.raises(UsageError, match="models differ"):
        compare_outputs(base, gpt4o)
    snapshot = write(
        tmp_path / "s.parquet",
        [r | {"model": "openai/gpt-4o-mini-2024-07-18"} for r in rows],
        job=None,
    )
    assert compare_outputs(base, snapshot).mismatches == []  # one model family
    ungraded = write(tmp_path / "u.parquet", rows, graded=False, job=None)
    with pytest.raises(UsageError, match=r"only .* is graded"):
        compare_outputs(base, ungraded)
    disjoint = write(tmp_path / "x.parquet", [r | {"id": r["id"] + 100} for r in rows], job=None)
    with pytest.raises(UsageError, match="no id is in both outputs"):
        compare_outputs(base, disjoint)


def test_schema_versions_1_2_and_3_compare(tmp_path: Path) -> None:
    rows = [row(i, BASE[i]) for i in range(10)]
    v1 = write(tmp_path / "v1.parquet", rows, version="1", job=None,
               drop=["reported_cost_usd", "reasoning_content"])  # fmt: skip
    v2 = write(tmp_path / "v2.parquet", rows, version="2", drop=["reasoning_content"])
    v3_rows = [
        row(i, CUR[i], reasoning_content="thinking…", reported_cost_usd=0.01) for i in range(10)
    ]
    v3 = write(tmp_path / "v3.parquet", v3_rows, version="3")
    for old in (v1, v2):
        c = compare_outputs(old, v3)
        assert c.mismatches == [] and c.accuracy is not None and c.accuracy.rows == 9
        assert c.current.reported_cost_usd == pytest.approx(0.1)
        assert c.group_by == "category"  # the current job recorded it
    assert c.baseline.reported_cost_usd is None
    assert c.cost_basis == "estimated"  # the baseline reported nothing
    # A newer version with a result column this batchrun does not know is read by name.
    unknown = pa.field("a_column_of_the_future", pa.string())
    v9 = write(tmp_path / "v9.parquet", v3_rows, version="9", add=[unknown])
    c = compare_outputs(v3, v9)
    assert c.mismatches == [] and c.accuracy is not None
    assert (c.accuracy.rows, c.accuracy.right_to_wrong, c.accuracy.wrong_to_right) == (10, 0, 0)
    assert any("schema version 9 is newer" in n for n in c.notes)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_text("not parquet"), "not a Parquet file"),
        (lambda p: pq.write_table(pa.table({"x": [1]}), p), "not a batchrun output"),
        (lambda p: None, "no such file"),
    ],
)
def test_unreadable_outputs_are_usage_errors(
    tmp_path: Path, pair: tuple[Path, Path], make: Any, message: str
) -> None:
    bad = tmp_path / "bad.parquet"
    make(bad)
    with pytest.raises(UsageError, match=message):
        compare_outputs(pair[0], bad)


def test_key_must_exist_be_unique_and_of_one_type(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    with pytest.raises(UsageError, match="no key column 'qid'") as e:
        compare_outputs(*pair, key="qid")
    assert "--key" in str(e.value)
    with pytest.raises(UsageError, match="key column 'category' is not unique"):
        compare_outputs(*pair, key="category")
    keyed = compare_outputs(*pair, key="question")  # any unique column pairs the rows
    assert keyed.paired_rows == 10
    text_input = pa.schema([pa.field("id", pa.string()), *list(INPUT)[1:]])
    text_ids = [row(i, True) | {"id": str(i)} for i in range(3)]
    text = write(tmp_path / "t.parquet", text_ids, input_schema=text_input)
    with pytest.raises(UsageError, match=r"key column 'id' is int64 in .* but string in"):
        compare_outputs(pair[0], text)


def test_ungraded_outputs_count_changed_answers(tmp_path: Path) -> None:
    base_rows = [row(i, True) for i in range(40)]
    cur_rows = [r | {"completion": "changed"} if r["id"] in (3, 17, 30) else r for r in base_rows]
    cur_rows[5] = row(5, None)  # failed tonight: counted in errors, not as a changed answer
    base = write(tmp_path / "b.parquet", base_rows, graded=False, job=None)
    cur = write(tmp_path / "c.parquet", cur_rows, graded=False, job=None)
    c = compare_outputs(base, cur)
    assert (c.answers_compared, c.answers_changed) == (39, 3)
    assert [(x.key, x.baseline, x.current) for x in c.changes] == [
        (3, "4", "changed"),
        (17, "18", "changed"),
        (30, "31", "changed"),
    ]
    # Rows listed in another order are paired all the same (the columns are read whole).
    shuffled = write(tmp_path / "r.parquet", cur_rows[::-1], graded=False, job=None)
    again = compare_outputs(base, shuffled)
    assert (again.answers_compared, again.answers_changed) == (39, 3)
    assert any("different orders" in n for n in again.notes)


def test_changed_answers_streamed_in_chunks_across_batches(tmp_path: Path) -> None:
    base_rows = [row(i, True) for i in range(100)]
    cur_rows = [r | {"completion": None} if r["id"] % 7 == 0 else r for r in base_rows]
    base = write(tmp_path / "b.parquet", base_rows, graded=False, job=None)
    cur = write(tmp_path / "c.parquet", cur_rows, graded=False, job=None)
    pairs = pa.table(
        {"b_pos": pa.array(range(100), pa.int64()), "c_pos": pa.array(range(100), pa.int64())}
    )
    mask = compare_module._changed_answers(pairs, base, cur, [], chunk=9)
    assert [i for i, v in enumerate(mask.to_pylist()) if v] == list(range(0, 100, 7))


def test_column_window_serves_rising_positions_across_batches(tmp_path: Path) -> None:
    path = tmp_path / "w.parquet"
    pq.write_table(pa.table({"completion": [f"v{i}" for i in range(50)]}), path, row_group_size=6)
    w = ColumnWindow(path, "completion", rows=4)
    for chunk in ([0, 1, 5], [5, 9, 20], [21], [33, 34, 49]):
        got = w.take(pa.array(chunk, pa.int64())).to_pylist()
        assert got == [f"v{i}" for i in chunk]


# --- rendering -------------------------------------------------------------------------------


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.ids: dict[str, dict[str, str | None]] = {}
        self.rows: dict[str, int] = {}
        self.texts: list[str] = []
        self._table: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if a.get("id"):
            self.ids[str(a["id"])] = a
        if tag == "table":
            self._table = a.get("id")
        if tag == "tr" and self._table and "data-key" in a:
            self.rows[self._table] = self.rows.get(self._table, 0) + 1

    def handle_data(self, data: str) -> None:
        self.texts.append(data)


def test_html_page_is_self_contained_and_lists_the_flips(pair: tuple[Path, Path]) -> None:
    c = compare_outputs(*pair, limit=1, thresholds=Thresholds(accuracy_drop_points=5))
    page = render_html(c)
    parsed = Page()
    parsed.feed(page)
    assert "script" not in parsed.tags and "://" not in page and "<link" not in page
    assert parsed.ids["verdict"]["data-exit-code"] == "3"
    assert parsed.ids["accuracy-delta"]["data-value"] == str(-100 / 9)
    assert parsed.rows["flips-right-to-wrong"] == 1  # capped at the limit …
    assert parsed.ids["flips-right-to-wrong-count"]["data-value"] == "2"  # … all counted
    assert "Showing the first 1; 1 more not shown." in page
    assert parsed.rows["groups"] == 2 and "chart-groups" in parsed.ids
    text = " ".join(parsed.texts)
    assert "accuracy on the rows graded in both runs (%)" in text and "100%" in text
    assert parsed.tags.count("rect") == 2 + 2 * 2  # legend + two bars per group


def test_text_and_json_strip_nothing_but_control_characters(tmp_path: Path) -> None:
    hostile = "\x1b[2J\x1b]0;pwned\x07 4"
    base = write(tmp_path / "b.parquet", [row(i, True) for i in range(3)])
    cur = write(
        tmp_path / "c.parquet", [row(0, False, completion=hostile), row(1, True), row(2, True)]
    )
    c = compare_outputs(base, cur)
    text = render_text(c)
    assert "\x1b" not in text and "\x07" not in text and "[2J" in text
    assert "right → wrong (1)" in text and "McNemar" in text
    doc = json.loads(to_json(c))
    assert doc["flips"][0]["current"] == hostile  # JSON escapes it; the value is kept
    assert doc["accuracy"]["right_to_wrong"] == 1 and doc["exit_code"] == 0
    assert doc["metrics"]["error_rate"] == {"baseline": 0.0, "current": 0.0, "delta": 0.0}


# --- the command -----------------------------------------------------------------------------


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_cli_exit_3_above_the_threshold_and_0_below(
    runner: CliRunner, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    b, c = (str(p) for p in pair)
    html, js = tmp_path / "c.html", tmp_path / "c.json"
    failed = runner.invoke(
        main,
        ["compare", b, c, "--fail-if-accuracy-drops", "11", "--html", str(html), "--json", str(js)],
    )
    assert failed.exit_code == 3
    reason = [line for line in failed.stderr.splitlines() if line.startswith("batchrun:")]
    assert reason == [
        "batchrun: regression: accuracy dropped 11.11 points (66.67% → 55.56% over 9 paired rows), more than the 11 allowed"
    ]
    assert "result: FAIL" in failed.stdout
    assert json.loads(js.read_text())["exit_code"] == 3 and "<svg" in html.read_text()
    passed = runner.invoke(main, ["compare", b, c, "--fail-if-accuracy-drops", "11.2"])
    assert passed.exit_code == 0, passed.output
    assert "result: pass" in passed.stdout and passed.stderr == ""


def test_cli_exit_2_on_unreadable_or_different_jobs_and_force(
    runner: CliRunner, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    junk = tmp_path / "junk.parquet"
    junk.write_text("{}")
    bad = runner.invoke(main, ["compare", str(pair[0]), str(junk)])
    assert (
        bad.exit_code == 2 and "not a Parquet file" in bad.stderr and "Traceback" not in bad.output
    )
    other = write(
        tmp_path / "o.parquet",
        [row(i, True) for i in range(3)],
        job=JOB | {"template": "Q: {question}"},
    )
    refused = runner.invoke(main, ["compare", str(pair[0]), str(other)])
    assert refused.exit_code == 2
    assert "different jobs" in refused.stderr and "--force" in refused.stderr
    forced = runner.invoke(main, ["compare", str(pair[0]), str(other), "--force"])
    assert forced.exit_code == 0 and "different jobs, compared anyway: template" in forced.stdout
    out_of_range = runner.invoke(
        main, ["compare", *map(str, pair), "--fail-if-error-rate-above", "2"]
    )
    assert out_of_range.exit_code == 2 and "between 0 and 1" in out_of_range.stderr


def test_cli_help_names_units_and_exit_codes(runner: CliRunner) -> None:
    out = " ".join(runner.invoke(main, ["compare", "--help"]).output.split())
    assert "by more than POINTS percentage points (2: from 80% to below 78%)" in out
    assert "more than FRACTION of the current run's rows failed (0.02: 2%)" in out
    assert "Exit codes: 0" in out and "McNemar's exact test" in out
    assert "--force" in out and "--key" in out and "--group-by" in out


# --- end to end: two nights of the nightly eval against the simulator ---------------------------


def _eval_file(path: Path, n: int, wrong: frozenset[int] | set[int] = frozenset()) -> Path:
    """n questions with unique prompts; the rows in ``wrong`` carry an answer no option has."""
    rows = [
        {
            "id": i,
            "category": ("math", "geo", "misc")[i % 3],
            "messages": [
                {"role": "user", "content": f"Q{i}: which? Answer with one of: a{i}, b{i}, c{i}."}
            ],
            "answer": "x" if i in wrong else f"b{i}",
        }
        for i in range(n)
    ]
    return write_jsonl(path, rows)


@pytest.mark.e2e
def test_two_nights_of_the_nightly_eval_list_exactly_the_changed_rows(
    tmp_path: Path, sim_factory: Any
) -> None:
    n = 48
    questions = _eval_file(tmp_path / "questions.jsonl", n)
    # Tonight the simulator answers 75 % right (which ones: the answer key says, by prompt);
    # last night it answered every question right but two of those it gets right tonight.
    tonight = AnswerKey.load(questions, "answer", correct_rate=0.75, seed=2)
    right_tonight = [tonight.answers_correctly(f"Q{i}: which? Answer with one of: a{i}, b{i}, c{i}.") for i in range(n)]  # fmt: skip
    broken = {i for i in range(n) if not right_tonight[i]}
    fixed = set([i for i in range(n) if right_tonight[i]][:2])
    assert 4 <= len(broken) <= 20
    last_key = _eval_file(tmp_path / "key-last-night.jsonl", n, fixed)
    nights = {}
    for night, sim_options in (
        ("2026-12-01", {"answers_file": str(last_key)}),
        ("2026-12-02", {"answers_file": str(questions), "correct_rate": 0.75, "answers_seed": 2}),
    ):
        sim = sim_factory(reasoning_rate=0, **sim_options)
        out = tmp_path / "nightly" / f"{night}.parquet"
        proc = run_cli(
            "run", str(ROOT / "jobs" / "nightly_eval.toml"), "--input", str(questions),
            "--output", str(out), "--base-url", sim.url,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        nights[night] = out
    before, after = nights["2026-12-01"], nights["2026-12-02"]
    # The hand count, from the two outputs alone.
    b = dict(
        zip(*pq.read_table(before, columns=["id", "correct"]).to_pydict().values(), strict=True)
    )
    a = dict(
        zip(*pq.read_table(after, columns=["id", "correct"]).to_pydict().values(), strict=True)
    )
    assert {i for i in b if b[i] and not a[i]} == broken
    assert {i for i in b if a[i] and not b[i]} == fixed
    report = tmp_path / "cmp.json"
    page = tmp_path / "cmp.html"
    drop = 100 * (len(broken) - len(fixed)) / n
    failed = run_cli(
        "compare", str(before), str(after), "--json", str(report), "--html", str(page),
        "--fail-if-accuracy-drops", f"{drop - 0.01:.2f}",
    )  # fmt: skip
    assert failed.returncode == 3, failed.stderr
    assert failed.stderr.startswith(f"batchrun: regression: accuracy dropped {drop:.2f} points")
    doc = json.loads(report.read_text())
    flips = {(f["key"], f["direction"]) for f in doc["flips"]}
    assert flips == {(i, RIGHT_TO_WRONG) for i in broken} | {(i, WRONG_TO_RIGHT) for i in fixed}
    acc = doc["accuracy"]
    assert (acc["rows"], acc["baseline_correct"], acc["current_correct"]) == (
        n, sum(b.values()), sum(a.values()),
    )  # fmt: skip
    assert acc["delta_points"] == pytest.approx(-drop)
    assert acc["p_value"] == mcnemar_exact(len(broken), len(fixed))
    assert set(doc["groups"]) == {"math", "geo", "misc"} and doc["group_by"] == "category"
    k = min(broken)
    flip = next(f for f in doc["flips"] if f["key"] == k)
    assert flip["prompt"].startswith(f"Q{k}: which?") and flip["expected"] == f"b{k}"
    assert flip["baseline"] == f"b{k}" and flip["current"] in (f"a{k}", f"c{k}")
    assert "<svg" in page.read_text()
    passed = run_cli(
        "compare", str(before), str(after), "--fail-if-accuracy-drops", f"{drop + 0.01:.2f}"
    )
    assert passed.returncode == 0, passed.stderr
    assert f"right → wrong ({len(broken)}" in passed.stdout
    assert "wrong → right (2)" in passed.stdout


def test_cli_an_unwritable_page_is_one_line_and_exit_2(
    runner: CliRunner, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for flag in ("--html", "--json"):
        result = runner.invoke(main, ["compare", *map(str, pair), flag, str(blocker / "x")])
        assert result.exit_code == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"batchrun: error: cannot write {blocker}")
        assert f"give {flag} a path" in lines[0]
