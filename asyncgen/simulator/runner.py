"""Starting the app: in-process for tests, benchmarks and runs (``running_simulator``), or in the
foreground until a signal (``serve``, for ``asyncgen simulate``)."""

from __future__ import annotations

import asyncio
import signal
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from asyncgen.simulator.app import SIMULATOR, Simulator, make_app
from asyncgen.simulator.settings import SimulatorConfig

# Hanging and slow handlers are released on shutdown; this bounds the wait for the rest.
SHUTDOWN_TIMEOUT_S = 2.0


class RunningSimulator:
    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        shown = f"[{host}]" if ":" in host else host
        self.root_url = f"http://{shown}:{port}"
        self.base_url = f"{self.root_url}/v1"

    @property
    def simulator(self) -> Simulator:
        return self.app[SIMULATOR]

    def stats_snapshot(self) -> dict:
        """The /_stats document, read in-process."""
        return self.simulator.stats.snapshot()

    async def stats(self) -> dict:
        """The /_stats document, fetched over HTTP."""
        async with aiohttp.ClientSession(trust_env=False) as session:
            async with session.get(f"{self.root_url}/_stats") as response:
                response.raise_for_status()
                return await response.json()


@asynccontextmanager
async def running_simulator(config: SimulatorConfig | None = None) -> AsyncIterator[RunningSimulator]:
    """Serve the simulator on this event loop for the duration of the block."""
    config = config or SimulatorConfig()
    app = make_app(config)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield RunningSimulator(app, config.host if config.host else host, port)
    finally:
        await runner.cleanup()


async def serve(config: SimulatorConfig, on_ready: Callable[[RunningSimulator], None]) -> None:
    """Run until SIGINT or SIGTERM; ``on_ready`` is called once the server listens."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with running_simulator(config) as sim:
            on_ready(sim)
            await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
