"""One generation run, composed: options -> task, tokenizers and prices -> sink, endpoint,
validator, generator -> pipeline -> result. The one composition root of a run: ``asyncgen run``
(asyncgen/commands/run.py) and the Python API (asyncgen/api.py) both call it.

Where requests go: ``base_url`` (or ``OPENAI_BASE_URL``) for any OpenAI-compatible server;
otherwise the OpenAI API when ``OPENAI_API_KEY`` is set; otherwise the offline default, the
simulator started in-process on a free loopback port.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import importlib
import logging
import math
import os
import sys
import zlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from asyncgen.errors import UsageError
from asyncgen.eventloop import LOOPBACK_HOSTS, RunControl
from asyncgen.prices import cost_usd, load_price_table, price_for, run_price
from asyncgen.progress import print_summary, report_progress, resume_command, stop_progress, summary
from asyncgen.prompting import (
    AVOID_CHARS,
    largest_request_tokens,
    max_output_tokens,
    request_cost_bound,
    response_format_for,
    worst_case_prompt_tokens,
)
from asyncgen.stats import RunStats, TargetedResult, count_of
from asyncgen.terminal import print_fitted
from asyncgen.validate import load_task_and_tokenizers

if TYPE_CHECKING:
    from asyncgen.config import Task
    from asyncgen.prices import Price, PriceTable
    from asyncgen.tokenizers import Tokenizer, TokenizerSpec
    from asyncgen.transport import ChatTransport

log = logging.getLogger("asyncgen.run")
OFFLINE_KEY = "sk-asyncgen-simulator"


@dataclass
class GenerateOptions:
    """What one generation run is asked to do: ``asyncgen run``'s flags, one field each (same names,
    same defaults; ``asyncgen run --help`` explains each). ``argv`` is the command line that asked,
    for the resume hint; None builds one from the fields."""

    task: str = "refusal"
    num_scenarios: int = 1500
    output: str = "dataset.jsonl"
    checkpoint: str | None = None
    no_checkpoint: bool = False
    overwrite: bool = False
    force_resume: bool = False
    model: str = "gpt-4o"
    base_url: str | None = None
    concurrency: int = 32
    rpm: int | None = None
    tpm: int | None = None
    max_cost: float | None = None
    prices: str | None = None
    avoid_chars: int = AVOID_CHARS
    validator_workers: int | None = None
    temperature: float = 1.0
    seed: int | None = None
    response_format: str = "auto"
    request_timeout: float = 60.0
    max_attempts: int = 6
    grace_period: float = 10.0
    sync_every: int = 50
    sync_seconds: float = 1.0
    annotate: bool = True
    tokenizer: list[str] = field(default_factory=list)
    cache_dir: str | None = None
    config_dir: str | None = None
    argv: list[str] | None = None

    @classmethod
    def from_namespace(cls, args) -> "GenerateOptions":
        """The options of ``asyncgen run``'s parsed arguments."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})

    def command_line(self) -> list[str]:
        """``run`` and the flags that differ from the defaults: the command that asks for the same run."""
        argv = ["run"]
        for option in fields(self):
            value = getattr(self, option.name)
            default = option.default_factory() if callable(option.default_factory) else option.default
            if option.name == "argv" or value == default:
                continue
            flag = "--" + option.name.replace("_", "-")
            if isinstance(value, bool):
                argv.append(flag if value else "--no-" + option.name)  # only --annotate defaults to on
            elif isinstance(value, list):
                for item in value:
                    argv += [flag, str(item)]
            else:
                argv += [flag, str(value)]
        return argv


