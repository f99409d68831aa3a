"""End to end around a run: dry run, budgets, summary, evaluation jobs, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from batchrun.pricing import PriceTable
from tests.conftest import ROOT, run_cli, write_jsonl

pytestmark = pytest.mark.e2e


def test_dry_run_of_100k_rows_lists_every_invalid_row_and_sends_nothing(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory()
    bad_lines = {1234, 50_000, 99_999}
    path = tmp_path / "big.jsonl"
    with path.open("w") as f:
        for i in range(1, 100_001):
            if i == 1234:
                f.write('{"prompt": "broken\n')
            elif i == 50_000:
                f.write('{"prompt": ""}\n')
            elif i == 99_999:
                f.write('{"other": 1}\n')
            else:
                f.write(json.dumps({"prompt": f"row {i}"}) + "\n")
    proc = run_cli(
        "run",
        "--input",
        str(path),
        "--output",
        str(tmp_path / "o.parquet"),
        "--base-url",
        sim.url,
        "--dry-run",
    )
    assert proc.returncode == 2
    listed = [line for line in proc.stderr.splitlines() if line.startswith("batchrun: invalid:")]
    assert [int(line.split(", line ")[1].split(":")[0].split(",")[0]) for line in listed] == sorted(
        bad_lines
    )
    assert "3 invalid rows" in proc.stderr
    assert sim.stats.requests == 0


def test_dry_run_of_a_valid_file_estimates_and_sends_nothing(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory()
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "x" * 40} for _ in range(1000)])
    proc = run_cli(
        "run",
        "--input",
        str(src),
        "--output",
        str(tmp_path / "o.parquet"),
        "--base-url",
        sim.url,
        "--dry-run",
        "--max-tokens",
        "10",
    )
    assert proc.returncode == 0, proc.stderr
    assert "1,000 rows, all valid" in proc.stdout
    assert "up to 10,000 completion" in proc.stdout
    assert "estimated cost" in proc.stdout
    assert sim.stats.requests == 0


def test_max_cost_stops_near_the_cap_and_a_higher_cap_finishes_without_resending(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(latency_ms=5)
    n = 400
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [{"id": i, "prompt": f"please answer question {i}"} for i in range(n)],
    )
    out = tmp_path / "out.parquet"
    price = PriceTable.default().get("anthropic/claude-3-opus")
    assert price is not None
    cap = 0.05
    first = run_cli(
        "run", "--input", str(src), "--output", str(out), "--base-url", sim.url,
        "--max-tokens", "8", "--concurrency", "8", "--max-cost", str(cap),
    )  # fmt: skip
    assert first.returncode == 4, first.stderr
    assert "cost cap" in first.stderr and "--max-cost" in first.stderr
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert 0 < summary["rows_ok"] < n
    spent = price.cost(sim.stats.prompt_tokens, sim.stats.completion_tokens)
    assert spent <= cap  # reservations keep it under the cap
    assert summary["estimated_cost_usd"] == pytest.approx(spent, rel=1e-6)
    served_before = sim.stats.ok
    second = run_cli(
        "run", "--input", str(src), "--output", str(out), "--base-url", sim.url,
        "--max-tokens", "8", "--concurrency", "8", "--max-cost", "10",
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert sim.stats.ok == n  # each row answered once across both runs
    assert sim.stats.ok - served_before == n - summary["rows_ok"]
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == list(range(n))


def test_summary_equals_the_output_and_the_simulator(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(error_500_rate=0.2, seed=5)
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q{i}"} for i in range(300)])
    out = tmp_path / "out.parquet"
    proc = run_cli(
        "run",
        "--input",
        str(src),
        "--output",
        str(out),
        "--base-url",
        sim.url,
        "--max-attempts",
        "1",
        "--max-failure-rate",
        "0.5",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    table = pq.read_table(out)
    statuses = table.column("status").to_pylist()
    assert summary["rows_total"] == table.num_rows == 300
    assert summary["rows_ok"] == statuses.count("ok") == sim.stats.ok
    assert summary["rows_error"] == statuses.count("error") == sim.stats.by_status[500]
    assert summary["errors_by_type"] == {"server_error": statuses.count("error")}
    for col in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert summary[col] == pc.sum(table.column(col)).as_py()
    assert summary["prompt_tokens"] == sim.stats.prompt_tokens
    assert summary["completion_tokens"] == sim.stats.completion_tokens
    assert summary["requests_sent"] == sim.stats.requests


@pytest.mark.parametrize("stream", [False, True])
def test_costs_reported_in_a_header_are_recorded_per_row_and_totalled(
    tmp_path: Path, sim_factory: Any, stream: bool
) -> None:
    sim = sim_factory(cost_header="x-litellm-response-cost")
    src = write_jsonl(
        tmp_path / "in.jsonl", [{"prompt": f"question {i} " * (i % 5 + 1)} for i in range(120)]
    )
    out = tmp_path / "out.parquet"
    proc = run_cli(
        "run", "--input", str(src), "--output", str(out), "--base-url", sim.url,
        "--stream" if stream else "--no-stream",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(out)
    costs = table.column("reported_cost_usd").to_pylist()
    assert None not in costs and len(set(costs)) > 1  # every row's own cost
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["rows_cost_reported"] == 120
    assert summary["reported_cost_usd"] == pytest.approx(sum(costs))
    assert sum(costs) == pytest.approx(sim.stats.reported_cost_usd)
    # The simulator prices at the bundled list prices, so the estimate agrees here.
    assert summary["estimated_cost_usd"] == pytest.approx(summary["reported_cost_usd"], rel=1e-4)
    assert "cost: reported $" in proc.stdout


def test_without_a_cost_header_the_column_is_null(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(gateway_cost=False)
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q{i}"} for i in range(20)])
    out = tmp_path / "out.parquet"
    proc = run_cli("run", "--input", str(src), "--output", str(out), "--base-url", sim.url)
    assert proc.returncode == 0, proc.stderr
    assert pq.read_table(out).column("reported_cost_usd").null_count == 20
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["reported_cost_usd"] is None and summary["rows_cost_reported"] == 0


def test_failure_rate_above_the_limit_is_exit_3(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(error_500_rate=0.5, seed=2)
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q{i}"} for i in range(100)])
    proc = run_cli(
        "run",
        "--input",
        str(src),
        "--output",
        str(tmp_path / "o.parquet"),
        "--base-url",
        sim.url,
        "--max-attempts",
        "1",
        "--max-failure-rate",
        "0.1",
    )
    assert proc.returncode == 3
    assert json.loads((tmp_path / "o.summary.json").read_text())["exit_code"] == 3


def test_nightly_eval_job_reports_its_accuracy(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory()
    out = tmp_path / "eval.parquet"
    proc = run_cli(
        "run",
        str(ROOT / "jobs" / "nightly_eval.toml"),
        "--base-url",
        sim.url,
        "--output",
        str(out),
        "--restart",
    )
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(out)
    correct = table.column("correct").to_pylist()
    expected = [
        c.strip().casefold() == a.strip().casefold()
        for c, a in zip(
            table.column("completion").to_pylist(), table.column("answer").to_pylist(), strict=True
        )
    ]
    assert correct == expected
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["graded_rows"] == table.num_rows
    assert summary["accuracy"] == pytest.approx(sum(expected) / len(expected))
    assert set(summary["accuracy_by_group"]) == {"math", "geo", "misc"}
    assert "accuracy" in proc.stdout


def test_report_command_on_an_output(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(latency_ms=3, jitter_ms=2)
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q{i}"} for i in range(120)])
    out = tmp_path / "out.parquet"
    assert (
        run_cli("run", "--input", str(src), "--output", str(out), "--base-url", sim.url).returncode
        == 0
    )
    page = tmp_path / "report.html"
    proc = run_cli("report", str(out), "--html", str(page))
    assert proc.returncode == 0, proc.stderr
    assert "120" in proc.stdout
    html = page.read_text()
    assert 'id="rows-ok"' in html and "<svg" in html and "https://" not in html
    not_output = run_cli("report", str(src))
    assert not_output.returncode == 2
