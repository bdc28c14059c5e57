"""Scores read back for ``export --scores`` and ``inspect``: per-model columns, the flip filter, the
per-model figures. Reading checks identity (``asyncgen.scores``): a scores file of another dataset
is refused, never joined by its name."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Sequence

from asyncgen.errors import InputFileError
from asyncgen.scenario import Scenario
from asyncgen.scores import another_dataset, dataset_id, read_scores, scores_dir, scores_path, texts_hash

ONLY_FLIPPING = ("single", "multi", "both")


def load_scores(dataset: str | Path, task_name: str, scenarios: Sequence[Scenario], model: str) -> dict[int, dict]:
    """The records of ``model``'s scores of this dataset, by scenario id; checked against it."""
    path = scores_path(dataset, model)
    read = read_scores(path)
    if read.header is None:
        raise InputFileError(f"{path}: no scores of {model!r} for {dataset}; score it first: "
                             f"python -m asyncgen score {dataset} --model {model}")
    if read.header.get("dataset_id") != dataset_id(task_name, scenarios[0]):
        raise InputFileError(f"{path} holds {another_dataset(read.header, dataset)}, not {Path(dataset).name}'s; "
                             f"move it away, then score again: python -m asyncgen score {dataset} --model {model}")
    if read.header.get("model") != model:
        raise InputFileError(f"{path} holds the scores of model {read.header.get('model')!r}, not of {model!r}; "
                             f"move it away, then score again: python -m asyncgen score {dataset} --model {model}")
    for scenario_id, record in read.records.items():
        if scenario_id >= len(scenarios) or record.get("texts") != texts_hash(scenarios[scenario_id]):
            raise InputFileError(f"{path}: scenario {scenario_id}'s texts differ from {dataset}'s; the scores belong "
                                 "to another version of the dataset: score it again")
    return read.records


def scored_models(dataset: str | Path) -> list[tuple[str, Path]]:
    """(model, path) of each scores file beside ``dataset``, the model as its header names it."""
    out = []
    folder = scores_dir(dataset)
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        header = read_scores(path).header
        if header is not None and isinstance(header.get("model"), str):
            out.append((header["model"], path))
    return out


def flips_in(record: dict | None, forms: str) -> bool:
    """Whether a scenario flips in ``forms`` (single, multi or both); an unscored or undecided one does not count."""
    if record is None:
        return False
    wanted = ("single", "multi") if forms == "both" else (forms,)
    return all((record.get(form) or {}).get("flips") is True for form in wanted)


def columns(model: str, record: dict | None, safe: str, harmful: str) -> dict:
    """The flat per-model columns of one scenario (None where it was not scored or has no value)."""
    prefix = f"score.{model}."
    row: dict = {}
    single = (record or {}).get("single") or {}
    for side in ("prompt", "counterfactual"):
        facts = single.get(side) or {}
        answers = facts.get("answers") or {}
        for label, answer in (("safe", safe), ("harmful", harmful)):
            found = answers.get(answer) or {}
            row[f"{prefix}single_{side}_logprob_{label}"] = found.get("logprob")
            row[f"{prefix}single_{side}_logprob_{label}_is_bound"] = found.get("bound")
        row[f"{prefix}single_{side}_logit_diff"] = facts.get("logit_diff")
        row[f"{prefix}single_{side}_logit_diff_is"] = facts.get("logit_diff_is")
    row[f"{prefix}single_flips"] = single.get("flips")
    multi = (record or {}).get("multi") or {}
    for side in ("prompt", "counterfactual"):
        row[f"{prefix}multi_{side}_refuses"] = (multi.get(side) or {}).get("refuses")
    row[f"{prefix}multi_flips"] = multi.get("flips")
    return row


def figures(records: dict[int, dict], total: int) -> dict:
    """Per-model figures for inspect: flip shares per form, the logit differences' spread, and how
    often the two forms disagree (both decided, one flips and the other does not)."""
    out: dict = {"scored": len(records), "of": total}
    for form in ("single", "multi"):
        verdicts = [(r.get(form) or {}).get("flips") for r in records.values() if form in r]
        if verdicts:
            out[f"{form}_flips"] = sum(v is True for v in verdicts)
            out[f"{form}_undecided"] = sum(v is None for v in verdicts)
            out[f"{form}_share"] = round(out[f"{form}_flips"] / len(verdicts), 4)
    for side in ("prompt", "counterfactual"):
        diffs = [d for r in records.values()
                 if (d := ((r.get("single") or {}).get(side) or {}).get("logit_diff")) is not None
                 and r["single"][side].get("logit_diff_is") == "="]
        if diffs:
            quartiles = statistics.quantiles(diffs, n=4) if len(diffs) > 1 else [diffs[0]] * 3
            out[f"logit_diff_{side}"] = {"min": min(diffs), "q1": round(quartiles[0], 4),
                                         "median": round(quartiles[1], 4), "q3": round(quartiles[2], 4),
                                         "max": max(diffs), "exact": len(diffs)}
    both = [(r["single"].get("flips"), r["multi"].get("flips")) for r in records.values()
            if "single" in r and "multi" in r]
    decided = [(a, b) for a, b in both if a is not None and b is not None]
    if decided:
        out["forms_disagree"] = sum(a != b for a, b in decided)
        out["forms_decided"] = len(decided)
    return out


def render_figures(model: str, figures_: dict) -> list[str]:
    lines = [f"scores under {model}: {figures_['scored']}/{figures_['of']} scenarios scored"]
    for form, name in (("single", "single-token"), ("multi", "multi-token")):
        if f"{form}_flips" in figures_:
            lines.append(f"  {name + ' flips':<20}{figures_[f'{form}_flips']} ({100 * figures_[f'{form}_share']:.1f}%), "
                         f"{figures_[f'{form}_undecided']} undecided")
    for side in ("prompt", "counterfactual"):
        spread = figures_.get(f"logit_diff_{side}")
        if spread:
            lines.append(f"  {'logit diff ' + ('clean' if side == 'prompt' else 'corrupt'):<20}min {spread['min']:.2f}  q1 {spread['q1']:.2f}  "
                         f"median {spread['median']:.2f}  q3 {spread['q3']:.2f}  max {spread['max']:.2f} "
                         f"({spread['exact']} exact)")
    if "forms_disagree" in figures_:
        lines.append(f"  {'forms disagree':<20}{figures_['forms_disagree']} of {figures_['forms_decided']} decided scenarios")
    return lines