@dataclass(frozen=True)
class GenerateResult(TargetedResult):
    """What a generation run did.

    Attributes:
        output: The dataset file (JSONL, four lines a scenario).
        checkpoint: Its checkpoint file, None with ``no_checkpoint``.
        annotations: The token annotations sidecar (``DATASET.tokens.jsonl``), None with
            ``annotate=False``.
        scenarios: Scenarios the dataset holds now.
        target: Scenarios asked for (``num_scenarios``).
        new: Scenarios this run added.
        candidates: Pairs the model proposed this run.
        rejected: Candidates that failed the one-token rule.
        duplicates: Candidates the dataset already held.
        requests: Requests sent this run.
        cost_usd: What this run cost (None when the price is unknown).
        total_cost_usd: What the dataset cost in all, earlier runs included.
        cost_simulated: True offline: the simulator's usage at real prices.
        elapsed_s: Wall time of the run, in seconds.
        stop_reason: None when it finished; ``"interrupted"``, ``"max_cost"`` or why it stopped.
        resume_command: The command that resumes the dataset.
        summary: The closing summary, as the command line prints it.
    """

    output: Path
    checkpoint: Path | None
    annotations: Path | None
    scenarios: int
    target: int
    new: int
    candidates: int = 0
    rejected: int = 0
    duplicates: int = 0
    requests: int = 0
    cost_usd: float | None = None
    total_cost_usd: float | None = None
    cost_simulated: bool = False
    elapsed_s: float = 0.0
    stop_reason: str | None = None
    resume_command: str = ""
    summary: str = ""

    def __str__(self) -> str:
        return self.summary

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # IPython's display: the summary
        printer.text(self.summary)


@dataclass
class Prepared:
    """A run's options with what they load: the task, its tokenizers, the price table and price."""

    options: GenerateOptions
    task: "Task"
    specs: "list[TokenizerSpec]"
    tokenizers: "list[Tokenizer]"
    prices: "PriceTable"
    price: "Price | None"


def prepare(options: GenerateOptions) -> Prepared:
    """Check the options against each other, load the task, the tokenizers and the price table;
    one-line errors (``UsageError``, exit 2) for what the user can fix. Touches no dataset."""
    if options.no_checkpoint and options.checkpoint is not None:
        raise UsageError("--no-checkpoint and --checkpoint contradict each other; give one of them")
    task, specs, tokenizers = load_task_and_tokenizers(options.task, options.config_dir, options.tokenizer,
                                                       options.cache_dir)
    prices, prices_path = load_price_table(options.config_dir, options.prices)
    price = run_price(prices, options.model, options.base_url, table_given=bool(options.prices))
    if options.max_cost is not None and price is None:
        if price_for(prices, options.model) is not None:  # a server other than OpenAI's
            raise UsageError(f"--max-cost: at --base-url {options.base_url} the cost of {options.model!r} is unknown "
                             "(a server other than OpenAI's may answer to any model name); pass --prices FILE with its price")
        raise UsageError(f"--max-cost: model {options.model!r} has no price in {prices_path}; add it there or pass --prices")
    return Prepared(options, task, specs, tokenizers, prices, price)


def default_validator_workers() -> int:
    cores = os.cpu_count() or 1
    return max(1, min(4, cores - 1))


def request_destination(args) -> tuple[str, str | None, str]:
    """Where requests go, as (mode, base_url, api_key): ``custom``, to ``--base-url`` with
    OPENAI_API_KEY (a stand-in when none is set); else ``openai`` when OPENAI_API_KEY is set (OpenAI's
    URL, None here: the SDK's); else ``simulator``: offline, to the built-in simulator (its URL is
    known once it runs) with its own key."""
    from asyncgen.workers import NO_KEY_SET

    key = os.environ.get("OPENAI_API_KEY") or None
    if args.base_url:
        return "custom", args.base_url, key or NO_KEY_SET
    if key:
        return "openai", None, key
    return "simulator", None, OFFLINE_KEY


def _simulator_seed(seed: int | None, carried: dict, scenarios: int) -> int:
    """The offline simulator's seed: --seed, moved on by each earlier run of the dataset, so that a
    resumed run's simulator does not replay the draws whose pairs the dataset already holds."""
    if not carried and not scenarios:
        return seed or 0
    return zlib.crc32(f"{seed or 0}:{count_of(carried.get('runs'))}:{count_of(carried.get('requests_sent'))}:{scenarios}".encode())


def open_transport(stack: contextlib.AsyncExitStack, api_key: str | None, url: str | None, *, concurrency: int,
                   timeout: float) -> ChatTransport:
    """The transport requests go through, closed with ``stack``. The SDK client resolves the
    configuration (key, base URL, organization, headers); requests go through the leaner transport,
    which raises the SDK's exceptions (asyncgen/transport.py). No proxy for a loopback URL."""
    import openai

    from asyncgen.transport import ChatTransport

    loopback = url is not None and urlsplit(url).hostname in LOOPBACK_HOSTS
    client = openai.AsyncOpenAI(api_key=api_key, base_url=url, max_retries=0)
    stack.push_async_callback(client.close)
    transport = ChatTransport(client, concurrency=concurrency, timeout=timeout, trust_env=not loopback)
    stack.push_async_callback(transport.close)
    return transport


