"""The dataset card of an ``hf`` export: ``README.md`` with the YAML block the Hugging Face Hub reads.

``card_text`` is a pure function of what the export knows: the rows' counts per split, the task,
the tokenizers (and for the builtin ones, which package their vocab comes from and its licence),
the split's grouping, and the run's figures from the dataset's checkpoint when it was found
(``inspection.run_figures``). The metadata block follows the Hub's dataset card spec: ``license``,
``pretty_name``, ``task_categories``, ``size_categories``, ``tags`` and ``configs`` (whose
``data_files`` point at the Arrow files ``save_to_disk`` writes, so ``datasets.load_dataset(FOLDER)``
reads the same splits as ``load_from_disk``).
"""

from __future__ import annotations

from typing import Sequence

import yaml

from asyncgen import __version__
from asyncgen.config import Task
from asyncgen.tokenizers import BUILTINS, TokenizerSpec

SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"))


def size_category(count: int) -> str:
    for bound, name in SIZE_CATEGORIES:
        if count < bound:
            return name
    return "n>10M"


def _vocab(spec: TokenizerSpec) -> str:
    """Where tokenizer ``spec``'s vocabulary comes from and under which licence, as a table row's cells."""
    if spec.source == "builtin":
        builtin = BUILTINS[spec.ref]
        return (f"`{builtin.hub_id}` | rebuilt offline from `{builtin.vendor.install_hint}` (sha256 checked) | "
                f"{builtin.license}")
    if spec.source == "hub":
        return f"`{spec.ref}` | the Hub | the model's licence on the Hub"
    return "a local file | the user's | unknown: see where the file came from"


def _money(value) -> str:
    return "not recorded" if value is None else f"${value:.4f}"


def card_text(*, dataset_name: str, counts: dict[str, int], task: Task, specs: Sequence[TokenizerSpec],
              run: dict | None, split: str | None, with_ids: bool, scored_by: Sequence[str] = ()) -> str:
    """The card. ``counts`` is scenarios per split, ``split`` how the split was made (a sentence) or
    None, ``run`` the run's figures (``run_figures``) or None when no checkpoint was found."""
    total = sum(counts.values())
    names = [spec.name for spec in specs]
    metadata = {
        "pretty_name": f"{dataset_name}: {task.task_name} minimal pairs",
        "license": "other",
        "task_categories": ["text-classification"],
        "language": ["en"],
        "size_categories": [size_category(total)],
        "tags": ["interpretability", "minimal-pairs", "counterfactual", "activation-patching", "asyncgen"],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": name, "path": f"{name}/data-*.arrow"} for name in counts]}],
    }
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    answers = task.answers
    single = task.templates.single_token
    lines = [
        "---", front.rstrip("\n"), "---", "",
        f"# {dataset_name}: {task.task_name} minimal pairs", "",
        f"{total} scenarios of the task `{task.task_name}`"
        + (f" ({task.description})" if task.description else "") + ", made with "
        f"asyncgen {__version__}. Each scenario is a minimal pair: a clean prompt "
        f"(answer `{answers.safe}`) and a corrupt counterfactual (answer `{answers.harmful}`) that differ in "
        "exactly one token under every tokenizer listed below, in two forms: `multi_token` (the pair "
        "itself) and `single_token` (the pair inside the task's template, which ends where the one-token "
        "answer goes).", "",
        "## Splits", "",
        "| split | scenarios |", "|---|---|",
        *(f"| {name} | {n} |" for name, n in counts.items()), "",
        split or "One split, `train`: exported without `--split`.", "",
        "Load it with `datasets.load_from_disk(FOLDER)` or `datasets.load_dataset(FOLDER)`.", "",
        "## Columns", "",
        "`scenario_id`, `task`; the texts `single_token_clean`, `single_token_corrupt`, `multi_token_clean`, "
        "`multi_token_corrupt`; the answers `answer_clean`, `answer_corrupt`; per tokenizer T: `T_bos`, and per "
        "form `T_<form>_length`, `T_<form>_position` (index of the one differing id, BOS included), "
        "`T_<form>_clean_id`, `T_<form>_corrupt_id`; the answers' ids `T_answer_clean_id`, "
        "`T_answer_corrupt_id` (the token after the prompt's ids) and `..._merged` (the answer with the "
        "trailing space in it)"
        + ("; `T_<text>_ids`, the full input ids of each of the four texts (BOS included)" if with_ids else "")
        + ("; `score.MODEL.*` for " + ", ".join(f"`{m}`" for m in scored_by) if scored_by else "") + ".", "",
        "## How it was made", "",
        f"Template of the single-token form: `{single.prefix!r}` + pair + `{single.suffix!r}`.", "",
        "**Validation rule.** A candidate pair was kept only if, under every tokenizer, in both forms, the "
        "clean and the corrupt text encode to the same number of ids and differ at exactly one position; "
        "a pair whose prompt or counterfactual repeats one already kept (case- and whitespace-insensitive) "
        "was dropped as a duplicate.", "",
    ]
    if run is None:
        lines += ["**Run.** No checkpoint of the run was found beside the dataset, so its cost and counts are "
                  "not known here.", ""]
    elif run.get("runs") is None:
        lines += [f"**Run.** Made with the Batch API (`asyncgen batch`); cost {_money(run.get('cost_usd'))}.", ""]
    else:
        share = "n/a" if run.get("yield") is None else f"{100 * run['yield']:.1f}%"
        lines += [
            "**Run.** The generating model is not recorded in the checkpoint; these figures are, over every "
            "run of the dataset:", "",
            "| figure | value |", "|---|---|",
            f"| runs | {run.get('runs')} |",
            f"| requests answered | {run.get('requests_ok')} |",
            f"| candidate pairs | {run.get('candidates')} |",
            f"| accepted | {run.get('accepted')} (yield {share}) |",
            f"| rejected by the rule | {run.get('rejected')} |",
            f"| duplicates dropped | {run.get('duplicates')} |",
            f"| tokens | {run.get('prompt_tokens')} prompt + {run.get('completion_tokens')} completion |",
            f"| cost | {_money(run.get('cost_usd'))} |", "",
        ]
    lines += [
        "## Tokenizers", "",
        "Ids are what `encode(text)` returns (BOS included where the model adds one), as "
        "`asyncgen tokenize` prints them.", "",
        "| name | tokenizer | vocab file from | licence of the vocab |", "|---|---|---|---|",
        *(f"| {spec.name} | {_vocab(spec)} |" for spec in specs), "",
        "## Licence", "",
        "Not set by asyncgen (`license: other` above): the texts were written by the generating model under "
        "its provider's terms, so choose the licence before publishing. The id columns ("
        + ", ".join(f"`{name}_*`" for name in names) + ") are indices into the vocabularies above, under "
        "their licences.", "",
    ]
    return "\n".join(lines)
