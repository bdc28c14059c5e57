"""``asyncgen inspect``: what a dataset holds, its diversity, and what its run cost."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import orjson

from asyncgen.annotations import annotate, dataset_annotations, recorded_annotations, task_answers
from asyncgen.commands._shared import add_dataset_flags, load_dataset_and_task
from asyncgen.errors import InputFileError, UsageError
from asyncgen.commands.argtypes import positive_int
from asyncgen.inspection import (
    inspect_dataset, lengths_and_positions, render, render_sample, sample_ids, sample_record,
)
from asyncgen.sink import OtherDatasetsCheckpoint, _Checkpoint, _read_checkpoint  # the checkpoint format has one reader
from asyncgen.terminal import fit_columns, is_terminal, terminal_width


def register(subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "inspect",
        parents=[common],
        description="Summarise DATASET.jsonl: scenarios, duplicates, the distinct words at the differing position "
        "(safe and harmful side) with counts, text lengths, token lengths and differing positions per "
        "tokenizer, the share of prompts that share a sentence frame, and, when the run's checkpoint is "
        "found (DATASET.checkpoint.json or checkpoint.json beside it or here, or --checkpoint), yield, "
        "rejections by reason and cost.",
    )
    add_dataset_flags(parser)
    parser.add_argument("--checkpoint", default=None, metavar="PATH",
                        help="the run's checkpoint (default: looked for beside the dataset and in the current folder)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="also draw histograms of token lengths and differing positions, one row of panels "
                        "per tokenizer (needs matplotlib: pip install 'asyncgen[plot]')")
    parser.add_argument("--sample", type=positive_int, default=None, metavar="N",
                        help="instead of the summary, print N pairs drawn at random, clean above corrupt with the "
                        "differing word marked [[like this]], and per tokenizer the differing position and tokens "
                        "(with --json: as JSON)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the --sample draw (default: 0; the same seed draws the same pairs)")
    parser.add_argument("--no-tokens", action="store_true", help="skip the per-tokenizer figures (no tokenizing)")
    parser.set_defaults(handler=run)


def checkpoint_candidates(dataset: Path) -> list[Path]:
    stem = dataset.stem if dataset.suffix == ".jsonl" else dataset.name
    return [dataset.with_name(stem + ".checkpoint.json"), dataset.with_name(dataset.name + ".checkpoint.json"),
            dataset.with_name("checkpoint.json"), Path("checkpoint.json")]


def find_checkpoint(dataset: Path, given: str | None) -> tuple[str | None, _Checkpoint | None]:
    """(path, contents) of the checkpoint of the runs that wrote ``dataset`` (its run_state and
    history), or (None, None)."""
    sink = dataset.resolve()
    if given is not None:
        stored, why = _read_checkpoint(Path(given).resolve(), sink)
        if stored is None:
            raise InputFileError(f"--checkpoint {given}: {why}")
        return given, stored
    for candidate in dict.fromkeys(checkpoint_candidates(dataset)):
        try:
            stored, _ = _read_checkpoint(candidate.resolve(), sink)
        except OtherDatasetsCheckpoint:
            continue
        if stored is not None:
            return str(candidate), stored
    return None, None


def run(args: argparse.Namespace) -> int:
    if args.seed is not None and args.sample is None:
        raise UsageError("--seed says which pairs --sample draws: give --sample N too")
    if args.sample is not None and args.plot:
        raise UsageError("--sample prints pairs instead of the summary; draw --plot in a run without --sample")
    if args.sample is not None:
        dataset, task, tokenizers = load_dataset_and_task(args)
        return _sample(args, dataset.scenarios, task, tokenizers)
    plt = _pyplot() if args.plot else None
    report, annotations = build_report(args)
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(report_text(report, _width()))
    if plt is not None:
        if annotations is None:
            raise UsageError("--plot draws the token figures: drop --no-tokens")
        _plot(plt, lengths_and_positions(annotations), args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def build_report(args: argparse.Namespace) -> tuple[dict, list[dict] | None]:
    """The report of ``args.dataset`` (``inspect``'s flags; the Python API's ``asyncgen.inspect`` too)
    and the annotations it was made from (None with ``--no-tokens``)."""
    dataset, task, tokenizers = load_dataset_and_task(args)
    annotations = None
    if not args.no_tokens:
        lines = dataset_annotations(args.dataset, dataset.scenarios, tokenizers, task_answers(task, tokenizers))
        annotations = [orjson.loads(line) for line in lines]
    checkpoint, stored = find_checkpoint(Path(args.dataset), args.checkpoint)
    report = inspect_dataset(dataset.scenarios, annotations, stored.run_state if stored is not None else None)
    report["history"] = list(stored.history) if stored is not None else []
    report["dataset"] = {"path": args.dataset, "task": dataset.task_name, "checkpoint": checkpoint,
                         "torn_bytes": dataset.torn_bytes}
    report["scores"] = _score_figures(args.dataset, task.task_name, dataset.scenarios)
    return report, annotations


def _width() -> int:
    """The columns the report and the sample take: the terminal's when stdout is one, else 80."""
    return terminal_width(sys.stdout) if is_terminal(sys.stdout) else 80


