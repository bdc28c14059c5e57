"""``asyncgen run``: generate a dataset of exactly N validated scenarios.

Where requests go: ``--base-url`` (or ``OPENAI_BASE_URL``) for any OpenAI-compatible server;
otherwise the OpenAI API when ``OPENAI_API_KEY`` is set; otherwise the offline default, the
simulator started in-process on a free loopback port.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import logging
import math
import os
import shlex
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from asyncgen.commands._shared import (
    add_avoid_chars_flag,
    add_task_flags,
    add_tokenizer_flags,
    load_price_table,
    load_task_and_tokenizers,
)
from asyncgen.commands.argtypes import base_url, non_negative_float, non_negative_int, positive_float, positive_int
from asyncgen.errors import UsageError
from asyncgen.prices import cost_usd, is_openai_endpoint, price_for, run_price
from asyncgen.progress import exit_code, print_summary, report_progress, stop_progress, summary
from asyncgen.eventloop import LOOPBACK_HOSTS, run_event_loop
from asyncgen.prompting import (
    AVOID_CHARS,
    OUTPUT_TOKENS_OVERHEAD,
    OUTPUT_TOKENS_PER_PAIR,
    largest_request_tokens,
    max_output_tokens,
    request_cost_bound,
    response_format_for,
    worst_case_prompt_tokens,
)
from asyncgen.scenario import LINES_PER_SCENARIO
from asyncgen.stats import RunStats, count_of

if TYPE_CHECKING:
    from asyncgen.transport import ChatTransport

log = logging.getLogger("asyncgen.run")
OFFLINE_KEY = "sk-asyncgen-simulator"


def register(subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "run",
        parents=[common],
        description="Generate exactly --num-scenarios validated scenarios into --output, as fast as the "
        "API's rate limits allow. Without OPENAI_API_KEY and --base-url it runs offline against the "
        "built-in simulator. A killed or interrupted run resumes where the output ends.",
    )
    add_task_flags(parser)
    parser.add_argument("--num-scenarios", type=positive_int, default=1500, help="scenarios the dataset must hold (default: 1500)")
    parser.add_argument("--output", default="dataset.jsonl", help="output JSONL file (default: dataset.jsonl)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint file (default: beside --output, DATASET.checkpoint.json for DATASET.jsonl)")
    parser.add_argument("--no-checkpoint", action="store_true", help="write no checkpoint; refuses a non-empty --output unless --overwrite")
    parser.add_argument("--overwrite", action="store_true", help="start the dataset over, discarding what --output holds")
    parser.add_argument("--force-resume", action="store_true", help="resume although the task, templates or tokenizers differ from the checkpoint's")
    parser.add_argument("--model", default="gpt-4o", help="model name sent to the API (default: gpt-4o)")
    parser.add_argument("--base-url", type=base_url, default=os.environ.get("OPENAI_BASE_URL") or None, help="OpenAI-compatible API base URL, e.g. http://localhost:8000/v1 (default: $OPENAI_BASE_URL, else the OpenAI API if OPENAI_API_KEY is set, else the offline simulator)")
    parser.add_argument("--concurrency", type=positive_int, default=32, help="most requests in flight at once (default: 32)")
    parser.add_argument("--rpm", type=positive_int, default=None, help="requests per minute limit (default: learned from the API's x-ratelimit headers)")
    parser.add_argument("--tpm", type=positive_int, default=None, help="tokens per minute limit (default: learned from the API's x-ratelimit headers)")
    parser.add_argument("--max-cost", type=non_negative_float, default=None, help="USD budget for the dataset (this run plus earlier runs it resumes); no request starts that could cross it")
    parser.add_argument("--prices", default=None, help="price table YAML (default: <config-dir>/prices.yaml); at a --base-url other than OpenAI's, cost is counted only with this flag, by the --model name")
    add_avoid_chars_flag(parser)
    parser.add_argument("--validator-workers", type=non_negative_int, default=None, help="validator processes; 0 validates in the main process (default: 1 on 2 cores, cores-1 up to 4)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    parser.add_argument("--seed", type=int, default=None, help="base seed sent with requests (request i gets seed+i); also seeds the offline simulator")
    parser.add_argument("--response-format", choices=("auto", "json_schema", "json_object"), default="auto", help="structured output: strict json_schema where the model supports it (auto: gpt-4o, gpt-4.1, o-series), else json_object")
    parser.add_argument("--request-timeout", type=positive_float, default=60.0, help="seconds before a request is abandoned and retried (default: 60)")
    parser.add_argument("--max-attempts", type=positive_int, default=6, help="attempts per request before it is given up (default: 6)")
    parser.add_argument("--grace-period", type=non_negative_float, default=10.0, help="seconds in-flight requests get to finish after Ctrl-C (default: 10)")
    parser.add_argument("--sync-every", type=positive_int, default=50, help="fsync the output and write the checkpoint every N scenarios (default: 50) ...")
    parser.add_argument("--sync-seconds", type=positive_float, default=1.0, help="... or every T seconds, whichever first (default: 1.0)")
    parser.add_argument("--annotate", action=argparse.BooleanOptionalAction, default=True, help="keep the token annotations sidecar OUTPUT.tokens.jsonl (positions and answer ids per tokenizer) in step with the output, repairing it on resume (default: on)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (requests, tokens and cost at the current yield estimate) and exit")
    add_tokenizer_flags(parser)
    parser.set_defaults(handler=run)


def default_validator_workers() -> int:
    cores = os.cpu_count() or 1
    return max(1, min(4, cores - 1))


def _endpoint(args) -> tuple[str, str | None, str]:
    """(mode, base_url, api_key); mode is 'simulator', 'openai' or 'custom'."""
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


def _resume_command(args, stats: RunStats | None = None, stop_reason: str | None = None) -> str:
    """The same command, minus what would refuse or discard the partial dataset; after a stop at
    --max-cost, with a budget that leaves room for the rest (at this run's cost per scenario)."""
    argv = list(getattr(args, "argv", None) or sys.argv[1:])
    argv = [a for a in argv if a not in ("--overwrite", "--no-checkpoint")]
    if stop_reason == "max_cost" and stats is not None:
        argv = _without_flag(argv, "--max-cost")
        spent = stats.budget_spent_usd or 0.0
        per_scenario = (stats.cost_usd or 0.0) / stats.accepted_this_run if stats.accepted_this_run else None
        if per_scenario:
            needed = spent + 1.2 * per_scenario * max(0, stats.target - stats.accepted)
            argv += ["--max-cost", f"{math.ceil(needed * 100) / 100:.2f}"]
        else:
            argv += ["--max-cost", f"{max(2 * (args.max_cost or 0.0), 0.01):.2f}"]
    return "python -m asyncgen " + shlex.join(argv)


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


def _without_flag(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag VALUE`` and ``flag=VALUE``."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == flag:
            skip = True
        elif not item.startswith(flag + "="):
            kept.append(item)
    return kept


def run(args: argparse.Namespace) -> int:
    if args.no_checkpoint and args.checkpoint is not None:
        raise UsageError("--no-checkpoint and --checkpoint contradict each other; give one of them")
    try:
        task, specs, tokenizers = load_task_and_tokenizers(args.task, args.config_dir, args.tokenizer, args.cache_dir)
    except KeyboardInterrupt:
        print(f"asyncgen run stopped (interrupted) while loading the tokenizers: {args.output} was not touched",
              file=sys.stderr)
        return 130
    prices, prices_path = load_price_table(args.config_dir, args.prices)
    price = run_price(prices, args.model, args.base_url, table_given=bool(args.prices))
    if args.max_cost is not None and price is None:
        if price_for(prices, args.model) is not None:  # a server other than OpenAI's
            raise UsageError(f"--max-cost: at --base-url {args.base_url} the cost of {args.model!r} is unknown "
                             "(a server other than OpenAI's may answer to any model name); pass --prices FILE with its price")
        raise UsageError(f"--max-cost: model {args.model!r} has no price in {prices_path}; add it there or pass --prices")
    if args.dry_run:
        return _dry_run(args, task, price)
    # The sink first (an unwritable output or a mismatched resume fails before any API call), in a
    # thread: its open reads the checkpointed prefix through sha256 (about 0.8 s a GB, hashlib
    # releasing the GIL) while this thread imports the SDK and the pipeline. Nothing is started or
    # sent before it has returned: ``_run_async`` waits for it first.
    opening = SinkOpening.start(args, task, specs)
    early = None
    try:
        early = _early_validator(args, task, specs, tokenizers, opening)
        mode, base_url, api_key = _endpoint(args)
    except BaseException:
        opening.discard()
        if early is not None:
            early.close()
        raise
    stats = RunStats(target=args.num_scenarios)
    try:
        return run_event_loop(_run_async(args, task, specs, tokenizers, prices, price, mode, base_url, api_key, stats,
                                         opening, early))
    finally:
        if early is not None:
            early.close()  # a run that took it closed it already; one refused or done at once did not


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


def _dry_run(args, task, price) -> int:
    existing = 0
    if Path(args.output).is_file() and not args.overwrite:
        with open(args.output, "rb") as handle:
            existing = sum(1 for _ in handle) // LINES_PER_SCENARIO
    remaining = max(0, args.num_scenarios - existing)
    plan = _plan(task, price, remaining, args.avoid_chars)
    mode, base_url, _ = _endpoint(args)
    cost = plan.cost_usd
    print(f"plan for task {task.task_name} with {args.model} ({mode}{' ' + base_url if base_url else ''}):")
    print(f"  scenarios       {remaining} to generate ({existing} already in {args.output}, target {args.num_scenarios})")
    print(f"  yield estimate  {plan.yield_per_request:.1f} accepted scenarios per request ({task.batch_size} pairs asked per request)")
    print(f"  requests        about {plan.requests}, at most {args.concurrency} in flight")
    print(f"  tokens          about {plan.requests * plan.prompt_tokens} prompt + at most {plan.requests * plan.output_tokens} "
          f"completion ({plan.prompt_tokens} + {plan.output_tokens} per request)")
    print(f"  output cap      {plan.output_tokens} tokens to start ({task.batch_size} x {OUTPUT_TOKENS_PER_PAIR} + "
          f"{OUTPUT_TOKENS_OVERHEAD}), then learned")
    why = f"no price for {args.model}" if args.prices or is_openai_endpoint(args.base_url) else "not OpenAI's server: pass --prices"
    shown = f"unknown ({why})" if cost is None else f"at most about ${cost:.4f}"
    print(f"  cost            {shown}{' (simulated)' if mode == 'simulator' and cost is not None else ''}")
    return 0


async def _run_async(args, task, specs, tokenizers, prices, price, mode, base_url, api_key, stats: RunStats,
                     opening: SinkOpening, early_validator=None) -> int:
    try:
        from asyncgen.pipeline import Pipeline
        from asyncgen.throttle import RetryPolicy, Throttle
        from asyncgen.validate import PairValidator
        from asyncgen.workers import GenerationSettings, Generator
    except BaseException:
        opening.discard()
        raise

    try:
        sink = await asyncio.wrap_future(opening.future)  # refused (UsageError) before anything is started
    except BaseException:
        opening.discard()  # Ctrl-C meanwhile: the open ends in its thread, and what it opened is closed
        raise
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
        print(f"{args.output} already holds {sink.count} scenarios (target {args.num_scenarios}): nothing to do")
        return 0
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
            progress = asyncio.create_task(report_progress(stats, pipeline.expected_yield))
            await pipeline.run()
        except BaseException as exc:  # CancelledError: Ctrl-C before the pipeline took over the signals
            failure = exc
        finally:
            await stop_progress(progress)
            stats.accepted = sink.count
            close_error = None
            try:
                await asyncio.to_thread(sink.close, stats.to_run_state())
            except Exception as exc:  # the first write failure wins; report it below
                close_error = exc
            stop_reason = (pipeline.stop_reason if pipeline is not None and pipeline.stop_reason
                           else _stop_reason_of(failure))
            print_summary(summary(stats, stop_reason=stop_reason, output=args.output,
                                  resume_command=_resume_command(args, stats, stop_reason)))
        if close_error is not None and failure is None:
            raise close_error
    return exit_code("run", failure, stats.accepted >= stats.target, stop_reason, args.max_cost,
                     " (the summary suggests a budget)")


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
