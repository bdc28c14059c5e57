"""``batch run``: create, submit, poll, download, process and top up (with the real-time pilot
and finish of ``real_time``) until the dataset holds exactly --num-scenarios; killed at any
moment and started again, it resumes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from dataclasses import dataclass

from asyncgen.batch import lifecycle, plan
from asyncgen.batch.endpoint import POLL_SECONDS, directory_endpoint, open_batch_api
from asyncgen.batch.manifest import Manifest
from asyncgen.progress import resume_command
from asyncgen.commands.batch import real_time
from asyncgen.commands.batch.batches import SHOWN_ERRORS
from asyncgen.commands.batch.directory import Setup, load_setup, read_dataset, refuse_a_lost_dataset
from asyncgen.commands.batch.display import Display
from asyncgen.commands.batch.processing import Interrupts, processing_pass, processing_stages
from asyncgen.commands.batch.rounds import plan_and_write
from asyncgen.commands.batch.summary import run_cost, summary_text
from asyncgen.errors import RunError
from asyncgen.eventloop import run_event_loop
from asyncgen.progress import _money, print_summary

log = logging.getLogger("asyncgen.batch")
# What a stop during a real-time wave keeps: each answer is accepted as it comes, its usage saved.
REAL_TIME_KEPT = "the pairs answered so far are in the dataset and their cost in the manifest (not asked again)"


def _refuse_a_yield_too_low(args, setup: Setup, manifest: Manifest, count: int) -> None:
    """Without --max-cost, stop before a round (or a finish) sized for a measured yield under
    ``plan.LOWEST_YIELD_SHARE`` of the prior: the task or the model is not doing what it should,
    and the next round would cost many times what the plan assumed (offline, a model that got every
    pair wrong was asked 812, then 5,600 requests for 58 scenarios)."""
    measured, prior = manifest.yield_per_request(), plan.prior_yield(setup.task)
    if args.max_cost is not None or measured is None or measured >= prior * plan.LOWEST_YIELD_SHARE:
        return
    deficit = manifest.target - count - manifest.spares
    estimate, _ = plan.yield_estimate(manifest, setup.task.batch_size, deficit)
    top = sorted((manifest.totals.get("rejections") or {}).items(), key=lambda kv: -kv[1])[:2]
    why = "; rejected most: " + ", ".join(f"{k} {n}" for k, n in top) if top else ""
    raise RunError(f"{setup.directory}: {measured:.2f} valid new pairs per answered request ({manifest.totals['requests_ok']} "
                   f"answered{why}), under a tenth of the {prior:g} expected: the next round would ask about "
                   f"{plan.round_size(deficit, estimate):,} requests for {deficit} scenarios, so nothing more is sent; "
                   "check the task and the model, or give --max-cost to go on within a budget")


def cmd_run(args) -> int:
    started = time.monotonic()
    try:
        setup = load_setup(args, load_tokenizers=True)
    except KeyboardInterrupt:
        print_summary(f"asyncgen batch run: interrupted while loading the tokenizers: nothing "
                      f"written to {args.dir} or {args.output or 'the dataset'}\n  resume with: {resume_command(args)}")
        return 130
    manifest = setup.manifest
    if manifest is None:
        setup.directory.mkdir(parents=True, exist_ok=True)
        manifest = Manifest(str(args.task or "refusal"), setup.model, setup.fingerprint, args.num_scenarios or 1500,
                            args.output or "dataset.jsonl")
    manifest.target = args.num_scenarios or manifest.target
    if args.output:
        manifest.output = args.output
    refuse_a_lost_dataset(manifest, setup.directory)
    setup.manifest = manifest
    manifest.save(setup.directory)
    outcome = RunOutcome()
    try:
        run_event_loop(_run_async(args, setup, manifest, started, outcome))
    except (KeyboardInterrupt, asyncio.CancelledError):  # CancelledError: the Python API's stop, off the main thread
        outcome.stop = "interrupted"
    count, _ = read_dataset(manifest.output, setup.task)
    mode = directory_endpoint(args, manifest)["mode"]
    text = summary_text(setup, manifest, count, title="batch run", wall_s=time.monotonic() - started,
                        stop=outcome.stop, unvalidated=outcome.unvalidated, mode=mode, stopped_pass=outcome.stopped_pass)
    print_summary(text)
    if getattr(args, "control", None) is not None:  # the Python API's result (asyncgen.generate_batch)
        at_batch, _, simulated = run_cost(setup, manifest, mode)
        args.control.record_cost(at_batch, simulated)
    if count >= manifest.target:
        return 0
    if outcome.stop == "interrupted":
        going = "; submitted batches go on" if manifest.in_flight() else ""
        print_summary(f"asyncgen batch run: interrupted while {outcome.step}: {outcome.kept}; all kept in {setup.directory}{going}\n"
                      f"  resume with: {resume_command(args)}")
        return 130
    if outcome.stop == "max_cost":
        print(f"asyncgen batch run: stopped at --max-cost ${args.max_cost}: the next request could cross it; "
              "raise --max-cost and run again to resume", file=sys.stderr)
    return 1


def _stop_from_any_thread(task: asyncio.Task, interrupts: Interrupts):
    """``batch run``'s Ctrl-C, callable from any thread: the run's task is cancelled, as the event
    loop's own SIGINT handler does; a validation pass of this run under way (``interrupts``: the
    run's own; synchronous: the cancellation lands when it ends) stops after the chunk in hand."""
    loop = asyncio.get_running_loop()

    def stop() -> None:
        if interrupts.active:
            interrupts.interrupt()
        with contextlib.suppress(RuntimeError):  # the loop closed: the run is over
            loop.call_soon_threadsafe(task.cancel)
    return stop


