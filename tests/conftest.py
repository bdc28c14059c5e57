import contextlib
import gc
import logging
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ASYNCGEN_SHARED_DIR") or REPO.parent / "shared")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="session", autouse=True)
def no_task_left_pending():
    """After the session's last test: an asyncio task some test left pending (a server's handler on
    a loop that was stopped and not closed, say) fails it, rather than asyncio saying "Task was
    destroyed but it is pending!" on the way out, where no one reads it."""
    yield
    records, asyncio_log = _Records(), logging.getLogger("asyncio")
    asyncio_log.addHandler(records)
    try:
        gc.collect()
    finally:
        asyncio_log.removeHandler(records)
    destroyed = [message for message in records.messages if "Task was destroyed" in message]
    assert not destroyed, f"{len(destroyed)} asyncio tasks were left pending: " + "\n".join(destroyed)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the repo (or $ASYNCGEN_SHARED_DIR): golden token ids. Missing: skip, saying
    how to get them, except under CI=true: fail."""
    if not (SHARED / "tokenizers" / "golden").is_dir():
        message = (f"{SHARED / 'tokenizers' / 'golden'} is missing, so the tokenizers are not checked against "
                   "the golden ids: put the project's shared/ folder beside the clone (../shared), or set "
                   "ASYNCGEN_SHARED_DIR to where it is")
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: this must not be skipped)")
        pytest.skip(message)
    return SHARED


@pytest.fixture(scope="session")
def tokenizer_cache(tmp_path_factory) -> str:
    """One fresh cache for the session: the first load exercises the build from vendor files."""
    return str(tmp_path_factory.mktemp("tokenizer-cache"))


@pytest.fixture(scope="session")
def builtin_tokenizers(tokenizer_cache):
    from asyncgen.tokenizers import DEFAULT_NAMES, TokenizerSpec, load_all

    return load_all([TokenizerSpec(name, "builtin", name) for name in DEFAULT_NAMES], tokenizer_cache)


@pytest.fixture(scope="session")
def refusal_task():
    from asyncgen.config import load_task

    return load_task("refusal")


@pytest.fixture
def simulator():
    """Start ``asyncgen simulate --seed 3`` with flags; returns its base URL. Stopped after the test.
    Served from a thread of this process (tests/inprocess.py): a test whose point is the simulator's
    own process runs ``python -m asyncgen simulate`` itself."""
    from inprocess import simulator_here

    with contextlib.ExitStack() as running:
        yield lambda *flags: running.enter_context(simulator_here("--seed", "3", *flags))


@pytest.fixture
def cli(capfd, tokenizer_cache):
    """Run ``asyncgen ARGS... --cache-dir <session cache>`` in-process; returns (exit code, stdout, stderr)."""
    from asyncgen.cli import main

    def invoke(*args):
        capfd.readouterr()
        code = main([*args, "--cache-dir", tokenizer_cache])
        out, err = capfd.readouterr()
        return code, out, err

    return invoke
