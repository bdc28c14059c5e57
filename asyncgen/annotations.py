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
* ``Sidecar.open`` never trusts what it finds: it re-derives the annotation of every scenario the
  dataset holds (tokenizing in the calling thread: run it in a worker thread from async code),
  keeps the sidecar's lines up to the first that differs byte for byte (other ids, tokenizers or
  texts, a torn line), cuts the rest, and writes the missing lines. So an interrupted sidecar is
  caught up, and one from another dataset, tokenizer set or task is rebuilt.
* ``append(scenario_id, verdict)`` writes one line with one ``write(2)``, for the next id only.
  A failed write does not stop the run (the dataset does not depend on the sidecar): it logs one
  warning, stops the sidecar, and the next ``open`` repairs it. ``close`` fsyncs.
* One writer: use it where the dataset's sink is held (the sink's ``flock`` keeps runs apart).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import orjson

from asyncgen.answers import TaskTokens, task_tokens
from asyncgen.config import Task
from asyncgen.errors import UsageError
from asyncgen.scenario import Scenario, read_dataset
from asyncgen.tokenizers import Tokenizer
from asyncgen.validate import FormVerdict, Verdict, judge_scenarios

log = logging.getLogger("asyncgen.annotations")
CHUNK = 1024  # scenarios tokenized per batch


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


def task_answers(task: Task, tokenizers: Sequence[Tokenizer]) -> dict[str, TaskTokens]:
    return {tokenizer.name: task_tokens(task, tokenizer) for tokenizer in tokenizers}


@dataclass
class Repair:
    """What ``Sidecar.open`` did: kept the first ``kept`` lines, wrote ``written`` lines."""

    scenarios: int
    kept: int
    written: int
    cut_bytes: int
    message: str
    non_pairs: int = 0  # scenarios with a form that is not a minimal pair under some tokenizer


class Sidecar:
    """An open sidecar; make one with ``Sidecar.open``."""

    @classmethod
    def open(
        cls,
        dataset: str | os.PathLike,
        task: Task,
        tokenizers: Sequence[Tokenizer],
        path: str | os.PathLike | None = None,
        scenarios: Sequence[Scenario] | None = None,
        remedy: str = "pass --no-annotate",
    ) -> "Sidecar":
        """Open the sidecar of ``dataset`` (default path: ``sidecar_path``) and bring it in line with
        the dataset's scenarios (read from ``dataset`` unless given). Raises UsageError if it cannot
        be written; its message offers ``remedy``, the caller's way around the sidecar."""
        path = Path(path) if path is not None else sidecar_path(dataset)
        if scenarios is None:
            scenarios = read_dataset(dataset).scenarios
        answers = task_answers(task, tokenizers)
        expected = annotate(scenarios, tokenizers, answers)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise UsageError(f"{path}: cannot open the token annotations for writing ({exc.strerror}); "
                             f"{remedy}, or make its folder writable") from exc
        try:
            repair = _bring_in_line(fd, path, expected)
        except OSError as exc:
            os.close(fd)
            raise UsageError(f"{path}: cannot write the token annotations ({exc.strerror}); "
                             f"{remedy}, or free space and run again") from exc
        repair.non_pairs = sum(b'"position":null' in line for line in expected)
        return cls(fd, path, len(scenarios), answers, repair)

    def __init__(self, fd: int, path: Path, count: int, answers: dict[str, TaskTokens], repair: Repair) -> None:
        self.path = path
        self.answers = answers
        self.repair = repair
        self._fd: int | None = fd
        self._count = count
        self._stopped = False

    @property
    def count(self) -> int:
        return self._count

    def append(self, scenario_id: int, verdict: Verdict) -> None:
        """Write the annotation of scenario ``scenario_id`` (the next one) from its verdict."""
        if self._stopped or self._fd is None:
            return
        if scenario_id != self._count:
            self._stop(f"scenario {scenario_id} came when {self._count} was next")
            return
        data = encode_annotation(scenario_id, verdict)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self._stop(f"writing scenario {scenario_id} failed ({exc.strerror})")
            return
        self._count += 1

    def _stop(self, why: str) -> None:
        self._stopped = True
        log.warning("%s: %s; no more token annotations this run (the dataset is unaffected); "
                    "`python -m asyncgen annotate` or the next run repairs them", self.path, why)

    def close(self) -> None:
        if self._fd is None:
            return
        try:
            os.fsync(self._fd)
        except OSError as exc:
            log.warning("%s: cannot fsync the token annotations (%s); the next open repairs them", self.path, exc.strerror)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "Sidecar":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _bring_in_line(fd: int, path: Path, expected: list[bytes]) -> Repair:
    """Keep the lines that agree with ``expected``, cut the rest, append what is missing; fsync."""
    size = os.fstat(fd).st_size
    data = b""
    while len(data) < size:
        chunk = os.pread(fd, size - len(data), len(data))
        if not chunk:
            break
        data += chunk
    kept = offset = 0
    for line in data.splitlines(keepends=True):
        if kept >= len(expected) or line != expected[kept]:
            break
        kept += 1
        offset += len(line)
    cut = len(data) - offset
    if cut:
        os.ftruncate(fd, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    missing = b"".join(expected[kept:])
    view = memoryview(missing)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)
    os.lseek(fd, 0, os.SEEK_END)
    written = len(expected) - kept
    if not data:
        message = f"token annotations {path}: wrote {written}"
    elif cut == 0 and written == 0:
        message = f"token annotations {path}: all {kept} agree with the dataset"
    elif cut == 0:
        message = f"token annotations {path}: {kept} agree with the dataset, caught up {written}"
    else:
        message = (f"token annotations {path}: {kept} agree with the dataset; rewrote from scenario {kept} on "
                   f"({cut} bytes disagreed: other ids, tokenizers or texts, or a torn line), {written} written")
    return Repair(len(expected), kept, written, cut, message)
