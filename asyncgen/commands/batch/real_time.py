"""``batch run``'s real-time requests, through ``run``'s stages at real-time prices (seconds, not a
round of up to a day): the pilot, which measures the yield before round 1 is sized, and the
finish, which asks for a short round's last scenarios (``asyncgen/batch/pilot.py`` sends them;
``asyncgen/batch/plan.py`` sizes them)."""

from __future__ import annotations

import logging
import math

import orjson

from asyncgen.batch import plan
from asyncgen.batch.manifest import Entry, Manifest
from asyncgen.commands.batch.directory import Setup, read_dataset
from asyncgen.commands.batch.display import Display
from asyncgen.commands.batch.processing import run_state
from asyncgen.progress import _money
from asyncgen.prompting import GenerationSettings, response_format_for
from asyncgen.sink import atomic_write
from asyncgen.stats import RunStats

log = logging.getLogger("asyncgen.batch")
FINISH_WAVE_MAX = 256  # real-time requests in one wave of a finish (more waves follow while each adds pairs)
# A finish ends when its last requests (at least FINISH_BARREN_REQUESTS of them: one request can be a
# refusal, a failure, an answer of rejected pairs) added nothing where this many pairs were expected.
FINISH_GIVES_UP_AFTER = 20
FINISH_BARREN_REQUESTS = 3


def finish_allowance(args, manifest: Manifest) -> int:
    """The shortfall (scenarios) ``batch run`` finishes in real time: --real-time-finish of the target."""
    return int(getattr(args, "real_time_finish", 0.0) * manifest.target)


