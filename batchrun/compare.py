"""Compare two outputs of one job (last night's and tonight's): what changed, the rows behind
it, and whether it passes the regression gates a scheduler acts on.

Rows are joined by a key column (``id`` by default) with Arrow's hash join; only the columns
the comparison needs are read, and prompts and answers only for the rows it lists, so a
1,000,000-row pair compares in a few hundred MB. Graded outputs (a boolean ``correct``
column) are compared on the rows graded in both runs, with McNemar's exact test on those
pairs; ungraded outputs on whether the completion of rows ok in both runs changed.
Per-run figures (errors, finish reasons, tokens, cost, latency) come from
:func:`batchrun.report.build_report` over each whole file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchrun.compare_gates import Thresholds, check_gates
from batchrun.compare_read import (
    KNOWN_VERSIONS,
    ColumnWindow,
    OutputInfo,
    job_differences,
    read_info,
    rows_with_keys,
)
from batchrun.errors import UsageError
from batchrun.mcnemar import TEST_NAME, mcnemar_exact
from batchrun.pricing import PriceTable
from batchrun.report import Report, build_report

#: Rows of each kind listed (flips each way, changed answers, rows in one run only).
DEFAULT_LIMIT = 200
RIGHT_TO_WRONG, WRONG_TO_RIGHT = "right_to_wrong", "wrong_to_right"


@dataclass(frozen=True)
class Paired:
    """Accuracy over the rows graded in both runs (ok in both, with an expected answer)."""

    rows: int
    baseline_correct: int
    current_correct: int
    right_to_wrong: int
    wrong_to_right: int

    @property
    def baseline_accuracy(self) -> float | None:
        return self.baseline_correct / self.rows if self.rows else None

    @property
    def current_accuracy(self) -> float | None:
        return self.current_correct / self.rows if self.rows else None

    @property
    def delta_points(self) -> Fraction | None:
        """current minus baseline accuracy in percentage points, exactly (same denominator)."""
        if not self.rows:
            return None
        return Fraction(100 * (self.wrong_to_right - self.right_to_wrong), self.rows)

    @property
    def p_value(self) -> float:
        return mcnemar_exact(self.right_to_wrong, self.wrong_to_right)


@dataclass(frozen=True)
class Flip:
    """One listed row: a flip (graded) or a changed answer (ungraded, ``direction`` None)."""

    key: Any
    direction: str | None
    group: str | None
    prompt: str | None
    expected: str | None
    baseline: str | None
    current: str | None


@dataclass
class Comparison:
    """Everything ``batchrun compare`` shows; the exit code follows from the last three lists."""

    baseline: Report
    current: Report
    key: str
    paired_rows: int
    only_baseline: int
    only_current: int
    only_baseline_keys: list[Any]
    only_current_keys: list[Any]
    accuracy: Paired | None  # None: not both graded
    group_by: str | None
    groups: dict[str, Paired]
    flips: list[Flip]  # right→wrong then wrong→right, each up to the limit, current order
    #: Ungraded: rows ok in both runs whose completions were compared, and how many changed.
    answers_compared: int | None
    answers_changed: int | None
    changes: list[Flip]
    #: "estimated" (tokens at list prices) or "reported" (what the API said it charged).
    cost_basis: str
    test: str = TEST_NAME
    mismatches: list[str] = field(default_factory=list)  # compared anyway (--force)
    failures: list[str] = field(default_factory=list)  # gates passed → exit 3
    unchecked: list[str] = field(default_factory=list)  # gates that cannot be checked → exit 2
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 2 if self.unchecked else 3 if self.failures else 0

    def cost(self, side: Report) -> float | None:
        return side.reported_cost_usd if self.cost_basis == "reported" else side.estimated_cost_usd

    def flip_count(self, direction: str) -> int:
        a = self.accuracy
        if a is None:
            return 0
        return a.right_to_wrong if direction == RIGHT_TO_WRONG else a.wrong_to_right


def _positions(n: int) -> pa.Array:
    """0..n-1 as int64, built by Arrow rather than a Python loop."""
    return pc.indices_nonzero(pa.nulls(n, pa.bool_()).fill_null(True)).cast(pa.int64())


def _side(info: OutputInfo, key: str, graded: bool, group: str | None, tag: str) -> pa.Table:
    """key, position, status (and correct, group) of one output, columns renamed by ``tag``."""
    columns = [key, "status", *(["correct"] if graded else []), *([group] if group else [])]
    table = pq.read_table(info.path, columns=list(dict.fromkeys(columns)))
    keys = table.column(key)
    if keys.null_count:
        raise UsageError(
            f"{info.path}: key column {key!r} has {keys.null_count:,} null values",
            hint="choose another --key",
        )
    if (distinct := pc.count_distinct(keys).as_py()) != table.num_rows:
        raise UsageError(
            f"{info.path}: key column {key!r} is not unique "
            f"({table.num_rows - distinct:,} repeated values)",
            hint="choose a unique --key",
        )
    parts = {
        key: keys,
        f"{tag}_pos": _positions(table.num_rows),
        f"{tag}_status": table.column("status"),
    }
    if graded:
        parts[f"{tag}_correct"] = table.column("correct")
    if group:
        parts[f"{tag}_group"] = pc.cast(table.column(group), pa.string())
    return pa.table(parts)


def _join(
    b: pa.Table, c: pa.Table, key: str, limit: int
) -> tuple[pa.Table, tuple[int, list[Any]], tuple[int, list[Any]]]:
    """The rows in both (in the current run's order), and (count, first keys) of the rows
    only in the baseline and only in the current run.

    A hash lookup of each current key among the baseline's (``index_in``) pairs the rows:
    lighter than a general join (Table.join needed twice the memory on 1,000,000 rows).
    """
    b_keys, c_keys = b.column(key).combine_chunks(), c.column(key).combine_chunks()
    found = pc.index_in(c_keys, value_set=b_keys)
    in_both = pc.is_valid(found)
    b_pos = pc.cast(found.filter(in_both), pa.int64())
    joined = c.filter(in_both)
    for name in b.column_names:
        if name != key:
            joined = joined.append_column(name, b.column(name).take(b_pos))
    only_b = pc.invert(pc.is_in(b_keys, value_set=c_keys))
    only_c = pc.invert(in_both)

    def listed(keys: pa.Array, mask: pa.Array) -> tuple[int, list[Any]]:
        return _sum(mask.cast(pa.int64())), keys.filter(mask).slice(0, limit).to_pylist()

    return joined, listed(b_keys, only_b), listed(c_keys, only_c)


def _group_column(base: OutputInfo, cur: OutputInfo, group_by: str | None) -> str | None:
    if group_by is not None:
        for info in (base, cur):
            if group_by not in info.schema.names:
                raise UsageError(
                    f"{info.path}: no column {group_by!r} to group by",
                    hint=f"columns are: {', '.join(info.schema.names)}",
                )
        return group_by
    recorded = cur.group_by or base.group_by
    return recorded if recorded in base.schema.names and recorded in cur.schema.names else None


def _paired(b: pa.Array, c: pa.Array) -> dict[str, pa.Array]:
    """The per-row indicators a Paired is summed from (as int64)."""
    return {
        "b": b.cast(pa.int64()),
        "c": c.cast(pa.int64()),
        "rw": pc.and_(b, pc.invert(c)).cast(pa.int64()),
        "wr": pc.and_(pc.invert(b), c).cast(pa.int64()),
    }


def _sum(col: Any) -> int:
    return int(pc.sum(col).as_py() or 0)


def _accuracy(graded: pa.Table, group: str | None) -> tuple[Paired, dict[str, Paired]]:
    ind = _paired(graded.column("b_correct"), graded.column("c_correct"))
    overall = Paired(graded.num_rows, *(_sum(ind[k]) for k in ("b", "c", "rw", "wr")))
    if group is None:
        return overall, {}
    table = pa.table({"g": graded.column("c_group"), **ind})
    agg = table.group_by("g").aggregate([("b", "count"), *((k, "sum") for k in ind)])
    groups = {}
    for r in sorted(agg.to_pylist(), key=lambda r: (r["g"] is None, str(r["g"]))):
        groups["(null)" if r["g"] is None else str(r["g"])] = Paired(
            r["b_count"], r["b_sum"], r["c_sum"], r["rw_sum"], r["wr_sum"]
        )
    return overall, groups


def _listed(
    rows: pa.Table,
    key: str,
    direction: str | None,
    base: OutputInfo,
    cur: OutputInfo,
) -> list[Flip]:
    """The listed rows with their prompt, expected answer and both completions."""
    keys = rows.column(key).combine_chunks()
    show = [*base.prompt_columns(), *([base.expected_column] if base.expected_column else [])]
    before = rows_with_keys(base.path, key, keys, [*show, "completion"])
    after = rows_with_keys(cur.path, key, keys, ["completion"])
    groups = rows.column("c_group").to_pylist() if "c_group" in rows.column_names else None
    out = []
    for i, k in enumerate(keys.to_pylist()):
        b, c = before.get(k, {}), after.get(k, {})
        expected = b.get(base.expected_column) if base.expected_column else None
        out.append(
            Flip(
                key=k,
                direction=direction,
                group=None if groups is None else groups[i],
                prompt=base.prompt_text(b),
                expected=None if expected is None else str(expected),
                baseline=b.get("completion"),
                current=c.get("completion"),
            )
        )
    return out


def _changed_answers(
    pairs: pa.Table, base: Path, cur: Path, notes: list[str], chunk: int | None = None
) -> pa.Array:
    """Whether each pair's completion changed (pairs in the current run's order).

    Two runs of one job list rows in input order, so the baseline positions rise too and
    both files are read front to back one window at a time; otherwise both columns are
    read whole.
    """
    bpos, cpos = pairs.column("b_pos").combine_chunks(), pairs.column("c_pos").combine_chunks()
    rising = len(bpos) < 2 or pc.all(pc.greater_equal(bpos[1:], bpos[:-1])).as_py()
    if not rising:
        notes.append("the outputs list rows in different orders: completions were read whole")
        b = pq.read_table(base, columns=["completion"]).column(0).take(bpos)
        c = pq.read_table(cur, columns=["completion"]).column(0).take(cpos)
        return pc.invert(pc.fill_null(pc.equal(b, c), False)).combine_chunks()
    bw, cw = ColumnWindow(base, "completion", chunk), ColumnWindow(cur, "completion", chunk)
    step = min(bw.rows, cw.rows)
    parts = []
    pool = pa.default_memory_pool()
    for n, start in enumerate(range(0, len(bpos), step)):
        b = bw.take(bpos.slice(start, step))
        c = cw.take(cpos.slice(start, step))
        # Rows ok in both runs have a completion; a null one (no text) equals only a null.
        same = pc.if_else(pc.is_null(b), pc.is_null(c), pc.fill_null(pc.equal(b, c), False))
        parts.append(pc.invert(same).combine_chunks())
        del b, c, same
        if n % 4 == 3:
            # The C allocator keeps freed text buffers in the arenas of the decoding
            # threads: 200,000 answers of 2 KB a side peaked at 451 MB without this and at
            # 302 MB with it every 4th chunk (0.9 s slower; every chunk: 240 MB, 2 s).
            pool.release_unused()
    return pa.chunked_array(parts, pa.bool_()).combine_chunks()


def compare_outputs(
    baseline: Path,
    current: Path,
    *,
    key: str = "id",
    group_by: str | None = None,
    prices: PriceTable | None = None,
    thresholds: Thresholds | None = None,
    force: bool = False,
    limit: int = DEFAULT_LIMIT,
) -> Comparison:
    """Compare two batchrun outputs; UsageError when one is unreadable, a key is missing or
    not unique, or they look like outputs of two jobs (unless ``force``).

    ``group_by`` defaults to the group column the current (else baseline) job recorded;
    ``limit`` caps each list of rows shown.
    """
    prices = prices if prices is not None else PriceTable.default()
    base_info, cur_info = read_info(baseline), read_info(current)
    notes = [
        f"{i.path}: schema version {i.version} is newer than this batchrun knows; read by column name"
        for i in (base_info, cur_info)
        if i.version not in KNOWN_VERSIONS
    ]
    for info in (base_info, cur_info):
        if key not in info.schema.names:
            raise UsageError(
                f"{info.path}: no key column {key!r}",
                hint=f"pass --key with one of: {', '.join(info.schema.names)}",
            )
    if (bt := base_info.schema.field(key).type) != (ct := cur_info.schema.field(key).type):
        raise UsageError(f"key column {key!r} is {bt} in {baseline} but {ct} in {current}")
    base_rep = build_report(baseline, prices=prices)
    cur_rep = build_report(current, prices=prices)
    mismatches = job_differences(
        base_info, cur_info, (set(base_rep.cost_by_model), set(cur_rep.cost_by_model))
    )
    graded = base_info.graded and cur_info.graded
    group = _group_column(base_info, cur_info, group_by) if graded else None
    if group_by is not None and not graded:
        notes.append(f"--group-by {group_by}: the outputs are not both graded; no groups")
    b = _side(base_info, key, graded, None, "b")
    c = _side(cur_info, key, graded, group, "c")
    joined, (n_b, keys_b), (n_c, keys_c) = _join(b, c, key, limit)
    del b, c
    if joined.num_rows == 0:
        mismatches.append(f"no {key} is in both outputs")
    if mismatches and not force:
        raise UsageError(
            f"{baseline} and {current} look like outputs of different jobs: {'; '.join(mismatches)}",
            hint="pass --force to compare them anyway",
        )
    accuracy: Paired | None = None
    groups: dict[str, Paired] = {}
    flips: list[Flip] = []
    changes: list[Flip] = []
    compared = changed = None
    if graded:
        both = pc.and_(
            pc.is_valid(joined.column("b_correct")), pc.is_valid(joined.column("c_correct"))
        )
        paired = joined.filter(both)
        accuracy, groups = _accuracy(paired, group)
        ind = _paired(paired.column("b_correct"), paired.column("c_correct"))
        for direction, col in ((RIGHT_TO_WRONG, "rw"), (WRONG_TO_RIGHT, "wr")):
            rows = paired.filter(pc.equal(ind[col], 1)).slice(0, limit)
            flips += _listed(rows, key, direction, base_info, cur_info)
    else:
        ok = pc.and_(
            pc.equal(joined.column("b_status"), "ok"), pc.equal(joined.column("c_status"), "ok")
        )
        pairs = joined.filter(ok)
        mask = _changed_answers(pairs, baseline, current, notes)
        compared, changed = pairs.num_rows, _sum(mask.cast(pa.int64()))
        changes = _listed(pairs.filter(mask).slice(0, limit), key, None, base_info, cur_info)
    both_reported = base_rep.reported_cost_usd is not None and cur_rep.reported_cost_usd is not None
    cmp = Comparison(
        baseline=base_rep,
        current=cur_rep,
        key=key,
        paired_rows=joined.num_rows,
        only_baseline=n_b,
        only_current=n_c,
        only_baseline_keys=keys_b,
        only_current_keys=keys_c,
        accuracy=accuracy,
        group_by=group,
        groups=groups,
        flips=flips,
        answers_compared=compared,
        answers_changed=changed,
        changes=changes,
        cost_basis="reported" if both_reported else "estimated",
        mismatches=mismatches,
        notes=notes
        + [f"baseline: {n}" for n in base_rep.notes]
        + [f"current: {n}" for n in cur_rep.notes],
    )
    check_gates(cmp, thresholds or Thresholds())
    return cmp
