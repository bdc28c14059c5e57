"""Export rows: one per scenario, texts of both forms with per-tokenizer positions and answer ids.

``rows`` is a pure function of the scenarios, their annotations and the task's answers; the
writers put the rows into a format: JSONL and CSV with the standard library, Parquet with pyarrow,
a Hugging Face dataset with ``datasets`` (both optional: ``pip install 'asyncgen[export]'``), and
EAP-IG's CSV (``clean``, ``corrupted``, ``correct_idx``, ``incorrect_idx``), one per tokenizer.
The columns are documented in docs/annotations.md ("Columns"); ``--ids`` and the dataset card in
docs/research.md.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import orjson

from asyncgen.config import FORMS
from asyncgen.errors import UsageError
from asyncgen.scenario import Scenario
from asyncgen.tokenizers import Tokenizer

FORMATS = ("jsonl", "csv", "parquet", "hf", "eap")
EAP_COLUMNS = ("clean", "corrupted", "correct_idx", "incorrect_idx")


IDS_TEXTS = (("single_token_clean", "single_token_prompt"), ("single_token_corrupt", "single_token_counterfactual"),
             ("multi_token_clean", "multi_token_prompt"), ("multi_token_corrupt", "multi_token_counterfactual"))
IDS_CHUNK = 1024  # scenarios encoded per encode_batch call


def input_ids(scenarios: Sequence[Scenario], tokenizers: Sequence[Tokenizer]) -> list[dict[str, list[int]]]:
    """Per scenario, ``T_<text>_ids``: the full ids of each of its four texts under each tokenizer,
    as ``encode`` returns them (and ``asyncgen tokenize`` prints them: BOS included)."""
    out: list[dict[str, list[int]]] = [{} for _ in scenarios]
    for start in range(0, len(scenarios), IDS_CHUNK):
        chunk = scenarios[start : start + IDS_CHUNK]
        texts = [getattr(scenario, field) for scenario in chunk for _, field in IDS_TEXTS]
        for tokenizer in tokenizers:
            encoded = tokenizer.encode_batch(texts)
            for n in range(len(chunk)):
                columns = out[start + n]
                for k, (column, _) in enumerate(IDS_TEXTS):
                    columns[f"{tokenizer.name}_{column}_ids"] = encoded[n * len(IDS_TEXTS) + k]
    return out


def rows(scenarios: Sequence[Scenario], annotations: Sequence[dict], task_name: str, answers: tuple[str, str],
         splits: Sequence[str] | None = None, full_ids: Sequence[dict] | None = None) -> list[dict]:
    """One flat row per scenario (columns in docs/annotations.md). ``answers`` is (safe, harmful);
    ``full_ids`` (from ``input_ids``) adds the full ids of the four texts per tokenizer."""
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
        if full_ids is not None:
            row.update(full_ids[number])
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
    """A header and one line per row; a list (the ``--ids`` columns) is one cell holding its JSON
    array, e.g. ``[128000,9906,1917]`` (``json.loads`` reads it back)."""
    columns = list(columns or (table[0] if table else []))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in table:
            writer.writerow({key: orjson.dumps(value).decode() if isinstance(value, list) else value
                             for key, value in row.items()})


def write_parquet(table: Sequence[dict], path: Path) -> None:
    pa, pq = _require("pyarrow", "parquet"), _require("pyarrow.parquet", "parquet")
    pq.write_table(pa.Table.from_pylist(list(table)), path)


def write_hf(table: Sequence[dict], path: Path, card: str | None = None) -> None:
    """A ``datasets.DatasetDict`` saved to ``path``: split ``train`` (and ``test`` with --split);
    ``card`` (``asyncgen.dataset_card``) as its ``README.md``."""
    datasets = _require("datasets", "hf")
    datasets.disable_progress_bars()
    by_split: dict[str, list[dict]] = {}
    for row in table:
        by_split.setdefault(row.get("split", "train"), []).append(row)
    datasets.DatasetDict({name: datasets.Dataset.from_list(part) for name, part in by_split.items()}).save_to_disk(str(path))
    if card is not None:
        (path / "README.md").write_text(card, encoding="utf-8")


def _require(module: str, fmt: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise UsageError(f"--format {fmt} needs {package}: pip install 'asyncgen[export]'") from None
