"""How a candidate pair becomes a scenario in the dataset: verdicts -> dedup -> sink -> counters.

The one acceptance path, shared by the real-time pipeline (``asyncgen run``) and
``asyncgen batch process``:

- ``fresh`` drops candidates that repeat the dataset or each other before they are tokenized;
- ``take`` counts rejected verdicts, appends valid ones to the sink until the target is reached
  (a duplicate the sink refuses is counted as one) and returns the valid pairs beyond the target,
  which ``batch process`` keeps as spares. Every accepted scenario passes through ``take``: the
  place to hook anything that must see each accepted scenario.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from asyncgen.annotations import Sidecar
from asyncgen.config import Task
from asyncgen.scenario import Scenario
from asyncgen.sink import ScenarioSink
from asyncgen.stats import RunStats
from asyncgen.validate import Verdict


@dataclass
class Taken:
    accepted: list[Verdict]  # written to the sink, in order
    surplus: list[Verdict]  # valid, not duplicates, but beyond the target


class Acceptance:
    def __init__(self, task: Task, sink: ScenarioSink, stats: RunStats, annotations: Sidecar | None = None) -> None:
        self.task, self.sink, self.stats = task, sink, stats
        self.annotations = annotations  # the token annotations sidecar, kept in step with the sink

    def remaining(self) -> int:
        return self.stats.target - self.sink.count

    def fresh(self, pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Drop pairs already in the dataset or repeated among ``pairs`` before paying to tokenize them."""
        seen: set[tuple[str, str]] = set()
        fresh = []
        for prompt, counterfactual in pairs:
            scenario = Scenario.render(self.task, prompt, counterfactual)
            keys = scenario.dedup_keys()
            if keys in seen or self.sink.is_duplicate(scenario):
                self.stats.duplicates += 1
                continue
            seen.add(keys)
            fresh.append((prompt, counterfactual))
        return fresh

    def take(self, verdicts: Iterable[Verdict]) -> Taken:
        """Count each verdict; append the valid ones until the target is reached; return what was
        appended and the valid surplus beyond the target."""
        stats = self.stats
        taken = Taken([], [])
        surplus_prompts: set[str] = set()
        surplus_counterfactuals: set[str] = set()
        for verdict in verdicts:
            if not verdict.valid:
                stats.rejected += 1
                stats.rejections.update(verdict.failure_kinds())
                continue
            scenario = Scenario.render(self.task, verdict.prompt, verdict.counterfactual)
            if self.remaining() <= 0:
                prompt, counterfactual = scenario.dedup_keys()
                if (self.sink.is_duplicate(scenario) or prompt in surplus_prompts
                        or counterfactual in surplus_counterfactuals):
                    stats.duplicates += 1
                    continue
                surplus_prompts.add(prompt)
                surplus_counterfactuals.add(counterfactual)
                taken.surplus.append(verdict)
                continue
            scenario_id = self.sink.append(scenario)
            if scenario_id is None:
                stats.duplicates += 1
                continue
            if self.annotations is not None:
                self.annotations.append(scenario_id, verdict)
            stats.accepted = self.sink.count
            stats.accepted_this_run += 1
            if stats.first_accepted_s is None:
                stats.first_accepted_s = stats.elapsed
            taken.accepted.append(verdict)
        return taken