async def pilot(args, setup: Setup, manifest: Manifest, api, sink, validator, annotations, display: "Display | None" = None) -> None:
    """Before the first round: a pilot of real-time requests measures the yield (see
    asyncgen/batch/pilot.py), unless something is measured already or --pilot-requests 0. Its
    requests go out in waves (at most ``plan.PILOT_WAVES``): the first sized by the prior, each
    next one by what the pilot measured so far (``plan.best_pilot``: its premium against the
    round's margin), none once that says the pilot is large enough. --pilot-requests N: one wave of N."""
    deficit = manifest.target - sink.count - manifest.spares
    answered = any((e.request_counts or {}).get("completed") for e in manifest.pilots())
    # A pilot none of whose requests was answered (a wrong --base-url) measured nothing: it goes again.
    if manifest.rounds or answered or manifest.yield_per_request() is not None or deficit <= 0:
        return
    asked = setup.task.batch_size
    settings = GenerationSettings(setup.model, response_format_for(setup.model, args.response_format), args.temperature, args.seed)
    yields: list[int] = []
    for wave in range(1 if args.pilot_requests is not None else plan.PILOT_WAVES):
        deficit = manifest.target - sink.count - manifest.spares
        if deficit <= 0:
            break
        if args.pilot_requests is not None:
            count = min(args.pilot_requests, max(1, deficit // max(asked, 1)))
        else:
            count = plan.pilot_wave(deficit, yields, asked, plan.prior_yield(setup.task), finish_allowance(args, manifest))
        count = _affordable(args, setup, manifest, count)
        if count <= 0:
            break
        yields += await _wave(args, setup, manifest, api, sink, validator, annotations, settings, count,
                              "pilot", wave + 1)
        if display is not None:
            display.show(sink.count)
    if not yields:
        return
    estimate, _ = plan.yield_estimate(manifest, setup.task.batch_size)  # as measured: no round's duplicates
    at_real = setup.usage_cost(manifest.pilots())[1]
    log.info("pilot: %d requests in %d wave(s), %s valid new pairs per request%s; %s at real-time prices",
             len(yields), len(manifest.pilots()), f"{estimate.mean:.2f} ± {estimate.spread:.2f}" if estimate else "?",
             "" if estimate else " (too few answers to size by: the prior is used)", _money(at_real))


async def finish(args, setup: Setup, manifest: Manifest, api, sink, validator, annotations, display: "Display") -> None:
    """After round R ended short of its target by at most ``finish_allowance``: the rest in real
    time, through ``run``'s stages as the pilot (seconds, at real-time prices), not another round
    of up to a day. Waves sized by the yield the rounds measured (``ceil(deficit / mean)``: the
    median's; what a wave adds beyond the target becomes spares). It stops when the target is
    reached; when its last requests (unanswered, or answered with no new valid pair) were expected
    to add ``FINISH_GIVES_UP_AFTER`` pairs or more (the measured yield no longer holds, or the
    server does not answer), and then another round takes over; or when --max-cost allows no more.
    Killed and run again, it goes on: its entries are recorded before they are sent, as the pilot's."""
    mean = manifest.yield_per_request()
    if not mean:  # nothing measured, or the rounds yielded nothing: real-time requests would not either
        return
    settings = GenerationSettings(setup.model, response_format_for(setup.model, args.response_format), args.temperature, args.seed)
    barren = 0  # requests since the last pair added (a refusal, a failed request, an answer of rejected pairs)
    while (deficit := manifest.target - sink.count - manifest.spares) > 0:
        count = _affordable(args, setup, manifest, min(math.ceil(deficit / mean), FINISH_WAVE_MAX))
        if count <= 0:
            return
        display.activity = f"finishing: {count} real-time requests"
        display.show(sink.count)
        try:
            added = await _wave(args, setup, manifest, api, sink, validator, annotations, settings, count,
                                "finish", len(manifest.finishes(manifest.rounds)) + 1)
        finally:
            display.activity = None
        barren = 0 if sum(added) else barren + count
        if barren >= FINISH_BARREN_REQUESTS and barren * mean >= FINISH_GIVES_UP_AFTER:
            log.warning("finish: the last %d real-time requests added no scenario where %.0f were expected; another "
                        "round goes on for the %d scenarios left", barren, barren * mean,
                        manifest.target - sink.count - manifest.spares)
            return


def _affordable(args, setup: Setup, manifest: Manifest, count: int) -> int:
    """As many of ``count`` real-time requests as --max-cost allows, at their worst case at real-time prices."""
    if args.max_cost is None:
        return count
    from asyncgen.prompting import request_cost_bound

    budget_left = args.max_cost - (manifest.committed_worst_cost(setup.costs) or 0.0)
    return plan.affordable(count, request_cost_bound(setup.task, setup.price, args.avoid_chars), budget_left)[0]


async def _wave(args, setup: Setup, manifest: Manifest, api, sink, validator, annotations, settings,
                count: int, source: str, wave: int) -> list[int]:
    """One wave of real-time requests, ``source`` "pilot" (before round 1) or "finish" (after the
    last round): ``count`` requests, their pairs accepted; a pilot's yields added to those its
    earlier waves saved in the manifest; returns this wave's."""
    from asyncgen.batch.pilot import PilotResult, run_pilot

    _, avoid = read_dataset(manifest.output, setup.task)
    numbers = range(manifest.next_request, manifest.next_request + count)
    if source == "pilot":
        log.info("pilot, wave %d: %d real-time requests measure the yield before round 1 is sized (their pairs go into "
                 "the dataset)", wave, count)
    else:
        log.info("finish, wave %d: %d real-time requests for the %d scenarios round %d left to go", wave, count,
                 manifest.target - sink.count - manifest.spares, manifest.rounds)
    # The entry first, its usage saved with every answer: killed at any moment, the wave is not
    # sent again and what it was paid is counted (each answer's pairs go into the dataset as it comes).
    entry = Entry(f"{source}-{manifest.next_request}", manifest.rounds, count, source=source, state="submitted",
                  status="completed", downloaded=True, processed=True)
    manifest.next_request += count
    manifest.entries.append(entry)
    stats = RunStats(target=manifest.target, accepted=sink.count)
    result = PilotResult()
    earlier_yields = list(manifest.totals.get("pilot_yields", []))

    def record() -> None:
        entry.request_counts = {"total": count, "completed": stats.requests_ok, "failed": count - stats.requests_ok}
        entry.usage = {"input": stats.prompt_tokens, "output": stats.completion_tokens}
        if source == "pilot":  # each answer's yield with it: killed, the pilot paid for is not lost (nor sent again)
            manifest.totals["pilot_yields"] = earlier_yields + result.yields
        manifest.save(setup.directory)

    record()
    sink.sync(run_state(setup, manifest, sink))  # the checkpoint's record too: a rebuild must not number requests again
    stats.on_usage = record
    try:
        await run_pilot(api.client, api.api_key, setup.task, settings, setup.price, numbers, avoid, args.avoid_chars,
                        trust_env=api.trust_env, sink=sink, validator=validator, annotations=annotations, stats=stats,
                        result=result, on_answer=record)
    finally:  # stopped too: what was answered is in the dataset, its yields and surplus recorded
        if result.surplus:  # the target is reached: no wave follows
            name = f"spares-{source}-{manifest.next_request}.jsonl"
            atomic_write(setup.directory / name, b"".join(
                orjson.dumps({"prompt": v.prompt, "counterfactual": v.counterfactual}) + b"\n" for v in result.surplus))
            manifest.spares_file, manifest.spares = name, len(result.surplus)
        record()
        sink.sync(run_state(setup, manifest, sink))
    log.info("%s, wave %d: %d answered, %d scenarios accepted, yields %s", source, wave, stats.requests_ok,
             result.accepted, " ".join(map(str, result.yields)))
    return result.yields
