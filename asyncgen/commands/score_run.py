"""The implementation of ``asyncgen score`` (its flags are in ``commands/score.py``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from pathlib import Path

from asyncgen.commands.run import OFFLINE_KEY, open_transport, request_destination
from asyncgen.config import Task, load_task
from asyncgen.errors import InputFileError, UsageError
from asyncgen.eventloop import run_event_loop
from asyncgen.prices import is_openai_endpoint, load_price_table, output_token_limit, price_for, run_price
from asyncgen.progress import exit_code, print_summary, report_progress, resume_command, stop_progress
from asyncgen.scenario import Scenario, read_dataset
from asyncgen.scores import header_for, opened, scores_path
from asyncgen.scoring import (
    FORMS, TOP_K, TOP_K_OPENAI_COMPLETIONS, ScoreCounts, ScorePipeline, ScoreSettings, Scorer, score_summary,
)
from asyncgen.stats import RunStats
from asyncgen.terminal import print_fitted

log = logging.getLogger("asyncgen.score")


def score(args: argparse.Namespace) -> int:
    if args.cancel and not args.batch:
        raise UsageError("--cancel cancels the batches of a --batch scoring job; pass --batch --cancel")
    if args.batch and (args.write_requests or args.results or args.judge_model):
        given = "--write-requests" if args.write_requests else "--results" if args.results else "--judge-model"
        why = ("asks the judge about answers as they arrive" if args.judge_model else
               "is the round trip through another engine; --batch makes it through the Batch API")
        raise UsageError(f"{given} {why}, so it cannot go with --batch; drop one of them")
    if args.cancel:
        from asyncgen.score_batch_job import cancel

        return cancel(args)
    if args.write_requests and args.results:
        raise UsageError("--write-requests and --results are two halves of one round trip; give one of them")
    if args.judge_model and (args.write_requests or args.results):
        raise UsageError("--judge-model asks the judge about answers as they arrive, so it cannot go with "
                         f"--{'write-requests' if args.write_requests else 'results'}; score in real time to use it")
    if args.judge_model and args.form == "single":
        raise UsageError("--judge-model judges the free answers of the multi-token form; drop --form single")
    limit = output_token_limit(args.model, args.base_url)
    if limit is not None and args.max_answer_tokens > limit and args.form != "single":
        raise UsageError(f"--max-answer-tokens {args.max_answer_tokens}: {args.model} writes at most {limit} tokens "
                         f"an answer (OpenAI's limit, which refuses more); give at most {limit}")
    scenarios, task, readings = _checked_dataset(args)
    mode, url, api_key = request_destination(args)
    if args.results and args.base_url is None:
        mode, url = "batch", None  # the answers are in the file; the header names where they came from below
    settings = ScoreSettings(
        model=args.model, safe_answer=task.answers.safe, harmful_answer=task.answers.harmful, readings=readings,
        forms=FORMS if args.form == "both" else (args.form,), chat=args.chat,
        completions_top_k=TOP_K_OPENAI_COMPLETIONS if mode in ("openai", "simulator") or (url and is_openai_endpoint(url))
        else TOP_K,
        max_answer_tokens=args.max_answer_tokens, behavior=task.behavior, judge_model=args.judge_model)
    if settings.behavior is None and settings.judge_model is None and "multi" in settings.forms:
        log.warning("task %s has no behavior block: free answers are recorded without a refusal verdict "
                    "(add refusal markers to its YAML to get one)", task.task_name)
    if args.write_requests:
        from asyncgen.score_batch import write_requests

        return write_requests(args, scenarios, settings)
    endpoint = {"simulator": "simulator", "openai": "https://api.openai.com/v1"}.get(mode, url)
    if args.results:
        endpoint = args.base_url or "batch"
    path = scores_path(args.dataset, args.model)
    header = header_for(args.dataset, task.task_name, scenarios[0], args.model, endpoint, readings, settings.forms,
                        judge=settings.judge_model if "multi" in settings.forms else None)
    prices, prices_path = load_price_table(args.config_dir, args.prices)
    price = run_price(prices, args.model, args.base_url, table_given=bool(args.prices))
    judge_price = (run_price(prices, settings.judge_model, args.base_url, table_given=bool(args.prices))
                   if settings.judge_model else None)
    if args.max_cost is not None:
        for model, its_price in ((args.model, price), *(((settings.judge_model, judge_price),) if settings.judge_model else ())):
            if its_price is None:
                where = (f"at --base-url {args.base_url} the cost of {model!r} is unknown; pass --prices FILE with its price"
                         if price_for(prices, model) is not None else
                         f"model {model!r} has no price in {prices_path}; add it there or pass --prices")
                raise UsageError(f"--max-cost: {where}")
    if args.batch:
        from asyncgen.score_batch_job import Job, run

        return run(Job(args, scenarios, settings, header, price, mode))
    with opened(path, header, scenarios) as scores:  # a run that writes no score leaves nothing it made
        if scores.torn_saved:
            log.warning("%s: cut an incomplete last line (a killed run leaves one), saved in %s", path,
                        scores.torn_saved)
        stats = RunStats(target=len(scenarios), accepted=len(scores.scored))
        stats.cost_usd = None if price is None else 0.0
        stats.cost_simulated = mode == "simulator"
        counts = ScoreCounts()
        if stats.accepted >= stats.target:
            print_fitted(f"{path} already scores all {stats.target} scenarios of {args.dataset}: nothing to do", sys.stdout)
            if getattr(args, "control", None) is not None:  # the Python API's result: nothing spent, at a known price
                args.control.record_cost(stats.cost_usd, stats.cost_simulated)
            return 0
        if scores.resumed:
            log.info("%s: resuming: %d of %d scenarios scored", path, scores.resumed, stats.target)
        if args.results:
            from asyncgen.score_batch import read_results

            return read_results(args, scenarios, settings, scores, stats, counts, price)
        prices_of = (price, judge_price)
        return run_event_loop(_score_async(args, scenarios, settings, scores, stats, counts, prices_of, mode, url,
                                           api_key, path))


def _checked_dataset(args) -> tuple[list[Scenario], Task, dict[str, list[str]]]:
    """The dataset's scenarios, its task and the answers' readings; a dataset that fails validate is refused."""
    from asyncgen.commands.validate_dataset import check_dataset

    dataset = read_dataset(args.dataset)
    if not dataset.scenarios:
        raise InputFileError(f"{args.dataset}: no scenarios in it; generate some with `python -m asyncgen run`")
    log.info("validating %s", args.dataset)  # a cold tokenizer cache says so itself (tokenizers.load_all)
    report = check_dataset(Path(args.dataset), args.config_dir, args.tokenizer, args.cache_dir, args.task)
    if report.problems:
        raise InputFileError(f"{args.dataset} fails validation ({len(report.problems)} problems; the first: "
                             f"{report.problems[0]}); see `python -m asyncgen validate {args.dataset}`")
    task = load_task(args.task or dataset.task_name, args.config_dir)
    return dataset.scenarios, task, _readings(task, args)


def _readings(task: Task, args) -> dict[str, list[str]]:
    """Each answer's two spellings: as ``--tokenizer``'s tokens decode (the answer after the prompt's
    trailing-space token, and merged with it), else bare and with a leading space."""
    answers = (task.answers.safe, task.answers.harmful)
    if not args.tokenizer:
        return {answer: [answer, " " + answer] for answer in answers}
    from asyncgen.answers import task_tokens
    from asyncgen.tokenizers import load_all, resolve_specs

    tokenizer = load_all(resolve_specs(task.tokenizers, args.tokenizer[:1]), args.cache_dir)[0]
    tokens = task_tokens(task, tokenizer)
    out = {}
    for answer in answers:
        spellings = [tokenizer.decode([tokens.answer_ids[answer]]), tokenizer.decode([tokens.answer_ids_merged[answer]])]
        out[answer] = list(dict.fromkeys(spellings))
    return out


async def _score_async(args, scenarios, settings, scores, stats, counts, prices_of, mode, url, api_key, path) -> int:
    from asyncgen.throttle import RetryPolicy, Throttle
    from asyncgen.workers import Sender

    pipeline: ScorePipeline | None = None
    failure: BaseException | None = None
    async with contextlib.AsyncExitStack() as stack:
        progress = None
        try:
            if mode == "simulator":
                from asyncgen.simulator import SimulatorConfig, running_simulator

                simulator = await stack.enter_async_context(running_simulator(SimulatorConfig(
                    task=args.task or "refusal", config_dir=args.config_dir, latency_ms=50, latency_jitter_ms=25)))
                url = simulator.base_url
                log.info("offline: no OPENAI_API_KEY and no --base-url, so requests go to asyncgen's built-in "
                         "simulator at %s; its 'model' is simulated, not %s", url, args.model)
            transport = open_transport(stack, api_key or OFFLINE_KEY, url, concurrency=args.concurrency,
                                       timeout=args.request_timeout)
            largest = max(len(t) for s in scenarios for t in s.texts()) // 4 + 8 + args.max_answer_tokens
            if settings.judge_model:  # the judge's prompt holds the text and the answer
                from asyncgen.behavior import judge_prompt

                largest += len(judge_prompt("", "")) // 4 + 8 + args.max_answer_tokens
            sender = Sender(transport, Throttle(args.rpm, args.tpm, largest_request_tokens=largest),
                            RetryPolicy(max_attempts=args.max_attempts), stats, api_key)
            price, judge_price = prices_of
            scorer = Scorer(sender, settings, stats, counts, price, api_key, judge_price)
            pipeline = ScorePipeline(scorer, scenarios, scores, stats, counts, concurrency=args.concurrency,
                                     max_cost=args.max_cost, grace_period=args.grace_period)
            # No yield on the line: every scenario takes the same requests, a figure of generation only.
            progress = asyncio.create_task(report_progress(stats, None))
            if getattr(args, "control", None) is not None:  # the Python API's stop (asyncgen.score)
                args.control.attach(pipeline.interrupt, stats)
            await pipeline.run()
        except BaseException as exc:
            failure = exc
        finally:
            await stop_progress(progress)
            stop_reason = pipeline.stop_reason if pipeline is not None else None
            if failure is not None and stop_reason in (None, "failed"):
                stop_reason = "interrupted" if isinstance(failure, (asyncio.CancelledError, KeyboardInterrupt)) else "failed"
            print_summary(score_summary(stats, counts, path=str(path), stop_reason=stop_reason,
                                        resume_command=resume_command(args)))
    return exit_code("score", failure, stats.accepted >= stats.target, stop_reason, args.max_cost)


