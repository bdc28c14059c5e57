"""``python -m asyncgen ARGS`` run in the test's own process, for tests that need no process of
their own: a subprocess pays about 4 s of CPU before its command starts (the OpenAI SDK's import
alone 1.8 s, the three tokenizers 1.7 s), a call here pays that once per session."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess


def asyncgen_here(*args, cwd=None, env: dict | None = None) -> subprocess.CompletedProcess:
    """As ``subprocess.run([python, -m, asyncgen, *args], cwd=cwd, env=env, capture_output=True,
    text=True)`` would return, with ``env`` by default this environment less OPENAI_API_KEY and
    OPENAI_BASE_URL (as the tests' subprocesses get it). The environment, the working directory and
    the logging setup are restored afterwards."""
    from asyncgen.cli import main

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
