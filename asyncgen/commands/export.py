"""``asyncgen export``: a dataset with its token annotations, in the layout a research tool loads."""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import orjson

from asyncgen.annotations import dataset_annotations, task_answers
from asyncgen.commands._shared import add_dataset_flags, load_dataset_and_task
from asyncgen.dataset_check import failing_pairs, refuse_failing
from asyncgen.errors import UsageError
from asyncgen.export_files import (
    MARKER, export_lock, marker_bytes, recover_leftovers, refuse_unless_replaceable, replace_file, replace_folder,
)
from asyncgen.exports import (
    EAP_COLUMNS, FORMATS, _require, eap_rows, input_ids, rows, write_csv, write_hf, write_jsonl, write_parquet,
)
from asyncgen.splitting import DEFAULT_GROUP_BY, GROUP_BY, OFF_BY_WARNING, Split, groups_of, split_groups

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
        "(columns in docs/annotations.md). --format eap writes one EAP-IG CSV per tokenizer (clean, corrupted, "
        "correct_idx, incorrect_idx). Parquet needs pyarrow, hf needs datasets: pip install 'asyncgen[export]'.",
    )
    add_dataset_flags(parser)
    parser.add_argument("--format", required=True, choices=FORMATS, help="jsonl, csv, parquet, hf (a datasets "
                        "folder for load_from_disk) or eap (a folder of TOKENIZER.csv)")
    parser.add_argument("--split", type=_share, default=None, metavar="SHARE",
                        help="add a train/test split with this share in train, e.g. 0.8 (a split column; hf: splits; "
                        "eap: TOKENIZER.train.csv and TOKENIZER.test.csv)")
    parser.add_argument("--group-by", choices=GROUP_BY, default=None,
                        help="what --split keeps on one side: frame (the prompt with its differing word masked, "
                        "as inspect counts frames), word (the differing word pair), frame+word (both: on a "
                        "generated dataset they chain into one group of about 90%%, so the share is not met), "
                        f"or none (split by scenario); default: {DEFAULT_GROUP_BY}. The achieved share is printed")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split's shuffle (default: 0)")
    parser.add_argument("--ids", action="store_true",
                        help="add per tokenizer T the full input ids of the four texts, T_single_token_clean_ids "
                        "... T_multi_token_corrupt_ids, BOS included as `asyncgen tokenize` prints them (lists; "
                        "csv: a JSON array in the cell)")
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
    parser.add_argument("--skip-invalid", action="store_true",
                        help="leave out the scenarios whose pair fails validation (texts off the task's templates, "
                        "or not a minimal pair under an exported tokenizer) and say how many; without it such a "
                        "dataset is refused, naming the first (`asyncgen validate` lists them all)")
    parser.set_defaults(handler=run)


def default_out(dataset: Path, fmt: str) -> Path:
    stem = dataset.stem if dataset.suffix == ".jsonl" else dataset.name
    return dataset.with_name(stem + DEFAULT_SUFFIX[fmt])


def run(args: argparse.Namespace) -> int:
    print(export_dataset(args, shutil.get_terminal_size().columns - 1).message, file=sys.stderr)
    return 0


@dataclass(frozen=True)
class Exported:
    """What an export wrote: ``rows`` scenarios to ``paths``; ``message`` says so in one line (a second
    gives the split achieved)."""

    rows: int
    paths: list[str]
    message: str


def export_dataset(args: argparse.Namespace, width: int | None = None) -> Exported:
    """The export ``args`` asks for (``export``'s flags; the Python API's ``asyncgen.export`` too);
    the message's lines fit ``width`` columns where they can (None: the split said on one line)."""
    if args.group_by is not None and args.split is None:
        raise UsageError(f"--group-by {args.group_by} says how --split keeps groups together: give --split SHARE too")
    if args.ids and args.format == "eap":
        raise UsageError("--ids adds columns, and --format eap writes EAP-IG's four columns only: "
                         "choose --format jsonl, csv, parquet or hf for the ids")
    if args.only_flipping and not args.scores:
        raise UsageError("--only-flipping keeps the scenarios that flip under the --scores models: name at least one")
    if args.format == "parquet":
        _require("pyarrow.parquet", "parquet")
    elif args.format == "hf":
        _require("datasets", "hf")
    out = Path(args.out) if args.out else default_out(Path(args.dataset), args.format)
    if out.resolve() == Path(args.dataset).resolve():
        raise UsageError(f"--out {out} is the dataset itself; choose another path")
    with export_lock(out):
        return _export(args, out, width)