def _request_cost_bound(task, price, output_cap: int, avoid_chars: int = AVOID_CHARS) -> float:
    """Worst-case USD of one request sent with ``output_cap`` (see ``prompting.request_cost_bound``)."""
    return request_cost_bound(task, price, avoid_chars, output_cap) or 0.0


@dataclass(frozen=True)
class Plan:
    requests: int
    yield_per_request: float
    prompt_tokens: int  # per request, a typical one
    output_tokens: int  # per request, the cap
    cost_usd: float | None  # at most about, for all requests


def _plan(task, price, remaining: int, avoid_chars: int = AVOID_CHARS) -> Plan:
    """What ``remaining`` scenarios take at the prior yield estimate, at the starting output cap
    (the task's bound; the run lowers it to what answers use). Pure."""
    from asyncgen.pipeline import PRIOR_YIELD_SHARE

    yield_per_request = PRIOR_YIELD_SHARE * task.batch_size
    requests = math.ceil(remaining / yield_per_request) if remaining else 0
    prompt_tokens = worst_case_prompt_tokens(task, avoid_chars)  # the avoid list fills its budget soon
    output_tokens = max_output_tokens(task)
    cost = cost_usd(price, requests * prompt_tokens, requests * output_tokens)
    return Plan(requests, yield_per_request, prompt_tokens, output_tokens, cost)


async def generate_async(prepared: Prepared, control: RunControl | None = None, *, show: bool = True,
                         handle_signals: bool = True) -> GenerateResult:
    """Run ``prepared`` on the running event loop until the dataset holds its target, the run is
    stopped (``control.stop()``; SIGINT/SIGTERM too with ``handle_signals``) or it fails. With
    ``show``, the progress display, the closing summary and the one-line notes are shown (stderr).
    Returns the result of a run that finished or was stopped; raises a failure after its summary."""
    args, task, specs, tokenizers = prepared.options, prepared.task, prepared.specs, prepared.tokenizers
    # The sink first (an unwritable output or a mismatched resume fails before any API call), in a
    # thread: its open reads the checkpointed prefix through sha256 (about 0.8 s a GB, hashlib
    # releasing the GIL) while this thread imports the SDK and the pipeline. Nothing is started or
    # sent before it has returned.
    opening = SinkOpening.start(args, task, specs)
    early_validator = None
    try:
        early_validator = _early_validator(args, task, specs, tokenizers, opening)
        mode, base_url, api_key = request_destination(args)
        for module in ("asyncgen.pipeline", "asyncgen.throttle", "asyncgen.validate", "asyncgen.workers"):
            importlib.import_module(module)  # the SDK and the pipeline, imported while the open reads

        sink = await asyncio.wrap_future(opening.future)  # refused (UsageError) before anything is started
    except BaseException:
        opening.discard()  # Ctrl-C meanwhile: the open ends in its thread, and what it opened is closed
        if early_validator is not None:
            early_validator.close()
        raise
    try:
        return await _generate_on(prepared, sink, opening, early_validator, mode, base_url, api_key, control,
                                  show=show, handle_signals=handle_signals)
    finally:
        if early_validator is not None:
            early_validator.close()  # a run that took it closed it already; one refused or done at once did not


def _set_the_replaced_dataset_aside(output: str) -> None:
    """``--overwrite`` starts the dataset over: the scores of the dataset it replaces go aside, named
    (``asyncgen.scores.move_aside``), so that none passes for the new dataset's; its token
    annotations (derived from it alone, made again as the new dataset grows) go, so that the
    sidecar starts empty instead of reporting the old ones as disagreeing. Its checkpoint the sink
    starts over itself."""
    from asyncgen.annotations import record_path, sidecar_path
    from asyncgen.scores import move_aside, scores_dir

    try:
        aside = move_aside(output)
    except OSError as exc:
        raise UsageError(f"--overwrite: cannot move the replaced dataset's scores {scores_dir(output)} aside "
                         f"({exc.strerror or exc}); {output} was not changed: move them away yourself, then run again") from exc
    if aside is not None:
        log.warning("--overwrite: the scores of the dataset it replaced are kept in %s (they are not this "
                    "dataset's); delete that folder if you do not need them", aside)
    for derived in (sidecar_path(output), record_path(sidecar_path(output))):
        derived.unlink(missing_ok=True)


