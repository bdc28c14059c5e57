"""The append-only scenario sink: the dataset file, its checkpoint, crash-safe resume, dedup.

Contract
--------
* The sink is the seed's JSONL (see ``asyncgen.scenario``): four lines per scenario, ids 0, 1, 2, ...
  in file order, no gaps. It only grows. ``append`` writes a scenario's four lines with one
  ``write(2)`` and no user-space buffer, so a process that dies (exception, Ctrl-C, SIGKILL) loses
  nothing it appended: the kernel has it.
* ``sync`` guards against the machine going down: it fsyncs the sink, then replaces the checkpoint
  atomically (temporary file, fsync, rename, fsync of the directory). A checkpoint therefore never
  describes data that is not durable; ``durable_count`` is the number of scenarios the last sync
  covered. ``DurabilityPolicy`` says when a sync is due: every K scenarios or T seconds. ``append``
  runs it inline then, unless the sink was opened with ``auto_sync=False`` by a caller that runs
  ``sync`` itself (in a thread) whenever ``sync_due()``.
* The sink file is the truth, the checkpoint only the fast path. ``open`` trusts the checkpoint's
  offset when the file ends a scenario there (the checks are cheap), keeps every complete,
  well-formed group after it, and cuts off a torn tail: what is left after the last good group when
  it holds fewer than four complete lines, the most a torn append can leave. A malformed group
  followed by more data is not a torn write but damage: ``open`` refuses and says where it is,
  rather than cut off good scenarios. Without a usable checkpoint ``open`` checks the whole file.
  Either way the file is read a piece at a time: memory grows only with the dedup keys (16 bytes a
  scenario loaded from the index, in sorted arrays; about 150 bytes one decoded or added, in sets).
* Identity: a checkpoint knows its dataset by the sha256 of its first scenario, not by its path,
  so a dataset copied or moved with its checkpoint resumes; one that holds other scenarios is
  refused (``OtherDatasetsCheckpoint``). A dataset with no scenario yet is known by its place (the
  path recorded, or its name beside the checkpoint when the file exists), and resumes with the
  ``run_state`` of the runs that wrote nothing: their spending still counts.
* Dedup: a scenario whose normalized prompt equals an accepted prompt, or whose normalized
  counterfactual equals an accepted counterfactual, is a duplicate (``Scenario.dedup_keys``). The
  sets hold 64-bit hashes of the keys (``key_hash``): a duplicate never passes; a distinct scenario
  is refused for a hash collision with probability about N^2 / 2^64 over a whole dataset of N
  scenarios (5e-8 at 1,000,000, 5e-6 at 10,000,000), and the run then asks for another one.
* Dedup index: ``sync`` appends the hashes of the scenarios since the last sync to
  ``CHECKPOINT.keys`` (16 bytes a scenario) before the checkpoint, which records the sha256 of the
  index's bytes and of the dataset's bytes they index. ``open`` loads the index when both digests
  hold (one sequential read of each file, no JSON decoding), and rebuilds it from the file,
  decoding every scenario, when they do not (edited, cut, missing, or another dataset's).
* Errors: a user-fixable problem at ``open`` (output not writable, fingerprint mismatch without
  ``force_resume``, an existing output with no checkpoint and no ``overwrite``, a sink another run
  holds) is a ``UsageError``, raised before anything is written. A failed write, fsync or checkpoint
  is a ``SinkError`` and stops the sink: a partly written scenario is truncated away, the checkpoint
  keeps describing durable data, and the file resumes. A sink removed or replaced during the run
  is noticed at the next sync. ``close`` raises only if it is the first to fail.
* Threads: ``append`` and ``sync`` may run in different threads (the pipeline runs ``sync`` through
  ``asyncio.to_thread``). A lock keeps each write together with the counters and dedup sets; the
  fsync runs outside it, so appends go on meanwhile, and covers at least what the checkpoint says.
* One writer per sink: ``open`` takes an exclusive ``flock`` on the file where the platform has one.
  ``overwrite`` changes nothing before it holds it; its ``before_overwrite`` hook (the run's move
  of the replaced dataset's scores aside) runs then, and what the hook raises leaves everything as it was.
* History: ``record_history`` adds an entry (what ``drop`` or ``merge`` did to make the dataset) to
  the checkpoint's ``history``, which every later checkpoint of the same dataset keeps (a resume
  carries it; ``overwrite`` or a new dataset starts without). A checkpoint without one has none.
* Usage journal: the run's cost and counters (``run_state``) change with every answered request,
  between checkpoints. ``note_run_state`` appends the whole current ``run_state`` as one line, with
  a sequence number and the dataset's random id (kept in the checkpoint), to ``CHECKPOINT.journal`` (one ``write(2)``, like ``append``: a killed process
  loses none of it). The checkpoint records the last sequence number it includes; ``open`` takes
  the journal's last whole line past that number instead of the checkpoint's ``run_state``, so a
  SIGKILL between checkpoints forgets no spending. ``sync`` empties the journal when nothing newer
  was noted meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import logging
import mmap
import os
import secrets
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson

from asyncgen.errors import SinkError, UsageError
from asyncgen.scenario import (
    LINES_PER_SCENARIO,
    TYPES,
    GroupError,
    Scenario,
    encode_lines,
    feed_digest,
    line_groups,
    normalize,
    parse_group,
)

if TYPE_CHECKING:  # annotations only: loading a dataset needs no pydantic (the task config's)
    from asyncgen.config import Task

try:
    import fcntl
except ImportError:  # Windows: no advisory lock
    fcntl = None  # type: ignore[assignment]

CHECKPOINT_VERSION = 1
RECENT_PROMPTS = 200  # the last prompts a resume hands on (the avoid list of the next requests)
KEY_BYTES = 8  # a dedup key's hash; a scenario has two (prompt, counterfactual) in the index
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DurabilityPolicy:
    """When a sync (fsync + checkpoint) is due: after ``every_scenarios`` unsynced scenarios, or
    ``every_seconds`` after the last sync if any scenario is unsynced, whichever comes first.

    A process crash loses nothing either way (see the module contract); the policy bounds what a
    power loss or kernel crash can take: at most 50 scenarios or 1 s of spending. The price, from
    bench/sink.py on the 2-core development VM: a whole sync (fsync of the sink, then the
    checkpoint's write, fsync, rename and folder fsync) took 0.4-0.6 ms idle and up to 1.7 ms
    under load, a bare fsync 0.1-0.8 ms. A run that accepts 100 scenarios/s, far above what API
    calls deliver, syncs twice a second: 0.1-0.3% of its time, off the event loop when ``sync``
    runs in a thread. Syncing after every scenario made appends 15-30x slower in the same benchmark.
    """

    every_scenarios: int = 50
    every_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.every_scenarios < 1 or not self.every_seconds > 0:
            raise ValueError(f"durability: every_scenarios must be >= 1 and every_seconds > 0, got {self}")


@dataclass
class ResumeReport:
    """What ``open`` found; ``message`` is the one line to log."""

    scenarios: int
    dropped_bytes: int
    dropped_scenarios: int
    used_checkpoint: bool
    message: str
    run_state: dict = field(default_factory=dict)


def default_checkpoint_path(output: str | os.PathLike) -> Path:
    """The checkpoint that belongs to ``output``: beside it, ``DATASET.checkpoint.json``."""
    path = Path(output)
    stem = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.name
    return path.with_name(stem + ".checkpoint.json")


def fingerprint_of(task: Task, tokenizers: Iterable[str]) -> dict:
    """What makes two runs' scenarios comparable: the task, its templates, the tokenizer set."""
    return {"task": task.task_name, "templates": task.templates.model_dump(), "tokenizers": sorted(tokenizers)}


def key_hash(normalized: str) -> bytes:
    """The 64-bit hash of a dedup key that the sink keeps (see the contract for its collisions)."""
    return hashlib.blake2b(normalized.encode(), digest_size=KEY_BYTES).digest()


def _key_int(hashed: bytes) -> int:
    return int.from_bytes(hashed, "little")


class KeySet:
    """The hashes of one kind of dedup key: those loaded from the index in a sorted array (8 bytes
    each, a binary search a lookup), those decoded or added since in a set."""

    def __init__(self, loaded: "np.ndarray | None" = None) -> None:
        self._loaded = np.sort(loaded) if loaded is not None else np.empty(0, dtype=np.uint64)
        self._added: set[int] = set()

    def __contains__(self, hashed: int) -> bool:
        if hashed in self._added:
            return True
        loaded = self._loaded
        at = int(loaded.searchsorted(np.uint64(hashed)))
        return at < len(loaded) and int(loaded[at]) == hashed

    def add(self, hashed: int) -> None:
        self._added.add(hashed)

    def __len__(self) -> int:
        return len(self._loaded) + len(self._added)


class ScenarioSink:
    """An open sink; make one with ``ScenarioSink.open``."""

    @classmethod
    def open(
        cls,
        output: str | os.PathLike,
        checkpoint: str | os.PathLike | None,
        *,
        task_name: str,
        fingerprint: dict,
        force_resume: bool = False,
        overwrite: bool = False,
        durability: DurabilityPolicy = DurabilityPolicy(),
        auto_sync: bool = True,
        before_overwrite: Callable[[], None] | None = None,
    ) -> "ScenarioSink":
        """Open ``output`` for appending, resuming what it holds.

        ``checkpoint=None`` is --no-checkpoint: no checkpoint is written, and an existing non-empty
        output is refused unless ``overwrite``. ``overwrite`` starts the dataset over in either mode;
        ``before_overwrite`` is called first, with the file locked and nothing changed yet: what it
        raises refuses the open and leaves the dataset, its checkpoint and journal as they were.
        With ``auto_sync`` (the default) ``append`` syncs inline when one is due; pass False when
        the caller runs ``sync`` itself, e.g. in a thread when ``sync_due()``.
        """
        path = Path(output).resolve()
        checkpoint_path = Path(checkpoint).resolve() if checkpoint is not None else None
        if checkpoint_path == path:
            raise UsageError(f"--checkpoint {checkpoint_path} is the --output file itself; give it another name")
        fingerprint = orjson.loads(orjson.dumps(fingerprint))
        _refuse_non_regular(path, "--output")
        _make_dir(path.parent, "--output", path)
        if checkpoint_path is not None:
            _refuse_non_regular(checkpoint_path, "--checkpoint")
            _make_dir(checkpoint_path.parent, "--checkpoint", checkpoint_path)
        existed = path.exists()
        fd = _open_for_append(path)
        try:
            if overwrite and before_overwrite is not None:
                before_overwrite()
            return cls._resume(
                fd, path, checkpoint_path, existed,
                task_name=task_name, fingerprint=fingerprint, force_resume=force_resume,
                overwrite=overwrite, durability=durability, auto_sync=auto_sync,
            )
        except BaseException:
            if not existed and os.fstat(fd).st_size == 0:
                path.unlink(missing_ok=True)  # a refused run leaves nothing behind
            os.close(fd)
            raise

    @classmethod
    def _resume(cls, fd: int, path: Path, checkpoint_path: Path | None, existed: bool, *, task_name: str, fingerprint: dict,
                force_resume: bool, overwrite: bool, durability: DurabilityPolicy, auto_sync: bool) -> "ScenarioSink":
        size = os.fstat(fd).st_size
        found = _Found()
        stored, why = _read_checkpoint(checkpoint_path, path, existed) if checkpoint_path is not None else (None, "")
        journal_path = _journal_path(checkpoint_path) if checkpoint_path is not None else None
        if overwrite and journal_path is not None:
            journal_path.unlink(missing_ok=True)
        tail = b""
        # An empty dataset whose checkpoint says so is resumed: the usage of runs that wrote no
        # scenario yet (interrupted, or stopped at --max-cost) still counts.
        carried = not overwrite and not size and stored is not None and stored.scenarios == 0 and stored.offset == 0
        if carried:
            report = ResumeReport(0, 0, 0, True, f"resumed {path} at 0 scenarios (from its checkpoint: no scenario "
                                                 "yet, the earlier runs' usage counts)", dict(stored.run_state))
        elif overwrite or not size:
            if size:
                note = f" (overwrote {size} bytes)"
            elif stored is not None and stored.scenarios:
                note = f" (its checkpoint said {stored.scenarios} scenarios, but the file is empty or missing)"
            else:
                note = ""
            report = ResumeReport(0, 0, 0, False, f"new dataset {path}{note}")
        elif checkpoint_path is None:
            raise UsageError(
                f"--output {path} already holds {size} bytes and --no-checkpoint was given; "
                "pass --overwrite to replace it, or drop --no-checkpoint to resume it"
            )
        else:
            with open(path, "rb") as handle:
                report, tail = _resume_from(handle, size, stored, why, found, path, task_name,
                                            _keys_path(checkpoint_path))
            _refuse_other_setup(path, stored, found, task_name, fingerprint, force_resume, report)
        started_over = overwrite or (not size and not carried)
        same_dataset = stored is not None and not started_over
        journal_seq = stored.journal_seq if same_dataset else 0
        dataset_id = stored.dataset_id if same_dataset and stored.dataset_id else secrets.token_hex(8)
        if journal_path is not None and not overwrite:
            noted = _last_noted(journal_path, path, journal_seq, dataset_id)
            if noted is not None:
                journal_seq, report.run_state = noted
                report.message += "; the usage since its last checkpoint recovered from the journal"
        kept = 0 if overwrite else size - report.dropped_bytes
        sink = cls(
            fd, path, checkpoint_path, task_name=task_name, fingerprint=fingerprint, durability=durability,
            auto_sync=auto_sync, resume=report, offset=kept, found=found,
        )
        sink._journal_path, sink._journal_seq, sink._dataset_id = journal_path, journal_seq, dataset_id
        sink._first_scenario = found.first_scenario
        sink._history = list(stored.history) if same_dataset else []
        keys_new = checkpoint_path is not None and not _keys_path(checkpoint_path).exists()
        if checkpoint_path is not None:
            sink._open_keys(_keys_path(checkpoint_path), found)
        # The checkpoint goes first: it proves the location writable before the file is changed,
        # and a crash before the cut below leaves a file longer than it says, which resumes.
        if checkpoint_path is not None:
            try:
                atomic_write(checkpoint_path, sink._checkpoint_bytes(kept, found.scenarios, sink._flush_keys(found.scenarios)))
            except OSError as exc:
                sink._close_keys(remove=keys_new)
                raise UsageError(
                    f"--checkpoint {checkpoint_path}: cannot write it ({_reason(exc)}); "
                    "choose another --checkpoint, or pass --no-checkpoint"
                ) from exc
            if journal_path is not None:  # the checkpoint now holds what the journal had
                journal_path.unlink(missing_ok=True)
        if kept < size:
            if not overwrite:
                report.message += f", saved in {_save_cut_bytes(path, tail)}"
            _truncate(fd, path, kept)
        try:
            os.fsync(fd)
            _fsync_dir(path.parent)  # the file may be new
        except OSError as exc:
            raise SinkError(f"cannot fsync {path} ({_reason(exc)}); check the disk, then run again") from exc
        sink._durable_count = found.scenarios
        return sink

    def __init__(self, fd: int, path: Path, checkpoint_path: Path | None, *, task_name: str, fingerprint: dict,
                 durability: DurabilityPolicy, auto_sync: bool, resume: ResumeReport, offset: int, found: "_Found") -> None:
        self.path = path
        self.checkpoint_path = checkpoint_path
        self.resume = resume
        self.durability = durability
        self._fd: int | None = fd
        self._task_name = task_name
        self._fingerprint = fingerprint
        self._auto_sync = auto_sync
        self._offset = offset  # end of the last whole scenario written
        self._count = found.scenarios
        self._durable_count = 0
        self._recent_prompts = list(found.recent_prompts)
        self._prompts = found.prompts  # key_hash of the keys, as ints
        self._counterfactuals = found.counterfactuals
        self._dataset_digest = found.dataset_digest  # sha256 of the file's first ``_offset`` bytes
        self._keys_fd: int | None = None  # the dedup index (see the contract); None: not kept
        self._keys_path: Path | None = None
        self._keys_digest = found.keys_digest  # sha256 of what the index holds
        self._pending_keys = bytearray()  # the hashes of the scenarios appended since the last sync
        self._run_state = dict(resume.run_state)
        self._last_sync = time.monotonic()
        self._journal_path: Path | None = None
        self._journal_fd: int | None = None
        self._journal_seq = 0  # the last run_state noted (or recovered)
        self._dataset_id = ""  # made with the dataset's first checkpoint; its journal lines carry it
        self._first_scenario: str | None = None  # what identifies the dataset (see _read_checkpoint)
        self._history: list[dict] = []  # the checkpoint's record of drops and merges, kept as it grows
        self._stopped: str | None = None  # why appends are refused
        self._sync_broken = False  # fsync failed or the file vanished: no checkpoint may claim durability
        self._lock = threading.Lock()  # one write and its counters
        self._sync_lock = threading.Lock()  # one sync at a time (they share the temporary file)

    @property
    def count(self) -> int:
        """Scenarios in the file, durable or not yet fsynced."""
        return self._count

    @property
    def durable_count(self) -> int:
        """Scenarios covered by the last fsync (and checkpoint)."""
        return self._durable_count

    @property
    def resumed_prompts(self) -> list[str]:
        """The multi-token prompts of the last scenarios found on resume (at most ``RECENT_PROMPTS``)."""
        return self._recent_prompts

    def dataset_digest(self) -> "tuple[int, hashlib._Hash]":
        """(bytes, sha256 of them) of the file's start: what it held when opened, checked against the
        checkpoint or read whole, and what was appended since."""
        with self._lock:
            return self._offset, self._dataset_digest.copy()

    def is_duplicate(self, scenario: Scenario) -> bool:
        prompt, counterfactual = (_key_int(key_hash(key)) for key in scenario.dedup_keys())
        return prompt in self._prompts or counterfactual in self._counterfactuals

    def append(self, scenario: Scenario) -> int | None:
        """Write one scenario; return its id, or None if it is a duplicate. Raises SinkError."""
        hashed = [key_hash(key) for key in scenario.dedup_keys()]
        prompt, counterfactual = _key_int(hashed[0]), _key_int(hashed[1])
        with self._lock:
            if self._stopped:
                raise SinkError(self._stopped)
            if prompt in self._prompts or counterfactual in self._counterfactuals:
                return None
            scenario_id = self._count
            data = encode_lines(scenario_id, self._task_name, scenario)
            self._write(data, scenario_id)
            if scenario_id == 0:
                self._first_scenario = hashlib.sha256(data).hexdigest()
            self._offset += len(data)
            self._count += 1
            self._dataset_digest.update(data)
            if self._keys_fd is not None:
                self._pending_keys += hashed[0] + hashed[1]
            self._prompts.add(prompt)
            self._counterfactuals.add(counterfactual)
        if self._auto_sync and self.sync_due():
            self.sync()
        return scenario_id

    def note_run_state(self, run_state: dict) -> None:
        """Journal ``run_state`` at once (see the contract); a journal that cannot be written is
        given up with a warning: the checkpoints still carry the usage."""
        if self._journal_path is None:
            return
        with self._lock:
            self._journal_seq += 1
            line = orjson.dumps({"seq": self._journal_seq, "dataset_id": self._dataset_id, "sink": str(self.path),
                                 "run_state": run_state}) + b"\n"
            try:
                if self._journal_fd is None:
                    self._journal_fd = os.open(self._journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
                os.write(self._journal_fd, line)
            except OSError as exc:
                log.warning("cannot write the usage journal %s (%s); the checkpoints still record the usage",
                            self._journal_path, _reason(exc))
                self._journal_path = None

    def record_history(self, entry: dict) -> None:
        """Add ``entry`` (JSON-ready: what made the dataset, e.g. a drop or a merge) to the
        checkpoint's history, which every later checkpoint of the dataset keeps; the next sync writes it."""
        with self._lock:
            self._history.append(orjson.loads(orjson.dumps(entry)))

    def sync_due(self) -> bool:
        pending = self._count - self._durable_count
        if pending >= self.durability.every_scenarios:
            return True
        return pending > 0 and time.monotonic() - self._last_sync >= self.durability.every_seconds

    def sync(self, run_state: dict | None = None) -> None:
        """Fsync the sink, then write the checkpoint (with ``run_state``, the run's cost and counters;
        None keeps the last one). Safe to call from another thread than ``append``."""
        with self._sync_lock:
            with self._lock:
                if self._fd is None:
                    raise SinkError(f"{self.path}: the sink is closed")
                if self._sync_broken:
                    raise SinkError(self._stopped or f"{self.path}: the sink stopped")
                offset, count, journal_seq = self._offset, self._count, self._journal_seq
                if run_state is not None:
                    self._run_state = dict(run_state)
                checkpoint = self._checkpoint_bytes(offset, count, self._flush_keys(count))
            self._fsync_sink()
            if self.checkpoint_path is not None:
                self._write_checkpoint(checkpoint)
                with self._lock:
                    if self._journal_fd is not None and self._journal_seq == journal_seq:
                        try:
                            os.ftruncate(self._journal_fd, 0)
                        except OSError:
                            pass  # the sequence numbers keep a stale journal harmless
            self._durable_count = count
            self._last_sync = time.monotonic()

    def close(self, run_state: dict | None = None) -> None:
        """Final sync, then close the file. Idempotent. After an earlier failure, syncs what it can
        and does not raise again."""
        with self._sync_lock:
            if self._fd is None:
                return
            failed_before = self._stopped is not None
        try:
            if not self._sync_broken:
                self.sync(run_state)
        except SinkError as exc:
            if not failed_before:
                raise
            log.warning("%s", exc)
        finally:
            with self._sync_lock, self._lock:
                if self._fd is not None:
                    os.close(self._fd)  # releases the flock
                    self._fd = None
                self._close_keys(remove=self._count == 0)  # an empty index: nothing left behind
                if self._journal_fd is not None:
                    os.close(self._journal_fd)
                    self._journal_fd = None
                    if self._journal_path is not None and not self._sync_broken:
                        with contextlib.suppress(OSError):
                            if self._journal_path.stat().st_size == 0:
                                self._journal_path.unlink()
                self._stopped = self._stopped or f"{self.path}: the sink is closed"

    def __enter__(self) -> "ScenarioSink":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except SinkError as close_error:  # do not hide the error that is on its way out
            log.warning("%s", close_error)

    # -- I/O at the edges -------------------------------------------------------------------------

    def _write(self, data: bytes, scenario_id: int) -> None:
        view, written = memoryview(data), 0
        try:
            while written < len(data):
                written += os.write(self._fd, view[written:])
        except OSError as exc:
            tail = ""
            try:  # even if no write reported bytes: cheap, and the file must end on a whole scenario
                os.ftruncate(self._fd, self._offset)
            except OSError:
                tail = "; a torn tail is left, which resuming cuts off"
            self._stopped = (
                f"writing scenario {scenario_id} to {self.path} failed ({_reason(exc)}); the run stopped with the "
                f"{scenario_id} scenarios before it kept{tail}: fix the cause, then run the same command to resume"
            )
            raise SinkError(self._stopped) from exc
        except BaseException:  # Ctrl-C between the writes of one scenario: whatever is on disk, stop here
            self._stopped = f"{self.path}: interrupted while writing scenario {scenario_id}; resuming keeps it if it is whole"
            raise

    def _fsync_sink(self) -> None:
        try:
            os.fsync(self._fd)
            if not _still_at(self._fd, self.path):  # writes to a removed file succeed and go nowhere
                raise OSError(errno.ENOENT, "removed or replaced while the run was writing it")
        except OSError as exc:
            self._sync_broken = True
            self._stopped = (
                f"cannot make {self.path} durable ({_reason(exc)}); the run stopped and the checkpoint still "
                f"says {self._durable_count} scenarios: fix the cause, then run the same command to resume"
            )
            raise SinkError(self._stopped) from exc

    def _open_keys(self, path: Path, found: "_Found") -> None:
        """Bring the dedup index in line with what ``open`` found: keep its verified part, write the
        hashes decoded from the file after it. An index that cannot be written is given up with a
        warning: the next resume decodes the whole file instead."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            log.warning("cannot open the dedup index %s (%s); the next resume reads the whole dataset", path, _reason(exc))
            return
        try:
            os.ftruncate(fd, 2 * KEY_BYTES * found.indexed)
            os.lseek(fd, 0, os.SEEK_END)
            _write_all(fd, found.key_bytes)
        except OSError as exc:
            os.close(fd)
            log.warning("cannot write the dedup index %s (%s); the next resume reads the whole dataset", path, _reason(exc))
            return
        self._keys_digest.update(found.key_bytes)
        found.key_bytes = bytearray()
        self._keys_fd, self._keys_path = fd, path

    def _close_keys(self, remove: bool = False) -> None:
        if self._keys_fd is not None:
            os.close(self._keys_fd)
            self._keys_fd = None
            if remove and self._keys_path is not None:
                self._keys_path.unlink(missing_ok=True)

    def _flush_keys(self, count: int) -> dict | None:
        """Append the pending hashes to the index (under ``_lock``, with ``count`` the scenarios
        written); what the checkpoint records of it, or None when the index is not kept."""
        if self._keys_fd is None:
            return None
        try:
            _write_all(self._keys_fd, self._pending_keys)
        except OSError as exc:
            log.warning("cannot write the dedup index %s (%s); the next resume reads the whole dataset",
                        self._keys_path, _reason(exc))
            os.close(self._keys_fd)
            self._keys_fd = None
            return None
        self._keys_digest.update(self._pending_keys)
        self._pending_keys = bytearray()
        return {"scenarios": count, "digest": self._keys_digest.hexdigest(),
                "dataset_digest": self._dataset_digest.hexdigest()}

    def _checkpoint_bytes(self, offset: int, count: int, keys: dict | None) -> bytes:
        return orjson.dumps(
            {
                "version": CHECKPOINT_VERSION,
                "sink": str(self.path),
                "dataset": {
                    "id": self._dataset_id,
                    "first_scenario": self._first_scenario,
                    "name": _relative_name(self.path, self.checkpoint_path),
                },
                "offset": offset,
                "scenarios": count,
                "fingerprint": self._fingerprint,
                "run_state": self._run_state,
                "journal_seq": self._journal_seq,
                "keys": keys,
                **({"history": self._history} if self._history else {}),
                "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
            option=orjson.OPT_INDENT_2,
        )

    def _write_checkpoint(self, payload: bytes) -> None:
        try:
            atomic_write(self.checkpoint_path, payload)
        except OSError as exc:
            self._stopped = (
                f"cannot write the checkpoint {self.checkpoint_path} ({_reason(exc)}); the run stopped, {self.path} "
                "is intact and resuming rescans it: fix the cause, then run the same command"
            )
            raise SinkError(self._stopped) from exc


# -- resume: pure functions over the file's bytes --------------------------------------------------


@dataclass
class _Found:
    """The scenarios a resume kept: how many, their dedup keys, the task names seen."""

    scenarios: int = 0
    first_scenario: str | None = None  # sha256 of its four lines
    recent_prompts: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_PROMPTS))
    prompts: KeySet = field(default_factory=KeySet)  # key_hash of the dedup keys, as ints
    counterfactuals: KeySet = field(default_factory=KeySet)
    tasks: set[str] = field(default_factory=set)
    indexed: int = 0  # the first scenarios, whose hashes the dedup index holds
    keys_digest: "hashlib._Hash" = field(default_factory=hashlib.sha256)  # of the index's first ``indexed``
    key_bytes: bytearray = field(default_factory=bytearray)  # the hashes of the scenarios after them
    dataset_digest: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    digested: int = 0  # the file's bytes fed to ``dataset_digest``

    def add_keys(self, prompt: str, counterfactual: str) -> None:
        hashed_prompt, hashed_counterfactual = key_hash(prompt), key_hash(counterfactual)
        self.key_bytes += hashed_prompt + hashed_counterfactual
        self.prompts.add(_key_int(hashed_prompt))
        self.counterfactuals.add(_key_int(hashed_counterfactual))


@dataclass(frozen=True)
class _Checkpoint:
    offset: int
    scenarios: int
    fingerprint: dict
    run_state: dict
    journal_seq: int = 0
    dataset_id: str = ""
    keys: dict | None = None  # what it records of the dedup index
    history: tuple = ()  # what ``drop`` and ``merge`` did to make the dataset (see ``record_history``)


class OtherDatasetsCheckpoint(UsageError):
    """The checkpoint file names another dataset: ``open`` refuses it rather than overwrite it."""


def _read_checkpoint(path: Path, sink: Path, sink_existed: bool = True) -> tuple[_Checkpoint | None, str]:
    """The checkpoint of ``sink`` at ``path``, or None and why there is none to use; raises
    ``OtherDatasetsCheckpoint`` when it belongs to another dataset.

    A dataset is known by what it holds, so that a copied or moved pair resumes: the digest of its
    first scenario must match when both the checkpoint and the file have one. And by its place,
    so that two datasets that begin alike (the offline default with one seed) keep their own
    checkpoints: the path recorded, or, if the file exists (a copied empty dataset comes with its
    file), the checkpoint beside it by default, or the name recorded relative to its folder.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, f"no checkpoint at {path}"
    except OSError as exc:
        return None, f"checkpoint {path} unreadable ({_reason(exc)})"
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, f"checkpoint {path} is not valid JSON"
    if not isinstance(data, dict) or data.get("version") != CHECKPOINT_VERSION:
        return None, f"checkpoint {path} is not a version {CHECKPOINT_VERSION} checkpoint"
    offset, scenarios = data.get("offset"), data.get("scenarios")
    fingerprint, run_state = data.get("fingerprint"), data.get("run_state")
    if not (_is_count(offset) and _is_count(scenarios) and isinstance(fingerprint, dict) and isinstance(run_state, dict)):
        return None, f"checkpoint {path} is malformed"
    dataset = data.get("dataset") if isinstance(data.get("dataset"), dict) else {}
    recorded, first, name = dataset.get("first_scenario"), first_scenario_digest(sink), dataset.get("name")
    same_content = recorded == first if isinstance(recorded, str) and first is not None else True
    same_place = data.get("sink") == str(sink) or sink_existed and (
        path == default_checkpoint_path(sink) or isinstance(name, str) and (path.parent / name).resolve() == sink)
    ours = same_content and same_place
    differs = "another place" if same_content else "its first scenario differs"
    if not ours:
        raise OtherDatasetsCheckpoint(
            f"--checkpoint {path} belongs to another dataset ({data.get('sink')}; {differs}), not to {sink}; pass "
            f"--checkpoint with a path of its own for this dataset, or delete {path} if that dataset is gone"
        )
    journal_seq = data.get("journal_seq", 0)
    dataset_id = dataset.get("id") if isinstance(dataset.get("id"), str) else ""
    keys = data.get("keys") if isinstance(data.get("keys"), dict) else None
    history = data.get("history") if isinstance(data.get("history"), list) else []
    return _Checkpoint(offset, scenarios, fingerprint, run_state, journal_seq if _is_count(journal_seq) else 0,
                       dataset_id, keys, tuple(entry for entry in history if isinstance(entry, dict))), ""


def first_scenario_digest(dataset: Path) -> str | None:
    """sha256 of the first four lines of ``dataset`` (its first scenario), or None if it has fewer."""
    try:
        with open(dataset, "rb") as handle:
            return _first_scenario_of(handle)
    except OSError:
        return None


def _first_scenario_of(handle) -> str | None:
    handle.seek(0)
    head = b""
    while head.count(b"\n") < LINES_PER_SCENARIO:
        chunk = handle.read(1 << 16)
        if not chunk:
            return None
        head += chunk
    end = 0
    for _ in range(LINES_PER_SCENARIO):
        end = head.index(b"\n", end) + 1
    return hashlib.sha256(head[:end]).hexdigest()


def _relative_name(dataset: Path, checkpoint: Path | None) -> str | None:
    if checkpoint is None:
        return None
    try:
        return os.path.relpath(dataset, checkpoint.parent)
    except ValueError:  # another drive (Windows)
        return None


def _journal_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".journal")


def _keys_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".keys")


