"""The per-pair rules a dataset is checked by, without tokenizing: does a scenario's four texts
render one (prompt, counterfactual) with the task's templates (``pair_of``), which scenarios of an
export fail ``validate``'s per-pair checks (``failing_pairs``), and the one line that refuses them
(``refuse_failing``). Pure functions, shared by ``validate``, ``export`` and ``asyncgen.load``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from asyncgen.errors import InputFileError
from asyncgen.scenario import TYPES

if TYPE_CHECKING:
    from asyncgen.config import Task
    from asyncgen.scenario import Scenario


def pair_of(task: Task, texts: dict[str, str]) -> tuple[str, str] | None:
    """The (prompt, counterfactual) a scenario's four texts render with the task's templates; None
    when they do not match them."""
    single, multi = task.templates.single_token, task.templates.multi_token
    prompt = multi.unrender(texts["multi_token_prompt"])
    counterfactual = multi.unrender(texts["multi_token_counterfactual"])
    if (prompt is None or counterfactual is None or texts["single_token_prompt"] != single.render(prompt)
            or texts["single_token_counterfactual"] != single.render(counterfactual)):
        return None
    return prompt, counterfactual


def templates_problem(task: Task) -> str:
    return f"texts do not match task {task.task_name}'s templates"


def failing_pairs(task: Task, scenarios: Sequence[Scenario], annotations: Sequence[dict]) -> list[tuple[int, str]]:
    """(index, why) of each scenario whose pair fails ``validate``'s per-pair checks, read from what an
    export already has: its texts against the task's templates, and the token rule from its
    annotations (a form that is not a minimal pair under a tokenizer has a null ``position``; see
    ``asyncgen.annotations``). No tokenizing: a verified sidecar makes it a pass over the lines.
    Structure is ``read_dataset``'s to check; duplicates are ``validate``'s (a duplicate is still a pair)."""
    failing = []
    for index, (scenario, note) in enumerate(zip(scenarios, annotations)):
        texts = dict(zip(TYPES, scenario.texts()))
        if pair_of(task, texts) is None:
            failing.append((index, templates_problem(task)))
            continue
        broken = [f"{name}/{form}" for name, forms in note["tokenizers"].items()
                  for form, facts in forms.items() if facts["position"] is None]
        if broken:
            failing.append((index, f"not a minimal pair under {', '.join(broken)}"))
    return failing


def refuse_failing(dataset: str, failing: list[tuple[int, str]], total: int, skip_with: str) -> None:
    """The one-line ``InputFileError`` for a dataset with ``failing`` pairs (from ``failing_pairs``),
    saying how many, the first, where to see them all, and ``skip_with`` (the flag that leaves them out)."""
    if not failing:
        return
    index, why = failing[0]
    raise InputFileError(f"{dataset}: {len(failing)} of {total} scenarios fail validation (the first: scenario "
                         f"{index}, {why}): see `python -m asyncgen validate {dataset}`, "
                         f"or pass {skip_with} to leave them out")
