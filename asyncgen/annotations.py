"""Token annotations: where each scenario's pair differs and which answer ids to read, per tokenizer.

``annotation(scenario_id, verdict)`` is a pure function of a validator ``Verdict`` (which the
validator workers already fill with ids and answer ids); ``annotate(scenarios, tokenizers,
answers)`` tokenizes scenarios that have none (a dataset's). ``Sidecar`` keeps the file
``DATASET.tokens.jsonl`` beside a dataset, for ``run``, ``annotate`` and any other writer of
datasets (the Batch API path calls ``Sidecar.open`` and ``append`` the same way).

Format: one JSON line per scenario, line i for scenario i::

    {"scenario_id": 0, "tokenizers": {"llama3": {
        "single_token": {"length": 31, "position": 27, "ids": [19692, 13054], "tokens": ["Ġcake", "Ġbomb"],
                         "bos": true, "answer_ids": {"Yes": 9642, "No": 2822},
                         "answer_ids_merged": {"Yes": 7566, "No": 2360}},
        "multi_token": {"length": 8, "position": 5, "ids": [...], "tokens": [...], "bos": true}}}}

``length`` is the number of ids of the prompt (the counterfactual has as many), ``position`` the
index of the one id that differs, counted in the ids exactly as ``asyncgen tokenize`` prints them
(BOS included: ``bos`` says whether there is one); ``ids`` and ``tokens`` are the prompt's and the
counterfactual's at that position. ``answer_ids`` and ``answer_ids_merged`` are the two readings
of the task's answers (see ``asyncgen.answers``). A form that is not a minimal pair under a
tokenizer (only in datasets that ``validate`` would fail) has ``position``, ``ids`` and ``tokens``
null.

Contract of the sidecar
-----------------------
* The dataset is the truth; the sidecar is derived from it and may lag it, never lead it:
  ``append`` is called only after the scenario's four lines were written. A crash can leave it
  short or torn.
* ``Sidecar.open`` trusts no line it finds unchecked. ``DATASET.tokens.checkpoint.json`` records the
  verified prefix: how many lines, their bytes and sha256, and the bytes and sha256 of the dataset's
  scenarios they annotate, with a digest of the tokenizers and answers. When both files still hold
  their recorded prefix (two sequential reads, no tokenizing; one when the caller hands the
  digest of the dataset it read) only the scenarios after it are tokenized (in the calling
  thread: run it in a worker thread from async code); otherwise, or with
  ``full_check`` (``annotate``), every scenario is. Lines that differ byte for byte from what the
  scenarios give (other ids, tokenizers or texts, a torn line) are cut from the first one on and
  rewritten, and the missing ones written. So an interrupted sidecar is caught up, and one from
  another dataset, tokenizer set or task is rebuilt. Memory does not grow with the dataset: it is
  read and tokenized ``CHUNK`` scenarios at a time.
* ``append(scenario_id, verdict)`` writes one line with one ``write(2)``, for the next id only.
  A failed write does not stop the run (the dataset does not depend on the sidecar): it logs one
  warning, stops the sidecar, and the next ``open`` repairs it. ``close`` fsyncs, then records
  everything written as verified (its lines come from the validator's verdicts, the same as
  tokenizing again gives).
* One writer: use it where the dataset's sink is held (the sink's ``flock`` keeps runs apart).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Sequence

import orjson

from asyncgen.answers import TaskTokens, task_tokens
from asyncgen.config import Task
from asyncgen.errors import UsageError
from asyncgen.scenario import (
    LINES_PER_SCENARIO,
    GroupError,
    Scenario,
    encode_lines,
    feed_digest,
    line_groups,
    parse_group,
)
from asyncgen.sink import atomic_write
from asyncgen.tokenizers import Tokenizer
from asyncgen.validate import FormVerdict, Verdict, judge_scenarios

log = logging.getLogger("asyncgen.annotations")
CHUNK = 1024  # scenarios tokenized per batch
RECORD_VERSION = 1


def sidecar_path(dataset: str | os.PathLike) -> Path:
    """``DATASET.tokens.jsonl`` beside ``DATASET.jsonl`` (any other name gets ``.tokens.jsonl`` added)."""
    path = Path(dataset)
    stem = path.stem if path.suffix == ".jsonl" else path.name
    return path.with_name(stem + ".tokens.jsonl")


def _form(verdict: FormVerdict) -> dict:
    return {
        "length": verdict.length,
        "position": verdict.positions[0] if verdict.ok else None,
        "ids": list(verdict.ids) if verdict.ids is not None else None,
        "tokens": list(verdict.tokens) if verdict.tokens is not None else None,
        "bos": verdict.bos,
    }


def annotation(scenario_id: int, verdict: Verdict) -> dict:
    """One sidecar line (as a dict) from a verdict that went through the token rule with answers."""
    tokenizers = {}
    for name, forms in verdict.verdicts.items():
        single = _form(forms["single_token"])
        facts = verdict.answers.get(name)
        single["answer_ids"] = dict(facts.answer_ids) if facts is not None else None
        single["answer_ids_merged"] = dict(facts.answer_ids_merged) if facts is not None else None
        tokenizers[name] = {"single_token": single, "multi_token": _form(forms["multi_token"])}
    return {"scenario_id": scenario_id, "tokenizers": tokenizers}


def encode_annotation(scenario_id: int, verdict: Verdict) -> bytes:
    return orjson.dumps(annotation(scenario_id, verdict)) + b"\n"


def annotate(
    scenarios: Sequence[Scenario], tokenizers: Sequence[Tokenizer], answers: dict[str, TaskTokens], first_id: int = 0
) -> list[bytes]:
    """The sidecar lines of ``scenarios`` (ids from ``first_id``), tokenizing them in batches."""
    lines: list[bytes] = []
    last_report = time.monotonic()
    for start in range(0, len(scenarios), CHUNK):
        verdicts = judge_scenarios(scenarios[start : start + CHUNK], tokenizers, answers)
        lines.extend(encode_annotation(first_id + start + n, verdict) for n, verdict in enumerate(verdicts))
        if time.monotonic() - last_report >= 5:
            log.info("annotated %d of %d scenarios", len(lines), len(scenarios))
            last_report = time.monotonic()
    return lines


def recorded_annotations(dataset: str | os.PathLike, scenarios: int, tokenizers: Sequence[Tokenizer],
                         answers: dict[str, TaskTokens]) -> list[bytes] | None:
    """The sidecar's lines of the dataset's first ``scenarios`` scenarios, read, not written, when
    its record (``DATASET.tokens.checkpoint.json``) vouches for at least as many under these
    tokenizers and answers and both files still hold what it recorded (two sequential reads, no
    tokenizing); else None (no sidecar, another tokenizer set, an edited file: tokenize instead)."""
    path = sidecar_path(dataset)
    try:
        with open(dataset, "rb") as data, open(path, "rb") as sidecar:
            prefix, _ = _recorded_prefix(record_path(path), setup_digest(tokenizers, answers), data, sidecar)
            if prefix.scenarios < scenarios:
                return None
            sidecar.seek(0)
            lines = sidecar.read(prefix.offset).splitlines(keepends=True)
    except OSError:
        return None
    return lines[:scenarios] if len(lines) == prefix.scenarios else None


def dataset_annotations(dataset: str | os.PathLike, scenarios: Sequence[Scenario], tokenizers: Sequence[Tokenizer],
                        answers: dict[str, TaskTokens]) -> list[bytes]:
    """The annotation lines of a dataset's ``scenarios``: from its sidecar when the sidecar's record
    vouches for them (``recorded_annotations``), else tokenized (``annotate``)."""
    lines = recorded_annotations(dataset, len(scenarios), tokenizers, answers)
    if lines is not None:
        log.debug("token annotations: read from %s, whose record holds", sidecar_path(dataset))
        return lines
    return annotate(scenarios, tokenizers, answers)


def task_answers(task: Task, tokenizers: Sequence[Tokenizer]) -> dict[str, TaskTokens]:
    return {tokenizer.name: task_tokens(task, tokenizer) for tokenizer in tokenizers}


@dataclass
class Repair:
    """What ``Sidecar.open`` did: kept the first ``kept`` lines, wrote ``written`` lines; the first
    ``verified`` of them were trusted from the record of an earlier check, not tokenized again."""

    scenarios: int
    kept: int
    written: int
    cut_bytes: int
    message: str
    non_pairs: int = 0  # among the scenarios tokenized: those with a form that is not a minimal pair somewhere
    verified: int = 0


def record_path(sidecar: str | os.PathLike) -> Path:
    """Where the sidecar's verified prefix is recorded: ``DATASET.tokens.checkpoint.json``."""
    path = Path(sidecar)
    stem = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.name
    return path.with_name(stem + ".checkpoint.json")


