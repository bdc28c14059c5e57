"""A train/test split that does not leak: scenarios that share a frame or a word pair go to one side.

Pure functions. ``groups_of`` joins the scenarios that share a key (union-find, so with two keys
the groups are the connected components); ``split_groups`` puts whole groups on one side, as
close to the asked share as the groups allow. Keys (``--group-by``):

* ``frame``: the multi-token prompt, casefolded, with its differing word replaced by ``{x}``
  (``inspection.frame_of``: the frame ``inspect`` counts);
* ``word``: the differing pair, (safe word, harmful word), casefolded without punctuation;
* ``frame+word``: either, so no frame and no word pair is on both sides;
* ``none``: every scenario its own group (a split by scenario).

A pair whose texts differ in more than one word has no frame and no word pair: it is grouped only
with the scenarios whose multi-token prompt is the same text (case- and whitespace-insensitive).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from asyncgen.errors import UsageError
from asyncgen.inspection import differing_word, frame_of
from asyncgen.scenario import Scenario, normalize

GROUP_BY = ("frame+word", "frame", "word", "none")
DEFAULT_GROUP_BY = "frame"  # frame+word chains into one giant group on a generated dataset: docs/research.md
OFF_BY_WARNING = 0.05  # a train side further than this share of the scenarios from the asked count is said


def keys_of(scenario: Scenario, group_by: str) -> list[str]:
    """What ``scenario`` shares with the scenarios it must stay with."""
    if group_by == "none":
        return []
    prompt, counterfactual = scenario.multi_token_prompt, scenario.multi_token_counterfactual
    found = differing_word(prompt, counterfactual)
    if found is None:
        return ["prompt:" + normalize(prompt)]
    index, safe, harmful = found
    keys = []
    if group_by in ("frame", "frame+word"):
        keys.append("frame:" + frame_of(prompt, index))
    if group_by in ("word", "frame+word"):
        keys.append(f"word:{safe}\x00{harmful}")
    return keys


def groups_of(scenarios: Sequence[Scenario], group_by: str) -> list[list[int]]:
    """The scenario ids in groups that share a key (transitively), each group in id order, the
    groups in the order of their first id."""
    parent = list(range(len(scenarios)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_with: dict[str, int] = {}
    for number, scenario in enumerate(scenarios):
        for key in keys_of(scenario, group_by):
            other = first_with.setdefault(key, number)
            a, b = root(number), root(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for number in range(len(scenarios)):
        groups.setdefault(root(number), []).append(number)
    return list(groups.values())


@dataclass(frozen=True)
class Split:
    sides: list[str]  # "train" or "test" per scenario
    groups: int
    largest: int
    asked: float
    target: int  # round(asked x scenarios): the train count asked for

    @property
    def off_by(self) -> float:
        """How far the train side is from the asked count, as a share of the scenarios."""
        return abs(self.sides.count("train") - self.target) / len(self.sides)

    @property
    def train_share(self) -> float:
        return self.sides.count("train") / len(self.sides)

    def summary(self, group_by: str, width: int | None = None) -> str:
        """E.g. ``split: train 79.6% / test 20.4% (asked 80/20), 212 groups by frame, the largest 3
        scenarios``: one line, or, when that is wider than ``width``, the grouping on a second,
        indented line (the same words). Pure."""
        train = 100 * self.train_share
        asked = 100 * self.asked
        grouping = ("by scenario" if group_by == "none" else
                    f"{self.groups} groups by {group_by}, the largest {self.largest} "
                    f"scenario{'s' if self.largest != 1 else ''}")
        shares = f"split: train {train:.1f}% / test {100 - train:.1f}% (asked {asked:g}/{100 - asked:g})"
        line = f"{shares}, {grouping}"
        return line if width is None or len(line) <= width else f"{shares},\n  {grouping}"


def split_groups(groups: Sequence[Sequence[int]], train_share: float, seed: int) -> Split:
    """Whole groups to ``train`` or ``test``: the groups in a seeded shuffle, each put in train while
    train stays within ``round(share x count)``, else in test; and the same with the sides' roles
    swapped; the closer of the two to the asked count (the first on a tie). With one group per
    scenario this is the first ``round(share x count)`` of a seeded shuffle of the ids. Refuses a
    share that leaves a side empty, for the scenarios or for the groups."""
    count = sum(len(group) for group in groups)
    train_count = round(train_share * count)
    if not 0 < train_count < count:
        fits = (f"with {count} scenarios a share from {1 / count:.3g} to {(count - 1) / count:.3g} does"
                if count > 1 else "a split needs at least 2 scenarios")
        raise UsageError(f"--split {train_share:g} puts {train_count} of {count} scenarios in train and "
                         f"{count - train_count} in test; each split needs one at least: {fits}")
    order = list(groups)
    random.Random(seed).shuffle(order)
    candidates = []
    for side, target in (("train", train_count), ("test", count - train_count)):
        chosen: set[int] = set()
        filled = 0
        for group in order:
            if filled + len(group) <= target:
                chosen.update(group)
                filled += len(group)
        in_train = filled if side == "train" else count - filled
        candidates.append((abs(in_train - train_count), side, chosen, in_train))
    _, side, chosen, in_train = min(candidates, key=lambda c: c[0])
    largest = max(len(group) for group in groups)
    if not 0 < in_train < count:
        raise UsageError(f"--split {train_share:g}: the {len(groups)} groups cannot be put on two sides (the largest "
                         f"holds {largest} of {count} scenarios); choose a finer --group-by (frame, word or none)")
    sides = [("train" if (i in chosen) == (side == "train") else "test") for i in range(count)]
    return Split(sides, len(groups), largest, train_share, train_count)
