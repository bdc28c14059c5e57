"""The event loop every asyncgen entry point runs on: uvloop where it is installed.

Kept free of heavy imports, so the simulator and the benchmarks can use it without loading the
OpenAI SDK or the tokenizers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import signal
import threading
from typing import Callable, TypeVar

T = TypeVar("T")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def run_event_loop(coro):
    """Run ``coro`` to completion on a new event loop and return its result. The signal handlers
    the run's loop took are put back as they were when it ends (``_signals_restored``): a command
    called in a process that goes on (``asyncgen.cli.main``, a test) leaves Ctrl-C working."""
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with _signals_restored(), asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro)


class RunControl:
    """The stop of a run, callable from any thread: each ``stop()`` is one Ctrl-C for the run (the
    first stops it gracefully, the next at once). A stop asked before the run could take it (while
    it starts) is handed over when the run ``attach``-es its interrupt.

    A run without ``RunStats`` (``batch run``) leaves its cost here with ``record_cost``: the
    figure its closing summary prints, for the Python API's result."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._interrupt: Callable[[], None] | None = None
        self._pending = 0
        self.stats = None
        self.cost_usd: float | None = None
        self.cost_simulated = False

    def attach(self, interrupt: Callable[[], None], stats=None, *, on_loop: bool = True) -> None:
        """Called on the run's loop: from now on ``stop()`` calls ``interrupt`` there (with
        ``on_loop`` False: in the caller's thread, for an ``interrupt`` that is thread-safe itself).
        ``stats`` (the run's ``RunStats``) stays readable as ``control.stats`` after the run."""
        with self._lock:
            self._loop, self._interrupt = asyncio.get_running_loop() if on_loop else None, interrupt
            self.stats = stats if stats is not None else self.stats
            pending, self._pending = self._pending, 0
        for _ in range(pending):
            interrupt()

    def record_cost(self, usd: float | None, simulated: bool) -> None:
        """The run's cost as its summary states it (None: the price is unknown), and whether it is
        the offline simulator's usage at real prices."""
        self.cost_usd, self.cost_simulated = usd, simulated

    def detach(self) -> None:
        with self._lock:
            self._loop = self._interrupt = None

    def stop(self) -> None:
        """One Ctrl-C for the run, from any thread."""
        with self._lock:
            if self._interrupt is None:
                self._pending += 1
                return
            loop, interrupt = self._loop, self._interrupt
        if loop is None:
            interrupt()
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: the run is over
            loop.call_soon_threadsafe(interrupt)


@contextlib.contextmanager
def _signals_restored():
    """On the main thread, SIGINT's and SIGTERM's handlers and the signal wakeup fd as they were
    before, once the block ends. A loop that took the signals (the run's graceful stop) leaves its
    handlers behind when it closes (uvloop does): in a script or an IPython shell that goes on,
    Ctrl-C would go to a loop that is gone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    wakeup_fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup_fd)
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(sig, handler)
        signal.set_wakeup_fd(wakeup_fd)


def run_anywhere(work: Callable[[], T], control: RunControl, *, poll_seconds: float = 0.1) -> T:
    """Call ``work()`` (which runs its own event loop: ``run_event_loop``) and return its result,
    from any synchronous caller.

    With no event loop running in this thread (a script, the CLI) it is called here. Inside a
    running loop (a Jupyter kernel's: ``asyncio.run`` would refuse) it is called in a worker thread
    while this thread waits, in short waits that a KeyboardInterrupt (the kernel's interrupt) can
    break: each one is forwarded to the run as ``control.stop()``, the terminal's Ctrl-C, and the
    wait goes on until the run has stopped and closed its files.
    """
    try:
        asyncio.get_running_loop()
        in_a_loop = True
    except RuntimeError:
        in_a_loop = False
    if not in_a_loop:
        with _signals_restored():
            return work()
    outcome: concurrent.futures.Future = concurrent.futures.Future()

    def call() -> None:
        try:
            outcome.set_result(work())
        except BaseException as exc:  # handed to the waiting thread, which raises it
            outcome.set_exception(exc)

    worker = threading.Thread(target=call, name="asyncgen-run", daemon=True)
    worker.start()
    while True:
        try:
            return outcome.result(timeout=poll_seconds)
        except concurrent.futures.TimeoutError:
            continue
        except KeyboardInterrupt:
            control.stop()
