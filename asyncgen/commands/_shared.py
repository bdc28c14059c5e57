"""Flags and set-up that several commands share."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Iterator

import orjson

from asyncgen.commands.argtypes import non_negative_int
from asyncgen.config import Task, default_config_dir, load_task, resolve_config_dir
from asyncgen.errors import InputFileError, UsageError
from asyncgen.prices import PriceTable, load_prices
from asyncgen.prompting import AVOID_CHARS, AVOID_POOL
from asyncgen.scenario import Dataset, read_dataset
from asyncgen.tokenizers import Tokenizer, TokenizerSpec, load_all, resolve_specs
from asyncgen.validate import check_task

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
        help="task name (a YAML file in <config-dir>/tasks/) or a path to a task YAML"
        + ("" if required else " (default: refusal)"),
    )
    parser.add_argument(
        "--config-dir",
        default=None,
        help="folder holding tasks/*.yaml and prices.yaml (default: the configs shipped with asyncgen)",
    )


def load_task_and_tokenizers(
    task_name: str, config_dir: str | None, tokenizer_flags: list[str], cache_dir: str | None
) -> tuple[Task, list[TokenizerSpec], list[Tokenizer]]:
    """The task, its tokenizer set, the loaded tokenizers; rejects answers that are not one token."""
    task = load_task(task_name, config_dir)
    specs = resolve_specs(task.tokenizers, tokenizer_flags)
    tokenizers = load_all(specs, cache_dir)
    check_task(task, tokenizers)
    return task, specs, tokenizers


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


def load_price_table(config_dir: str | None, prices_flag: str | None) -> tuple[PriceTable, Path]:
    """The price table: --prices, else <config-dir>/prices.yaml, else the shipped one."""
    folder = resolve_config_dir(config_dir)
    path = Path(prices_flag) if prices_flag else (
        folder / "prices.yaml" if (folder / "prices.yaml").is_file() else default_config_dir() / "prices.yaml"
    )
    if prices_flag and not path.is_file():
        raise UsageError(f"--prices {path}: no such file")
    return load_prices(path), path


def read_jsonl(path: str | Path) -> Iterator[tuple[int, object]]:
    """(line number, decoded object) for each non-blank line; a bad line is an InputFileError."""
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read it ({exc.strerror})") from exc
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise InputFileError(f"{path}:{number}: not valid JSON ({exc})") from exc
