"""The scores sidecar: ``DATASET.scores/MODEL.jsonl``, how one model behaves on each scenario.

Contract
--------
* Line 1 is the header: who wrote the file and for what (``FORMAT``, the dataset's file name and
  identity, the task, the model, where it was asked and the answer readings looked up). Every
  other line is one scored scenario, ``{"scenario_id", "texts", "single", "multi"}``, appended as
  its answers arrive (in any order of ids), each with one ``write(2)`` and no user-space buffer:
  a killed process loses nothing it appended.
* Identity, never trusted by name: the dataset's identity is a hash of its first scenario's texts
  and its task; each record keeps a hash of its own scenario's texts (``texts``). ``open`` refuses a
  file whose header names another model, another dataset, another endpoint or other readings, and
  a record whose scenario's texts differ from the dataset's now; it says which, and what to do.
* Resume: ``open`` keeps every whole line and cuts a torn tail (a last line with no newline, or
  one that is not JSON: what a killed append leaves), saving it beside as ``MODEL.jsonl.torn-N``
  first. A bad line followed by more lines is damage: refused, not cut. A scenario recorded twice
  is refused too. ``scored`` is the set of ids the file holds: nothing is scored twice.
* One writer: ``open`` takes an exclusive ``flock`` on ``MODEL.jsonl.lock``, which holds the
  writer's pid; a second writer is refused, naming it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import orjson

from asyncgen import locks
from asyncgen.errors import SinkError, UsageError
from asyncgen.scenario import Scenario
from asyncgen.sink import _fsync_dir, _reason, _save_cut_bytes, _truncate


FORMAT = "asyncgen-scores/1"
log = logging.getLogger(__name__)
IDENTITY_KEYS = ("dataset_id", "task", "model", "readings", "forms", "judge")  # the endpoint is recorded, and warned about


def file_safe(model: str) -> str:
    """A model name as a file name: every character outside ``[A-Za-z0-9._-]`` becomes ``_``."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", model).strip(".")
    return safe or "_"


def scores_dir(dataset: str | os.PathLike) -> Path:
    path = Path(dataset)
    stem = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.name
    return path.with_name(stem + ".scores")


def scores_path(dataset: str | os.PathLike, model: str) -> Path:
    return scores_dir(dataset) / (file_safe(model) + ".jsonl")


def lock_path(path: Path) -> Path:
    """The lock file of the scores file ``path`` (``ScoresFile.open`` holds it)."""
    return path.with_name(path.name + ".lock")


def not_made_yet(path: Path, *also: Path) -> list[Path]:
    """What a run that makes ``also`` and opens the scores file ``path`` will have made: those of the
    scores folder, ``also``, the file and its lock that do not exist now, in that order (``remove_made``
    takes the list)."""
    return [p for p in (path.parent, *also, path, lock_path(path)) if not p.exists()]


def remove_made(made: list[Path], tree: Path | None = None) -> None:
    """Remove what a run made (``made``, from ``not_made_yet``) when it failed before any result was
    kept, last made first: only what did not exist before it, so nothing of earlier work goes. ``tree``
    (a folder the run made and filled, as ``score --batch``'s job directory) goes whole; any other
    folder (the scores folder) only if empty. Called while the scores file's lock is held, it removes
    the lock file safely (``locks``)."""
    for made_path in reversed(made):
        with contextlib.suppress(OSError):
            if made_path == tree:
                shutil.rmtree(made_path)
            elif made_path.is_dir():
                made_path.rmdir()  # the scores folder: only if nothing else is in it
            else:
                made_path.unlink()


@contextlib.contextmanager
def opened(path: Path, header: dict, scenarios: list[Scenario]) -> Iterator["ScoresFile"]:
    """``ScoresFile.open`` for a ``with`` block, closed at its end. A run that wrote no score leaves
    nothing it made (the scores folder, the file, its lock: an unknown model, a refused results
    file), and never removes what existed before it."""
    made = not_made_yet(path)
    scores = ScoresFile.open(path, header, scenarios)
    try:
        yield scores
    finally:
        try:
            if len(scores.scored) == scores.resumed:  # no score written by this run
                remove_made(made)
        finally:
            scores.close()


