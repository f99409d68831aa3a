"""End to end over real sockets: the CLI against the simulator speaking the gateway's ways —
tracing ids, the real spend (headers and the stream's meta.usage), gateway error bodies,
strict bodies, images, the model check."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import math
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli, write_jsonl
from tests.imagefiles import jpeg, padded_png, png, webp

VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _run(src: Path, out: Path, url: str, *extra: str) -> Any:
    return run_cli(
        "run", "--input", str(src), "--output", str(out), "--base-url", url, "--quiet", *extra
    )


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_2000_rows_spend_sums_and_every_row_is_traceable(
    tmp_path: Path, sim_factory: Any, stream: bool
) -> None:
    sim = sim_factory(record_bodies=True, reasoning_rate=0.0)
    src = write_jsonl(
        tmp_path / "in.jsonl", [{"id": f"row-{i}", "prompt": f"q {i}"} for i in range(2000)]
    )
    out = tmp_path / "out.parquet"
    flags = ["--concurrency", "32"] + (["--stream"] if stream else [])
    proc = _run(src, out, sim.url, *flags)
    assert proc.returncode == 0, proc.stderr
    t = pq.read_table(out)
    credits = t.column("credits_used").to_pylist()
    usd = t.column("reported_cost_usd").to_pylist()
    assert None not in credits and None not in usd
    st = sim.stats
    assert sum(credits) == st.credits_used > 0
    assert math.fsum(usd) == st.usd_spent  # both the exactly rounded sum of the same values
    inference = t.column("inference_id").to_pylist()
    assert None not in inference and len(set(inference)) == 2000
    cids = t.column("client_request_id").to_pylist()
    assert all(VALID_ID.fullmatch(c) for c in cids) and len(set(cids)) == 2000
    assert {b["headers"]["X-Client-Request-Id"] for b in st.bodies} == set(cids)
    assert st.client_request_ids == 2000 and st.client_request_ids_invalid == 0
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["credits_used"] == st.credits_used
    assert summary["reported_cost_usd"] == pytest.approx(st.usd_spent)
    assert summary["estimated_cost_usd"] is not None
    assert summary["spent_usd"] == pytest.approx(st.usd_spent)  # every row reported its spend
    assert "cost: reported $" in proc.stdout and "estimated $" in proc.stdout


def test_a_retried_row_keeps_its_client_request_id(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(record_bodies=True, error_500_rate=0.4, seed=3)
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q {i}"} for i in range(60)])
    out = tmp_path / "out.parquet"
    proc = _run(src, out, sim.url, "--max-attempts", "8")
    assert proc.returncode == 0, proc.stderr
    t = pq.read_table(out, columns=["id", "client_request_id", "attempts"]).to_pylist()
    by_cid: dict[str, int] = {}
    for b in sim.stats.bodies:
        cid = b["headers"]["X-Client-Request-Id"]
        by_cid[cid] = by_cid.get(cid, 0) + 1
    assert any(r["attempts"] > 1 for r in t)
    for r in t:  # every attempt of a row went under the row's one id
        assert by_cid[r["client_request_id"]] == r["attempts"]


def test_a_resumed_job_names_its_rows_as_the_first_run_did(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(record_bodies=True)
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q {i}"} for i in range(30)])
    out = tmp_path / "out.parquet"
    assert _run(src, out, sim.url, "--limit", "10").returncode == 0
    assert _run(src, out, sim.url).returncode == 0  # a second process resumes the job
    cids = pq.read_table(out, columns=["client_request_id"]).column(0).to_pylist()
    (tag,) = {c.split(":")[1] for c in cids}
    assert cids == [f"br:{tag}:i{i}" for i in range(30)]
    # Each row's id reached the server once (in whatever order concurrent requests arrive).
    sent = [b["headers"]["X-Client-Request-Id"] for b in sim.stats.bodies]
    assert sorted(sent) == sorted(cids)
    # Another output is another job: other ids for the same rows.
    other = tmp_path / "other.parquet"
    assert _run(src, other, sim.url, "--limit", "1").returncode == 0
    assert pq.read_table(other).column("client_request_id")[0].as_py() != cids[0]


def test_a_strict_refusal_is_an_error_row_with_the_gateways_request_id(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory()
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q {i}"} for i in range(3)])
    out = tmp_path / "out.parquet"
    proc = _run(src, out, sim.url, "--extra-body", '{"service_tier": "auto"}')
    assert proc.returncode == 3, proc.stderr
    rows = pq.read_table(out).to_pylist()
    for r in rows:
        assert r["error_type"] == "bad_request"
        assert "Body validation error! property 'service_tier' should not exist" in r["error"]
        assert re.search(r"\(requestId [0-9a-f-]{36}\)", r["error"])
        assert r["inference_id"] is not None and r["client_request_id"] is not None
    # Not a Claude model: the same field is taken.
    out2 = tmp_path / "out2.parquet"
    proc = _run(src, out2, sim.url, "--extra-body", '{"service_tier": "auto"}', "--model", "gpt-4o")
    assert proc.returncode == 0, proc.stderr


# --- images -------------------------------------------------------------------------------


servers: list[http.server.ThreadingHTTPServer] = []


@pytest.fixture
def image_server(tmp_path: Path) -> Iterator[str]:
    """A local http server for image URLs (serves tmp_path/www)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            # The API key goes to the API only: an image host must never see it.
            assert "Authorization" not in self.headers
            self.server.fetched += 1  # type: ignore[attr-defined]
            super().do_GET()

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.fetched = 0  # type: ignore[attr-defined]
    servers.append(server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _image_input(tmp_path: Path, base: str) -> tuple[Path, list[tuple[str, bytes]]]:
    """300 rows: 100 local files (PNG, JPEG, WebP), 100 Parquet bytes, 100 URLs."""
    makers = [("image/png", png), ("image/jpeg", jpeg), ("image/webp", webp)]
    (tmp_path / "imgs").mkdir()
    paths: list[str | None] = []
    blobs: list[bytes | None] = []
    expected: list[tuple[str, bytes]] = []
    for i in range(300):
        media, make = makers[i % 3]
        data = make(seed=i)
        expected.append((media, data))
        ext = media.split("/")[1]
        if i < 100:
            (tmp_path / "imgs" / f"{i}.{ext}").write_bytes(data)
            paths.append(f"imgs/{i}.{ext}")
            blobs.append(None)
        elif i < 200:
            paths.append(None)
            blobs.append(data)
        else:
            (tmp_path / "www" / f"{i}.{ext}").write_bytes(data)
            paths.append(f"{base}/{i}.{ext}")
            blobs.append(None)
    table = pa.table(
        {
            "id": list(range(300)),
            "prompt": [f"describe {i}" for i in range(300)],
            "path": pa.array(paths, pa.string()),
            "blob": pa.array(blobs, pa.binary()),
        }
    )
    src = tmp_path / "in.parquet"
    pq.write_table(table, src)
    return src, expected


def _images_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    content = body["messages"][-1]["content"]
    return [p for p in content if p.get("type") != "text"]


def test_300_rows_of_images_for_claude_and_for_another_model(
    tmp_path: Path, sim_factory: Any, image_server: str
) -> None:
    src, expected = _image_input(tmp_path, image_server)
    flags = ["--image-column", "path", "--image-column", "blob", "--concurrency", "16"]
    claude = sim_factory(record_bodies=True)
    proc = _run(src, tmp_path / "claude.parquet", claude.url, *flags)
    assert proc.returncode == 0, proc.stderr
    assert len(claude.stats.bodies) == 300
    assert servers[-1].fetched == 100  # each URL fetched once, without the key
    for b in claude.stats.bodies:
        i = int(b["body"]["messages"][-1]["content"][-1]["text"].split()[-1])
        (block,) = _images_of(b["body"])
        media, data = expected[i]
        assert block == {
            "type": "image",
            "source": {"type": "base64", "media_type": media, "data": base64.b64encode(data).decode()},
        }  # fmt: skip
    other = sim_factory(record_bodies=True)
    proc = _run(src, tmp_path / "gpt.parquet", other.url, *flags, "--model", "gpt-4o")
    assert proc.returncode == 0, proc.stderr
    for b in other.stats.bodies:
        i = int(b["body"]["messages"][-1]["content"][-1]["text"].split()[-1])
        (part,) = _images_of(b["body"])
        media, data = expected[i]
        url = part["image_url"]["url"]
        if i >= 200:  # a URL is passed on, not fetched
            assert url.startswith(image_server) and url.endswith(f"/{i}.{media.split('/')[1]}")
        else:
            assert url == f"data:{media};base64,{base64.b64encode(data).decode()}"
    assert servers[-1].fetched == 100  # not fetched again for gpt-4o
    # The output keeps the reference, never the bytes it read.
    t = pq.read_table(tmp_path / "claude.parquet")
    assert t.column("path").to_pylist()[0] == "imgs/0.png"


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("missing.png", None, "image file missing.png not found"),
        ("text.png", b"just some text, not a picture", "is not a JPEG, PNG, GIF or WebP image"),
        ("huge.png", padded_png(5 * 1024 * 1024 + 1), "the limit for this model is 5,242,880"),
    ],
)
def test_a_bad_image_is_exit_2_in_one_line_before_anything_is_sent(
    tmp_path: Path, sim_factory: Any, name: str, content: bytes | None, words: str
) -> None:
    sim = sim_factory()
    if content is not None:
        (tmp_path / name).write_bytes(content)
    (tmp_path / "ok.png").write_bytes(png())
    rows = [{"prompt": "a", "img": "ok.png"}, {"prompt": "b", "img": ["ok.png", name]}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    proc = _run(src, tmp_path / "out.parquet", sim.url, "--image-column", "img")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"{src}, line 2, column 'img': image 2 of 2: " in lines[0] and words in lines[0]
    assert sim.stats.requests == 0 and sim.stats.model_lists == 0


def test_image_tokens_count_in_the_dry_run_estimate(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png(750, 100))  # 100 tokens as Anthropic counts
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "abcd", "img": "a.png"}])
    plain = run_cli("run", "--input", str(src), "--dry-run")
    with_image = run_cli("run", "--input", str(src), "--dry-run", "--image-column", "img")
    assert plain.returncode == with_image.returncode == 0, with_image.stderr

    def prompt_tokens(text: str) -> int:
        m = re.search(r"estimated tokens \(whole input\): ([\d,]+) prompt", text)
        assert m is not None, text
        return int(m.group(1).replace(",", ""))

    assert prompt_tokens(with_image.stdout) == prompt_tokens(plain.stdout) + 100
    assert "1 image(s) first in the last user message: a.png" in with_image.stdout
    assert "X-Client-Request-Id: br:" in with_image.stdout


