"""Running the simulator: on a loopback address only, inside an ``async with``
(``start_simulator``, for tests and benchmarks) or until a signal (``serve``, the CLI)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from batchrun.simulate.config import SimConfig, SimStats
from batchrun.simulate.server import SIM_KEY, make_app


def _check_loopback(host: str) -> None:
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the simulator listens on loopback addresses only, not {host!r}")


class SimServer:
    """A running simulator: ``url`` (base URL ending in /v1), ``port``, live ``stats``."""

    def __init__(self, runner: web.AppRunner, app: web.Application, host: str, port: int) -> None:
        self._runner = runner
        self._app = app
        self.port = port
        self.url = f"http://{host}:{port}/v1"

    @property
    def stats(self) -> SimStats:
        return self._app[SIM_KEY].stats


@contextlib.asynccontextmanager
async def start_simulator(
    config: SimConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    record_bodies: bool = False,
    log: Callable[[str], None] | None = None,
) -> AsyncIterator[SimServer]:
    """Serve the simulator until the block ends; port 0 picks a free port."""
    _check_loopback(host)
    app = make_app(config, record_bodies=record_bodies, log=log)
    # A stopping simulator does not wait for stalled answers (aiohttp's default is 60 s).
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    real_port = int(runner.addresses[0][1])
    try:
        yield SimServer(runner, app, host, real_port)
    finally:
        await runner.cleanup()


def serve(
    config: SimConfig,
    host: str = "127.0.0.1",
    port: int = 8089,
    *,
    ready: Callable[[str], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; ``ready(url)`` is called once listening, ``log`` with a
    line for each follow-up answered."""
    _check_loopback(host)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with start_simulator(config, host, port, log=log) as sim:
            if ready is not None:
                ready(sim.url)
            await stop.wait()

    asyncio.run(main())
