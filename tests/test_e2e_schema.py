"""End to end, the real CLI against the simulator: structured outputs (typed columns read by
pyarrow, pandas, polars and duckdb; re-asks the simulator sees; invalid_output rows and
--retry-failed of them), --choices over the bundled reviews, per-row parameters on the wire."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import jsonschema
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun.io.writers import SCHEMA_VERSION
from tests.conftest import ROOT, run_cli, write_jsonl

pytestmark = pytest.mark.e2e

SCHEMA: dict[str, Any] = {
    "title": "record_review",
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "rating": {"type": "integer", "minimum": 1, "maximum": 5},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "recommends": {"type": "boolean"},
        "topics": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
        "item": {
            "type": "object",
            "properties": {"kind": {"type": "string"}, "defect": {"type": "boolean"}},
            "required": ["kind", "defect"],
        },
    },
    "required": ["sentiment", "rating", "confidence", "recommends", "topics", "item"],
    "additionalProperties": False,
}
TYPES = {
    "sentiment": pa.string(),
    "rating": pa.int64(),
    "confidence": pa.float64(),
    "recommends": pa.bool_(),
    "topics": pa.list_(pa.string()),
    "item": pa.struct([("kind", pa.string()), ("defect", pa.bool_())]),
}


def _run(src: Path, out: Path, url: str, *extra: str) -> Any:
    return run_cli(
        "run", "--input", str(src), "--output", str(out), "--base-url", url,
        "--concurrency", "32", "--quiet", *extra,
    )  # fmt: skip


def test_2000_rows_with_a_schema_give_typed_columns_and_reasks(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(invalid_rate=0.1, record_bodies=True)
    src = write_jsonl(
        tmp_path / "in.jsonl", [{"id": i, "text": f"review number {i}"} for i in range(2000)]
    )
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    out = tmp_path / "out.parquet"
    # One re-ask: with 10 % invalid answers, about 1 % of the rows stay invalid.
    proc = _run(src, out, sim.url, "--template", "Review: {text}", "--schema", str(schema),
                "--max-reasks", "1", "--max-failure-rate", "0.05")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(out)
    assert {name: table.schema.field(name).type for name in TYPES} == TYPES
    assert table.schema.metadata[b"batchrun.schema_version"] == SCHEMA_VERSION.encode()
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == list(range(2000))
    ok = [r for r in rows if r["status"] == "ok"]
    bad = [r for r in rows if r["status"] == "error"]
    for r in ok:
        jsonschema.validate({k: r[k] for k in TYPES}, SCHEMA)
    assert 0 < len(bad) < 60 and {r["error_type"] for r in bad} == {"invalid_output"}
    for r in bad:
        assert r["error"].startswith("invalid output (after 1 re-ask): ")
        assert all(r[k] is None for k in TYPES) and r["attempts"] == 2
    # The simulator saw the follow-ups, each carrying the violation.
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    bodies = [b["body"] for b in sim.stats.bodies]
    followups = [b for b in bodies if len(b["messages"]) > 1]
    assert sim.stats.followups == len(followups) == summary["reasks"] > 100
    assert sum(sim.stats.invalid_answers.values()) == summary["reasks"] + len(bad)
    tool_results = [b["messages"][-1] for b in followups if b["messages"][-1]["role"] == "tool"]
    assert tool_results and all(m["content"].startswith("Error: ") for m in tool_results)
    assert summary["requests_sent"] == 2000 + summary["reasks"]

    # Read back without conversion.
    df = pd.read_parquet(out, dtype_backend="pyarrow")
    assert (
        str(df["rating"].dtype) == "int64[pyarrow]"
        and str(df["recommends"].dtype) == "bool[pyarrow]"
    )
    plain = pd.read_parquet(out)  # numpy-backed: numbers, bools and lists as values
    first = plain[plain["status"] == "ok"].iloc[0]
    assert isinstance(first["rating"], float | int) and list(first["topics"]) == ok[0]["topics"]
    assert first["item"] == ok[0]["item"]
    frame = pl.read_parquet(out)
    assert frame.schema["rating"] == pl.Int64 and frame.schema["topics"] == pl.List(pl.String)
    assert frame.schema["item"] == pl.Struct({"kind": pl.String, "defect": pl.Boolean})
    con = duckdb.connect()
    kinds = con.execute(
        f"SELECT typeof(rating), typeof(confidence), typeof(recommends), typeof(topics),"
        f" typeof(item), item.kind FROM '{out}' WHERE status = 'ok' LIMIT 1"
    ).fetchone()
    assert kinds is not None
    assert kinds[:5] == (
        "BIGINT",
        "DOUBLE",
        "BOOLEAN",
        "VARCHAR[]",
        "STRUCT(kind VARCHAR, defect BOOLEAN)",
    )
    assert kinds[5] == ok[0]["item"]["kind"]

    # --retry-failed --only invalid_output re-sends just those rows; with more re-asks
    # (not part of the job's identity) most of them come out valid.
    seen = len(sim.stats.bodies)
    proc = _run(src, out, sim.url, "--template", "Review: {text}", "--schema", str(schema),
                "--max-reasks", "3", "--max-failure-rate", "0.05", "--retry-failed",
                "--only", "invalid_output")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    resent = [b["body"] for b in sim.stats.bodies[seen:]]
    firsts = sorted(b["messages"][0]["content"] for b in resent if len(b["messages"]) == 1)
    assert firsts == sorted(f"Review: {r['text']}" for r in bad)
    after = pq.read_table(out).to_pylist()
    assert sum(r["status"] == "error" for r in after) < len(bad)
    bad_ids = {r["id"] for r in bad}
    assert [r for r in after if r["id"] not in bad_ids] == [
        r for r in rows if r["id"] not in bad_ids
    ]


def test_choices_label_the_bundled_reviews_with_only_the_given_values(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(invalid_rate=0.2)
    out = tmp_path / "labels.parquet"
    proc = run_cli(
        "run", str(ROOT / "jobs" / "label_sentiment.toml"), "--output", str(out),
        "--base-url", sim.url, "--rpm", "1000000", "--quiet",
    )  # fmt: skip
    assert proc.returncode in (0, 3), proc.stderr
    table = pq.read_table(out)
    assert table.schema.field("label").type == pa.string()
    labels = {r["label"] for r in table.to_pylist() if r["status"] == "ok"}
    assert labels and labels <= {"positive", "negative", "neutral"}
    assert table.num_rows == 200 and sim.stats.followups > 0


def test_per_row_parameters_reach_the_wire_for_exactly_their_rows(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(record_bodies=True)
    rows = [
        {"id": 0, "prompt": "a", "opts": {"max_tokens": 7, "top_k": 3}},
        {"id": 1, "prompt": "b", "opts": None},
        {"id": 2, "prompt": "c", "opts": {"metadata": {"batch": "x"}, "system": "S"}},
        {"id": 3, "prompt": "d"},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    proc = _run(src, tmp_path / "out.parquet", sim.url, "--params-column", "opts",
                "--max-tokens", "20")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    bodies = {b["body"]["messages"][0]["content"]: b["body"] for b in sim.stats.bodies}
    assert bodies["a"]["max_tokens"] == 7 and bodies["a"]["top_k"] == 3
    assert bodies["c"]["metadata"] == {"batch": "x"} and bodies["c"]["system"] == "S"
    for plain in ("b", "d"):
        assert bodies[plain]["max_tokens"] == 20
        assert not {"top_k", "metadata", "system"} & set(bodies[plain])
    assert bodies["c"]["max_tokens"] == 20 and "top_k" not in bodies["c"]


def test_an_out_of_range_row_parameter_exits_2_before_any_request(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory()
    src = tmp_path / "in.parquet"
    table = pa.Table.from_pylist(
        [
            {"prompt": "a", "opts": {"temperature": 0.2}},
            {"prompt": "b", "opts": {"temperature": 3.0}},
        ]
    )
    pq.write_table(table, src)
    proc = _run(src, tmp_path / "out.parquet", sim.url, "--params-column", "opts")
    assert proc.returncode == 2
    assert (
        "row 1, column 'opts': params: temperature must be between 0 and 1, got 3.0" in proc.stderr
    )
    assert "Traceback" not in proc.stderr and sim.stats.requests == 0


def test_a_row_parameter_the_provider_refuses_exits_2_like_the_job_level_one(
    tmp_path: Path, sim_factory: Any
) -> None:
    # The openai profile refuses top_k (OpenAI rejects it): per row as for the whole job.
    sim = sim_factory()
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [{"prompt": "a"}, {"prompt": "b", "opts": {"top_k": 3}}],
    )
    job_level = _run(src, tmp_path / "a.parquet", sim.url, "--provider", "openai",
                     "--top-k", "3")  # fmt: skip
    assert job_level.returncode == 2 and "does not take top_k" in job_level.stderr
    proc = _run(src, tmp_path / "b.parquet", sim.url, "--provider", "openai",
                "--params-column", "opts")  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "line 2, column 'opts': params: the openai provider does not take top_k" in proc.stderr
    assert "Traceback" not in proc.stderr and sim.stats.requests == 0
    # A provider that takes it sends it.
    vllm = _run(src, tmp_path / "c.parquet", sim.url, "--provider", "vllm",
                "--params-column", "opts")  # fmt: skip
    assert vllm.returncode == 0, vllm.stderr