# --- the model check ----------------------------------------------------------------------


def test_a_model_the_gateway_does_not_list_is_exit_2_naming_the_closest(
    tmp_path: Path, sim_factory: Any
) -> None:
    listed = ("anthropic/claude-3-opus", "claude-3-opus", "claude-3-opus-latest", "gpt-4o")
    sim = sim_factory(models=listed)
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q {i}"} for i in range(20)])
    out = tmp_path / "out.parquet"
    proc = _run(src, out, sim.url, "--model", "claude-3-opus-20240229")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "model 'claude-3-opus-20240229' is not among the 4 models" in line
    assert "Anthropic retired claude-3-opus-20240229 on 2026-01-05" in line
    assert "closest: anthropic/claude-3-opus (also claude-3-opus, claude-3-opus-latest)" in line
    assert sim.stats.requests == 0 and sim.stats.model_lists == 1
    # Nothing was recorded: the corrected command starts afresh (no "job changed").
    proc = _run(src, out, sim.url, "--model", "claude-3-opus")
    assert proc.returncode == 0, proc.stderr
    assert sim.stats.requests == 20


def test_no_model_list_is_a_warning_and_no_model_check_skips_it(
    tmp_path: Path, sim_factory: Any
) -> None:
    sim = sim_factory(models=None)
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "q"}])
    proc = _run(src, tmp_path / "a.parquet", sim.url)
    assert proc.returncode == 0, proc.stderr
    assert "could not check the model" in proc.stderr and "HTTP 404" in proc.stderr
    listed = sim_factory(models=("gpt-4o",))
    proc = _run(src, tmp_path / "b.parquet", listed.url, "--no-model-check")
    assert proc.returncode == 0, proc.stderr
    assert listed.stats.model_lists == 0


