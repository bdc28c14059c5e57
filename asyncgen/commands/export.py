"""``asyncgen export``: a dataset with its token annotations, in the layout a research tool loads."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import orjson

from asyncgen.annotations import annotate, task_answers
from asyncgen.commands._shared import add_dataset_flags, load_dataset_and_task
from asyncgen.errors import UsageError
from asyncgen.exports import (
    EAP_COLUMNS, FORMATS, _require, eap_rows, rows, split_of, write_csv, write_hf, write_jsonl, write_parquet,
)

DEFAULT_SUFFIX = {"jsonl": ".export.jsonl", "csv": ".csv", "parquet": ".parquet", "hf": ".hf", "eap": ".eap"}


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected the train share, a number between 0 and 1, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected the train share, a number strictly between 0 and 1, got {text}")
    return value


def register(subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "export",
        parents=[common],
        description="One row per scenario: the clean and corrupt texts of both forms, the answers, and per tokenizer "
        "the length, the differing position and ids of both forms, and the answers' ids under both readings "
        "(columns in the README). --format eap writes one EAP-IG CSV per tokenizer (clean, corrupted, "
        "correct_idx, incorrect_idx). Parquet needs pyarrow, hf needs datasets: pip install 'asyncgen[export]'.",
    )
    add_dataset_flags(parser)
    parser.add_argument("--format", required=True, choices=FORMATS, help="jsonl, csv, parquet, hf (a datasets "
                        "folder for load_from_disk) or eap (a folder of TOKENIZER.csv)")
    parser.add_argument("--split", type=_share, default=None, metavar="SHARE",
                        help="add a train/test split with this share in train, e.g. 0.8 (a split column; hf: splits; "
                        "eap: TOKENIZER.train.csv and TOKENIZER.test.csv)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split's shuffle (default: 0)")
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="file or folder to write (default: beside the dataset: DATASET.export.jsonl, DATASET.csv, "
                        "DATASET.parquet, DATASET.hf/ or DATASET.eap/)")
    parser.set_defaults(handler=run)


def default_out(dataset: Path, fmt: str) -> Path:
    stem = dataset.stem if dataset.suffix == ".jsonl" else dataset.name
    return dataset.with_name(stem + DEFAULT_SUFFIX[fmt])


def run(args: argparse.Namespace) -> int:
    if args.format == "parquet":
        _require("pyarrow.parquet", "parquet")
    elif args.format == "hf":
        _require("datasets", "hf")
    out = Path(args.out) if args.out else default_out(Path(args.dataset), args.format)
    if out.resolve() == Path(args.dataset).resolve():
        raise UsageError(f"--out {out} is the dataset itself; choose another path")
    dataset, task, tokenizers = load_dataset_and_task(args)
    answers = task_answers(task, tokenizers)
    annotations = [orjson.loads(line) for line in annotate(dataset.scenarios, tokenizers, answers)]
    splits = split_of(len(dataset.scenarios), args.split, args.seed) if args.split is not None else None
    table = rows(dataset.scenarios, annotations, task.task_name, (task.answers.safe, task.answers.harmful), splits)
    try:
        if args.format in ("hf", "eap"):
            out.mkdir(parents=True, exist_ok=True)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
        written = _write(args.format, table, out, [t.name for t in tokenizers])
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write it ({exc.strerror or exc}); choose another --out") from exc
    counts = f"{len(table)} scenarios" + (
        f" ({sum(s == 'train' for s in splits)} train, {sum(s == 'test' for s in splits)} test)" if splits else "")
    print(f"wrote {counts} to {', '.join(written)}", file=sys.stderr)
    return 0


def _write(fmt: str, table: list[dict], out: Path, tokenizer_names: list[str]) -> list[str]:
    if fmt in ("jsonl", "csv", "parquet"):
        # A whole file or none: written beside, then renamed over --out.
        partial = out.with_name(out.name + ".partial")
        try:
            {"jsonl": write_jsonl, "csv": write_csv, "parquet": write_parquet}[fmt](table, partial)
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)
    elif fmt == "hf":
        write_hf(table, out)
    else:
        written = []
        for name in tokenizer_names:
            parts = {"": table} if "split" not in table[0] else {
                f".{s}": [row for row in table if row["split"] == s] for s in ("train", "test")}
            for suffix, part in parts.items():
                path = out / f"{name}{suffix}.csv"
                write_csv(eap_rows(part, name), path, EAP_COLUMNS)
                written.append(str(path))
        return written
    return [str(out)]
