"""Shared fixtures: the simulator on a free loopback port, run in a background thread, and
the real CLI in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchrun.simulate import SimConfig, SimServer, start_simulator

ROOT = Path(__file__).resolve().parent.parent


class SimThread:
    """A real simulator (aiohttp server on 127.0.0.1) in its own thread and event loop."""

    def __init__(self, config: SimConfig, *, record_bodies: bool = False) -> None:
        self.config = config
        self.record_bodies = record_bodies
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._sim: SimServer | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # surfaced to the test in __enter__
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with start_simulator(self.config, port=0, record_bodies=self.record_bodies) as sim:
            self._sim = sim
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> SimThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("simulator did not start in 10 s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    @property
    def url(self) -> str:
        assert self._sim is not None
        return self._sim.url

    @property
    def stats(self) -> Any:
        assert self._sim is not None
        return self._sim.stats


@pytest.fixture
def sim_factory() -> Iterator[Any]:
    """Call with SimConfig keyword arguments; every simulator started is stopped after the test."""
    started: list[SimThread] = []

    def start(record_bodies: bool = False, **config: Any) -> SimThread:
        s = SimThread(SimConfig(**config), record_bodies=record_bodies)
        started.append(s.__enter__())
        return s

    yield start
    for s in started:
        s.__exit__(None, None, None)


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    key: str | None = "test-key",
) -> subprocess.CompletedProcess[str]:
    """The real `batchrun` CLI in a subprocess (python -m batchrun)."""
    full_env = {k: v for k, v in os.environ.items() if k != "AIMLAPI_KEY"}
    if key is not None:
        full_env["AIMLAPI_KEY"] = key
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "batchrun", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=ROOT,
    )


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def kill_at_random_moments(args: list[str], env: dict[str, str], rng: Any, runs: int = 4) -> int:
    """Start ``args`` (a batchrun command) ``runs`` times, each SIGKILLed after 0.8-1.6 s
    unless it ended first; returns how many were killed."""
    kills = 0
    for _ in range(runs):
        proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(0.8, 1.6))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(10)
    return kills
