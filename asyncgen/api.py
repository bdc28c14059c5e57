"""The Python API: generate, score, inspect, export and load datasets from a script or a notebook.

Each function does what its command does (:func:`generate` and :func:`agenerate`: ``run``;
:func:`generate_batch`: ``batch run``; :func:`score`, :func:`inspect`, :func:`export`), through the
same composition (``asyncgen run`` and :func:`generate` both run asyncgen/generation.py; the others
call their command's own function with the arguments its parser gives), returns a result object
instead of printing one, and raises the project's typed errors (:class:`asyncgen.errors.UsageError`
for input you can fix, :class:`asyncgen.errors.RunError` for a run that failed) instead of
exiting. Nothing here calls ``sys.exit``.

The blocking functions work inside a running event loop too (a Jupyter kernel's): the run goes
to a worker thread with its own loop, and the kernel's interrupt stops it as Ctrl-C does on a
terminal. Those who ``await`` use :func:`agenerate`.

Example::

    import asyncgen

    result = asyncgen.generate("refusal", 100, "refusal.jsonl")   # offline without OPENAI_API_KEY
    df = asyncgen.load("refusal.jsonl", format="pandas")
    asyncgen.export("refusal.jsonl", "csv")
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

from asyncgen.errors import InputFileError, RunError, UsageError
from asyncgen.eventloop import RunControl, run_anywhere, run_event_loop
from asyncgen.generation import GenerateOptions, GenerateResult, generate_async, prepare
from asyncgen.stats import TargetedResult

if TYPE_CHECKING:
    import datasets
    import pandas

log = logging.getLogger("asyncgen.load")

__all__ = ["generate", "agenerate", "generate_batch", "score", "inspect", "load", "export", "GenerateOptions",
           "GenerateResult", "BatchResult", "ScoreResult", "InspectReport", "ExportResult", "RunInterrupted"]


class RunInterrupted(RunError):
    """A run stopped by an interrupt (Ctrl-C, a notebook's interrupt button, ``SIGTERM``, a
    cancelled :func:`agenerate`).

    The dataset is consistent and resumable: call the same function again to go on. A
    ``RunError`` (exit code 130, as the command line's), not a ``KeyboardInterrupt``: the run has
    stopped and closed its files, and an asyncio task may not raise a ``KeyboardInterrupt``.

    Attributes:
        result: What the run did before it stopped (``result.stop_reason == "interrupted"``).
    """

    exit_code = 130

    def __init__(self, result: "GenerateResult | BatchResult | ScoreResult", call: str = "generate") -> None:
        super().__init__(f"{result.output}: stopped (interrupted) at {result.scenarios}/{result.target} scenarios; "
                         f"it is resumable: call {call} again with the same arguments")
        self.result = result


def _options(task: str, n: int, output: str | os.PathLike, options: dict[str, Any], call: str) -> GenerateOptions:
    """The options of a call, through ``asyncgen run``'s own parser (its checks, its defaults)."""
    if "tokenizers" in options:  # the plural reads better in Python; the flag is --tokenizer (repeatable)
        options["tokenizer"] = options.pop("tokenizers")
    if isinstance(options.get("tokenizer"), str):
        options["tokenizer"] = [options["tokenizer"]]
    if "dry_run" in options:
        raise TypeError(f"{call}() has no dry_run: `python -m asyncgen run --dry-run` prints the plan")
    args = _command_args("run", ["run"], {"task": str(task), "num_scenarios": n, "output": os.fspath(output),
                                          **options}, call)
    return GenerateOptions.from_namespace(args)


def _finish(result, call: str = "generate"):
    """``result``, or ``RunInterrupted`` carrying it when the run was interrupted."""
    if result.stop_reason == "interrupted":
        raise RunInterrupted(result, call)
    return result


def _stop_reason(exit_code: int, max_cost: float | None) -> str | None:
    """Why a command stopped short, from its exit code (0 finished, 130 interrupted, 1 otherwise)."""
    if exit_code == 0:
        return None
    return "interrupted" if exit_code == 130 else "max_cost" if max_cost is not None else "failed"


def generate(task: str = "refusal", n: int = 100, output: str | os.PathLike = "dataset.jsonl", *,
             model: str = "gpt-4o", base_url: str | None = None, max_cost: float | None = None,
             seed: int | None = None, concurrency: int = 32, overwrite: bool = False, show: bool = True,
             **options: Any) -> GenerateResult:
    """Generate a dataset of exactly ``n`` validated scenarios into ``output`` (``asyncgen run``).

    Without ``OPENAI_API_KEY`` and ``base_url`` it runs offline against the built-in simulator.
    An existing ``output`` is resumed: the call goes on where the dataset ends and stops at ``n``.
    Works in a plain script and inside a running event loop (Jupyter): there the run goes to a
    worker thread, and the kernel's interrupt stops it gracefully (as the first Ctrl-C on a
    terminal: no new requests, those in flight get ``grace_period`` seconds); a second interrupt
    stops at once. The dataset stays consistent and resumable either way.

    Args:
        task: A task name (a YAML file in ``config_dir/tasks/``) or the path of a task YAML.
        n: The scenarios the dataset must hold.
        output: The dataset file (JSONL); its checkpoint and token annotations go beside it.
        model: The model name sent to the API.
        base_url: An OpenAI-compatible API's base URL (default: ``$OPENAI_BASE_URL``, else the
            OpenAI API if ``OPENAI_API_KEY`` is set, else the offline simulator).
        max_cost: A USD budget for the dataset; no request starts that could cross it.
        seed: The base seed sent with requests (also seeds the offline simulator).
        concurrency: The most requests in flight at once.
        overwrite: Start the dataset over, discarding what ``output`` holds.
        show: Show the live progress display and the closing summary (stderr; a live display in
            a notebook).
        **options: Any other flag of ``asyncgen run``, by its name with underscores
            (``temperature``, ``rpm``, ``tpm``, ``prices``, ``config_dir``, ``tokenizers`` (a list of
            ``NAME[=SPEC]``), ``cache_dir``, ``checkpoint``, ``no_checkpoint``, ``force_resume``,
            ``validator_workers``, ``annotate``, ``grace_period``, ``request_timeout``, ...).

    Returns:
        What the run did: counts, cost and paths. ``result.finished`` is False when it stopped at
        ``max_cost`` (``result.stop_reason == "max_cost"``).

    Raises:
        UsageError: Bad input: an unknown task, a contradicting option, a dataset of another task.
        RunError: The run failed on the way (the API refused, no new scenarios came); the dataset
            keeps what was written and resumes.
        RunInterrupted: The run was interrupted; ``.result`` says how far it got.
    """
    opts = _options(task, n, output, {"model": model, "base_url": base_url, "max_cost": max_cost, "seed": seed,
                                      "concurrency": concurrency, "overwrite": overwrite, **options}, "generate")
    prepared = prepare(opts)
    control = RunControl()
    with _validator_processes_explained():
        return _finish(run_anywhere(lambda: run_event_loop(generate_async(prepared, control, show=show)), control))


async def agenerate(task: str = "refusal", n: int = 100, output: str | os.PathLike = "dataset.jsonl", *,
                    model: str = "gpt-4o", base_url: str | None = None, max_cost: float | None = None,
                    seed: int | None = None, concurrency: int = 32, overwrite: bool = False, show: bool = True,
                    **options: Any) -> GenerateResult:
    """:func:`generate` for those who ``await``: the run goes on the running event loop.

    Same arguments, result and errors as :func:`generate`. It installs no signal handlers (the
    loop's owner keeps its own); cancelling the awaiting task is the interrupt: the first
    cancellation stops the run gracefully and waits for it (a second one stops it at once),
    then :class:`RunInterrupted` is raised. The tokenizers load in a worker thread.
    """
    opts = _options(task, n, output, {"model": model, "base_url": base_url, "max_cost": max_cost, "seed": seed,
                                      "concurrency": concurrency, "overwrite": overwrite, **options}, "agenerate")
    prepared = await asyncio.to_thread(prepare, opts)
    control = RunControl()
    run = asyncio.ensure_future(generate_async(prepared, control, show=show, handle_signals=False))
    while True:
        try:
            with _validator_processes_explained():
                return _finish(await asyncio.shield(run))
        except asyncio.CancelledError:
            if run.done():
                raise
            control.stop()  # the interrupt: the run stops, closes its files and returns
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()


def _refuse_in_a_process_that_imports_main(call: str) -> None:
    """A process of the user's own, started with ``spawn`` or ``forkserver``, imports the script
    that started it again: without the ``__main__`` guard it would run the call again. (asyncgen's
    own validator processes do not import it: see ``validate._SpawnProcessWithoutMain``.)"""
    import multiprocessing.process

    if getattr(multiprocessing.process.current_process(), "_inheriting", False):
        raise RunError(f"{call}() was called while a process that multiprocessing started imported the script "
                       "that started it; call asyncgen under `if __name__ == \"__main__\":` in that script")


@contextlib.contextmanager
def _validator_processes_explained():
    """A validator pool that broke (its processes died: killed, out of memory) as one line that
    says what to do."""
    from concurrent.futures.process import BrokenProcessPool

    try:
        yield
    except BrokenProcessPool as exc:
        raise RunError(f"the validator processes died ({exc}); each holds about 280 MB of tokenizers: "
                       "pass validator_workers=0 to validate in this process") from exc


def _command_args(module: str, argv: list[str], options: dict[str, Any], call: str) -> argparse.Namespace:
    """The arguments ``asyncgen ARGV`` plus ``options`` give a command: ``options`` (flag names with
    underscores) become its flags and go through its own parser, so every value is checked and
    every other flag has its default as on the command line. A bad value is a ``UsageError``
    naming the flag; an unknown option a ``TypeError``."""
    from asyncgen.cli import ArgumentParser, _common_parser

    _refuse_in_a_process_that_imports_main(call)

    class Parser(ArgumentParser):
        def error(self, message: str):
            raise UsageError(f"{call}(): {message}")

    parser = Parser(prog="asyncgen")
    importlib.import_module(f"asyncgen.commands.{module}").register(parser.add_subparsers(dest="command"),
                                                                   _common_parser())
    command = parser
    for word in argv:  # down to the (sub)command's own parser: ["batch", "run", ...]
        choices = next((action.choices for action in command._actions
                        if isinstance(action, argparse._SubParsersAction)), None)
        if choices is None or word not in choices:
            break
        command = choices[word]
    actions = {action.dest: action for action in command._actions if action.option_strings}
    words = list(argv)
    for name, value in options.items():
        action = actions.get(name)
        if action is None or name in ("help", "log_level"):
            raise TypeError(f"{call}() got an unexpected keyword argument {name!r}")
        if value is None or value == action.default or value is False and not isinstance(
                action, argparse.BooleanOptionalAction):
            continue  # the flag not given: its default
        flag = action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            words.append(flag if value else "--no-" + flag[2:])
        elif value is True:
            words.append(flag)
        elif isinstance(value, (list, tuple)):
            if action.nargs in ("+", "*"):
                words += [flag, *map(str, value)]
            else:
                for item in value:
                    words += [flag, str(item)]
        else:
            words += [flag, str(value)]
    args = parser.parse_args(words)
    args.argv = words  # for the resume hint: the command that does the same
    return args


@dataclass(frozen=True)
class ScoreResult(TargetedResult):
    """What :func:`score` did.

    Attributes:
        output: The scores file (``DATASET.scores/MODEL.jsonl``).
        scenarios: Scenarios scored in it now.
        target: Scenarios in the dataset.
        new: Scenarios this call scored.
        cost_usd: What this call cost, as its summary's cost line (None when the price is
            unknown); with ``batch=True``, the results it read, at batch prices.
        cost_simulated: True offline: the simulator's usage at real prices.
        stop_reason: None when every scenario is scored; ``"max_cost"`` or why it stopped.
    """

    output: Path
    scenarios: int
    target: int
    new: int = 0
    cost_usd: float | None = None
    cost_simulated: bool = False
    stop_reason: str | None = None


def score(dataset: str | os.PathLike, model: str, *, form: Literal["single", "multi", "both"] = "both",
          base_url: str | None = None, max_cost: float | None = None, concurrency: int = 32,
          **options: Any) -> ScoreResult:
    """Score a dataset under a model (``asyncgen score``): the answers' log-probabilities after the
    single-token texts, the free answers to the multi-token texts, and which pairs flip.

    Requests go as for :func:`generate` (offline: the simulator). The scores go to
    ``DATASET.scores/MODEL.jsonl`` as they arrive; an interrupted call resumes where it stopped.
    Inside a running event loop (Jupyter) it runs in a worker thread, and the kernel's interrupt
    stops it as Ctrl-C does. :func:`load` and :func:`export` add the scores as columns.

    Args:
        dataset: A dataset written by :func:`generate` (it must pass ``asyncgen validate``).
        model: The model under study, as the server names it.
        form: ``single`` (answer log-probabilities), ``multi`` (free answers) or ``both``.
        base_url: An OpenAI-compatible API's base URL (default as for :func:`generate`).
        max_cost: A USD budget for this call.
        concurrency: The most requests in flight at once.
        **options: Any other flag of ``asyncgen score`` by its name with underscores (``chat``,
            ``judge_model``, ``max_answer_tokens``, ``tokenizer``, ``task``, ``config_dir``,
            ``prices``, ``rpm``, ``tpm``, ``request_timeout``, ``max_attempts``, ``grace_period``, ...).

    Returns:
        How many scenarios are scored, what it cost, and where the scores are.

    Raises:
        UsageError: A bad option, a dataset that fails validation, scores of another dataset.
        RunError: The scoring failed on the way; what was scored is kept and resumes.
        RunInterrupted: The scoring was interrupted; ``.result`` says how far it got.
    """
    from asyncgen.commands.score_run import score as score_command
    from asyncgen.scenario import read_dataset
    from asyncgen.scores import read_scores, scores_path

    args = _command_args("score", ["score", os.fspath(dataset), "--model", model],
                         {"form": form, "base_url": base_url, "max_cost": max_cost, "concurrency": concurrency,
                          **options}, "score")
    args.control = control = RunControl()
    code = run_anywhere(lambda: score_command(args), control)
    stats = control.stats
    path = scores_path(args.dataset, model)
    target = stats.target if stats is not None else len(read_dataset(args.dataset).scenarios)
    # No stats: nothing was left to score, and the command left what that cost (0, or None at an unknown price).
    return _finish(ScoreResult(path, len(read_scores(path).records), target, stats.accepted_this_run if stats else 0,
                               stats.cost_usd if stats else control.cost_usd,
                               stats.cost_simulated if stats else control.cost_simulated,
                               _stop_reason(code, args.max_cost)), "score")


@dataclass(frozen=True)
class BatchResult(TargetedResult):
    """What :func:`generate_batch` did.

    Attributes:
        output: The dataset file.
        directory: The batch directory (manifest, request and result files).
        scenarios: Scenarios the dataset holds now.
        target: Scenarios asked for.
        cost_usd: What the batch directory's requests cost so far, every call included, at batch
            prices (the real-time requests of a pilot or finish at real-time prices): the summary's
            cost line (None when the price is unknown).
        cost_simulated: True offline: the simulator's usage at real prices.
        stop_reason: None when it finished; ``"max_cost"`` or why it stopped.
    """

    output: Path
    directory: Path
    scenarios: int
    target: int
    cost_usd: float | None = None
    cost_simulated: bool = False
    stop_reason: str | None = None


def generate_batch(task: str = "refusal", n: int = 100, output: str | os.PathLike = "dataset.jsonl", *,
          directory: str | os.PathLike = "batches", model: str = "gpt-4o", base_url: str | None = None,
          max_cost: float | None = None, **options: Any) -> BatchResult:
    """Generate a dataset through the Batch API, half the price of :func:`generate` (``asyncgen batch run``).

    (Not ``asyncgen.batch``: that name is the package of the Batch API's pieces.)

    Creates, submits, polls, downloads, validates and tops up until ``output`` holds exactly ``n``
    scenarios (a small shortfall of a round is asked in real time: ``real_time_finish``). State
    lives in ``directory``: an interrupted or killed call resumes there, nothing is submitted or
    paid for twice (submitted batches go on meanwhile). Offline (no
    ``OPENAI_API_KEY``, no ``base_url``) the simulator answers the batches. Inside a running event
    loop (Jupyter) it runs in a worker thread; the kernel's interrupt stops it as Ctrl-C does
    (during a validation pass, after the chunk in hand).

    Args:
        task: A task name or the path of a task YAML.
        n: The scenarios the dataset must hold.
        output: The dataset file (JSONL).
        directory: The batch directory.
        model: The model name sent to the API.
        base_url: An OpenAI-compatible API's base URL (default as for :func:`generate`).
        max_cost: A USD budget for the dataset at batch prices.
        **options: Any other flag of ``asyncgen batch run`` by its name with underscores
            (``poll_seconds``, ``pilot_requests``, ``real_time_finish``, ``config_dir``, ``tokenizer``, ...).

    Returns:
        The counts, the cost and the paths.

    Raises:
        UsageError: A bad option, a directory of another dataset or task.
        RunError: A round failed (the batches' errors are logged).
        RunInterrupted: The run was interrupted; ``.result`` says how far it got.
    """
    from asyncgen.scenario import LINES_PER_SCENARIO

    args = _command_args("batch", ["batch", "run"],
                         {"task": task, "num_scenarios": n, "output": os.fspath(output), "dir": os.fspath(directory),
                          "model": model, "base_url": base_url, "max_cost": max_cost, **options}, "generate_batch")
    args.control = control = RunControl()
    with _validator_processes_explained():
        code = run_anywhere(lambda: args.handler(args), control)
    try:
        with open(args.output, "rb") as handle:
            held = sum(1 for _ in handle) // LINES_PER_SCENARIO
    except FileNotFoundError:
        held = 0
    return _finish(BatchResult(Path(args.output), Path(args.dir), held, n, control.cost_usd, control.cost_simulated,
                               _stop_reason(code, args.max_cost)), "generate_batch")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote.

    Attributes:
        rows: Scenarios written (one row each).
        paths: The files or folders written.
        message: The line ``asyncgen export`` prints.
    """

    rows: int
    paths: list[Path]
    message: str


ExportFormat = Literal["jsonl", "csv", "parquet", "hf", "eap"]


def export(dataset: str | os.PathLike, format: ExportFormat = "jsonl", out: str | os.PathLike | None = None, *,
           split: float | None = None, group_by: Literal["frame", "word", "frame+word", "none"] | None = None,
           seed: int = 0, ids: bool = False, scores: Sequence[str] = (),
           only_flipping: Literal["single", "multi", "both"] | None = None, overwrite: bool = False,
           skip_invalid: bool = False, task: str | None = None, config_dir: str | None = None,
           tokenizers: Sequence[str] = (), cache_dir: str | None = None) -> ExportResult:
    """Write ``dataset`` with its token positions and answer ids per tokenizer (``asyncgen export``).

    Args:
        dataset: A dataset written by :func:`generate` or ``asyncgen run``.
        format: ``jsonl``, ``csv``, ``parquet`` (needs pyarrow), ``hf`` (a ``datasets`` folder for
            ``load_from_disk``) or ``eap`` (a folder of EAP-IG CSVs, one per tokenizer).
        out: The file or folder to write (default: beside the dataset, e.g. ``DATASET.csv``).
            Only an earlier export is replaced, unless ``overwrite``.
        split: Add a train/test split with this share in train (e.g. 0.8), whole groups of related
            scenarios on one side.
        group_by: What keeps scenarios together in the split: ``frame`` (the default: the prompt
            with its differing word masked), ``word`` (the differing pair), ``frame+word`` or ``none``.
        seed: The seed of the split's shuffle.
        ids: Add the full input ids of the four texts per tokenizer (not with ``eap``).
        scores: Models whose scores (from ``asyncgen score``) to add as ``score.MODEL.*`` columns.
        only_flipping: Keep only the scenarios that flip under every ``scores`` model, in this form.
        overwrite: Replace ``out`` even if it is not an export asyncgen wrote.
        skip_invalid: Leave out the scenarios whose pair fails validation (the message says how
            many); without it such a dataset is refused.
        task: The task whose answers to use (default: the one the dataset names).
        config_dir: The folder with ``tasks/*.yaml`` (default: the shipped configs).
        tokenizers: ``NAME[=SPEC]`` tokenizer selections, as ``--tokenizer``.
        cache_dir: Where built tokenizers are cached.

    Returns:
        The rows written and where.

    Raises:
        UsageError: A missing or malformed dataset, one whose pairs fail validation (unless
            ``skip_invalid``), a bad option, an ``out`` that is not an export.
    """
    from asyncgen.commands.export import export_dataset
    from asyncgen.exports import FORMATS

    if format not in FORMATS:
        raise UsageError(f"format: expected one of {', '.join(FORMATS)}, got {format!r}")
    from asyncgen.splitting import GROUP_BY

    if group_by is not None and group_by not in GROUP_BY:
        raise UsageError(f"group_by: expected one of {', '.join(GROUP_BY)}, got {group_by!r}")
    if split is not None and not 0 < split < 1:
        raise UsageError(f"split: expected the train share, a number strictly between 0 and 1, got {split!r}")
    args = argparse.Namespace(dataset=os.fspath(dataset), format=format, out=None if out is None else os.fspath(out),
                              split=split, group_by=group_by, seed=seed, ids=ids, scores=list(scores),
                              only_flipping=only_flipping, skip_invalid=skip_invalid,
                              overwrite=overwrite, task=task, config_dir=config_dir, tokenizer=list(tokenizers),
                              cache_dir=cache_dir)
    done = export_dataset(args)
    return ExportResult(done.rows, [Path(path) for path in done.paths], done.message)


@dataclass(frozen=True)
class InspectReport:
    """What :func:`inspect` found; ``str()`` of it (and its display in a notebook) is the text
    ``asyncgen inspect`` prints.

    Attributes:
        figures: The report as ``asyncgen inspect --json`` gives it: counts, duplicates, the
            differing words, lengths and positions per tokenizer, diversity, the run's figures
            (yield, rejections, cost) when its checkpoint is found, and per scored model its figures.
        text: The report as text.
    """

    figures: dict
    text: str

    def __str__(self) -> str:
        return self.text

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # IPython's display
        printer.text(self.text)


def inspect(dataset: str | os.PathLike, *, tokens: bool = True, checkpoint: str | os.PathLike | None = None,
            task: str | None = None, config_dir: str | None = None, tokenizers: Sequence[str] = (),
            cache_dir: str | None = None) -> InspectReport:
    """Summarise a dataset (``asyncgen inspect``): counts, duplicates, differing words, lengths,
    diversity and, when its checkpoint is found, the run's yield, rejections and cost.

    Args:
        dataset: A dataset written by :func:`generate` or ``asyncgen run``.
        tokens: Include the per-tokenizer figures (tokenizes the scenarios).
        checkpoint: The run's checkpoint (default: looked for beside the dataset).
        task: The task whose answers to use (default: the one the dataset names).
        config_dir: The folder with ``tasks/*.yaml`` (default: the shipped configs).
        tokenizers: ``NAME[=SPEC]`` tokenizer selections, as ``--tokenizer``.
        cache_dir: Where built tokenizers are cached.

    Returns:
        The report, as figures and as text.

    Raises:
        UsageError: A missing, malformed or empty dataset, or a checkpoint of another dataset.
    """
    from asyncgen.commands.inspect_dataset import build_report, report_text

    args = argparse.Namespace(dataset=os.fspath(dataset), task=task, config_dir=config_dir,
                              tokenizer=list(tokenizers), cache_dir=cache_dir, no_tokens=not tokens,
                              checkpoint=None if checkpoint is None else os.fspath(checkpoint))
    report, _ = build_report(args)
    return InspectReport(report, report_text(report))


def load(path: str | os.PathLike, format: Literal["datasets", "pandas", "records"] = "datasets", *,
         scores: bool | Sequence[str] = True, skip_invalid: bool = False, task: str | None = None,
         config_dir: str | None = None, tokenizers: Sequence[str] = (), cache_dir: str | None = None,
         ) -> "datasets.Dataset | pandas.DataFrame | list[dict]":
    """Read a dataset with its token annotations and scores: one row per scenario. Read-only.

    The columns are those of ``asyncgen export``: the clean and corrupt texts of both forms, the
    answers, per tokenizer the lengths, the differing position and ids, the answers' ids, and per
    scored model the ``score.MODEL.*`` columns. The annotations come from the sidecar
    (``DATASET.tokens.jsonl``) when its record shows it was checked against the dataset as it is
    now; otherwise the scenarios are tokenized (as ``export`` does). A dataset whose pairs fail
    validation (texts off the task's templates, or not a minimal pair under a tokenizer) is refused
    as ``export`` refuses it, unless ``skip_invalid``. Scores files are checked against the dataset
    (its id and every scenario's texts).

    Args:
        path: A dataset written by :func:`generate` or ``asyncgen run``.
        format: ``datasets`` (a ``datasets.Dataset``), ``pandas`` (a ``DataFrame``) or
            ``records`` (a list of dicts, needing neither).
        scores: True for every model scored beside the dataset (a scores file that is not this
            dataset's, such as one of a dataset it replaced, is skipped with a warning), False
            for none, or the models (a scores file that is not this dataset's is refused).
        skip_invalid: Leave out the scenarios whose pair fails validation, with a warning saying
            how many (their ``scenario_id`` stays the dataset's).
        task: The task whose answers to use (default: the one the dataset names).
        config_dir: The folder with ``tasks/*.yaml`` (default: the shipped configs).
        tokenizers: ``NAME[=SPEC]`` tokenizer selections, used when the scenarios are tokenized.
        cache_dir: Where built tokenizers are cached.

    Returns:
        The rows, in the format asked for.

    Raises:
        UsageError: A missing, malformed or empty dataset, one whose pairs fail validation
            (unless ``skip_invalid``), scores of another dataset, or a format whose library is not
            installed.
    """
    from asyncgen.annotations import read_verified
    from asyncgen.commands._shared import load_dataset_and_task
    from asyncgen.dataset_check import failing_pairs, refuse_failing
    from asyncgen.config import load_task
    from asyncgen.exports import rows
    from asyncgen.score_table import columns, load_scores, scored_models
    from asyncgen.scenario import read_dataset

    if format not in ("datasets", "pandas", "records"):
        raise UsageError(f"format: expected datasets, pandas or records, got {format!r}")
    if format != "records":
        try:
            importlib.import_module(format)
        except ImportError:
            raise UsageError(f"load(format={format!r}) needs the {format} library: pip install {format}, "
                             "or use format='records'") from None
    path = os.fspath(path)
    notes = read_verified(path) if not tokenizers else None
    dataset = read_dataset(path)
    if notes is not None and len(notes) == len(dataset.scenarios):
        task_config = load_task(task or dataset.task_name, config_dir)
    else:
        args = argparse.Namespace(dataset=path, task=task, config_dir=config_dir, tokenizer=list(tokenizers),
                                  cache_dir=cache_dir)
        dataset, task_config, loaded = load_dataset_and_task(args)
        notes = _annotate(dataset.scenarios, task_config, loaded)
    safe, harmful = task_config.answers.safe, task_config.answers.harmful
    failing = failing_pairs(task_config, dataset.scenarios, notes)
    scenarios = dataset.scenarios
    if failing:
        if not skip_invalid:
            refuse_failing(path, failing, len(scenarios), "skip_invalid=True")
        log.warning("left out %d of %d scenarios that fail validation (the first: scenario %d, %s); "
                    "see `python -m asyncgen validate %s`", len(failing), len(scenarios), *failing[0], path)
        skipped = {index for index, _ in failing}
        scenarios = [s for i, s in enumerate(scenarios) if i not in skipped]
        notes = [n for i, n in enumerate(notes) if i not in skipped]
    table = rows(scenarios, notes, task_config.task_name, (safe, harmful))
    models = ([model for model, _ in scored_models(path)] if scores is True else [] if scores is False
              else list(scores))
    for model in dict.fromkeys(models):
        try:
            records = load_scores(path, task_config.task_name, dataset.scenarios, model)
        except InputFileError as exc:
            if scores is not True:  # asked for by name: refused
                raise
            log.warning("no score columns of %s: %s", model, exc)  # found beside it: skipped, said
            continue
        for row in table:
            row.update(columns(model, records.get(row["scenario_id"]), safe, harmful))
    if format == "records":
        return table
    if format == "pandas":
        import pandas

        return pandas.DataFrame(table)
    import datasets

    return datasets.Dataset.from_list(table)


def _annotate(scenarios, task, tokenizers) -> list[dict]:
    import orjson

    from asyncgen.annotations import annotate, task_answers

    return [orjson.loads(line) for line in annotate(scenarios, tokenizers, task_answers(task, tokenizers))]
