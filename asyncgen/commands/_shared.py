"""Flags and set-up that several commands share."""

from __future__ import annotations

import argparse
import logging

from asyncgen.commands.argtypes import non_negative_int
from asyncgen.config import Task
from asyncgen.errors import InputFileError
from asyncgen.prompting import AVOID_CHARS, AVOID_POOL
from asyncgen.scenario import Dataset, read_dataset
from asyncgen.tokenizers import Tokenizer
from asyncgen.validate import load_task_and_tokenizers

log = logging.getLogger("asyncgen")


def add_avoid_chars_flag(parser: argparse.ArgumentParser) -> None:
    """--avoid-chars, for every command that builds generation requests (run, batch create/topup/run)."""
    parser.add_argument(
        "--avoid-chars", type=non_negative_int, default=AVOID_CHARS,
        help=f"characters of already-accepted prompts each request names as 'do not repeat', drawn at random "
        f"from the latest {AVOID_POOL} (default: {AVOID_CHARS}, about {AVOID_CHARS // 4} prompt tokens per request; "
        "more asks the model to steer clear of more of the dataset, at that many more input tokens per "
        "request, paid for and counted against TPM; 0 names none)",
    )


def add_tokenizer_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tokenizer",
        action="append",
        default=[],
        metavar="NAME[=SPEC]",
        help="NAME selects a tokenizer (repeatable; default: qwen2, llama3, solar and any the task adds); "
        "NAME=SPEC adds or replaces one, SPEC being builtin, hub:ORG/ID or a local tokenizer directory/tokenizer.json",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="where built tokenizers (and hub downloads) are cached "
        "(default: $ASYNCGEN_CACHE_DIR or the user cache directory)",
    )


def add_task_flags(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    parser.add_argument(
        "--task",
        default=None if required else "refusal",
        required=required,
        help="a task name (tasks/NAME.yaml in --config-dir), or the path of a task YAML: a value with a '/' "
        "or ending in .yaml/.yml is a path, relative to the working directory"
        + ("" if required else " (default: refusal)"),
    )
    parser.add_argument(
        "--config-dir",
        default=None,
        help="folder holding tasks/*.yaml and prices.yaml (default: the configs shipped with asyncgen)",
    )


def add_dataset_flags(parser: argparse.ArgumentParser) -> None:
    """DATASET.jsonl and how to read it: its task (default: the one it names) and tokenizers."""
    parser.add_argument("dataset", metavar="DATASET.jsonl", help="a dataset written by asyncgen run")
    parser.add_argument("--task", default=None,
                        help="task name or YAML path whose answers to use (default: the task named in the dataset)")
    parser.add_argument("--config-dir", default=None,
                        help="folder with tasks/*.yaml (default: the configs shipped with asyncgen)")
    add_tokenizer_flags(parser)


def load_dataset_and_task(args: argparse.Namespace) -> tuple[Dataset, Task, list[Tokenizer]]:
    """The dataset ``args.dataset`` (torn tail left out), its task and the tokenizers; one-line
    errors (exit 2) for a missing, malformed or empty dataset."""
    dataset = read_dataset(args.dataset)
    if not dataset.scenarios:
        held = f" ({dataset.torn_bytes} bytes, not four whole lines of a scenario)" if dataset.torn_bytes else ""
        raise InputFileError(f"{args.dataset}: no scenarios in it{held}; generate some with `python -m asyncgen run`")
    task, _specs, tokenizers = load_task_and_tokenizers(args.task or dataset.task_name, args.config_dir,
                                                        args.tokenizer, args.cache_dir)
    if dataset.torn_bytes:
        log.warning("%s: left out an incomplete last scenario (%d bytes): a run that crashed or is still "
                    "writing leaves one; resuming the run cuts it", args.dataset, dataset.torn_bytes)
    return dataset, task, tokenizers