def move_aside(dataset: str | os.PathLike) -> Path | None:
    """Rename the scores folder of ``dataset`` to ``DATASET.scores.replaced-STAMP`` (UTC, to the
    second; ``-2``, ``-3``... when taken) and return the new name; None when there is none. For a
    dataset started over (``run --overwrite``): the scores of the dataset it replaced must not pass
    for the new one's, and are kept, not deleted."""
    folder = scores_dir(dataset)
    if not folder.is_dir():
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for number in range(1, 1000):
        aside = folder.with_name(f"{folder.name}.replaced-{stamp}" + (f"-{number}" if number > 1 else ""))
        if not os.path.lexists(aside):
            os.rename(folder, aside)
            _fsync_dir(folder.parent)
            return aside
    raise UsageError(f"{folder}: cannot move it aside (999 earlier copies beside it); move it away yourself")


def another_dataset(header: dict, dataset: str | os.PathLike) -> str:
    """What a scores header of another dataset (its ``dataset_id`` differs) holds, in a user's words:
    the name it recorded and when it was made."""
    name, made = header.get("dataset"), header.get("created")
    when = f", made {made}" if isinstance(made, str) else ""
    if name == Path(dataset).name:
        return f"the scores of another dataset of the same name (its first scenario differs{when})"
    return f"the scores of another dataset ({name!r}{when})"


def texts_hash(scenario: Scenario) -> str:
    return hashlib.blake2b(orjson.dumps(scenario.texts()), digest_size=8).hexdigest()


def dataset_id(task_name: str, first: Scenario) -> str:
    """What identifies a dataset as it grows: its task and its first scenario (ids are file order)."""
    return hashlib.blake2b(orjson.dumps([task_name, *first.texts()]), digest_size=12).hexdigest()


