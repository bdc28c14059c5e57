"""A scenario and its dataset format (the seed's JSONL).

A scenario is a prompt and a counterfactual rendered into four texts. In the dataset each
scenario is four JSON lines, in ``TYPES`` order, each ``{"scenario_id", "type", "task", "text"}``,
with ids 0, 1, 2, ... in file order.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

import orjson

from asyncgen.errors import InputFileError

if TYPE_CHECKING:  # annotations only: loading a dataset needs no pydantic (the task config's)
    from asyncgen.config import Task

TYPES = (
    "single_token_prompt",
    "single_token_counterfactual",
    "multi_token_prompt",
    "multi_token_counterfactual",
)
LINES_PER_SCENARIO = len(TYPES)
READ_BYTES = 1 << 23


@dataclass(frozen=True, slots=True)
class Scenario:
    single_token_prompt: str
    single_token_counterfactual: str
    multi_token_prompt: str
    multi_token_counterfactual: str

    @classmethod
    def render(cls, task: Task, prompt: str, counterfactual: str) -> "Scenario":
        single, multi = task.templates.single_token, task.templates.multi_token
        return cls(single.render(prompt), single.render(counterfactual), multi.render(prompt), multi.render(counterfactual))

    def texts(self) -> tuple[str, str, str, str]:
        return (
            self.single_token_prompt,
            self.single_token_counterfactual,
            self.multi_token_prompt,
            self.multi_token_counterfactual,
        )

    def dedup_keys(self) -> tuple[str, str]:
        """Normalized prompt and counterfactual (the multi-token texts: the templates are fixed per run)."""
        return normalize(self.multi_token_prompt), normalize(self.multi_token_counterfactual)


def normalize(text: str) -> str:
    """Casefolded, whitespace collapsed: two texts equal under this are duplicates."""
    # str.split() breaks on exactly the characters re's \s matches, at a third of the cost.
    return " ".join(text.casefold().split())


def encode_lines(scenario_id: int, task_name: str, scenario: Scenario) -> bytes:
    """The four JSONL lines of one scenario, as one bytes object (written in one write)."""
    return b"".join(
        orjson.dumps({"scenario_id": scenario_id, "type": kind, "task": task_name, "text": text}) + b"\n"
        for kind, text in zip(TYPES, scenario.texts())
    )


def line_groups(handle: BinaryIO, start: int = 0, end: int | None = None) -> Iterator[list[bytes]]:
    """The complete lines of a dataset file from byte ``start`` (to ``end``), newlines stripped, in
    lists of whole groups of four, read ``READ_BYTES`` at a time (so memory stays flat however long
    the file is); what is left at the end (fewer than four lines, or a part of one) is not yielded."""
    handle.seek(start)
    left = None if end is None else end - start
    carry = b""
    while left is None or left > 0:
        piece = handle.read(READ_BYTES if left is None else min(READ_BYTES, left))
        if not piece:
            break
        if left is not None:
            left -= len(piece)
        lines = (carry + piece if carry else piece).split(b"\n")
        whole = (len(lines) - 1) // LINES_PER_SCENARIO * LINES_PER_SCENARIO
        carry = b"\n".join(lines[whole:])
        if whole:
            yield lines[:whole]


def feed_digest(handle: BinaryIO, digest, start: int, end: int) -> bool:
    """Feed bytes ``start`` to ``end`` of ``handle`` to ``digest`` (a hashlib object), ``READ_BYTES``
    at a time; False if the file ends before ``end``. One buffer, mapped for the read and unmapped
    after: pieces from malloc would stay with the malloc arena of the thread that read them (the
    sink's and the sidecar's prefixes are digested in threads), tens of MB the process keeps."""
    handle.seek(start)
    left = end - start
    if left <= 0:
        return True
    with mmap.mmap(-1, min(READ_BYTES, left)) as mapped:
        buffer = memoryview(mapped)
        try:
            while left > 0:
                read = handle.readinto(buffer[: min(READ_BYTES, left)])
                if not read:
                    return False
                digest.update(buffer[:read])
                left -= read
        finally:
            buffer.release()
    return True


class GroupError(ValueError):
    """Four lines that are not one well-formed scenario; the message says why."""


def parse_group(records: list[dict], expected_id: int | None = None) -> tuple[int, str, Scenario]:
    """Check four decoded lines form one scenario; return (scenario_id, task, scenario)."""
    if len(records) != LINES_PER_SCENARIO:
        raise GroupError(f"expected {LINES_PER_SCENARIO} lines, got {len(records)}")
    first = records[0]
    scenario_id, task_name = first.get("scenario_id"), first.get("task")
    for kind, record in zip(TYPES, records):
        if not isinstance(record, dict) or set(record) != {"scenario_id", "type", "task", "text"}:
            raise GroupError(f"line of type {kind}: expected the keys scenario_id, type, task, text")
        if record["type"] != kind:
            raise GroupError(f"expected type {kind}, got {record['type']!r}")
        if record["scenario_id"] != scenario_id or not isinstance(scenario_id, int) or isinstance(scenario_id, bool):
            raise GroupError(f"scenario_id {record['scenario_id']!r} differs within the group")
        if record["task"] != task_name or not isinstance(task_name, str):
            raise GroupError(f"task {record['task']!r} differs within the group")
        if not isinstance(record["text"], str):
            raise GroupError(f"{kind}: text is not a string")
    if expected_id is not None and scenario_id != expected_id:
        raise GroupError(f"scenario_id {scenario_id}, expected {expected_id}")
    return scenario_id, task_name, Scenario(*(record["text"] for record in records))


@dataclass
class Dataset:
    """A dataset file read whole: its task, its scenarios in id order, and a torn tail left out."""

    path: str
    task_name: str | None
    scenarios: list[Scenario]
    torn_bytes: int = 0  # after the last whole scenario: what a crashed or running writer leaves


def read_dataset(path) -> Dataset:
    """Read a dataset for the commands that use one (annotate, inspect, export).

    A missing file, a malformed scenario, or more than one task is an ``InputFileError`` naming
    the line; an incomplete last scenario (fewer than four whole lines, as a crash or a run still
    writing leaves) is left out and reported in ``torn_bytes``.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read the dataset ({exc.strerror})") from exc
    lines = data.split(b"\n")
    complete = len(lines) - 1  # the last item follows the last newline
    scenarios: list[Scenario] = []
    task_name = None
    index = offset = 0
    while index + LINES_PER_SCENARIO <= complete:
        group = lines[index : index + LINES_PER_SCENARIO]
        line = index + 1
        try:
            _, task, scenario = parse_group([orjson.loads(raw) for raw in group], len(scenarios))
        except (orjson.JSONDecodeError, GroupError) as exc:
            raise InputFileError(
                f"{path}:{line}: scenario {len(scenarios)} is malformed ({exc}); "
                "check it with `python -m asyncgen validate`"
            ) from exc
        if task_name is not None and task != task_name:
            raise InputFileError(f"{path}:{line}: task {task!r}, but the dataset's task is {task_name!r}")
        task_name = task
        scenarios.append(scenario)
        offset += sum(len(raw) + 1 for raw in group)
        index += LINES_PER_SCENARIO
    return Dataset(str(path), task_name, scenarios, len(data) - offset)
