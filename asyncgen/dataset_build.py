"""Writing a new dataset from others (``drop``, ``merge``): the sources read, the output built
beside its place and moved in whole. The rules are ``asyncgen.dataset_ops``'.

Contract
--------
* Sources are read, never written. Each is held with a shared ``flock`` on the dataset file while
  it is read: a source that a run is writing (its exclusive lock) is refused, and a run cannot
  start on it meanwhile; a source whose scores file ``score`` is writing is refused too. A source
  needs its checkpoint (``DATASET.checkpoint.json``): its fingerprint, run figures (the usage
  journal's latest line included) and history come from there.
* The output is a dataset like ``run``'s: written through ``ScenarioSink`` (so its format,
  checkpoint, dedup index and dataset id are the sink's, and a duplicate by the sink's key is
  refused as ``run`` refuses it), with its history in the checkpoint. Token annotations are copied,
  re-keyed, only when the source's are verified by their record (both files' digests, every
  scenario covered) and the tokenizers agree; scores per model only when every source's file is
  this source's (the header's dataset identity, each record's texts) and the settings agree. The
  copies carry the new dataset's identity (the record's digests, the scores header's dataset id).
* Atomic: everything is built in a hidden folder ``.NAME.partial-PID`` beside the output, fsynced,
  then moved in, the dataset file last: before that last rename there is no output dataset (an
  older one given ``--overwrite`` is removed first), so a SIGKILL leaves either nothing a later
  command accepts as the output, or the whole of it. The next drop or merge to that output removes
  the hidden folder (once its process is gone) and the companions left without their dataset.
* One writer per output: ``.NAME.lock`` beside it (``asyncgen.locks``); an existing output is
  replaced only with ``--overwrite``, and not while a run is writing it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Iterator

import orjson

from asyncgen import locks
from asyncgen.annotations import _Prefix, record_path, sidecar_path
from asyncgen.dataset_ops import describe_ids, scores_difference, texts_disagree, unknown_ids
from asyncgen.errors import InputFileError, UsageError
from asyncgen.export_files import _temporary_beside, recover_leftovers
from asyncgen.scenario import LINES_PER_SCENARIO, GroupError, Scenario, line_groups, parse_group
from asyncgen.scores import ReadScores, dataset_id, read_scores, scores_dir, texts_hash
from asyncgen.sink import (
    DurabilityPolicy, OtherDatasetsCheckpoint, ScenarioSink, _Checkpoint, _fsync_dir, _journal_path, _keys_path,
    _last_noted, _read_checkpoint, atomic_write, default_checkpoint_path,
)

try:
    import fcntl
except ImportError:  # Windows: no advisory lock
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("asyncgen.datasets")
NEVER = DurabilityPolicy(every_scenarios=1 << 62, every_seconds=1e18)  # a temporary: one fsync at the end


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Source:
    """A dataset being read: its checkpoint, its latest run figures, and what was found reading it."""

    path: Path
    checkpoint: _Checkpoint
    run_state: dict
    lock_fd: int | None
    task_name: str | None = None
    scenarios: int = 0  # whole scenarios read so far
    torn_bytes: int = 0
    hashes: list[str] = field(default_factory=list)  # texts_hash of each scenario, when it has scores
    first: Scenario | None = None
    annotations: "_SidecarReader | None" = None
    scores: dict[str, tuple[Path, ReadScores]] = field(default_factory=dict)  # model -> (its file, read)

    @property
    def name(self) -> str:
        return self.path.name

    def summary(self) -> dict:
        """What the history keeps of it."""
        return {"name": self.path.name, "path": str(self.path.resolve()), "dataset_id": self.checkpoint.dataset_id,
                "scenarios": self.scenarios}

    def close(self) -> None:
        if self.annotations is not None:
            self.annotations.close()
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def open_source(path: str | os.PathLike, command: str) -> Source:
    """Hold ``path`` for reading and read its checkpoint; one-line refusals (exit 2) otherwise."""
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the open, a folder fail later
            raise InputFileError(f"{path}: not a dataset file; name the DATASET.jsonl that asyncgen wrote")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read the dataset ({exc.strerror})") from exc
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                raise UsageError(f"{path}: a run is writing it; wait for that run to end, then {command} it") from exc
        checkpoint_path = default_checkpoint_path(path)
        try:
            stored, why = _read_checkpoint(checkpoint_path.resolve(), path.resolve())
        except OtherDatasetsCheckpoint as exc:
            raise UsageError(f"{path}: {checkpoint_path} belongs to another dataset, so its run figures are not "
                             f"this one's; {command} needs the dataset's own checkpoint beside it") from exc
        if stored is not None and not isinstance(stored.fingerprint.get("task"), str):
            stored, why = None, f"its checkpoint {checkpoint_path} records no setup (task, templates, tokenizers)"
        if stored is None:
            raise UsageError(f"{path}: {why}; {command} carries the dataset's run figures and setup from its "
                             f"checkpoint: `asyncgen run --output {path} --num-scenarios 1` writes one "
                             "(it adds no scenario to a dataset that has some)")
        run_state = dict(stored.run_state)
        noted = _last_noted(_journal_path(checkpoint_path.resolve()), path.resolve(), stored.journal_seq,
                            stored.dataset_id)
        if noted is not None:  # spending noted after its last checkpoint (a killed run)
            run_state = noted[1]
        source = Source(path, stored, run_state, fd)
        _refuse_busy_scores(path, command)
        return source
    except BaseException:
        os.close(fd)
        raise


def _refuse_busy_scores(dataset: Path, command: str, flag: str = "") -> None:
    """A UsageError naming the process (``score``) that writes scores of ``dataset``, if one does."""
    folder = scores_dir(dataset)
    for lock in sorted(folder.glob("*.jsonl.lock")) if folder.is_dir() else []:
        holder = locks.holder_of(lock)
        if holder is not None:
            raise UsageError(f"{flag}{dataset}: its scores {lock.name[:-len('.lock')]} are being written by {holder}; "
                             f"wait for it to end, then {command} again")


def read_scenarios(source: Source, keep_hashes: bool) -> Iterator[tuple[int, Scenario, bytes]]:
    """(id, scenario, its four lines' bytes) of ``source`` in file order; a torn tail (a crashed
    run's) is left out with a warning, a malformed scenario is an InputFileError naming its line.
    Fills in ``source``'s task, count and first scenario (and texts hashes with ``keep_hashes``)."""
    loads = orjson.loads
    with open(source.path, "rb") as handle:
        offset = 0
        for lines in line_groups(handle):
            for index in range(0, len(lines), LINES_PER_SCENARIO):
                group = lines[index : index + LINES_PER_SCENARIO]
                scenario_id = source.scenarios
                try:
                    _, task, scenario = parse_group([loads(line) for line in group], scenario_id)
                except (orjson.JSONDecodeError, GroupError) as exc:
                    raise InputFileError(f"{source.path}:{LINES_PER_SCENARIO * scenario_id + 1}: scenario {scenario_id} "
                                         f"is malformed ({exc}); check it with `asyncgen validate`") from exc
                if source.task_name is None:
                    source.task_name, source.first = task, scenario
                elif task != source.task_name:
                    raise InputFileError(f"{source.path}:{LINES_PER_SCENARIO * scenario_id + 1}: task {task!r}, but "
                                         f"the dataset's task is {source.task_name!r}")
                if keep_hashes:
                    source.hashes.append(texts_hash(scenario))
                data = b"".join(line + b"\n" for line in group)
                offset += len(data)
                source.scenarios += 1
                yield scenario_id, scenario, data
        source.torn_bytes = os.fstat(handle.fileno()).st_size - offset
    if source.torn_bytes:
        log.warning("%s: left out an incomplete last scenario (%d bytes), as a resumed run would cut it",
                    source.path, source.torn_bytes)
    if source.task_name is None:
        raise InputFileError(f"{source.path}: no scenarios in it; there is nothing to carry over")
    if source.task_name != source.checkpoint.fingerprint["task"]:
        raise InputFileError(f"{source.path}: its scenarios are task {source.task_name!r} but its checkpoint says "
                             f"{source.checkpoint.fingerprint.get('task')!r}; it was edited: check it with "
                             "`asyncgen validate`")


class _SidecarReader:
    """A source's token annotations, read line by line beside its scenarios, trusted only if the
    record (``DATASET.tokens.checkpoint.json``) says every line read was verified against exactly
    the dataset bytes read (both digests) and the tokenizers the record names."""

    def __init__(self, dataset: Path) -> None:
        self.path = sidecar_path(dataset)
        self.why = ""
        self.record: dict = {}
        self.handle = None
        self.lines = 0
        self.digest, self.size = hashlib.sha256(), 0
        self.dataset_digest, self.dataset_size = hashlib.sha256(), 0
        try:
            self.record = orjson.loads(record_path(self.path).read_bytes())
            self.handle = open(self.path, "rb")
        except FileNotFoundError:
            self.why = "it has none"
        except (OSError, orjson.JSONDecodeError):
            self.why = f"{record_path(self.path).name} is unreadable"
        if not self.why and not isinstance(self.record, dict):
            self.why = f"{record_path(self.path).name} is malformed"

    @property
    def setup(self) -> object:
        return self.record.get("setup") if isinstance(self.record, dict) else None

    def line(self, dataset_bytes: bytes) -> dict | None:
        """The annotation of the next scenario (whose four lines are ``dataset_bytes``), or None."""
        self.dataset_digest.update(dataset_bytes)
        self.dataset_size += len(dataset_bytes)
        if self.why:
            return None
        raw = self.handle.readline()
        if not raw:
            self.why = f"its annotations cover only {self.lines} of its scenarios"
            return None
        self.digest.update(raw)
        self.size += len(raw)
        try:
            note = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.why = f"line {self.lines + 1} of {self.path.name} is torn"
            return None
        if not isinstance(note, dict) or note.get("scenario_id") != self.lines:
            self.why = f"line {self.lines + 1} of {self.path.name} is not scenario {self.lines}'s"
            return None
        self.lines += 1
        return note

    def verdict(self) -> str:
        """'' when every line read is verified by the record; else why the annotations are not carried."""
        if self.why:
            return self.why
        record = self.record
        if record.get("scenarios") != self.lines or record.get("dataset_offset") != self.dataset_size \
                or record.get("dataset_digest") != self.dataset_digest.hexdigest():
            covered = record.get("scenarios")
            return (f"its annotations cover {covered} of its {self.lines} scenarios" if isinstance(covered, int)
                    and covered != self.lines else "its annotations were not checked against this dataset as it is")
        if record.get("offset") != self.size or record.get("digest") != self.digest.hexdigest():
            return f"{self.path.name} was changed since it was checked"
        return ""

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def open_annotations(source: Source) -> None:
    source.annotations = _SidecarReader(source.path)


def read_source_scores(source: Source) -> None:
    """Each model's scores file beside ``source`` (read whole; checked by ``scores_verdict``)."""
    from asyncgen.score_table import scored_models

    for model, path in scored_models(source.path):
        source.scores[model] = (path, read_scores(path))


def scores_verdict(source: Source, model: str) -> str:
    """'' when ``source``'s scores of ``model`` belong to it as it is now; else why not."""
    if model not in source.scores:
        return f"{source.name} has none"
    path, read = source.scores[model]
    if read.header.get("dataset_id") != dataset_id(source.task_name, source.first):
        return f"{path} belongs to another dataset"
    for scenario_id, record in read.records.items():
        if scenario_id >= source.scenarios or record.get("texts") != source.hashes[scenario_id]:
            return f"{path}: scenario {scenario_id}'s texts differ from {source.name}'s"
    return ""


@dataclass
class Output:
    """The new dataset while it is built in its hidden folder; ``commit`` moves it into place."""

    path: Path
    folder: Path
    sink: ScenarioSink
    old_fd: int | None = None  # the dataset replaced (--overwrite), held so that no run starts on it
    sidecar: BinaryIO | None = None  # the annotations copied so far
    sidecar_prefix: _Prefix | None = None  # what their record will say

    @property
    def staged(self) -> Path:
        return self.folder / self.path.name

    def add_annotation(self, note: dict) -> None:
        if self.sidecar is None:
            self.sidecar_prefix = _Prefix()
            self.sidecar = open(self.folder / sidecar_path(self.path).name, "wb")
        data = orjson.dumps(note) + b"\n"
        self.sidecar.write(data)
        prefix = self.sidecar_prefix
        prefix.scenarios += 1
        prefix.offset += len(data)
        prefix.digest.update(data)

    def drop_annotations(self) -> None:
        if self.sidecar is not None:
            self.sidecar.close()
            (self.folder / sidecar_path(self.path).name).unlink()
            self.sidecar = self.sidecar_prefix = None

    def finish_annotations(self, setup: object) -> None:
        """Fsync the copied annotations and write their record over the new dataset's bytes."""
        if self.sidecar is None:
            return
        self.sidecar.flush()
        os.fsync(self.sidecar.fileno())
        self.sidecar.close()
        self.sidecar = None
        prefix = self.sidecar_prefix
        prefix.dataset_offset, prefix.dataset_digest = self.sink.dataset_digest()
        staged = self.folder / sidecar_path(self.path).name
        atomic_write(record_path(staged), prefix.record(setup, staged))

    def write_scores(self, file_name: str, header: dict, records: list[dict]) -> None:
        folder = self.folder / scores_dir(self.path).name
        folder.mkdir(exist_ok=True)
        payload = b"".join(orjson.dumps(line) + b"\n" for line in [header, *records])
        atomic_write(folder / file_name, payload)

    def scores_header(self, header: dict, first: Scenario, task_name: str) -> dict:
        """A source's scores header, naming the new dataset."""
        return {**header, "dataset": self.path.name, "dataset_id": dataset_id(task_name, first)}

    def close_sink(self, history: list[dict], run_state: dict) -> None:
        """Record the history, write the final checkpoint, then name the output's final place in it."""
        for entry in history:
            self.sink.record_history(entry)
        self.sink.close(run_state)
        staged_checkpoint = self.folder / default_checkpoint_path(self.path).name
        data = orjson.loads(staged_checkpoint.read_bytes())
        data["sink"] = str(self.path.resolve())
        data["dataset"]["name"] = self.path.name
        atomic_write(staged_checkpoint, orjson.dumps(data, option=orjson.OPT_INDENT_2))

    def discard(self) -> None:
        if self.sidecar is not None:
            self.sidecar.close()
            self.sidecar = None
        with contextlib.suppress(Exception):
            self.sink.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.old_fd is not None:
            os.close(self.old_fd)
            self.old_fd = None


@contextlib.contextmanager
def building(out: str | os.PathLike, *, task_name: str, fingerprint: dict, overwrite: bool,
             sources: list[Source], command: str) -> Iterator[Output]:
    """Hold ``out`` as its one writer and build the new dataset in a hidden folder beside it; the
    caller fills it and calls ``commit``. Anything raised inside leaves ``out`` as it was."""
    path = Path(out)
    if path.name in ("", ".", "..") or path.is_dir():
        raise UsageError(f"--output {out} is a folder; name the dataset file to write, such as {path / 'NEW.jsonl'}")
    written = {place.resolve(): place for place in [path, *companions(path)]}
    for source in sources:
        if source.path.resolve() == path.resolve():
            raise UsageError(f"--output {path} is a source of this {command}; the sources are never changed: "
                             "choose another --output")
        for place in [source.path, *companions(source.path)]:
            if place.resolve() in written:
                raise UsageError(f"--output {path} would write {written[place.resolve()]}, which belongs to the "
                                 f"source {source.path}; the sources are never changed: choose another --output")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--output {path}: cannot create its folder ({exc.strerror}); choose another --output") from exc
    with locks.held(path.with_name(f".{path.name}.lock"), f"--output {path}", command, remove=True):
        recover_leftovers(path)
        old_fd = _refuse_existing(path, overwrite)
        folder = _temporary_beside(path)
        try:
            folder.mkdir()
            sink = ScenarioSink.open(folder / path.name, folder / default_checkpoint_path(path).name,
                                     task_name=task_name, fingerprint=fingerprint, durability=NEVER, auto_sync=False)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            if old_fd is not None:
                os.close(old_fd)
            raise
        output = Output(path, folder, sink, old_fd)
        try:
            yield output
        finally:
            output.discard()  # after a commit: the emptied folder, and the old dataset's descriptor


def _refuse_existing(path: Path, overwrite: bool) -> int | None:
    """An existing dataset at ``path``: refused without ``overwrite``; else held (exclusively, as a run
    holds it) until it is replaced, and refused while a run writes it."""
    if not os.path.lexists(path):
        return None
    if not overwrite:
        raise UsageError(f"--output {path} already exists; nothing was changed: choose another --output, or pass "
                         "--overwrite to replace it (with its checkpoint, annotations and scores)")
    if not path.is_file():
        raise UsageError(f"--output {path} is not a file; choose another --output")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise UsageError(f"--output {path}: a run is writing it; wait for that run to end, or choose "
                             "another --output") from exc
    try:
        _refuse_busy_scores(path, "overwrite it", "--output ")
    except BaseException:
        os.close(fd)
        raise
    return fd


def companions(path: Path) -> list[Path]:
    """What belongs beside a dataset, in the order ``commit`` moves them in (the dataset after them)."""
    checkpoint, sidecar = default_checkpoint_path(path), sidecar_path(path)
    return [_keys_path(checkpoint), _journal_path(checkpoint), sidecar, record_path(sidecar), scores_dir(path),
            checkpoint]


def commit(output: Output) -> None:
    """Move the built dataset into place, its companions first and the dataset file last (see the
    contract); what was at those places (an old dataset's, or leftovers) goes."""
    path, folder = output.path, output.folder
    if os.path.lexists(path) and output.old_fd is None:  # made meanwhile by someone else
        raise UsageError(f"--output {path} was created while this ran; nothing was changed: choose another "
                         "--output, or pass --overwrite")
    _fsync_dir(folder)
    if output.old_fd is not None:
        os.unlink(path)  # from here until the last rename there is no dataset at ``path``
        _fsync_dir(path.parent)
    orphans = [final.name for final in companions(path) if os.path.lexists(final)]
    if orphans and output.old_fd is None:
        log.info("replacing %s: left beside no dataset %s (an interrupted drop or merge, or a dataset removed)",
                 ", ".join(orphans), path.name)
    for final in companions(path):
        staged = folder / final.name
        if os.path.lexists(final):
            _remove(final)
        if os.path.lexists(staged):
            move(staged, final)
    _fsync_dir(path.parent)  # the companions' renames are durable before the one that makes the dataset
    move(output.staged, path)
    _fsync_dir(path.parent)


def move(staged: Path, final: Path) -> None:
    """One rename of the commit (a seam the kill-safety test dies at)."""
    os.replace(staged, final)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@dataclass
class Carried:
    """What ``assemble`` wrote: per source, the new id of each old one kept and the ids left out
    as duplicates; whether the annotations came along (or why not); the scores carried and not."""

    new_ids: list[dict[int, int]]
    duplicates: list[list[int]]
    annotations: str  # '' carried, else why not
    scores: list[str] = field(default_factory=list)  # models carried
    scores_left: dict[str, str] = field(default_factory=dict)  # model -> why not
    first: Scenario | None = None

    def lines(self, output: str) -> list[str]:
        """What came along with the scenarios, and how to make what did not."""
        out = ([f"token annotations: not carried ({self.annotations}); `asyncgen annotate {output}` makes them"]
               if self.annotations else ["token annotations: carried, re-keyed to the new ids"])
        if self.scores:
            out.append(f"scores carried, re-keyed: {', '.join(self.scores)}")
        out += [f"scores of {model}: not carried ({why}); score again with `asyncgen score {output} --model {model}` "
                "and the flags that scored the sources" for model, why in self.scores_left.items()]
        return out


def assemble(sources: list[Source], output: Output, dropping: dict[int, dict] | None = None) -> Carried:
    """Write the scenarios of ``sources`` in order into ``output`` (less those of ``dropping``,
    ``{old id: its --from row or None}``, for the first source), duplicates by the sink's key left
    out; then their annotations and scores where they can be carried (see the contract)."""
    dropping = dropping or {}
    for source in sources:
        open_annotations(source)
        read_source_scores(source)
    why_not = next((f"{s.name}: {s.annotations.why}" for s in sources if s.annotations.why), "")
    if not why_not and any(s.annotations.setup != sources[0].annotations.setup for s in sources):
        why_not = "the sources' annotations were made with other tokenizers or answers"
    carried = Carried([], [], why_not)
    for number, source in enumerate(sources):
        new_ids, duplicates = {}, []
        skip = dropping if number == 0 else {}
        for old_id, scenario, data in read_scenarios(source, keep_hashes=bool(source.scores)):
            note = source.annotations.line(data)
            if old_id in skip:
                column = texts_disagree(skip[old_id], scenario)
                if column:
                    raise InputFileError(f"--from: the row of scenario {old_id} has another {column} than "
                                         f"{source.name}'s scenario {old_id}: the file was made from another "
                                         "dataset; nothing was written")
                continue
            new_id = output.sink.append(scenario)
            if new_id is None:
                duplicates.append(old_id)
                continue
            new_ids[old_id] = new_id
            if carried.first is None:
                carried.first = scenario
            if not carried.annotations:
                if note is None:
                    carried.annotations = f"{source.name}: {source.annotations.why}"
                    output.drop_annotations()
                else:
                    note["scenario_id"] = new_id
                    output.add_annotation(note)
        carried.new_ids.append(new_ids)
        carried.duplicates.append(duplicates)
        if not carried.annotations and source.annotations.verdict():
            carried.annotations = f"{source.name}: {source.annotations.verdict()}"
            output.drop_annotations()
    unknown = unknown_ids(dropping, sources[0].scenarios)
    if unknown:
        raise UsageError(f"{sources[0].path} has no scenario {describe_ids(unknown)} (its ids are 0 to "
                         f"{sources[0].scenarios - 1}); nothing was written")
    if output.sink.count == 0:
        raise UsageError(f"no scenario of {', '.join(str(s.path) for s in sources)} would be left; nothing was written")
    if carried.annotations:
        output.drop_annotations()
    else:
        output.finish_annotations(sources[0].annotations.setup)
    _carry_scores(sources, output, carried)
    return carried


def _carry_scores(sources: list[Source], output: Output, carried: Carried) -> None:
    models = list(dict.fromkeys(model for source in sources for model in source.scores))
    for model in models:
        why = next((verdict for verdict in (scores_verdict(s, model) for s in sources) if verdict), "")
        headers = [source.scores[model][1].header for source in sources] if not why else []
        if not why:
            differs = scores_difference(headers)
            if differs:
                why = f"the sources were scored with {differs} differing"
        if why:
            carried.scores_left[model] = why
            continue
        endpoints = list(dict.fromkeys(str(header.get("endpoint")) for header in headers))
        if len(endpoints) > 1:  # as `score` resuming a file at another endpoint: said, not refused
            log.warning("the scores of %s were made at %s; the merged file names the first", model,
                        " and ".join(endpoints))
        records = []
        for source, new_ids in zip(sources, carried.new_ids):
            for old_id, record in source.scores[model][1].records.items():
                if old_id in new_ids:
                    records.append({**record, "scenario_id": new_ids[old_id]})
        records.sort(key=lambda record: record["scenario_id"])
        header = output.scores_header(headers[0], carried.first, sources[0].task_name)
        output.write_scores(sources[0].scores[model][0].name, header, records)
        carried.scores.append(model)
