"""``asyncgen run``: generate a dataset of exactly N validated scenarios.

The handler turns the flags into ``GenerateOptions`` and runs them through asyncgen/generation.py,
the run's one composition root (the Python API's ``asyncgen.generate`` runs the same).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from asyncgen.commands._shared import add_avoid_chars_flag, add_task_flags, add_tokenizer_flags
from asyncgen.commands.argtypes import base_url, non_negative_float, non_negative_int, positive_float, positive_int
from asyncgen.eventloop import run_event_loop
from asyncgen.generation import OFFLINE_KEY, _plan, open_transport, request_destination
from asyncgen.prices import is_openai_endpoint
from asyncgen.progress import exit_code, print_summary
from asyncgen.prompting import OUTPUT_TOKENS_OVERHEAD, OUTPUT_TOKENS_PER_PAIR
from asyncgen.scenario import LINES_PER_SCENARIO
from asyncgen.terminal import print_fitted

# The run's pieces that score and batch use: they live with the composition, asyncgen/generation.py.
__all__ = ["register", "run", "OFFLINE_KEY", "open_transport", "request_destination"]


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


def run(args: argparse.Namespace) -> int:
    """Parse -> options -> the run (asyncgen/generation.py, the API's too) -> summary and exit code."""
    from asyncgen.generation import GenerateOptions, generate_async, prepare

    options = GenerateOptions.from_namespace(args)
    try:
        prepared = prepare(options)
    except KeyboardInterrupt:
        print_fitted(f"asyncgen run stopped (interrupted) while loading the tokenizers: {args.output} was not touched",
                     sys.stderr)
        return 130
    if args.dry_run:
        return _dry_run(args, prepared.task, prepared.price)
    result = run_event_loop(generate_async(prepared))
    return exit_code("run", None, result.finished, result.stop_reason, args.max_cost,
                     " (the summary suggests a budget)")


def _dry_run(args, task, price) -> int:
    existing = 0
    if Path(args.output).is_file() and not args.overwrite:
        with open(args.output, "rb") as handle:
            existing = sum(1 for _ in handle) // LINES_PER_SCENARIO
    remaining = max(0, args.num_scenarios - existing)
    plan = _plan(task, price, remaining, args.avoid_chars)
    mode, base_url, _ = request_destination(args)
    cost = plan.cost_usd
    lines = [f"plan for task {task.task_name} with {args.model} ({mode}{' ' + base_url if base_url else ''}):"]
    lines.append(f"  scenarios       {remaining} to generate ({existing} already in {args.output}, target {args.num_scenarios})")
    lines.append(f"  yield estimate  {plan.yield_per_request:.1f} accepted scenarios per request ({task.batch_size} pairs asked per request)")
    lines.append(f"  requests        about {plan.requests}, at most {args.concurrency} in flight")
    lines.append(f"  tokens          about {plan.requests * plan.prompt_tokens} prompt + at most {plan.requests * plan.output_tokens} "
                 f"completion ({plan.prompt_tokens} + {plan.output_tokens} per request)")
    lines.append(f"  output cap      {plan.output_tokens} tokens to start ({task.batch_size} x {OUTPUT_TOKENS_PER_PAIR} + "
                 f"{OUTPUT_TOKENS_OVERHEAD}), then learned")
    why = f"no price for {args.model}" if args.prices or is_openai_endpoint(args.base_url) else "not OpenAI's server: pass --prices"
    shown = f"unknown ({why})" if cost is None else f"at most about ${cost:.4f}"
    lines.append(f"  cost            {shown}{' (simulated)' if mode == 'simulator' and cost is not None else ''}")
    print_summary("\n".join(lines), sys.stdout)  # fitted to a terminal's width
    return 0