async def _generate_on(prepared: Prepared, sink, opening: "SinkOpening", early_validator, mode: str,
                       base_url: str | None, api_key: str, control: RunControl | None, *, show: bool,
                       handle_signals: bool) -> GenerateResult:
    """``generate_async`` once its sink is open."""
    from asyncgen.pipeline import Pipeline
    from asyncgen.throttle import RetryPolicy, Throttle
    from asyncgen.validate import PairValidator
    from asyncgen.workers import GenerationSettings, Generator

    args, task, specs, tokenizers, price = (prepared.options, prepared.task, prepared.specs, prepared.tokenizers,
                                            prepared.price)
    stats = RunStats(target=args.num_scenarios)
    stats.accepted, stats.carried = sink.count, dict(sink.resume.run_state or {})
    stats.cost_usd = None if price is None else 0.0
    stats.cost_before_usd = stats.carried.get("cost_usd", 0.0)
    stats.cost_simulated = mode == "simulator"
    stats.on_usage = lambda: sink.note_run_state(stats.to_run_state())  # spending survives a SIGKILL

    bound = _request_cost_bound(task, price, max_output_tokens(task), args.avoid_chars)  # the first requests' cap
    if args.max_cost is not None and sink.count < args.num_scenarios:
        refusal = None
        if stats.cost_before_usd is None:
            refusal = ("--max-cost: the earlier runs of this dataset have an unknown cost, so a budget "
                       "cannot be kept; run without --max-cost or start a new dataset")
        elif stats.budget_spent_usd + bound > args.max_cost:
            abandoned = stats.abandoned_bound_in_all_usd
            so_far = f"${stats.cost_before_usd:.4f}" + (f" (up to ${abandoned:.4f} more for abandoned attempts)"
                                                         if abandoned else "")
            refusal = (f"--max-cost {args.max_cost:g}: the dataset has cost {so_far} so far and "
                       f"one more request may cost up to ${bound:.4f}; raise --max-cost")
        if refusal:
            opening.close_refused(sink)
            raise UsageError(refusal)
    if sink.resume.message:
        log.info("%s", sink.resume.message)
    if sink.count >= args.num_scenarios:
        sink.close()
        done = f"{args.output} already holds {sink.count} scenarios (target {args.num_scenarios}): nothing to do"
        if show:
            print_fitted(done, sys.stdout)
        return _result(args, stats, None, done)
    _warn_if_absurd(args, task, price, args.num_scenarios - sink.count)

    async def start(stack: contextlib.AsyncExitStack) -> Pipeline:
        # The validator processes first (unless started during the sink's open): each loads the
        # tokenizers (about 1.5 s of CPU), meanwhile the sidecar is checked, the simulator starts
        # and the first requests go out.
        validator = early_validator
        if validator is None:
            workers = _validator_workers(args.validator_workers)
            if workers:
                log.info("starting %d validator process%s", workers, "es" if workers > 1 else "")
            validator = PairValidator(task, specs, cache_dir=args.cache_dir, workers=workers, tokenizers=tokenizers)
        stack.callback(validator.close)
        annotations = None
        if args.annotate:
            # Checked in a thread while the run starts (the digest of the sidecar's recorded prefix:
            # about 0.9 s of CPU a GB, hashlib releasing the GIL); the pipeline joins it before it
            # writes the first scenario, and at its end.
            annotations = asyncio.ensure_future(_open_annotations(sink, task, tokenizers))
            stack.push_async_callback(_close_annotations, annotations)
        url = base_url
        if mode == "simulator":
            from asyncgen.simulator import SimulatorConfig, running_simulator

            simulator = await stack.enter_async_context(running_simulator(SimulatorConfig(
                task=args.task, config_dir=args.config_dir, seed=_simulator_seed(args.seed, stats.carried, sink.count),
                latency_ms=300, latency_jitter_ms=150,
            )))
            url = simulator.base_url
            log.info(
                "offline: no OPENAI_API_KEY and no --base-url, so requests go to asyncgen's built-in OpenAI "
                "simulator at %s; its pairs come from the %s task's lexicon, not a model, and its cost is "
                "simulated. To use GPT-4o: export OPENAI_API_KEY=sk-... and run again.", url, task.task_name,
            )
        transport = open_transport(stack, api_key, url, concurrency=args.concurrency, timeout=args.request_timeout)
        settings = GenerationSettings(args.model, response_format_for(args.model, args.response_format),
                                      args.temperature, args.seed,
                                      fallback_to_json_object=args.response_format == "auto",
                                      stop_if_cap_ignored=args.max_cost is not None)
        throttle = Throttle(args.rpm, args.tpm, largest_request_tokens=largest_request_tokens(task, args.avoid_chars))
        generator = Generator(transport, task, settings, throttle, RetryPolicy(max_attempts=args.max_attempts),
                              stats, price, api_key)
        return Pipeline(task, generator, validator, sink, stats, concurrency=args.concurrency,
                        handle_signals=handle_signals,
                        max_cost=args.max_cost, avoid_chars=args.avoid_chars, grace_period=args.grace_period,
                        request_cost_bound=lambda: _request_cost_bound(task, price, generator.output_cap.value,
                                                                       args.avoid_chars),
                        first_request_number=count_of(stats.carried.get("requests_sent")), annotations=annotations)

    pipeline: Pipeline | None = None
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(sink.close, None)  # a no-op after the final close below; the safety net on errors
        progress: asyncio.Task | None = None
        failure: BaseException | None = None
        try:
            pipeline = await start(stack)
            if show:
                progress = asyncio.create_task(report_progress(stats, pipeline.expected_yield))
            if control is not None:
                control.attach(pipeline.interrupt)
            await pipeline.run()
        except BaseException as exc:  # CancelledError: Ctrl-C before the pipeline took over the signals
            failure = exc
        finally:
            if control is not None:
                control.detach()
            await stop_progress(progress)
            stats.accepted = sink.count
            close_error = None
            try:
                await asyncio.to_thread(sink.close, stats.to_run_state())
            except Exception as exc:  # the first write failure wins; report it below
                close_error = exc
            stop_reason = (pipeline.stop_reason if pipeline is not None and pipeline.stop_reason
                           else _stop_reason_of(failure))
            text = summary(stats, stop_reason=stop_reason, output=args.output,
                           resume_command=resume_command(args, stats, stop_reason))
            if show:
                print_summary(text)
        if close_error is not None and failure is None:
            raise close_error
    if failure is not None and not isinstance(failure, (asyncio.CancelledError, KeyboardInterrupt)):
        raise failure
    return _result(args, stats, stop_reason, text)


