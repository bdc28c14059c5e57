"""Export rows: one per scenario, texts of both forms with per-tokenizer positions and answer ids.

``rows`` is a pure function of the scenarios, their annotations and the task's answers; the
writers put the rows into a format: JSONL and CSV with the standard library, Parquet with pyarrow,
a Hugging Face dataset with ``datasets`` (both optional: ``pip install 'asyncgen[export]'``), and
EAP-IG's CSV (``clean``, ``corrupted``, ``correct_idx``, ``incorrect_idx``), one per tokenizer.
The columns are documented in docs/annotations.md ("Columns").
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Sequence

import orjson

from asyncgen.config import FORMS
from asyncgen.errors import UsageError
from asyncgen.scenario import Scenario

FORMATS = ("jsonl", "csv", "parquet", "hf", "eap")
EAP_COLUMNS = ("clean", "corrupted", "correct_idx", "incorrect_idx")


def split_of(count: int, train_share: float, seed: int) -> list[str]:
    """``train`` or ``test`` per scenario id: a seeded shuffle, the first ``round(share x count)`` train.
    A share that leaves either split empty is refused: an empty split is no split."""
    train_count = round(train_share * count)
    if not 0 < train_count < count:
        fits = (f"with {count} scenarios a share from {1 / count:.3g} to {(count - 1) / count:.3g} does"
                if count > 1 else "a split needs at least 2 scenarios")
        raise UsageError(f"--split {train_share:g} puts {train_count} of {count} scenarios in train and "
                         f"{count - train_count} in test; each split needs one at least: {fits}")
    order = list(range(count))
    random.Random(seed).shuffle(order)
    train = set(order[:train_count])
    return ["train" if i in train else "test" for i in range(count)]


def rows(scenarios: Sequence[Scenario], annotations: Sequence[dict], task_name: str, answers: tuple[str, str],
         splits: Sequence[str] | None = None) -> list[dict]:
    """One flat row per scenario (columns in docs/annotations.md). ``answers`` is (safe, harmful)."""
    safe, harmful = answers
    out = []
    for number, (scenario, note) in enumerate(zip(scenarios, annotations)):
        row: dict = {
            "scenario_id": note["scenario_id"],
            "task": task_name,
            "single_token_clean": scenario.single_token_prompt,
            "single_token_corrupt": scenario.single_token_counterfactual,
            "multi_token_clean": scenario.multi_token_prompt,
            "multi_token_corrupt": scenario.multi_token_counterfactual,
            "answer_clean": safe,
            "answer_corrupt": harmful,
        }
        for name, forms in note["tokenizers"].items():
            row[f"{name}_bos"] = forms["single_token"]["bos"]
            for form in FORMS:
                facts = forms[form]
                ids = facts["ids"] or [None, None]
                row[f"{name}_{form}_length"] = facts["length"]
                row[f"{name}_{form}_position"] = facts["position"]
                row[f"{name}_{form}_clean_id"] = ids[0]
                row[f"{name}_{form}_corrupt_id"] = ids[1]
            single = forms["single_token"]
            for suffix, key in (("", "answer_ids"), ("_merged", "answer_ids_merged")):
                chosen = single[key] or {}
                row[f"{name}_answer_clean_id{suffix}"] = chosen.get(safe)
                row[f"{name}_answer_corrupt_id{suffix}"] = chosen.get(harmful)
        if splits is not None:
            row["split"] = splits[number]
        out.append(row)
    return out


def eap_rows(table: Sequence[dict], tokenizer: str) -> list[dict]:
    """EAP-IG's columns for one tokenizer: the single-token texts and the answers' ``answer_ids``
    (the token after the prompt's ids, which end in the trailing-space token), without the
    scenarios whose answers have no single id under it."""
    out = []
    for row in table:
        correct, incorrect = row[f"{tokenizer}_answer_clean_id"], row[f"{tokenizer}_answer_corrupt_id"]
        if correct is None or incorrect is None:
            continue
        out.append({"clean": row["single_token_clean"], "corrupted": row["single_token_corrupt"],
                    "correct_idx": correct, "incorrect_idx": incorrect})
    return out


# --- writers (I/O) ----------------------------------------------------------------------------


def write_jsonl(table: Sequence[dict], path: Path) -> None:
    with open(path, "wb") as handle:
        for row in table:
            handle.write(orjson.dumps(row) + b"\n")


def write_csv(table: Sequence[dict], path: Path, columns: Sequence[str] | None = None) -> None:
    columns = list(columns or (table[0] if table else []))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(table)


def write_parquet(table: Sequence[dict], path: Path) -> None:
    pa, pq = _require("pyarrow", "parquet"), _require("pyarrow.parquet", "parquet")
    pq.write_table(pa.Table.from_pylist(list(table)), path)


def write_hf(table: Sequence[dict], path: Path) -> None:
    """A ``datasets.DatasetDict`` saved to ``path``: split ``train`` (and ``test`` with --split)."""
    datasets = _require("datasets", "hf")
    datasets.disable_progress_bars()
    by_split: dict[str, list[dict]] = {}
    for row in table:
        by_split.setdefault(row.get("split", "train"), []).append(row)
    datasets.DatasetDict({name: datasets.Dataset.from_list(part) for name, part in by_split.items()}).save_to_disk(str(path))


def _require(module: str, fmt: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise UsageError(f"--format {fmt} needs {package}: pip install 'asyncgen[export]'") from None
