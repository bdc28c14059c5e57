"""``asyncgen export``: a dataset with its token annotations, in the layout a research tool loads."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import orjson

from asyncgen.annotations import annotate, task_answers
from asyncgen.commands._shared import add_dataset_flags, load_dataset_and_task
from asyncgen.errors import UsageError
from asyncgen.export_files import (
    MARKER, marker_bytes, one_writer, recover_leftovers, refuse_unless_replaceable, replace_file, replace_folder,
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
    parser.add_argument("--scores", action="append", default=[], metavar="MODEL",
                        help="add MODEL's scores (from `asyncgen score`) as columns score.MODEL.*: answer "
                        "log-probabilities, logit differences, refusal verdicts, flip flags (repeatable)")
    parser.add_argument("--only-flipping", nargs="?", const="both", default=None, choices=("single", "multi", "both"),
                        help="keep only the scenarios that flip under every --scores model, in the single-token "
                        "form, the multi-token form, or both (the default when given bare)")
    parser.set_defaults(handler=run)


def default_out(dataset: Path, fmt: str) -> Path:
    stem = dataset.stem if dataset.suffix == ".jsonl" else dataset.name
    return dataset.with_name(stem + DEFAULT_SUFFIX[fmt])


def run(args: argparse.Namespace) -> int:
    print(export_dataset(args).message, file=sys.stderr)
    return 0


@dataclass(frozen=True)
class Exported:
    """What an export wrote: ``rows`` scenarios to ``paths``; ``message`` says so in one line."""

    rows: int
    paths: list[str]
    message: str


def export_dataset(args: argparse.Namespace) -> Exported:
    """The export ``args`` asks for (``export``'s flags; the Python API's ``asyncgen.export`` too)."""
    if args.only_flipping and not args.scores:
        raise UsageError("--only-flipping keeps the scenarios that flip under the --scores models: name at least one")
    if args.format == "parquet":
        _require("pyarrow.parquet", "parquet")
    elif args.format == "hf":
        _require("datasets", "hf")
    out = Path(args.out) if args.out else default_out(Path(args.dataset), args.format)
    if out.resolve() == Path(args.dataset).resolve():
        raise UsageError(f"--out {out} is the dataset itself; choose another path")
    with one_writer(out):
        return _export(args, out)


def _export(args: argparse.Namespace, out: Path) -> Exported:
    folder = args.format in FOLDER_FORMATS
    recover_leftovers(out)
    refuse_unless_replaceable(out, folder, args.overwrite)
    from asyncgen.score_table import columns, flips_in

    dataset, task, tokenizers = load_dataset_and_task(args)
    scored = _scores(args, dataset, task)
    scenarios = dataset.scenarios
    kept = [i for i in range(len(scenarios)) if all(flips_in(records.get(i), args.only_flipping)
                                                    for records in scored.values())] \
        if args.only_flipping else list(range(len(scenarios)))
    if not kept:
        raise UsageError(f"--only-flipping {args.only_flipping}: no scenario flips under "
                         f"{', '.join(args.scores)}; nothing to write")
    splits = split_of(len(kept), args.split, args.seed) if args.split is not None else None
    answers = task_answers(task, tokenizers)
    annotations = [orjson.loads(line) for line in annotate([scenarios[i] for i in kept], tokenizers, answers)]
    for number, note in zip(kept, annotations):
        note["scenario_id"] = number  # the dataset's id, not the position among those kept
    table = rows([scenarios[i] for i in kept], annotations, task.task_name, (task.answers.safe, task.answers.harmful),
                 splits)
    for row in table:
        for model, records in scored.items():
            row.update(columns(model, records.get(row["scenario_id"]), task.answers.safe, task.answers.harmful))
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
    counts = f"{len(table)} scenarios" + (f" (of {len(scenarios)}: those that flip under every --scores model)"
                                          if args.only_flipping else "") + (
        f" ({sum(s == 'train' for s in splits)} train, {sum(s == 'test' for s in splits)} test)" if splits else "")
    return Exported(len(table), written, f"wrote {counts} to {', '.join(written)}")


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


def _scores(args, dataset, task) -> dict[str, dict[int, dict]]:
    """Each --scores model's records, checked against the dataset; a warning for scenarios it has not scored."""
    import logging

    from asyncgen.score_table import load_scores

    out = {}
    for model in dict.fromkeys(args.scores):
        out[model] = load_scores(args.dataset, task.task_name, dataset.scenarios, model)
        missing = len(dataset.scenarios) - len(out[model])
        if missing:
            logging.getLogger("asyncgen.export").warning(
                "%d of %d scenarios are not scored under %s (their columns are empty%s); "
                "run `asyncgen score` again to finish", missing, len(dataset.scenarios), model,
                ", and --only-flipping leaves them out" if args.only_flipping else "")
    return out