EARLY_VALIDATOR_BYTES = 64 * 1024 * 1024  # a dataset whose open digests this much takes 50 ms or more


def _early_validator(args, task, specs, tokenizers, opening: "SinkOpening"):
    """The validator processes started now, while the sink's open digests a large dataset's
    checkpointed prefix (about 0.8 s a GB), rather than after it: each takes about 1.5 s of CPU to
    load the tokenizers. None for a new or small dataset, or without workers: a run refused at the
    open would wait for them to start, for nothing."""
    if args.validator_workers == 0 or not (opening.output_existed and opening.checkpoint_existed):
        return None
    try:
        if Path(args.output).stat().st_size < EARLY_VALIDATOR_BYTES:
            return None
    except OSError:
        return None
    from asyncgen.validate import PairValidator

    workers = _validator_workers(args.validator_workers)
    log.info("starting %d validator process%s while %s is checked", workers, "es" if workers > 1 else "", args.output)
    return PairValidator(task, specs, cache_dir=args.cache_dir, workers=workers, tokenizers=tokenizers)


@dataclass
class SinkOpening:
    """``ScenarioSink.open`` of the run's dataset, running in a thread of its own; what a run refused
    before its first request must remove (a dataset and checkpoint it created)."""

    future: concurrent.futures.Future
    output_existed: bool
    checkpoint: Path | None
    checkpoint_existed: bool  # it may hold earlier runs' usage

    @classmethod
    def start(cls, args, task, specs) -> "SinkOpening":
        from asyncgen.sink import DurabilityPolicy, ScenarioSink, default_checkpoint_path, fingerprint_of

        checkpoint = None if args.no_checkpoint else Path(args.checkpoint or default_checkpoint_path(args.output))
        output_existed, checkpoint_existed = Path(args.output).exists(), checkpoint is not None and checkpoint.exists()
        thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sink-open")
        future = thread.submit(
            ScenarioSink.open,
            args.output,
            checkpoint,
            task_name=task.task_name,
            fingerprint=fingerprint_of(task, [str(spec) for spec in specs]),
            force_resume=args.force_resume,
            overwrite=args.overwrite,
            durability=DurabilityPolicy(args.sync_every, args.sync_seconds),
            auto_sync=False,
            # The replaced dataset's scores go aside (its annotations go) before anything of it is
            # changed: a failed move refuses the run with the dataset intact.
            before_overwrite=functools.partial(_set_the_replaced_dataset_aside, args.output),
        )
        thread.shutdown(wait=False)  # the thread ends with the open
        return cls(future, output_existed, checkpoint, checkpoint_existed)

    def close_refused(self, sink) -> None:
        """Close the sink of a run refused before its first request: a dataset it created goes."""
        sink.close()
        if not self.output_existed and sink.count == 0:
            for path in (sink.path, None if self.checkpoint_existed else self.checkpoint):
                if path is not None:
                    Path(path).unlink(missing_ok=True)

    def discard(self) -> None:
        """The run stopped before it took the sink: wait for the open, and close what it opened."""
        try:
            sink = self.future.result()
        except BaseException:  # a refused open holds nothing
            return
        self.close_refused(sink)


