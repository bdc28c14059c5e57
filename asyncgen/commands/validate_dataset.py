"""``asyncgen validate``: re-check a dataset in the seed's format, structure and token rule."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import orjson

from asyncgen.commands._shared import add_tokenizer_flags
from asyncgen.config import Task
from asyncgen.dataset_check import pair_of, templates_problem
from asyncgen.errors import InputFileError
from asyncgen.scenario import TYPES, normalize
from asyncgen.terminal import print_fitted
from asyncgen.tokenizers import Tokenizer
from asyncgen.validate import load_task_and_tokenizers, validate_pairs

CHUNK = 1024


def register(subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "validate",
        parents=[common],
        description="Check DATASET.jsonl: four lines per scenario in the order "
        f"{', '.join(TYPES)}; contiguous scenario ids from 0; one task; texts that match the task's "
        "templates; and the token rule for both forms under every tokenizer. Prints a summary and each "
        "failing scenario; exit code 1 if any fails.",
    )
    parser.add_argument("dataset", metavar="DATASET.jsonl", help="the dataset to check")
    parser.add_argument(
        "--config-dir", default=None, help="folder with tasks/*.yaml (default: the configs shipped with asyncgen)"
    )
    parser.add_argument(
        "--task", default=None,
        help="task name or YAML path whose templates the dataset uses (default: the task named in the dataset)",
    )
    add_tokenizer_flags(parser)
    parser.set_defaults(handler=run)


@dataclass
class DatasetReport:
    scenarios: int = 0
    valid: int = 0
    task_name: str | None = None
    problems: list[str] = field(default_factory=list)  # one line each, in file order


@dataclass
class _Line:
    number: int
    record: dict | None  # None: not a JSON object
    error: str | None = None


def _read_lines(path: Path) -> list[_Line]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read it ({exc.strerror})") from exc
    raw_lines = data.split(b"\n")
    torn_tail = raw_lines[-1] != b""
    if not torn_tail:
        raw_lines.pop()
    lines = []
    for number, raw in enumerate(raw_lines, start=1):
        torn = torn_tail and number == len(raw_lines)
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            lines.append(_Line(number, None, "torn last line (incomplete JSON)" if torn else "not valid JSON"))
            continue
        if not isinstance(record, dict):
            lines.append(_Line(number, None, "not a JSON object"))
        else:
            lines.append(_Line(number, record, "last line has no newline" if torn else None))
    return lines


def check_structure(lines: list[_Line], report: DatasetReport) -> list[tuple[int, dict[str, str]]]:
    """Structurally sound scenarios as (scenario_id, {type: text}); problems go into the report."""
    sound: list[tuple[int, dict[str, str]]] = []
    expected_id = 0
    for line in lines:
        if line.error:
            report.problems.append(f"line {line.number}: {line.error}")
    good = [line for line in lines if line.record is not None]
    for scenario_id, group_iter in groupby(good, key=lambda line: line.record.get("scenario_id")):
        group = list(group_iter)
        where = f"scenario {scenario_id} (lines {group[0].number}-{group[-1].number})"
        report.scenarios += 1
        if not isinstance(scenario_id, int) or isinstance(scenario_id, bool):
            report.problems.append(f"{where}: scenario_id is not an integer")
            continue
        problem = None
        if scenario_id != expected_id:
            problem = f"expected scenario_id {expected_id} (ids must be contiguous from 0)"
        expected_id = scenario_id + 1
        types = [line.record.get("type") for line in group]
        tasks = {line.record.get("task") for line in group}
        if problem is None and types != list(TYPES):
            problem = f"types {types}, expected {list(TYPES)} in that order"
        if problem is None and any(set(line.record) != {"scenario_id", "type", "task", "text"} for line in group):
            problem = "each line needs exactly the keys scenario_id, type, task, text"
        if problem is None and any(not isinstance(line.record.get("text"), str) for line in group):
            problem = "text is not a string"
        if problem is None and len(tasks) != 1:
            problem = f"mixed tasks {sorted(map(str, tasks))}"
        if problem is None:
            task_name = group[0].record["task"]
            if report.task_name is None:
                report.task_name = task_name
            elif task_name != report.task_name:
                problem = f"task {task_name!r}, but the dataset's task is {report.task_name!r}"
        if problem:
            report.problems.append(f"{where}: {problem}")
            continue
        sound.append((scenario_id, {line.record["type"]: line.record["text"] for line in group}))
    return sound


def check_rule(
    sound: list[tuple[int, dict[str, str]]], task: Task, tokenizers: list[Tokenizer], report: DatasetReport
) -> None:
    """Recover each scenario's pair from its texts and apply the validator to it."""
    pairs: list[tuple[int, str, str]] = []
    for scenario_id, texts in sound:
        pair = pair_of(task, texts)
        if pair is None:
            report.problems.append(f"scenario {scenario_id}: {templates_problem(task)}")
            continue
        pairs.append((scenario_id, *pair))
    report.problems.extend(duplicate_problems(sound))
    for start in range(0, len(pairs), CHUNK):
        chunk = pairs[start : start + CHUNK]
        verdicts = validate_pairs([(p, c) for _, p, c in chunk], task, tokenizers)
        for (scenario_id, _, _), verdict in zip(chunk, verdicts):
            if verdict.valid:
                report.valid += 1
            else:
                reasons = "; ".join(
                    reason if name == "*" else f"{name}/{form}: {reason}" for name, form, reason in verdict.failures()
                )
                report.problems.append(f"scenario {scenario_id}: {reasons}")