def _export(args: argparse.Namespace, out: Path, width: int | None) -> Exported:
    folder = args.format in FOLDER_FORMATS
    recover_leftovers(out)
    refuse_unless_replaceable(out, folder, args.overwrite)
    from asyncgen.score_table import columns, flips_in

    dataset, task, tokenizers = load_dataset_and_task(args)
    scored = _scores(args, dataset, task)
    scenarios = dataset.scenarios
    every = [orjson.loads(line) for line in
             dataset_annotations(args.dataset, scenarios, tokenizers, task_answers(task, tokenizers))]
    failing = failing_pairs(task, scenarios, every)
    if not args.skip_invalid:
        refuse_failing(args.dataset, failing, len(scenarios), "--skip-invalid")
    skipped = {index for index, _ in failing}
    kept = [i for i in range(len(scenarios)) if i not in skipped and (
        not args.only_flipping or all(flips_in(records.get(i), args.only_flipping) for records in scored.values()))]
    if not kept:
        raise UsageError(f"--only-flipping {args.only_flipping}: no scenario flips under "
                         f"{', '.join(args.scores)}; nothing to write" if args.only_flipping else
                         f"{args.dataset}: every one of its {len(scenarios)} scenarios fails validation; nothing "
                         f"to write: see `python -m asyncgen validate {args.dataset}`")
    chosen = [scenarios[i] for i in kept]
    group_by = args.group_by or DEFAULT_GROUP_BY
    split = split_groups(groups_of(chosen, group_by), args.split, args.seed) if args.split is not None else None
    splits = split.sides if split else None
    annotations = [every[i] for i in kept]
    for number, note in zip(kept, annotations):
        note["scenario_id"] = number  # the dataset's id, not the position among those kept
    table = rows(chosen, annotations, task.task_name, (task.answers.safe, task.answers.harmful), splits,
                 input_ids(chosen, tokenizers) if args.ids else None)
    for row in table:
        for model, records in scored.items():
            row.update(columns(model, records.get(row["scenario_id"]), task.answers.safe, task.answers.harmful))
    try:
        if folder:
            card = _card(args, task, table, split, group_by) if args.format == "hf" else None
            names: list[str] = []

            def write_folder(path: Path) -> None:
                names.extend(_write_folder(args.format, table, path, [t.name for t in tokenizers], card))
                (path / MARKER).write_bytes(marker_bytes(Path(args.dataset), args.format, names, len(table)))

            replace_folder(out, write_folder)
            written = [str(out / name) for name in names] if args.format == "eap" else [str(out)]
        else:
            replace_file(out, lambda path: WRITERS[args.format](table, path))
            written = [str(out)]
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write it ({exc.strerror or exc}); choose another --out") from exc
    left_out = (["those that flip under every --scores model"] if args.only_flipping else []) + (
        [f"{len(failing)} failing validation left out, the first: scenario {failing[0][0]}"] if failing else [])
    counts = f"{len(table)} scenarios" + (f" (of {len(scenarios)}: {'; '.join(left_out)})" if left_out else "") + (
        f" ({sum(s == 'train' for s in splits)} train, {sum(s == 'test' for s in splits)} test)" if splits else "")
    message = f"wrote {counts} to {', '.join(written)}"
    if split is not None:
        message += "\n" + split.summary(group_by, width)
        _warn_if_off(split, group_by, width)
    return Exported(len(table), written, message)


def _warn_if_off(split: Split, group_by: str, width: int | None) -> None:
    """Say so when the groups kept the achieved share far from the asked one: one line, or with a
    ``width``, a short first line (after the log's time, level and name) and the rest wrapped at it."""
    import logging
    import textwrap

    if split.off_by <= OFF_BY_WARNING:
        return
    finer = [name for name in GROUP_BY if name not in (group_by, "frame+word")]
    head = f"--split {split.asked:g} cannot be met:"
    why = (f"its largest group by {group_by} holds {split.largest} of {len(split.sides)} scenarios; "
           f"--group-by {', '.join(finer[:-1])} or {finer[-1]} splits finer")
    text = (f"{head} {why}" if width is None else
            "\n".join([head, *textwrap.wrap(why, width, initial_indent="  ", subsequent_indent="  ",
                                             break_on_hyphens=False)]))
    logging.getLogger("asyncgen.export").warning("%s", text)


def _card(args: argparse.Namespace, task, table: list[dict], split: Split | None, group_by: str) -> str:
    """The hf export's README.md: counts, task, tokenizers and their vocab licences, the run's figures."""
    from asyncgen.commands.inspect_dataset import find_checkpoint
    from asyncgen.dataset_card import card_text
    from asyncgen.inspection import run_figures
    from asyncgen.tokenizers import resolve_specs

    dataset = Path(args.dataset)
    try:
        _, stored = find_checkpoint(dataset, None)
        run_state = stored.run_state if stored is not None else None
    except UsageError:
        run_state = None
    counts: dict[str, int] = {}
    for row in table:
        counts[row.get("split", "train")] = counts.get(row.get("split", "train"), 0) + 1
    how = None
    if split is not None:
        how = (f"Split with `asyncgen export --split {args.split:g} --group-by {group_by} --seed {args.seed}`: "
               + ("scenarios at random" if group_by == "none" else
                  f"scenarios that share a {group_by} are all on one side")
               + f" ({split.summary(group_by).removeprefix('split: ')}).")
    specs = resolve_specs(task.tokenizers, args.tokenizer)
    return card_text(dataset_name=dataset.stem if dataset.suffix == ".jsonl" else dataset.name, counts=counts,
                     task=task, specs=specs, run=run_figures(run_state) if run_state is not None else None,
                     split=how, with_ids=args.ids, scored_by=list(dict.fromkeys(args.scores)))


WRITERS = {"jsonl": write_jsonl, "csv": write_csv, "parquet": write_parquet}
FOLDER_FORMATS = ("hf", "eap")


def _write_folder(fmt: str, table: list[dict], folder: Path, tokenizer_names: list[str],
                  card: str | None = None) -> list[str]:
    """Write a folder export's files into ``folder``; their names, relative to it."""
    if fmt == "hf":
        write_hf(table, folder, card)
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

