"""``asyncgen inspect``: what a dataset holds, its diversity, and what its run cost."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import orjson

from asyncgen.annotations import annotate, task_answers
from asyncgen.commands._shared import add_dataset_flags, load_dataset_and_task
from asyncgen.errors import InputFileError, UsageError
from asyncgen.inspection import inspect_dataset, lengths_and_positions, render
from asyncgen.sink import OtherDatasetsCheckpoint, _read_checkpoint  # the checkpoint format has one reader


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
                        help="also draw histograms of token lengths and differing positions per tokenizer "
                        "(needs matplotlib: pip install 'asyncgen[plot]')")
    parser.add_argument("--no-tokens", action="store_true", help="skip the per-tokenizer figures (no tokenizing)")
    parser.set_defaults(handler=run)


def checkpoint_candidates(dataset: Path) -> list[Path]:
    stem = dataset.stem if dataset.suffix == ".jsonl" else dataset.name
    return [dataset.with_name(stem + ".checkpoint.json"), dataset.with_name(dataset.name + ".checkpoint.json"),
            dataset.with_name("checkpoint.json"), Path("checkpoint.json")]


def find_run_state(dataset: Path, given: str | None) -> tuple[str | None, dict | None]:
    """(checkpoint path, its run_state) of the run that wrote ``dataset``, or (None, None)."""
    sink = dataset.resolve()
    if given is not None:
        stored, why = _read_checkpoint(Path(given).resolve(), sink)
        if stored is None:
            raise InputFileError(f"--checkpoint {given}: {why}")
        return given, stored.run_state
    for candidate in dict.fromkeys(checkpoint_candidates(dataset)):
        try:
            stored, _ = _read_checkpoint(candidate.resolve(), sink)
        except OtherDatasetsCheckpoint:
            continue
        if stored is not None:
            return str(candidate), stored.run_state
    return None, None


def run(args: argparse.Namespace) -> int:
    plt = _pyplot() if args.plot else None
    report, annotations = build_report(args)
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(report_text(report))
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
        lines = annotate(dataset.scenarios, tokenizers, task_answers(task, tokenizers))
        annotations = [orjson.loads(line) for line in lines]
    checkpoint, run_state = find_run_state(Path(args.dataset), args.checkpoint)
    report = inspect_dataset(dataset.scenarios, annotations, run_state)
    report["dataset"] = {"path": args.dataset, "task": dataset.task_name, "checkpoint": checkpoint,
                         "torn_bytes": dataset.torn_bytes}
    report["scores"] = _score_figures(args.dataset, task.task_name, dataset.scenarios)
    return report, annotations


def report_text(report: dict) -> str:
    """The report as ``inspect`` prints it."""
    from asyncgen.score_table import render_figures

    where = report["dataset"]
    lines = [render(report, path=where["path"], task=where["task"], checkpoint=where["checkpoint"])]
    for model, figures in report["scores"].items():
        lines.append("\n".join(render_figures(model, figures)))
    return "\n".join(lines)


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


def _plot(plt, values: dict, path: str) -> None:
    figure, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    for row, form in enumerate(("single_token", "multi_token")):
        for column, (what, index) in enumerate((("length in ids", 0), ("differing position", 1))):
            ax = axes[row][column]
            for name, forms in values.items():
                data = forms[form][index]
                if data:
                    bins = range(min(data), max(data) + 2)
                    ax.hist(data, bins=bins, alpha=0.5, label=name, align="left")
            ax.set_title(f"{form.replace('_', '-')} form: {what}")
            ax.set_xlabel(f"{what} (BOS included)")
            ax.set_ylabel("scenarios")
            ax.legend()
    try:
        figure.savefig(path, dpi=100)
    except OSError as exc:
        raise UsageError(f"--plot {path}: cannot write it ({exc.strerror})") from exc
    finally:
        plt.close(figure)