def setup_digest(tokenizers: Sequence[Tokenizer], answers: dict[str, TaskTokens]) -> str:
    """What the annotations of a text depend on besides the text: the tokenizers and the answers' ids."""
    facts = {name: [dict(facts.answer_ids), dict(facts.answer_ids_merged)] for name, facts in answers.items()}
    return hashlib.sha256(orjson.dumps({"tokenizers": [t.name for t in tokenizers], "answers": facts},
                                       option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass
class _Prefix:
    """A checked prefix: ``scenarios`` sidecar lines (``offset`` bytes, ``digest`` running over them)
    that agree with the dataset's first ``scenarios`` scenarios (``dataset_offset`` bytes)."""

    scenarios: int = 0
    offset: int = 0
    digest: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    dataset_offset: int = 0
    dataset_digest: "hashlib._Hash" = field(default_factory=hashlib.sha256)

    def record(self, setup: str, sidecar: Path) -> bytes:
        return orjson.dumps({
            "version": RECORD_VERSION, "sidecar": sidecar.name, "setup": setup, "scenarios": self.scenarios,
            "offset": self.offset, "digest": self.digest.hexdigest(), "dataset_offset": self.dataset_offset,
            "dataset_digest": self.dataset_digest.hexdigest(),
        }, option=orjson.OPT_INDENT_2)


class Sidecar:
    """An open sidecar; make one with ``Sidecar.open``."""

    @classmethod
    def open(
        cls,
        dataset: str | os.PathLike,
        task: Task,
        tokenizers: Sequence[Tokenizer],
        path: str | os.PathLike | None = None,
        *,
        full_check: bool = False,
        dataset_digest: "tuple[int, hashlib._Hash] | None" = None,
        remedy: str = "pass --no-annotate",
    ) -> "Sidecar":
        """Open the sidecar of ``dataset`` (default path: ``sidecar_path``) and bring it in line with
        the dataset's scenarios: those after its recorded verified prefix, or all of them with
        ``full_check`` or when the record does not hold. ``dataset_digest`` is (bytes, sha256 of
        them) of the dataset's start as the caller read or wrote it in this process (the open sink's
        ``dataset_digest()``): the record's dataset digest is compared with it instead of being read
        again when it covers as many bytes. Raises UsageError if it cannot be written; its message
        offers ``remedy``, the caller's way around the sidecar."""
        path = Path(path) if path is not None else sidecar_path(dataset)
        answers = task_answers(task, tokenizers)
        setup = setup_digest(tokenizers, answers)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise UsageError(f"{path}: cannot open the token annotations for writing ({exc.strerror}); "
                             f"{remedy}, or make its folder writable") from exc
        try:
            with open(dataset, "rb") as data, open(path, "rb") as old:
                start, why = (_Prefix(), "") if full_check else _recorded_prefix(record_path(path), setup, data, old,
                                                                                  dataset_digest)
                repair, prefix = _bring_in_line(fd, path, data, old, start, tokenizers, answers)
            if why:
                repair.message += f" (checked them all: {why})"
            atomic_write(record_path(path), prefix.record(setup, path))
        except OSError as exc:
            os.close(fd)
            raise UsageError(f"{path}: cannot write the token annotations ({exc.strerror}); "
                             f"{remedy}, or free space and run again") from exc
        return cls(fd, path, task, answers, repair, prefix, setup)

    def __init__(self, fd: int, path: Path, task: Task, answers: dict[str, TaskTokens], repair: Repair,
                 prefix: _Prefix, setup: str) -> None:
        self.path = path
        self.answers = answers
        self.repair = repair
        self._fd: int | None = fd
        self._task = task
        self._prefix = prefix  # everything written so far: the record that close leaves
        self._setup = setup
        self._stopped = False

    @property
    def count(self) -> int:
        return self._prefix.scenarios

    def append(self, scenario_id: int, verdict: Verdict) -> None:
        """Write the annotation of scenario ``scenario_id`` (the next one) from its verdict."""
        if self._stopped or self._fd is None:
            return
        prefix = self._prefix
        if scenario_id != prefix.scenarios:
            self._stop(f"scenario {scenario_id} came when {prefix.scenarios} was next")
            return
        data = encode_annotation(scenario_id, verdict)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self._stop(f"writing scenario {scenario_id} failed ({exc.strerror})")
            return
        # The dataset's lines of this scenario, as the sink wrote them: the record covers both files.
        lines = encode_lines(scenario_id, self._task.task_name,
                             Scenario.render(self._task, verdict.prompt, verdict.counterfactual))
        prefix.scenarios += 1
        prefix.offset += len(data)
        prefix.digest.update(data)
        prefix.dataset_offset += len(lines)
        prefix.dataset_digest.update(lines)

    def _stop(self, why: str) -> None:
        self._stopped = True
        log.warning("%s: %s; no more token annotations this run (the dataset is unaffected); "
                    "`python -m asyncgen annotate` or the next run repairs them", self.path, why)

    def close(self) -> None:
        if self._fd is None:
            return
        try:
            os.fsync(self._fd)
            if not self._stopped:
                atomic_write(record_path(self.path), self._prefix.record(self._setup, self.path))
        except OSError as exc:
            log.warning("%s: cannot fsync the token annotations or record them (%s); the next open checks them "
                        "all", self.path, exc.strerror)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "Sidecar":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _recorded_prefix(record: Path, setup: str, data: BinaryIO, sidecar: BinaryIO,
                     known: "tuple[int, hashlib._Hash] | None" = None) -> tuple[_Prefix, str]:
    """The sidecar's prefix its record says was verified, if both files still hold it byte for byte
    (by digest) and the tokenizers and answers are the same; else an empty prefix and why."""
    try:
        recorded = orjson.loads(record.read_bytes())
    except FileNotFoundError:
        return _Prefix(), ""
    except (OSError, orjson.JSONDecodeError):
        return _Prefix(), f"its record {record.name} is unreadable"
    keys = ("scenarios", "offset", "dataset_offset")
    if not (isinstance(recorded, dict) and recorded.get("version") == RECORD_VERSION
            and all(isinstance(recorded.get(key), int) and recorded[key] >= 0 for key in keys)):
        return _Prefix(), f"its record {record.name} is malformed"
    if recorded.get("setup") != setup:
        return _Prefix(), "its record was made with other tokenizers or answers"
    prefix = _Prefix(recorded["scenarios"], recorded["offset"], dataset_offset=recorded["dataset_offset"])
    if known is not None and known[0] == prefix.dataset_offset:
        prefix.dataset_digest = known[1].copy()
        dataset_digest = prefix.dataset_digest.hexdigest()
    else:
        dataset_digest = _digest_of(data, prefix.dataset_offset, prefix.dataset_digest)
    if dataset_digest != recorded.get("dataset_digest"):
        return _Prefix(), "the dataset is not what the record says was annotated"
    if _digest_of(sidecar, prefix.offset, prefix.digest) != recorded.get("digest"):
        return _Prefix(), "the annotations were changed or cut since they were recorded"
    return prefix, ""


def _digest_of(handle: BinaryIO, size: int, digest: "hashlib._Hash") -> str | None:
    """Feed the first ``size`` bytes of ``handle`` to ``digest``; its hex digest, or None if shorter."""
    return digest.hexdigest() if feed_digest(handle, digest, 0, size) else None


def _scenarios_after(data: BinaryIO, prefix: _Prefix) -> Iterator[list[tuple[Scenario, bytes]]]:
    """The dataset's whole, well-formed scenarios after ``prefix``, with their bytes, in chunks of
    ``CHUNK``; stops at a torn or malformed one (the sink or ``validate`` deals with those)."""
    loads = orjson.loads
    scenario_id, chunk = prefix.scenarios, []
    for lines in line_groups(data, prefix.dataset_offset):
        for index in range(0, len(lines), LINES_PER_SCENARIO):
            group = lines[index : index + LINES_PER_SCENARIO]
            try:
                _, _, scenario = parse_group([loads(line) for line in group], scenario_id)
            except (orjson.JSONDecodeError, GroupError):
                yield chunk
                return
            chunk.append((scenario, b"".join(line + b"\n" for line in group)))
            scenario_id += 1
            if len(chunk) == CHUNK:
                yield chunk
                chunk = []
    yield chunk


def _bring_in_line(fd: int, path: Path, data: BinaryIO, old: BinaryIO, prefix: _Prefix,
                   tokenizers: Sequence[Tokenizer], answers: dict[str, TaskTokens]) -> tuple[Repair, _Prefix]:
    """After ``prefix``, keep the sidecar's lines that agree with the annotations of the dataset's
    scenarios, cut the rest, append what is missing; fsync. Reads and tokenizes a chunk at a time."""
    size = os.fstat(fd).st_size
    verified = prefix.scenarios
    old.seek(prefix.offset)
    agreeing, cut, written, non_pairs = True, 0, 0, 0
    last_report = time.monotonic()
    for chunk in _scenarios_after(data, prefix):
        if not chunk:
            continue
        verdicts = judge_scenarios([scenario for scenario, _ in chunk], tokenizers, answers)
        for (_, lines), verdict in zip(chunk, verdicts):
            expected = encode_annotation(prefix.scenarios, verdict)
            non_pairs += b'"position":null' in expected
            if agreeing and old.readline() != expected:
                agreeing, cut = False, size - prefix.offset
                os.ftruncate(fd, prefix.offset)
            if not agreeing:
                _write_all(fd, expected, prefix.offset)
                written += 1
            prefix.scenarios += 1
            prefix.offset += len(expected)
            prefix.digest.update(expected)
            prefix.dataset_offset += len(lines)
            prefix.dataset_digest.update(lines)
        if time.monotonic() - last_report >= 5:
            log.info("annotations: checked %d scenarios", prefix.scenarios - verified)
            last_report = time.monotonic()
    if agreeing and size > prefix.offset:  # lines beyond the dataset's scenarios
        cut = size - prefix.offset
        os.ftruncate(fd, prefix.offset)
    os.fsync(fd)
    os.lseek(fd, 0, os.SEEK_END)
    kept = prefix.scenarios - written
    if not size:
        message = f"token annotations {path}: wrote {written}"
    elif cut == 0 and written == 0:
        message = f"token annotations {path}: all {kept} agree with the dataset"
    elif cut == 0:
        message = f"token annotations {path}: {kept} agree with the dataset, caught up {written}"
    else:
        message = (f"token annotations {path}: {kept} agree with the dataset; rewrote from scenario {kept} on "
                   f"({cut} bytes disagreed: other ids, tokenizers or texts, or a torn line), {written} written")
    if verified:
        message += f" ({verified} by the record of an earlier check, {prefix.scenarios - verified} tokenized again)"
    return Repair(prefix.scenarios, kept, written, cut, message, non_pairs, verified), prefix


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def read_verified(dataset: str | os.PathLike) -> list[dict] | None:
    """The sidecar's annotations of ``dataset`` read, not written: every scenario's, when the
    sidecar's record says its lines were verified against the dataset as it is now (both files'
    digests hold) and they cover all of its ``scenarios``; else None (no sidecar, a stale or
    partial one: tokenize instead). The tokenizers are those the lines name."""
    path = sidecar_path(dataset)
    try:
        recorded = orjson.loads(record_path(path).read_bytes())
        with open(dataset, "rb") as data, open(path, "rb") as old:
            setup = recorded.get("setup") if isinstance(recorded, dict) else None
            prefix, _why = _recorded_prefix(record_path(path), setup, data, old)
            size = data.seek(0, os.SEEK_END)
            old.seek(0)
            lines = old.read(prefix.offset).splitlines()
    except (OSError, orjson.JSONDecodeError):
        return None
    if not prefix.scenarios or prefix.dataset_offset != size or len(lines) != prefix.scenarios:
        return None
    notes = [orjson.loads(line) for line in lines]
    return notes if all(note.get("scenario_id") == i for i, note in enumerate(notes)) else None
