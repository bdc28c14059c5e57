"""The set-up every ``batch`` subcommand starts from: --dir (made if the command may, held by its
one writer: ``manifest.writer``), its manifest (a directory whose manifest is lost is refused:
``batch rebuild`` makes it again), the task, tokenizers and price (``Setup``), and what the
dataset holds already."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import orjson

from asyncgen.batch.manifest import Entry, Manifest, check_setup, leftovers, writer
from asyncgen.errors import UsageError
from asyncgen.prices import batch_cost_usd, cost_usd, load_price_table, price_for
from asyncgen.prompting import AVOID_POOL, avoid_pool
from asyncgen.scenario import LINES_PER_SCENARIO
from asyncgen.sink import fingerprint_of
from asyncgen.tokenizers import resolve_specs
from asyncgen.validate import load_task_and_tokenizers


@dataclass
class Setup:
    directory: Path
    manifest: Manifest | None
    task: object = None
    specs: list | None = None
    tokenizers: list | None = None
    model: str = "gpt-4o"
    price: object = None
    fingerprint: dict | None = None

    def costs(self, input_tokens: float, output_tokens: float) -> tuple[float | None, float | None]:
        return batch_cost_usd(self.price, input_tokens, output_tokens), cost_usd(self.price, input_tokens, output_tokens)

    def usage_cost(self, entries: list[Entry]) -> tuple[float | None, float | None]:
        """(batch-price, real-time) USD of the usage ``entries`` recorded (None: no price)."""
        return self.costs(sum(e.usage.get("input", 0) for e in entries), sum(e.usage.get("output", 0) for e in entries))


def batch_directory(args) -> Path:
    directory = Path(args.dir)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--dir {directory} is a file; give a folder")
    return directory


def refuse_a_lost_dataset(manifest: Manifest, directory: Path) -> None:
    """Refuse to go on when the dataset this directory has written pairs into is not at its
    path: a fresh dataset there would be made from new batches only (the answers counted before
    are not counted again), paid for a second time."""
    if manifest.answered and not Path(manifest.output).exists():
        raise UsageError(f"{manifest.output}: no such dataset, though {directory} has written the pairs of its "
                         "answered requests into it; give its path with --output (it may have moved), or use "
                         "another --dir to start a new dataset")


CREATES_DIRECTORY = ("create", "process", "run", "rebuild")


def one_writer(handler, command: str):
    """``handler`` holding --dir's lock (``manifest.writer``): a second command on it is refused."""
    def locked(args) -> int:
        directory = batch_directory(args)
        if not directory.is_dir():
            if command not in CREATES_DIRECTORY:
                return handler(args)  # nothing there to change: it says so
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UsageError(f"--dir {directory}: cannot create it ({exc.strerror or exc}); choose another --dir") from exc
        with writer(directory, command):
            return handler(args)
    return locked


def load_manifest(directory: Path) -> Manifest | None:
    """The manifest; None for a new directory. A directory whose manifest is gone but whose files are
    there is refused: starting afresh would pay again for what its files hold."""
    manifest = Manifest.load(directory)
    if manifest is None:
        left = leftovers(directory)
        if left:
            raise UsageError(f"--dir {directory} has no manifest.json but holds {left}; `asyncgen batch rebuild "
                             f"--dir {directory}` rebuilds it from them (nothing is sent or overwritten)")
    return manifest


def manifest_or_fail(directory: Path) -> Manifest:
    manifest = load_manifest(directory)
    if manifest is None:
        raise UsageError(f"--dir {directory} holds no batch manifest; start with `asyncgen batch create` or `batch run`")
    return manifest


def load_setup(args, *, load_tokenizers: bool, lost: bool = False) -> Setup:
    """The batch directory, its manifest (None if new, or ``lost``), the task and price; refuses another setup."""
    directory = batch_directory(args)
    manifest = None if lost else load_manifest(directory)
    task_name = args.task or (manifest.task if manifest else "refusal")
    model = args.model or (manifest.model if manifest else "gpt-4o")
    if load_tokenizers:
        task, specs, tokenizers = load_task_and_tokenizers(task_name, args.config_dir, args.tokenizer, args.cache_dir)
    else:
        from asyncgen.config import load_task

        task = load_task(task_name, args.config_dir)
        specs, tokenizers = resolve_specs(task.tokenizers, args.tokenizer), None
    fingerprint = orjson.loads(orjson.dumps(fingerprint_of(task, [str(spec) for spec in specs])))
    if manifest is not None:
        check_setup(manifest, task_name, model, fingerprint, args.force, directory)
    prices, prices_path = load_price_table(args.config_dir, args.prices)
    price = price_for(prices, model)
    if getattr(args, "max_cost", None) is not None and price is None:
        raise UsageError(f"--max-cost: model {model!r} has no price in {prices_path}; add it there or pass --prices")
    return Setup(directory, manifest, task, specs, tokenizers, model, price, fingerprint)


def price_only(args, manifest: Manifest) -> Setup:
    prices, _ = load_price_table(getattr(args, "config_dir", None), getattr(args, "prices", None))
    return Setup(Path(args.dir), manifest, model=manifest.model, price=price_for(prices, manifest.model))


def read_dataset(output: str, task) -> tuple[int, list[str]]:
    """Scenarios in the dataset (whole groups) and the pool of its latest prompts the avoid lists
    are drawn from: the last ``AVOID_POOL`` multi-token texts, as a resumed ``run`` takes them."""
    path = Path(output)
    if not path.is_file():
        return 0, []
    lines = path.read_bytes().splitlines()
    texts = []
    for raw in lines[2::LINES_PER_SCENARIO][-AVOID_POOL:]:
        with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
            texts.append(orjson.loads(raw)["text"])
    return len(lines) // LINES_PER_SCENARIO, avoid_pool(task, texts)