def report_text(report: dict, width: int = 80) -> str:
    """The report as ``inspect`` prints it, its fields wrapped to ``width`` columns."""
    from asyncgen.score_table import render_figures

    where = report["dataset"]
    lines = [render(report, path=where["path"], task=where["task"], checkpoint=where["checkpoint"], width=width)]
    for model, figures in report["scores"].items():
        lines.append(fit_columns("\n".join(render_figures(model, figures)), width))
    return "\n".join(lines)


def _sample(args: argparse.Namespace, scenarios, task, tokenizers) -> int:
    """Print ``--sample`` pairs, tokenizing only those (none with --no-tokens)."""
    chosen = sample_ids(len(scenarios), args.sample, args.seed or 0)
    notes: list = [None] * len(chosen)
    if not args.no_tokens:
        answers = task_answers(task, tokenizers)
        recorded = recorded_annotations(args.dataset, len(scenarios), tokenizers, answers)
        lines = ([recorded[i] for i in chosen] if recorded is not None else
                 annotate([scenarios[i] for i in chosen], tokenizers, answers))
        notes = [orjson.loads(line) for line in lines]
    records = [sample_record(i, scenarios[i], note) for i, note in zip(chosen, notes)]
    if args.json:
        sys.stdout.buffer.write(orjson.dumps({"sample": records}, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(render_sample(records, _width()))
    return 0


def _score_figures(dataset: str, task_name: str, scenarios) -> dict:
    """Per scored model (DATASET.scores/*.jsonl of this dataset): flip shares, logit spread, disagreement."""
    from asyncgen.score_table import figures, load_scores, scored_models

    out = {}
    for model, path in scored_models(dataset):
        try:
            records = load_scores(dataset, task_name, scenarios, model)
        except UsageError as exc:  # another dataset's scores beside this one: said, not shown as this one's
            logging.getLogger("asyncgen.inspect").warning("%s: left out: %s", path, exc)
            continue
        out[model] = figures(records, len(scenarios))
    return out


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'asyncgen[plot]'") from None
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


PANELS = (("single_token", "length in ids", 0), ("single_token", "differing position", 1),
          ("multi_token", "length in ids", 0), ("multi_token", "differing position", 1))


def _plot(plt, values: dict, path: str) -> None:
    """Small multiples: a row per tokenizer, a column per figure (the single-token and the multi-token
    form's lengths and differing positions); the x axis shared down each column, so tokenizers
    compare at a glance; each panel titled, its median marked and written."""
    import statistics

    from matplotlib.ticker import MaxNLocator

    names = list(values)
    figure, axes = plt.subplots(len(names), len(PANELS), figsize=(13, 1.2 + 2.1 * len(names)), sharex="col",
                                sharey="col", squeeze=False, constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, name in enumerate(names):
        for column, (form, what, index) in enumerate(PANELS):
            ax = axes[row][column]
            data = values[name][form][index]
            if data:
                ax.hist(data, bins=range(min(data), max(data) + 2), align="left", color=colors[row % len(colors)])
                median = statistics.median(data)
                ax.axvline(median, color="black", linewidth=1, linestyle="--")
                ax.text(0.98, 0.95, f"median {median:g}", transform=ax.transAxes, ha="right", va="top", fontsize=8)
            else:
                ax.text(0.5, 0.5, "no pairs", transform=ax.transAxes, ha="center")
            ax.set_title(f"{name}: {form.replace('_', '-')} {what}", fontsize=9)
            if column == 0:
                ax.set_ylabel("scenarios")
            if row == len(names) - 1:
                ax.set_xlabel(f"{what} (BOS included)")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle("Token lengths and differing positions per tokenizer (ids, BOS included)")
    try:
        figure.savefig(path, dpi=100)
    except OSError as exc:
        raise UsageError(f"--plot {path}: cannot write it ({exc.strerror})") from exc
    finally:
        plt.close(figure)
