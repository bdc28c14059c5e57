"""``python -m asyncgen ARGS`` run in the test's own process, for tests that need no process of
their own: a subprocess pays about 4 s of CPU before its command starts (the OpenAI SDK's import
alone 1.8 s, the three tokenizers 1.7 s), a call here pays that once per session."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import subprocess


def asyncgen_here(*args, cwd=None, env: dict | None = None) -> subprocess.CompletedProcess:
    """As ``subprocess.run([python, -m, asyncgen, *args], cwd=cwd, env=env, capture_output=True,
    text=True)`` would return, with ``env`` by default this environment less OPENAI_API_KEY and
    OPENAI_BASE_URL (as the tests' subprocesses get it). The environment, the working directory, the
    logging setup and the SIGINT/SIGTERM handlers are restored afterwards."""
    from asyncgen.cli import main
    from asyncgen.eventloop import _signals_restored

    with _signals_restored():  # a command's (uv)loop leaves its SIGINT handler behind when it closes:
        # the tests after it would get no KeyboardInterrupt from a SIGINT (test_api's notebook-cell test)
        return _asyncgen_here(main, args, cwd, env)


def _asyncgen_here(main, args, cwd, env) -> subprocess.CompletedProcess:
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    root = logging.getLogger()
    saved_logging = (root.level, list(root.handlers))
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.clear()
        os.environ.update(env if env is not None else {k: v for k, v in saved_env.items()
                                                        if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")})
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(arg) for arg in args])
            except SystemExit as exit:  # argparse: --help, or a usage error (exit 2)
                code = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        root.setLevel(saved_logging[0])
        root.handlers[:] = saved_logging[1]
    return subprocess.CompletedProcess(["asyncgen", *args], code, out.getvalue(), err.getvalue())


def within(seconds: float, call, *, unblock=None):
    """``call()``'s result, or an AssertionError if it has not returned within ``seconds``: for an
    in-process call that a defect could leave blocked for good (opening a FIFO, say), which a
    subprocess would have bounded with its timeout. ``unblock()``, if given, is called on timeout so
    that the call can return and restore what ``asyncgen_here`` changed (the environment, the
    working directory, stdout); whatever it returns is closed with ``os.close`` once the call is over."""
    import threading

    outcome: dict = {}

    def target() -> None:
        try:
            outcome["result"] = call()
        except BaseException as exc:  # noqa: BLE001 (re-raised in the caller's thread)
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        handle = unblock() if unblock is not None else None
        thread.join(30)
        if handle is not None:
            os.close(handle)
        raise AssertionError(f"still running after {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


@contextlib.contextmanager
def simulator_here(*flags):
    """``asyncgen simulate FLAGS`` served from a thread of this process for the block; yields its base
    URL. The same server and flags as the command (parsed by its own parser), without the 1.5 s of
    a process start: for tests that only need a simulator to talk to. Logging is not set up, and
    the simulator does not log: what a test reads from its run's stderr is the run's."""
    import threading

    from asyncgen.cli import build_parser
    from asyncgen.commands.simulate import config_from_args
    from asyncgen.eventloop import run_event_loop
    from asyncgen.simulator import running_simulator

    config = config_from_args(build_parser("simulate").parse_args(["simulate", *map(str, flags)]))
    ready, state = threading.Event(), {}

    async def serve() -> None:
        state["loop"], state["stop"] = asyncio.get_running_loop(), asyncio.Event()
        async with running_simulator(config) as simulator:
            state["url"] = simulator.base_url
            ready.set()
            await state["stop"].wait()

    def thread_main() -> None:
        try:
            run_event_loop(serve())
        except BaseException as exc:  # noqa: BLE001 (raised in the test's thread)
            state["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=thread_main, name="simulator", daemon=True)
    thread.start()
    ready.wait(60)
    if "url" not in state:
        raise state.get("error") or RuntimeError("the simulator did not start within 60 s")
    try:
        yield state["url"]
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(30)