RETIRED_LINE = "Anthropic retired claude-3-opus-20240229 on 2026-01-05"


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "retired" in line]


def test_a_retired_model_is_named_in_one_line_however_the_check_goes(
    tmp_path: Path, sim_factory: Any
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q {i}"} for i in range(3)])
    opus = ("--model", "claude-3-opus-20240229")
    # The default simulator still lists the snapshot: a warning, and the run goes on.
    sim = sim_factory()
    proc = _run(src, tmp_path / "a.parquet", sim.url, *opus)
    assert proc.returncode == 0, proc.stderr
    (line,) = _warnings(proc.stderr)
    assert RETIRED_LINE in line and "still lists it" in line
    assert sim.stats.model_lists == 1 and sim.stats.requests == 3
    # No model list: the retirement and the failed check in the same one line.
    unlisted = sim_factory(models=None)
    proc = _run(src, tmp_path / "b.parquet", unlisted.url, *opus)
    assert proc.returncode == 0, proc.stderr
    (line,) = _warnings(proc.stderr)
    assert RETIRED_LINE in line and "could not check the model" in line
    assert "could not check" not in proc.stderr.replace(line, "")
    # --no-model-check: batchrun's own knowledge, no request for it.
    skipped = sim_factory()
    proc = _run(src, tmp_path / "c.parquet", skipped.url, *opus, "--no-model-check")
    assert proc.returncode == 0, proc.stderr
    (line,) = _warnings(proc.stderr)
    assert RETIRED_LINE in line and "--no-model-check" in line
    assert skipped.stats.model_lists == 0
    # The dry run says it too.
    proc = run_cli("run", "--input", str(src), *opus, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert RETIRED_LINE in proc.stdout
    # An undated alias (the default model) is what the API routes as it likes: no warning.
    proc = _run(src, tmp_path / "d.parquet", sim.url)
    assert proc.returncode == 0, proc.stderr
    assert _warnings(proc.stderr) == []


def test_the_same_error_stop_names_a_retired_model(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory(error_500_rate=1.0)
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q {i}"} for i in range(40)])
    flags = ("--max-attempts", "1", "--concurrency", "1", "--no-model-check")
    proc = _run(src, tmp_path / "out.parquet", sim.url, *flags, "--model", "claude-3-opus-20240229")
    assert proc.returncode == 4, proc.stderr
    (stop,) = [ln for ln in proc.stderr.splitlines() if "rows in a row failed" in ln]
    assert "internal error (simulated)" in stop and f"note: {RETIRED_LINE}" in stop
    # Another model's stop says nothing of retirements.
    proc = _run(src, tmp_path / "other.parquet", sim.url, *flags, "--model", "gpt-4o")
    assert proc.returncode == 4, proc.stderr
    assert "rows in a row failed" in proc.stderr and "retired" not in proc.stderr