@dataclass
class RunOutcome:
    stop: str | None = None  # why batch run ended short: "interrupted", "max_cost"
    unvalidated: int = 0  # candidates a stopped processing pass left (the next pass replays them)
    stopped_pass: object = None  # that pass's report (process.PassReport)
    step: str = "starting"  # what the run was doing (an interrupt says so), and what a stop then keeps
    kept: str = "nothing was sent"

    def at(self, step: str, kept: str) -> None:
        self.step, self.kept = step, kept


async def _run_async(args, setup: Setup, manifest: Manifest, started: float, outcome: RunOutcome) -> None:
    directory = setup.directory
    interrupts = Interrupts()  # this run's: a stop to another run in this process (threads) leaves it alone
    if getattr(args, "control", None) is not None:  # the Python API's stop (asyncgen.generate_batch)
        args.control.attach(_stop_from_any_thread(asyncio.current_task(), interrupts), on_loop=False)
    outcome.at("opening the dataset", "nothing was sent")
    with processing_stages(args, setup, manifest) as (sink, validator, annotations), Display(setup, manifest, started) as display:
        outcome.at("connecting to the batch API (offline: starting the simulator)", "nothing was sent")
        async with open_batch_api(args, directory, manifest) as (api, mode):
            poll = args.poll_seconds or POLL_SECONDS[mode]
            while True:
                outcome.at(f"asking about round {manifest.rounds}'s batches", "what was downloaded is kept")
                await lifecycle.refresh(directory, manifest, api)
                await lifecycle.download(directory, manifest, api)
                names = [e.name for e in manifest.entries if e.downloaded and not e.processed]
                if names or manifest.processing is not None or (manifest.spares and sink.count < manifest.target):
                    outcome.at("processing results", "what was validated is in the dataset")
                    report = processing_pass(setup, manifest, sink, validator, annotations, names, display, interrupts)
                    if report.stopped:  # Ctrl-C during the pass: the run stops here, after it, even when it finished
                        outcome.stop, outcome.unvalidated = "interrupted", report.unvalidated
                        outcome.stopped_pass = report if report.unvalidated else None
                        return
                    if report.read.new and not report.read.requests_ok and sink.count < manifest.target:
                        causes = ", ".join(f"{cause}: {n}" for cause, n in report.read.errors.most_common(3))
                        raise RunError(f"round {manifest.rounds} of {directory}: all {report.read.new} requests failed "
                                       f"({causes}), so nothing more is sent; fix the cause, then run again")
                if sink.count >= manifest.target:
                    return
                if not manifest.in_flight() and not manifest.unsubmitted():
                    failed = [e for e in manifest.entries if e.status == "failed" and e.round == manifest.rounds]
                    if failed:
                        for entry in failed:
                            log.error("batch %s (%s) failed validation:", entry.batch_id, entry.name)
                            for error in entry.errors[:SHOWN_ERRORS]:
                                log.error("    line %s: %s: %s", error["line"], error["code"], error["message"])
                        raise RunError(f"{len(failed)} batch(es) of round {manifest.rounds} failed validation (errors above) "
                                       "and are not resubmitted as they are; fix the cause, then `asyncgen batch topup "
                                       f"--dir {directory}` and run again")
                    allowance = real_time.finish_allowance(args, manifest)
                    _refuse_a_yield_too_low(args, setup, manifest, sink.count)
                    # A finish is for a round that ended short of its own target, not for a target raised since.
                    if (manifest.rounds and manifest.round_target == manifest.target
                            and manifest.target - sink.count - manifest.spares <= allowance):
                        outcome.at(f"finishing round {manifest.rounds} in real time", REAL_TIME_KEPT)
                        await real_time.finish(args, setup, manifest, api, sink, validator, annotations, display)
                    else:
                        outcome.at("sending the pilot (real-time requests that measure the yield before round 1)", REAL_TIME_KEPT)
                        display.activity = "pilot: real-time requests measure the yield"
                        display.show(sink.count)
                        try:
                            await real_time.pilot(args, setup, manifest, api, sink, validator, annotations, display)
                        finally:
                            display.activity = None
                    if sink.count >= manifest.target:
                        return
                    _, avoid = read_dataset(manifest.output, setup.task)
                    outcome.at(f"writing round {manifest.rounds + 1}'s request files", "nothing was sent")
                    made = plan_and_write(args, setup, manifest, manifest.target - sink.count, avoid, allowance)
                    if not made.requests:
                        outcome.stop = "max_cost"
                        return
                    log.info("round %d: %d requests for %d scenarios (worst case %s at batch prices)%s", manifest.rounds,
                             made.requests, manifest.target - sink.count, _money(made.worst_cost_usd),
                             f"; a shortfall of up to {allowance} is finished in real time" if allowance else "")
                if manifest.unsubmitted():
                    outcome.at(f"submitting round {manifest.rounds}", "a batch created meanwhile is found again, "
                               "never submitted twice")
                    await lifecycle.submit(directory, manifest, api, say=lambda text: log.info("%s", text))
                display.show(sink.count)
                outcome.at(f"waiting for round {manifest.rounds}'s batches", "nothing is lost")
                await asyncio.sleep(poll)