def _result(args: GenerateOptions, stats: RunStats, stop_reason: str | None, text: str) -> GenerateResult:
    from asyncgen.annotations import sidecar_path
    from asyncgen.sink import default_checkpoint_path

    checkpoint = None if args.no_checkpoint else Path(args.checkpoint or default_checkpoint_path(args.output))
    annotations = Path(sidecar_path(args.output)) if args.annotate else None
    return GenerateResult(
        output=Path(args.output), checkpoint=checkpoint, annotations=annotations, scenarios=stats.accepted,
        target=stats.target, new=stats.accepted_this_run, candidates=stats.candidates, rejected=stats.rejected,
        duplicates=stats.duplicates, requests=stats.requests_sent, cost_usd=stats.cost_usd,
        total_cost_usd=stats.total_cost_usd, cost_simulated=stats.cost_simulated, elapsed_s=stats.elapsed,
        stop_reason=stop_reason, resume_command=resume_command(args, stats, stop_reason), summary=text)


async def _open_annotations(sink, task, tokenizers):
    from asyncgen.annotations import Sidecar

    annotations = await asyncio.to_thread(Sidecar.open, sink.path, task, tokenizers,
                                          dataset_digest=sink.dataset_digest())
    log.info("%s", annotations.repair.message)
    return annotations


async def _close_annotations(opening: asyncio.Future) -> None:
    """Close the sidecar once its open is over; an open that failed was raised by the pipeline (or
    came after the failure that ended the run)."""
    with contextlib.suppress(Exception):
        (await asyncio.shield(opening)).close()


def _stop_reason_of(failure: BaseException | None) -> str | None:
    """Why a run ended early, in a user's words (never a Python class name)."""
    if failure is None:
        return None
    if isinstance(failure, (asyncio.CancelledError, KeyboardInterrupt)):
        return "interrupted"
    return "failed: see the error below"


def _validator_workers(requested: int | None) -> int:
    """The validator processes to start: as asked, but never more than the machine has cores."""
    if requested is None:
        return default_validator_workers()
    cores = os.cpu_count() or 1
    if requested > cores:
        log.warning("--validator-workers %d: this machine has %d cores, so %d validator processes are started "
                    "(each loads every tokenizer, about 280 MB; more would only compete for the cores)",
                    requested, cores, cores)
        return cores
    return requested


ABSURD_REQUESTS = 100_000
ABSURD_USD = 1_000.0


def _warn_if_absurd(args, task, price, remaining: int) -> None:
    """One warning when the plan is far beyond what anyone means: millions of requests or dollars."""
    plan = _plan(task, price, remaining, args.avoid_chars)
    if plan.requests < ABSURD_REQUESTS and (plan.cost_usd or 0.0) < ABSURD_USD:
        return
    cost = "" if plan.cost_usd is None else f", about ${plan.cost_usd:,.0f} at {args.model} prices"
    log.warning("--num-scenarios %d: about %s requests%s; is that what you meant? --max-cost USD bounds the spend, "
                "--dry-run shows the plan, Ctrl-C stops and keeps what is done", args.num_scenarios,
                f"{plan.requests:,}", cost)
