"""``asyncgen export``: a dataset with its token annotations, in the layout a research tool loads."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from asyncgen.annotations import annotate, task_answers
from asyncgen.commands._shared import add_dataset_flags, load_dataset_and_task
from asyncgen.errors import UsageError
from asyncgen.export_files import (
    MARKER, marker_bytes, recover_leftovers, refuse_unless_replaceable, replace_file, replace_folder,
)
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
                        "DATASET.parquet, DATASET.hf/ or DATASET.eap/); replaces only an earlier export, whole")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out even if it is not an export asyncgen wrote")
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
    folder = args.format in FOLDER_FORMATS
    recover_leftovers(out)
    refuse_unless_replaceable(out, folder, args.overwrite)
    dataset, task, tokenizers = load_dataset_and_task(args)
    splits = split_of(len(dataset.scenarios), args.split, args.seed) if args.split is not None else None
    answers = task_answers(task, tokenizers)
    annotations = [orjson.loads(line) for line in annotate(dataset.scenarios, tokenizers, answers)]
    table = rows(dataset.scenarios, annotations, task.task_name, (task.answers.safe, task.answers.harmful), splits)
    try:
        if folder:
            names: list[str] = []

            def write_folder(path: Path) -> None:
                names.extend(_write_folder(args.format, table, path, [t.name for t in tokenizers]))
                (path / MARKER).write_bytes(marker_bytes(Path(args.dataset), args.format, names, len(table)))

            replace_folder(out, write_folder)
            written = [str(out / name) for name in names] if args.format == "eap" else [str(out)]
        else:
            replace_file(out, lambda path: WRITERS[args.format](table, path))
            written = [str(out)]
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write it ({exc.strerror or exc}); choose another --out") from exc
    counts = f"{len(table)} scenarios" + (
        f" ({sum(s == 'train' for s in splits)} train, {sum(s == 'test' for s in splits)} test)" if splits else "")
    print(f"wrote {counts} to {', '.join(written)}", file=sys.stderr)
    return 0


WRITERS = {"jsonl": write_jsonl, "csv": write_csv, "parquet": write_parquet}
FOLDER_FORMATS = ("hf", "eap")


def _write_folder(fmt: str, table: list[dict], folder: Path, tokenizer_names: list[str]) -> list[str]:
    """Write a folder export's files into ``folder``; their names, relative to it."""
    if fmt == "hf":
        write_hf(table, folder)
        return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
    names = []
    parts = {"": table} if "split" not in table[0] else {
        f".{s}": [row for row in table if row["split"] == s] for s in ("train", "test")}
    for name in tokenizer_names:
        for suffix, part in parts.items():
            write_csv(eap_rows(part, name), folder / f"{name}{suffix}.csv", EAP_COLUMNS)
            names.append(f"{name}{suffix}.csv")
    return names