def _last_noted(journal: Path, sink: Path, after_seq: int, dataset_id: str) -> tuple[int, dict] | None:
    """(seq, run_state) of the journal's last whole line for this dataset past ``after_seq``, or None.
    Lines written before the dataset id was recorded name the dataset by its path."""
    try:
        lines = journal.read_bytes().split(b"\n")[:-1]  # what follows the last newline is torn
    except OSError:
        return None
    for line in reversed(lines):
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(entry, dict):
            continue
        ours = entry.get("dataset_id") == dataset_id if "dataset_id" in entry else entry.get("sink") == str(sink)
        if ours and _is_count(entry.get("seq")) and isinstance(entry.get("run_state"), dict):
            return (entry["seq"], entry["run_state"]) if entry["seq"] > after_seq else None
    return None


def _resume_from(handle, size: int, stored: _Checkpoint | None, why: str, found: _Found, path: Path,
                 task_name: str, keys_path: Path) -> tuple[ResumeReport, bytes]:
    """Find the scenarios in the file (filling ``found``) and the torn tail to cut (returned with the
    report); raise if damaged, or if what follows the last scenario is not the start of the next one
    (not a file asyncgen wrote). The file is read in pieces: once when the checkpoint and its dedup
    index hold, decoding only what follows them."""
    rebuilt = ""
    with _gc_paused():  # hundreds of thousands of short-lived dicts: the collector would triple the time
        trusted = False
        if stored is not None:
            why = _trust_index(handle, size, stored, found, keys_path)
            if why:
                rebuilt = why if stored.scenarios else ""
                found.__init__()
                why = _trust_prefix(handle, size, stored, found)
            trusted = not why
            if why:
                why = f"checkpoint at {stored.scenarios} scenarios, byte {stored.offset}: {why}"
                found.__init__()  # the scan below starts over from the first scenario
        first_id, offset = (stored.scenarios, stored.offset) if trusted else (0, 0)
        end, problem = _scan_groups(handle, first_id, offset, found)
    if problem is None:
        feed_digest(handle, found.dataset_digest, found.digested, end)
        found.digested = end
    if problem is not None:
        raise SinkError(
            f"{path}: scenario {found.scenarios} at byte {end} (line {LINES_PER_SCENARIO * found.scenarios + 1}) is "
            f"malformed ({problem}) and {size - end} bytes follow, more than a torn write leaves; nothing was "
            f"cut: inspect it, or keep the {found.scenarios} scenarios before it with `truncate -s {end} {path}`"
        )
    dropped = size - end
    handle.seek(end)
    tail = handle.read(dropped)
    if dropped and not _is_torn_scenario(tail, found.scenarios, task_name):
        what = (f"{size} bytes that do not start a scenario" if found.scenarios == 0 else
                f"{found.scenarios} scenarios and then {dropped} bytes that are not the start of scenario {found.scenarios}")
        raise UsageError(
            f"--output {path} holds {what}: it is not a "
            "dataset asyncgen wrote, or it was edited; nothing was changed: choose another --output, or pass "
            "--overwrite to replace it"
        )
    if trusted:
        after = found.scenarios - first_id
        how = "from its checkpoint" + (f", {after} more found after it" if after else "")
        if rebuilt:
            how += f"; its dedup index rebuilt: {rebuilt}"
    else:
        how = f"checked the whole file: {why}"
    message = f"resumed {path} at {found.scenarios} scenarios ({how})"
    if dropped:
        message += f"; cut a torn tail of {dropped} bytes (1 partial scenario)"
    run_state = dict(stored.run_state) if stored is not None else {}
    return ResumeReport(found.scenarios, dropped, 1 if dropped else 0, trusted, message, run_state), tail


