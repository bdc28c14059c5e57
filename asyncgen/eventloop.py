"""The event loop every asyncgen entry point runs on: uvloop where it is installed.

Kept free of heavy imports, so the simulator and the benchmarks can use it without loading the
OpenAI SDK or the tokenizers.
"""

from __future__ import annotations

import asyncio

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def run_event_loop(coro):
    """Run ``coro`` to completion on a new event loop and return its result."""
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro)
