"""One writer per file or folder: an exclusive ``flock`` on a lock file that names its holder.

Contract:

* ``hold(lock_path, subject, command)`` returns an open descriptor holding ``LOCK_EX`` on
  ``lock_path`` (created if missing). The OS releases the lock however the process ends, SIGKILL
  included, so a crash never leaves ``subject`` locked.
* ``held(..., remove=True)`` removes the lock file when it lets go, so nothing is left beside the
  subject. That is safe because ``hold`` keeps a lock only if the file it locked is still the one
  at ``lock_path`` (a process that opened the file just before its removal tries again).
* The holder writes ``PID COMMAND`` into the lock file; a second caller gets ``Busy``, one line
  naming ``subject`` and the holder's command and pid. A caller may wait instead, up to ``wait_s``,
  for holders whose command is one of ``waits_for`` (commands that hold a lock only for a moment).
* Where the platform has no ``flock`` (Windows), no lock is taken and ``hold`` returns None.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Iterator

from asyncgen.errors import UsageError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

WAIT_STEP_S = 0.02  # how often a caller that waits for a brief holder tries again


class Busy(UsageError):
    """Another process holds the lock; ``holder`` names it (its command and pid)."""

    def __init__(self, message: str, holder: str):
        super().__init__(message)
        self.holder = holder


def holder_of(lock_path: Path) -> str | None:
    """Who holds ``lock_path`` now, as ``Busy`` names it; None when nobody does."""
    if fcntl is None or not lock_path.exists():
        return None
    try:
        fd = os.open(lock_path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except OSError:
        return _holder(fd)
    finally:
        os.close(fd)


def hold(lock_path: Path, subject: str, command: str, *, remedy: str = "wait for it to end, or stop it",
         waits_for: tuple[str, ...] = (), wait_s: float = 0.0) -> int | None:
    """Hold ``lock_path`` for ``command``; ``Busy`` ("SUBJECT is in use by `COMMAND` (pid N); REMEDY")
    when another process holds it (after up to ``wait_s`` if its command is one of ``waits_for``), a
    ``UsageError`` when the lock file cannot be opened."""
    if fcntl is None:
        return None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            raise UsageError(f"{subject}: cannot open its lock file {lock_path} ({exc.strerror or exc}); "
                             "check that folder's permissions") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder, (_, holding) = _holder(fd), _written(fd)
            os.close(fd)
            # A holder that has not written its name yet (it just took the lock) may be a brief one too.
            if (holding in waits_for or (waits_for and holding is None)) and time.monotonic() < deadline:
                time.sleep(WAIT_STEP_S)
                continue
            raise Busy(f"{subject} is in use by {holder}; {remedy}", holder) from exc
        if _still_at(fd, lock_path):
            break
        os.close(fd)  # its holder removed it as we opened it: lock the file at that path now
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
    return fd


@contextlib.contextmanager
def held(lock_path: Path, subject: str, command: str, *, remove: bool = False, **kwargs) -> Iterator[None]:
    """``hold`` for the length of a ``with`` block; with ``remove``, the lock file goes with it."""
    fd = hold(lock_path, subject, command, **kwargs)
    try:
        yield
    finally:
        if fd is not None:
            if remove:
                with contextlib.suppress(OSError):
                    os.unlink(lock_path)
            os.close(fd)


def _still_at(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _holder(fd: int) -> str:
    pid, command = _written(fd)
    return f"`asyncgen {command}` (pid {pid})" if pid else "another asyncgen process"


def _written(fd: int) -> tuple[str | None, str | None]:
    """(pid, command) that the lock file names, as ``hold`` wrote them; (None, None) if none."""
    pid, _, command = os.pread(fd, 200, 0).decode(errors="replace").strip().partition(" ")
    return (pid, command) if pid.isdigit() else (None, None)