def _is_torn_scenario(tail: bytes, scenario_id: int, task_name: str) -> bool:
    """Whether ``tail`` (fewer than four lines) is what a torn ``append`` of scenario ``scenario_id``
    leaves: its complete lines are that scenario's first lines, and the rest begins the next one."""
    *lines, fragment = tail.split(b"\n")
    for kind, line in zip(TYPES, lines):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            return False
        if not (isinstance(record, dict) and record.get("scenario_id") == scenario_id and record.get("type") == kind
                and record.get("task") == task_name and isinstance(record.get("text"), str)):
            return False
    # JSON written with spaces after the separators is fine too: compare without them.
    start = encode_lines(scenario_id, task_name, Scenario("", "", "", ""))
    start = start.split(b"\n")[len(lines)].rsplit(b'""', 1)[0].replace(b" ", b"")
    fragment = fragment.replace(b" ", b"")
    return fragment[: len(start)] == start[: len(fragment)]


def _trust_index(handle, size: int, stored: _Checkpoint, found: _Found, keys_path: Path) -> str:
    """Why the dedup index cannot stand for the checkpoint's prefix, or '' with ``found`` filled from it.

    The index's bytes and the file's first ``offset`` bytes must have the sha256 that the checkpoint
    recorded for them (one sequential read of each, about 0.75 s of CPU a GB); then only the first
    scenario and the last ``RECENT_PROMPTS`` are decoded.
    """
    offset, scenarios, keys = stored.offset, stored.scenarios, stored.keys
    if not scenarios:
        return "no scenario yet"
    if keys is None or keys.get("scenarios") != scenarios:
        return "its checkpoint records none for its scenarios"
    if offset > size:
        return f"offset past the end of the file ({size} bytes)"
    length = 2 * KEY_BYTES * scenarios
    try:
        with open(keys_path, "rb") as index:
            raw = _read_mapped(index, length)
    except OSError as exc:
        return f"{keys_path.name} unreadable ({_reason(exc)})"
    keys_digest = hashlib.sha256(raw)
    if len(raw) != length or keys_digest.hexdigest() != keys.get("digest"):
        return f"{keys_path.name} was changed or cut"
    if not (feed_digest(handle, found.dataset_digest, 0, offset)
            and found.dataset_digest.hexdigest() == keys.get("dataset_digest")):
        return "the dataset is not what it was made from"
    lines = _lines_before(handle, offset, LINES_PER_SCENARIO * min(scenarios, RECENT_PROMPTS))
    first_id = scenarios - len(lines) // LINES_PER_SCENARIO
    try:
        parsed = [parse_group([orjson.loads(line) for line in lines[index : index + LINES_PER_SCENARIO]],
                              first_id + index // LINES_PER_SCENARIO)
                  for index in range(0, len(lines), LINES_PER_SCENARIO)]
    except (orjson.JSONDecodeError, GroupError) as exc:
        return f"its last scenarios do not check out ({exc})"
    hashes = np.frombuffer(raw, dtype="<u8")  # KeySet sorts a copy of each half: ``raw`` is unmapped
    found.prompts, found.counterfactuals = KeySet(hashes[0::2]), KeySet(hashes[1::2])
    del hashes
    if isinstance(raw, mmap.mmap):
        raw.close()
    found.recent_prompts.extend(scenario.multi_token_prompt for _, _, scenario in parsed)
    found.scenarios, found.tasks, found.first_scenario = scenarios, {parsed[-1][1]}, _first_scenario_of(handle)
    found.indexed, found.keys_digest, found.digested = scenarios, keys_digest, offset
    return ""


def _read_mapped(handle, length: int) -> "mmap.mmap | bytes":
    """The first ``length`` bytes of ``handle``, mapped (fewer if the file is shorter): read into
    memory, tens of MB would stay with the malloc arena of the thread that read them once freed
    (run opens the sink in a thread)."""
    size = os.fstat(handle.fileno()).st_size
    if not length or size < length:
        return handle.read(length)
    return mmap.mmap(handle.fileno(), length, access=mmap.ACCESS_READ)


def _lines_before(handle, end: int, count: int) -> list[bytes]:
    """The last ``count`` lines before byte ``end`` (which ends a line), read backwards in pieces."""
    buffer, start = b"", end
    while start > 0 and buffer.count(b"\n") <= count:
        step = min(start, 1 << 16)
        start -= step
        handle.seek(start)
        buffer = handle.read(step) + buffer
    return buffer.split(b"\n")[:-1][-count:]


def _trust_prefix(handle, size: int, stored: _Checkpoint, found: _Found) -> str:
    """Why the checkpoint's prefix of the file cannot be trusted, or '' with ``found`` filled from it.

    Trusting means cheap checks only: the offset ends the checkpoint's number of lines, and the
    group before it is whole with the right id. The prefix is decoded just for its dedup keys.
    """
    offset, scenarios = stored.offset, stored.scenarios
    if offset > size:
        return f"offset past the end of the file ({size} bytes)"
    if scenarios == 0:
        return "" if offset == 0 else "an offset but no scenarios"
    handle.seek(offset - 1)
    if handle.read(1) != b"\n":
        return "the file does not end that scenario there"
    loads = orjson.loads
    lines_seen, last_group, first_group = 0, None, None
    try:
        for lines in line_groups(handle, 0, offset):
            if first_group is None:
                first_group = lines[:LINES_PER_SCENARIO]
            # The multi-token lines hold the dedup keys (see Scenario.dedup_keys).
            texts = [loads(line)["text"] for line in lines[2::LINES_PER_SCENARIO]]
            add_keys = found.add_keys
            for text, line in zip(texts, lines[3::LINES_PER_SCENARIO]):
                add_keys(normalize(text), normalize(loads(line)["text"]))
            found.recent_prompts.extend(texts[-RECENT_PROMPTS:])
            lines_seen += len(lines)
            last_group = lines[-LINES_PER_SCENARIO:]
        if lines_seen != LINES_PER_SCENARIO * scenarios:
            return "the file does not end that scenario there"
        _, task, _ = parse_group([loads(line) for line in last_group], scenarios - 1)
    except (orjson.JSONDecodeError, GroupError, KeyError, TypeError, AttributeError) as exc:
        return f"its scenarios do not check out ({exc})"
    found.scenarios, found.tasks = scenarios, {task}
    found.first_scenario = hashlib.sha256(b"".join(line + b"\n" for line in first_group)).hexdigest()
    return ""


def _scan_groups(handle, first_id: int, offset: int, found: _Found) -> tuple[int, str | None]:
    """Keep the well-formed groups from scenario ``first_id`` (at byte ``offset``) on.

    Return the byte end of the last kept group and, if a malformed group stopped the scan with
    four or more complete lines left, what is wrong with it; fewer lines are a torn tail.
    """
    loads = orjson.loads
    scenario_id = first_id
    for lines in line_groups(handle, offset):
        for index in range(0, len(lines), LINES_PER_SCENARIO):
            group = lines[index : index + LINES_PER_SCENARIO]
            try:
                _, task, scenario = parse_group([loads(line) for line in group], scenario_id)
            except (orjson.JSONDecodeError, GroupError) as exc:
                found.scenarios = scenario_id
                return offset, str(exc)
            found.add_keys(*scenario.dedup_keys())
            found.recent_prompts.append(scenario.multi_token_prompt)
            found.tasks.add(task)
            if scenario_id == 0:
                found.first_scenario = hashlib.sha256(b"".join(line + b"\n" for line in group)).hexdigest()
            offset += len(group[0]) + len(group[1]) + len(group[2]) + len(group[3]) + LINES_PER_SCENARIO
            scenario_id += 1
    found.scenarios = scenario_id
    return offset, None


def _refuse_other_setup(path: Path, stored: _Checkpoint | None, found: _Found, task_name: str, fingerprint: dict,
                        force_resume: bool, report: ResumeReport) -> None:
    """Refuse to append to scenarios of another task or setup, unless forced."""
    if found.scenarios == 0:
        return
    differences = [f"task {task!r} in the file" for task in sorted(found.tasks - {task_name})]
    if stored is not None:
        for key in sorted(set(stored.fingerprint) | set(fingerprint)):
            old, new = stored.fingerprint.get(key), fingerprint.get(key)
            if old != new:
                shown = f" ({old!r} then, {new!r} now)" if isinstance(old, str) and isinstance(new, str) else ""
                differences.append(f"{key}{shown}")
    if not differences:
        return
    what = ", ".join(differences)
    if not force_resume:
        raise UsageError(
            f"--output {path} holds scenarios of another setup than this run's task {task_name!r} (differs: {what}); "
            "choose another --output, or pass --force-resume to append to it anyway"
        )
    report.message += f"; appending despite another setup (differs: {what}; --force-resume)"


# -- small I/O helpers -----------------------------------------------------------------------------


def _refuse_non_regular(path: Path, flag: str) -> None:
    """A FIFO, device or folder would block or fail in the middle of a run: refuse it up front."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # missing, or a parent that is not a folder: opening it says what is wrong
        return
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):  # a folder fails on opening, with its own message
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "not a regular file")
        raise UsageError(f"{flag} {path} is {kind}, not a regular file; choose a file path for {flag}")


def _make_dir(directory: Path, flag: str, path: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot create its folder {directory} ({_reason(exc)}); choose another {flag}") from exc


def _open_for_append(path: Path) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        raise UsageError(f"--output {path}: cannot open it for writing ({_reason(exc)}); choose another --output") from exc
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise UsageError(
                f"--output {path}: another run is writing it; wait for that run to end, or choose another --output"
            ) from exc
    return fd


def atomic_write(target: Path, payload: bytes) -> None:
    """Replace ``target`` with ``payload``: temporary file, fsync, rename, fsync of the folder."""
    temporary = target.with_name(target.name + ".tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o666)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, target)
    except OSError:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    _fsync_dir(target.parent)


def _save_cut_bytes(path: Path, tail: bytes) -> Path:
    """Keep a torn tail beside the dataset before it is cut: ``DATASET.jsonl.torn-<n>``."""
    for number in range(1, 1000):
        backup = path.with_name(f"{path.name}.torn-{number}")
        if not backup.exists():
            break
    try:
        atomic_write(backup, tail)
    except OSError as exc:
        raise SinkError(f"cannot save the torn tail of {path} to {backup} before cutting it ({_reason(exc)}); "
                        "nothing was changed: free some space, or pass --overwrite to start over") from exc
    return backup


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _truncate(fd: int, path: Path, size: int) -> None:
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        raise SinkError(f"cannot truncate {path} to {size} bytes ({_reason(exc)}); nothing else was changed") from exc


def _fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable (POSIX; Windows cannot open folders)."""
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _still_at(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is still the file at ``path``."""
    held = os.fstat(fd)
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    return held.st_nlink > 0 and (held.st_ino, held.st_dev) == (named.st_ino, named.st_dev)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