def header_for(dataset: str | os.PathLike, task_name: str, first: Scenario, model: str, endpoint: str,
               readings: dict[str, list[str]], forms: list[str] | tuple[str, ...] = ("single", "multi"),
               judge: str | None = None) -> dict:
    """``judge``: the model whose word is the refusal verdict (``--judge-model``); None: the task's markers."""
    header = {"format": FORMAT, "dataset": Path(dataset).name, "dataset_id": dataset_id(task_name, first),
              "task": task_name, "model": model, "endpoint": endpoint, "readings": readings, "forms": list(forms),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if judge is not None:  # absent: the markers (files written before --judge-model read the same)
        header["judge"] = judge
    return header


@dataclass
class ReadScores:
    """A scores file read: its header, its records by scenario id, and a torn tail (bytes)."""

    header: dict | None
    records: dict[int, dict] = field(default_factory=dict)
    kept_bytes: int = 0
    torn: bytes = b""


def read_scores(path: Path) -> ReadScores:
    """Read a scores file; a damaged one (bad line before the end, a repeated id) is a UsageError."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ReadScores(None)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it ({_reason(exc)})") from exc
    lines = data.split(b"\n")
    complete, read = lines[:-1], ReadScores(None)
    offset = 0
    for number, raw in enumerate(complete, start=1):
        try:
            record = orjson.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (orjson.JSONDecodeError, ValueError) as exc:
            if number == len(complete) and not lines[-1]:  # the last line: a torn append
                break
            raise UsageError(f"{path}:{number}: not a scores line ({exc}) with more lines after it: the file is "
                             "damaged, not torn; move it away to score again") from exc
        if number == 1:
            if record.get("format") != FORMAT:
                raise UsageError(f"{path}: its first line is not an asyncgen scores header ({FORMAT}); "
                                 "move the file away, or pass another --model")
            read.header = record
        else:
            scenario_id = record.get("scenario_id")
            if not isinstance(scenario_id, int) or isinstance(scenario_id, bool) or scenario_id < 0:
                raise UsageError(f"{path}:{number}: no scenario_id in this scores line; move the file away to score again")
            if scenario_id in read.records:
                raise UsageError(f"{path}:{number}: scenario {scenario_id} is scored twice; the file is damaged: "
                                 "move it away to score again")
            read.records[scenario_id] = record
        offset += len(raw) + 1
    read.kept_bytes, read.torn = offset, data[offset:]
    return read


def refuse_mismatch(path: Path, stored: dict, wanted: dict, scenarios: list[Scenario]) -> None:
    """A UsageError when ``stored`` (a header) is not this dataset, model, endpoint and readings."""
    if stored.get("dataset_id") != wanted.get("dataset_id"):
        raise UsageError(f"{path} holds {another_dataset(stored, wanted.get('dataset') or '')}, not this "
                         "dataset's; move it away to score again")
    for key in IDENTITY_KEYS:
        if stored.get(key) != wanted.get(key):
            what = {"dataset_id": "",
                    "task": f"task {stored.get('task')!r}", "model": f"model {stored.get('model')!r}",
                    "readings": f"the answers read as {stored.get('readings')}",
                    "forms": f"the forms {stored.get('forms')}", "judge": _verdicts(stored.get("judge"))}[key]
            now = {"dataset_id": "this dataset", "task": f"task {wanted.get('task')!r}",
                   "model": f"--model {wanted.get('model')!r}", "readings": f"{wanted.get('readings')} (--tokenizer)",
                   "forms": f"--form {'both' if len(wanted.get('forms') or ()) == 2 else (wanted.get('forms') or ['?'])[0]}",
                   "judge": _verdicts(wanted.get("judge"), flag=True)}[key]
            raise UsageError(f"{path} holds the scores of {what}, not of {now}; move it away to score again, "
                             "or run with what made it")
    if stored.get("endpoint") != wanted.get("endpoint"):
        log.warning("%s was scored at %s; the scenarios still unscored are asked at %s", path,
                    stored.get("endpoint"), wanted.get("endpoint"))


def _verdicts(judge: str | None, flag: bool = False) -> str:
    if judge is None:
        return "refusal verdicts by the task's markers" + (" (no --judge-model)" if flag else "")
    return f"refusal verdicts by {'--judge-model ' if flag else 'the judge '}{judge!r}"


class ScoresFile:
    """An open scores file; make one with ``ScoresFile.open``."""

    @classmethod
    def open(cls, path: Path, header: dict, scenarios: list[Scenario]) -> "ScoresFile":
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{path.parent}: cannot create it ({_reason(exc)}); check the dataset's folder") from exc
        lock_fd = locks.hold(lock_path(path), str(path), "score")
        try:
            return cls._open_locked(path, header, scenarios, lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise

    @classmethod
    def _open_locked(cls, path: Path, header: dict, scenarios: list[Scenario], lock_fd: int | None) -> "ScoresFile":
        read = read_scores(path)
        if read.header is not None:
            refuse_mismatch(path, read.header, header, scenarios)
        hashes = {}
        for scenario_id, record in read.records.items():
            if scenario_id >= len(scenarios):
                raise UsageError(f"{path}: scores scenario {scenario_id}, but the dataset holds {len(scenarios)}; "
                                 "it belongs to another dataset: move it away to score again")
            expected = hashes.setdefault(scenario_id, texts_hash(scenarios[scenario_id]))
            if record.get("texts") != expected:
                raise UsageError(f"{path}: scenario {scenario_id}'s texts differ from the dataset's; the scores "
                                 "belong to another dataset: move the file away to score again")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            saved = None
            if read.torn:
                saved = _save_cut_bytes(path, read.torn)
                _truncate(fd, path, read.kept_bytes)
            if read.header is None:
                if read.kept_bytes:  # a torn header only: start over
                    _truncate(fd, path, 0)
                _write_all(fd, path, orjson.dumps(header) + b"\n")
                os.fsync(fd)
                _fsync_dir(path.parent)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, lock_fd, read.header or header, read.records, saved)

    def __init__(self, path: Path, fd: int, lock_fd: int | None, header: dict, records: dict[int, dict],
                 torn_saved: Path | None) -> None:
        self.path, self.header, self.torn_saved = path, header, torn_saved
        self.scored: set[int] = set(records)
        self.resumed = len(records)
        self._fd: int | None = fd
        self._lock_fd = lock_fd

    def append(self, record: dict) -> None:
        scenario_id = record["scenario_id"]
        if scenario_id in self.scored:
            raise SinkError(f"{self.path}: scenario {scenario_id} would be scored twice (a bug; nothing was written)")
        if self._fd is None:
            raise SinkError(f"{self.path}: the scores file is closed")
        _write_all(self._fd, self.path, orjson.dumps(record) + b"\n")
        self.scored.add(scenario_id)

    def sync(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise SinkError(f"cannot fsync {self.path} ({_reason(exc)}); check the disk, then run again") from exc

    def close(self) -> None:
        try:
            self.sync()
        finally:
            for name in ("_fd", "_lock_fd"):
                fd = getattr(self, name)
                if fd is not None:
                    setattr(self, name, None)
                    os.close(fd)


def _write_all(fd: int, path: Path, data: bytes) -> None:
    try:
        written = os.write(fd, data)
        if written != len(data):  # a full disk mid-line: cut it, so the file stays whole lines
            os.ftruncate(fd, os.fstat(fd).st_size - written)
            raise OSError(28, os.strerror(28))
    except OSError as exc:
        raise SinkError(f"cannot write {path} ({_reason(exc)}); free some space, then run again to resume") from exc
