"""``asyncgen simulate``: the OpenAI-compatible simulator in the foreground.

The first line on stdout is the base URL (``http://127.0.0.1:PORT/v1``), for
``OPENAI_BASE_URL``; it stops cleanly on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import sys

from asyncgen.errors import UsageError
from asyncgen.eventloop import LOOPBACK_HOSTS, run_event_loop
from asyncgen.simulator import SimulatorConfig, serve
from asyncgen.simulator.settings import (
    FAIL_FIRST_STATUSES,
    FAULT_KINDS,
    IMPERFECTION_KINDS,
    LATENCY_DISTRIBUTIONS,
    parse_faults,
    parse_rates,
)

log = logging.getLogger("asyncgen.simulate")



def register(subparsers, common: argparse.ArgumentParser) -> None:
    defaults = SimulatorConfig()
    parser = subparsers.add_parser(
        "simulate",
        parents=[common],
        description="Serve the parts of the OpenAI API asyncgen uses, answering generation requests with "
        "pairs composed from the task's lexicon and other questions as a model under study (with log-probabilities). "
        "Prints the base URL as its first line; stops on Ctrl-C.",
    )
    add = parser.add_argument
    add("--host", default=defaults.host, help=f"address to bind (default: {defaults.host}; loopback unless told otherwise)")
    add("--port", type=int, default=defaults.port, help="port to bind (default: 0, a free port)")
    add("--task", default=defaults.task, help=f"task whose lexicon the model plays (default: {defaults.task})")
    add("--config-dir", default=None, help="folder with tasks/<name>.yaml (default: the configs that ship with asyncgen)")
    add("--seed", type=int, default=defaults.seed, help=f"seed of every draw: same seed and requests, same answers (default: {defaults.seed})")
    add("--api-key", default=None, help="require exactly this bearer key (default: any non-empty key)")
    add("--rpm", type=int, default=defaults.rpm, help=f"requests per minute (default: {defaults.rpm})")
    add("--tpm", type=int, default=defaults.tpm, help=f"tokens per minute (default: {defaults.tpm})")
    add("--start-drained", action="store_true", help="start both rate-limit buckets empty, as after a minute at the limit (default: full, which admits a first burst of a whole minute's worth)")
    add("--quota-exhausted", action="store_true", help="answer every chat request and batch creation with 429 insufficient_quota")
    add("--faults", default="", metavar="KIND=RATE,...",
        help=f"fault rates, any subset of: {', '.join(FAULT_KINDS)} (e.g. 500=0.05,reset=0.02); "
        "500/502/503/timeout/reset per request, the rest per answer")
    add("--fail-first", type=int, default=0, metavar="N", help="fail the first N attempts of each request (by x-stainless-retry-count)")
    add("--fail-first-status", type=int, default=defaults.fail_first_status, choices=FAIL_FIRST_STATUSES,
        help=f"status of those failures (default: {defaults.fail_first_status})")
    add("--latency-ms", type=float, default=0.0, help="mean latency of a chat answer in ms (default: 0)")
    add("--latency-jitter-ms", type=float, default=0.0, help="spread of the latency in ms (default: 0)")
    add("--latency-dist", default=defaults.latency_distribution, choices=LATENCY_DISTRIBUTIONS,
        help=f"latency distribution: fixed, uniform (mean +- jitter), normal (sd jitter), exponential "
        f"(mean plus a tail of mean jitter) (default: {defaults.latency_distribution})")
    add("--hang-s", type=float, default=defaults.hang_s, help=f"seconds the timeout fault holds a response; keep it above the client's timeout (default: {defaults.hang_s:g})")
    add("--batch-speed", type=float, default=defaults.batch_speed,
        help=f"simulated seconds per real second for batches (default: {defaults.batch_speed:g}; 86400 runs a 24 h window in 1 s)")
    add("--batch-seconds-per-request", type=float, default=defaults.batch_seconds_per_request,
        help=f"simulated seconds each batch request takes (default: {defaults.batch_seconds_per_request:g})")
    add("--batch-state-dir", default=None, metavar="DIR",
        help="keep files and batches in DIR across restarts, as a real API does (default: in memory only)")
    add("--imperfect-rate", type=float, default=defaults.imperfect_rate,
        help=f"share of pairs the model gets wrong (default: {defaults.imperfect_rate:g})")
    add("--imperfect-mix", default=None, metavar="KIND=WEIGHT,...",
        help=f"relative weights of the kinds of wrong pair: {', '.join(IMPERFECTION_KINDS)} (default: equal)")
    add("--prose-rate", type=float, default=defaults.prose_rate,
        help=f"share of answers wrapped in prose around the JSON (default: {defaults.prose_rate:g})")
    add("--non-flip-share", type=float, default=defaults.non_flip_share, metavar="SHARE",
        help=f"share of scenarios whose answer does not flip between prompt and counterfactual when scored (default: {defaults.non_flip_share:g})")
    add("--outside-top-k-share", type=float, default=defaults.outside_top_k_share, metavar="SHARE",
        help=f"share of scored answers whose other answer falls outside any top-k (default: {defaults.outside_top_k_share:g})")
    parser.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    config = SimulatorConfig(
        host=args.host,
        port=args.port,
        task=args.task,
        config_dir=args.config_dir,
        seed=args.seed,
        api_key=args.api_key,
        rpm=args.rpm,
        tpm=args.tpm,
        start_drained=args.start_drained,
        quota_exhausted=args.quota_exhausted,
        faults=parse_faults(args.faults),
        fail_first=args.fail_first,
        fail_first_status=args.fail_first_status,
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.latency_jitter_ms,
        latency_distribution=args.latency_dist,
        hang_s=args.hang_s,
        batch_speed=args.batch_speed,
        batch_seconds_per_request=args.batch_seconds_per_request,
        batch_state_dir=args.batch_state_dir,
        imperfect_rate=args.imperfect_rate,
        prose_rate=args.prose_rate,
        non_flip_share=args.non_flip_share,
        outside_top_k_share=args.outside_top_k_share,
    )
    if args.imperfect_mix is not None:
        config.imperfect_mix = parse_rates(args.imperfect_mix, IMPERFECTION_KINDS, "--imperfect-mix")
    return config.validate()


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if config.host not in LOOPBACK_HOSTS:
        log.warning("binding to %s: the simulator is reachable from other machines", config.host)

    def ready(sim) -> None:
        print(sim.base_url, flush=True)
        log.info("simulating task %s on %s (rpm %s, tpm %s, faults %s); Ctrl-C to stop",
                 config.task, sim.base_url, config.rpm, config.tpm, config.faults or "none")

    try:
        run_event_loop(serve(config, ready))
    except OSError as exc:
        raise UsageError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from exc
    log.info("simulator stopped")
    sys.stdout.flush()
    return 0

