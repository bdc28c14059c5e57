"""Where an export goes: what it may replace, and replacing it whole.

Contract
--------
* ``export`` replaces only what an earlier ``export`` wrote, recognised by its content, never its
  name (``--overwrite`` replaces anything):
  - a single-file export (jsonl, csv, parquet) is one whose first row, header or Parquet schema
    holds the export's fixed columns (``BASE_COLUMNS``: ``scenario_id``, ``task``, the four texts,
    the two answers), whatever its format or name; an empty file holds nothing to lose; a folder
    (even an empty one) is never replaced by a file, ``--overwrite`` or not;
  - a folder export (hf, eap) is a folder holding ``MARKER``, a JSON file written with it that
    says it is an asyncgen export and of which dataset, in which format, with which files; an
    empty folder holds nothing to lose. A folder without the marker (one a user made, or an
    export from before the marker) is refused.
* Replacing is all or nothing: the new export is built beside ``--out`` (a hidden
  ``.NAME.partial-PID`` in the same folder), fsynced, then renamed into place. A folder is swapped with the old
  one in one ``renameat2(RENAME_EXCHANGE)`` where the kernel and file system have it; elsewhere
  the old folder is renamed aside, then the new one in, so a crash between the two leaves the old
  export whole under ``.NAME.old-PID`` and no mix of the two. A failure or Ctrl-C while building
  removes the temporary; a SIGKILL leaves it, hidden, beside ``--out``, and the next export to that
  ``--out`` removes it (once the process it names is gone), or renames an old export left aside
  back to ``--out`` when ``--out`` is missing.
* One export at a time per ``--out``: ``export_lock`` holds ``.NAME.lock`` beside it while it
  writes (see ``asyncgen.locks``); a second export to the same ``--out`` is refused, naming the first's pid.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import glob
import io
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson

from asyncgen import locks
from asyncgen.errors import UsageError
from asyncgen.sink import _fsync_dir

MARKER = "asyncgen-export.json"
MADE_BY = "asyncgen export"
BASE_COLUMNS = ("scenario_id", "task", "single_token_clean", "single_token_corrupt", "multi_token_clean",
                "multi_token_corrupt", "answer_clean", "answer_corrupt")
_FIRST_LINE_MAX = 1 << 20


@contextlib.contextmanager
def export_lock(out: Path) -> Iterator[None]:
    """Hold ``out`` as the one export writing it (its folder is made if missing)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create its folder ({exc.strerror or exc}); choose another --out") from exc
    with locks.held(out.with_name(f".{out.name}.lock"), f"--out {out}", "export", remove=True):
        yield


def recover_leftovers(out: Path) -> None:
    """Clean up after an export to ``out`` that was killed: see the contract."""
    for leftover in sorted(out.parent.glob(f".{glob.escape(out.name)}.*-*")):
        kind, _, pid = leftover.name[len(out.name) + 2 :].rpartition("-")
        if kind not in ("partial", "old") or not pid.isdigit() or _alive(int(pid)):
            continue
        if kind == "old" and not os.path.lexists(out):
            os.replace(leftover, out)
        else:
            _remove(leftover)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def refuse_unless_replaceable(out: Path, folder: bool, overwrite: bool) -> None:
    """Raise UsageError unless ``out`` is missing, empty, or an export asyncgen wrote (see the contract)."""
    if not folder and out.is_dir():  # a file never takes a folder's place, even an empty one's, even with --overwrite
        raise UsageError(f"--out {out} is a folder, and this format writes one file; nothing was changed: "
                         "give the file's path (in that folder or elsewhere); --overwrite never puts a file in a folder's place")
    if overwrite or not os.path.lexists(out):
        return
    if out.is_dir() and not out.is_symlink():
        if not any(out.iterdir()) or _is_folder_export(out):
            return
        what = "a folder that is not an asyncgen export (no " + MARKER + " in it)"
    elif out.is_file() and not out.is_symlink():
        if out.stat().st_size == 0 or (not folder and is_export_file(out)):
            return
        what = "a file that is not an asyncgen export" if not folder else "a file, not an export folder"
    else:
        what = "neither a file nor a folder"
    raise UsageError(f"--out {out} is {what}; nothing was changed: choose another --out, or pass --overwrite to "
                     "replace it")


def is_export_file(path: Path) -> bool:
    """Whether ``path``'s first row, CSV header or Parquet schema holds every one of ``BASE_COLUMNS``."""
    try:
        with open(path, "rb") as handle:
            if handle.read(4) == b"PAR1":
                return set(BASE_COLUMNS) <= set(_parquet_columns(path))
            handle.seek(0)
            first = handle.readline(_FIRST_LINE_MAX)
    except OSError:
        return False
    return set(BASE_COLUMNS) <= set(_row_columns(first))


def _row_columns(first: bytes) -> list[str]:
    """The keys of a JSON object line, else the fields of a CSV header line."""
    try:
        row = orjson.loads(first)
    except orjson.JSONDecodeError:
        row = None
    if isinstance(row, dict):
        return list(row)
    try:
        return next(csv.reader(io.StringIO(first.decode("utf-8"))), [])
    except (UnicodeDecodeError, csv.Error):
        return []


def _parquet_columns(path: Path) -> list[str]:
    try:
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    except Exception:  # not installed, or not a Parquet file after all: not recognised
        return []


def _is_folder_export(folder: Path) -> bool:
    try:
        marker = orjson.loads((folder / MARKER).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return False
    return isinstance(marker, dict) and marker.get("made_by") == MADE_BY


def marker_bytes(dataset: Path, fmt: str, files: list[str], scenarios: int) -> bytes:
    """The marker of a folder export: who made it, of which dataset, in which format, with which files."""
    return orjson.dumps({"made_by": MADE_BY, "format": fmt, "dataset": str(dataset.resolve()), "scenarios": scenarios,
                         "files": sorted(files)}, option=orjson.OPT_INDENT_2)


def replace_file(out: Path, write: Callable[[Path], None]) -> None:
    """Write ``out`` with ``write(path)`` into a temporary beside it, then rename it over ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_beside(out)
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    with _removed_on_failure(temporary):
        write(temporary)
        _fsync(temporary)
        _swap_in(temporary, out)


def replace_folder(out: Path, write: Callable[[Path], None]) -> None:
    """Build ``out`` with ``write(folder)`` in a temporary folder beside it, then swap it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_beside(out)
    temporary.mkdir()
    with _removed_on_failure(temporary):
        write(temporary)
        for path in temporary.rglob("*"):
            if path.is_file():
                _fsync(path)
        _fsync(temporary)
        _swap_in(temporary, out)


def _temporary_beside(out: Path, kind: str = "partial") -> Path:
    """A hidden name in ``out``'s folder (a rename stays on one file system), unique to this process."""
    return out.with_name(f".{out.name}.{kind}-{os.getpid()}")


@contextlib.contextmanager
def _removed_on_failure(temporary: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        _remove(temporary)
        raise


def _swap_in(new: Path, out: Path) -> None:
    """Put ``new`` at ``out`` in one step where the system can, and remove what was there."""
    if not os.path.lexists(out) or (out.is_file() and not out.is_symlink() and new.is_file()):
        os.replace(new, out)
    elif _exchange(new, out):
        _remove(new)  # now the old export
    else:
        aside = _temporary_beside(out, "old")
        os.replace(out, aside)
        os.replace(new, out)
        _remove(aside)
    _fsync(out.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's renameat2(RENAME_EXCHANGE); False where it is missing."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # not on this kernel or file system
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _fsync(path: Path) -> None:
    if path.is_dir():
        _fsync_dir(path)
        return
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