def duplicate_problems(sound: list[tuple[int, dict[str, str]]]) -> list[str]:
    """A scenario whose prompt or counterfactual repeats an earlier one's (the sink's dedup rule)."""
    problems = []
    first_prompt: dict[str, int] = {}
    first_counterfactual: dict[str, int] = {}
    for scenario_id, texts in sound:
        for side, text, firsts in (("prompt", texts["multi_token_prompt"], first_prompt),
                                   ("counterfactual", texts["multi_token_counterfactual"], first_counterfactual)):
            key = normalize(text)
            if key in firsts:
                problems.append(f"scenario {scenario_id}: its {side} duplicates scenario {firsts[key]}'s")
            else:
                firsts[key] = scenario_id
    return problems


def check_dataset(
    path: Path, config_dir: str | None, tokenizer_flags: list[str], cache_dir: str | None, task: str | None = None
) -> DatasetReport:
    report = DatasetReport()
    sound = check_structure(_read_lines(path), report)
    if report.task_name is None:
        if not report.problems:
            report.problems.append("the dataset is empty")
        return report
    task, _specs, tokenizers = load_task_and_tokenizers(task or report.task_name, config_dir, tokenizer_flags, cache_dir)
    if task.task_name != report.task_name:
        report.problems.append(f"the dataset's task is {report.task_name!r}, but --task is {task.task_name!r}")
        return report
    check_rule(sound, task, tokenizers, report)
    report.problems.sort(key=_problem_order)
    return report


def _problem_order(problem: str) -> tuple[int, str]:
    head = problem.split(":", 1)[0].split(" ")
    try:
        return int(head[1]) * (4 if head[0] == "scenario" else 1), problem
    except (IndexError, ValueError):
        return 0, problem


def run(args: argparse.Namespace) -> int:
    path = Path(args.dataset)
    report = check_dataset(path, args.config_dir, args.tokenizer, args.cache_dir, args.task)
    for problem in report.problems:  # one line each off a terminal, for grep
        print_fitted(f"FAIL {problem}", sys.stdout, indent=5)
    status = "OK" if not report.problems else "FAILED"
    print_fitted(f"{status}: {path}: {report.scenarios} scenarios, {report.valid} valid, "
                 f"{len(report.problems)} problems (task {report.task_name or 'unknown'})", sys.stdout)
    return 0 if not report.problems else 1
