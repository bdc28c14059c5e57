"""``asyncgen batch SUBCOMMAND``: the Batch API workflow, at batch prices (half of real time).

create, submit, status, download, cancel and process are the seed's five scripts (plus cancel);
topup plans a follow-up round for a deficit; run does all of it, polling, until the dataset holds
exactly N scenarios. State: one manifest in --dir (see asyncgen/batch/manifest.py); the dataset
keeps its own checkpoint, as with ``run``. Where requests go: as ``run`` (--base-url, else the
OpenAI API with OPENAI_API_KEY, else the built-in simulator, whose files and batches live in
--dir/simulator so that a killed offline run resumes); after the first submit, wherever the
batch directory's batches went.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from asyncgen import locks
from asyncgen.batch import lifecycle, plan
from asyncgen.batch.endpoint import POLL_SECONDS, directory_endpoint, open_batch_api
from asyncgen.batch.ledger import line_digest, parse
from asyncgen.batch.manifest import ACCOUNTING, LOCK, Entry, Manifest, check_setup, leftovers, writer
from asyncgen.commands._shared import add_avoid_chars_flag, add_tokenizer_flags
from asyncgen.commands.argtypes import base_url, non_negative_float, non_negative_int, positive_float, positive_int, share
from asyncgen.commands.run import request_destination
from asyncgen.errors import RunError, UsageError
from asyncgen.eventloop import run_event_loop
from asyncgen.prices import batch_cost_usd, cost_usd, load_price_table, price_for
from asyncgen.progress import _duration, _money, fit_summary
from asyncgen.prompting import AVOID_POOL, GenerationSettings, avoid_pool, response_format_for
from asyncgen.scenario import LINES_PER_SCENARIO
from asyncgen.sink import atomic_write, default_checkpoint_path, fingerprint_of
from asyncgen.stats import RunStats
from asyncgen.tokenizers import resolve_specs
from asyncgen.validate import load_task_and_tokenizers

log = logging.getLogger("asyncgen.batch")
SHOWN_ERRORS = 10
FINISH_WAVE_MAX = 256  # real-time requests in one wave of a finish (more waves follow while each adds pairs)
# A finish ends when its last requests (at least FINISH_BARREN_REQUESTS of them: one request can be a
# refusal, a failure, an answer of rejected pairs) added nothing where this many pairs were expected.
FINISH_GIVES_UP_AFTER = 20
FINISH_BARREN_REQUESTS = 3


# --- flags ------------------------------------------------------------------------------------


def register(subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "batch", parents=[common],
        description="Generate a dataset through the Batch API (50% cheaper than real time, up to 24 h per "
        "batch). `batch run` does everything; the other subcommands are its steps, one per script of the "
        "seed's batch workflow. State lives in --dir; every step can be killed and run again.",
    )
    sub = parser.add_subparsers(dest="batch_command", metavar="SUBCOMMAND", required=True)

    def add(name: str, help_text: str, description: str, handler) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=description)
        p.add_argument("--dir", default="batches", help="batch directory: manifest, request and result files (default: batches)")
        p.set_defaults(handler=handler if name == "status" else _one_writer(handler, name))
        return p

    create = add("create", "write the request files for a dataset and print the plan", "Write request JSONL "
                 "files (custom_id, method, url, body) for as many requests as the expected yield needs, and print "
                 "the plan with its worst-case and expected cost at batch prices. Nothing is sent.", cmd_create)
    _setup_flags(create)
    create.add_argument("--num-scenarios", type=positive_int, default=1500, help="scenarios the dataset must hold (default: 1500)")
    _plan_flags(create)
    _dataset_flags(create)

    submit = add("submit", "upload the request files and create their batches", "Upload every request file "
                 "not yet sent and create its batch. Killed and run again, it never submits a file twice.", cmd_submit)
    _endpoint_flags(submit)

    status = add("status", "show each batch's status, request counts, age and cost", "Ask the API about every "
                 "batch that has not ended and print a table, with the cost so far at batch prices next to what "
                 "the same tokens cost in real time. Validation errors are listed.", cmd_status)
    _endpoint_flags(status)
    status.add_argument("--watch", action="store_true", help="refresh until every batch has ended (Ctrl-C stops watching, not the batches)")
    status.add_argument("--poll-seconds", type=positive_float, default=None, help="seconds between refreshes with --watch (default: 60 for OpenAI, 0.25 offline)")

    download = add("download", "download the output and error files of ended batches", "Fetch the output and "
                   "error files of every batch that has ended into --dir/results/.", cmd_download)
    _endpoint_flags(download)

    cancel = add("cancel", "cancel batches that have not ended", "Cancel the batches given (default: every batch "
                 "not ended). What finished is kept; a later topup or run resubmits only what did not run.", cmd_cancel)
    _endpoint_flags(cancel)
    cancel.add_argument("batch_ids", nargs="*", metavar="BATCH_ID", help="batches to cancel (default: all that have not ended)")

    process = add("process", "validate downloaded results into the dataset", "Run every downloaded result line "
                  "through the validator pool, dedup and the checkpointed sink, exactly as run accepts scenarios, "
                  "until the dataset holds --target-scenarios. Valid pairs beyond it are kept in --dir as spares, "
                  "used first next time.", cmd_process)
    _setup_flags(process)
    process.add_argument("--target-scenarios", type=positive_int, default=None, help="scenarios the dataset must hold (default: the batch directory's target)")
    process.add_argument("--results", nargs="+", default=None, metavar="FILE", help="process these OpenAI batch-format output files instead (e.g. from vLLM's run-batch, of this directory's request files); each request is counted once, whatever file answers it")
    process.add_argument("--external", action="store_true", help="the --results files answer requests asyncgen did not make (another pipeline's batch output): take their pairs anyway (needs --task); they are still validated and deduplicated")
    _dataset_flags(process)
    _validator_flags(process)

    topup = add("topup", "write a follow-up round of requests for the deficit", "When processing ended short of "
                "the target: write request files for the deficit only, sized by the yield measured so far; "
                "unfinished requests of expired or cancelled batches go first.", cmd_topup)
    _setup_flags(topup)
    _plan_flags(topup)
    _dataset_flags(topup)

    rebuild = add("rebuild", "rebuild a lost manifest.json from the directory's files and the API", "Rebuild "
                  "--dir's manifest from its request and result files and the batches the API lists with this "
                  "directory's metadata, and what was processed (the ledger, counters and spares) from the dataset's "
                  "checkpoint, which records it with every sync: nothing is sent, overwritten, processed or counted "
                  "twice.", cmd_rebuild)
    _setup_flags(rebuild)
    rebuild.add_argument("--num-scenarios", type=positive_int, default=None, help="scenarios the dataset must hold (default: the target its checkpoint recorded, else 1500)")
    rebuild.add_argument("--output", default=None, help="the dataset JSONL (default: dataset.jsonl)")
    rebuild.add_argument("--checkpoint", default=None, help="the dataset's checkpoint, which records what was processed into it (default: beside it, DATASET.checkpoint.json)")
    _endpoint_flags(rebuild)

    run = add("run", "all of the above, polling, until the dataset holds exactly N", "Create, submit, poll, "
              "download, process and top up until --output holds exactly --num-scenarios. Killed at any moment "
              "and started again, it resumes: nothing is submitted, processed or paid for twice.", cmd_run)
    _setup_flags(run)
    run.add_argument("--num-scenarios", type=positive_int, default=None, help="scenarios the dataset must hold (default: the batch directory's target, else 1500)")
    run.add_argument("--poll-seconds", type=positive_float, default=None, help="seconds between status checks (default: 60 for OpenAI, 10 for --base-url, 0.25 offline)")
    run.add_argument("--pilot-requests", type=non_negative_int, default=None, help="real-time requests that measure "
                     "the yield before the first round is sized (default: a first wave chosen by the round's size, "
                     "then more while each saves more of the round's margin than its real-time premium costs; "
                     "see docs/batch-cost.md; 0: none, the round is sized by the prior yield)")
    run.add_argument("--real-time-finish", type=share, default=plan.FINISH_SHARE, metavar="SHARE", help="when a round "
                     "ends short by at most this share of --num-scenarios, ask the rest in real time (seconds, at "
                     "real-time prices) instead of in another round of up to 24 h; rounds are sized for it, to "
                     "come within it 9 times in 10 at the least expected waste (default: "
                     f"{plan.FINISH_SHARE:g}; 0: never, each round is sized to reach the target by itself 9 "
                     "times in 10; see docs/batch-cost.md)")
    _plan_flags(run)
    _dataset_flags(run)
    _validator_flags(run)
    _endpoint_flags(run)


def _setup_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default=None, help="task name or path to a task YAML (default: the batch directory's task, else refusal)")
    p.add_argument("--config-dir", default=None, help="folder holding tasks/*.yaml and prices.yaml (default: the configs shipped with asyncgen)")
    p.add_argument("--model", default=None, help="model of the requests (default: the batch directory's model, else gpt-4o)")
    p.add_argument("--prices", default=None, help="price table YAML (default: <config-dir>/prices.yaml)")
    p.add_argument("--force", action="store_true", help="use a batch directory or dataset made for another task, model or tokenizer set")
    add_tokenizer_flags(p)


def _plan_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-batches", type=positive_int, default=1, help="request files (batches) to split a round into (default: 1; more when a file would pass 50,000 requests or 200 MB)")
    p.add_argument("--max-cost", type=non_negative_float, default=None, help="USD budget for everything in --dir, batches at batch prices and real-time requests (a pilot, a finish) at real-time prices: nothing is sent whose worst case could cross it")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    p.add_argument("--seed", type=int, default=None, help="base seed sent with requests (request i gets seed+i); also seeds the offline simulator")
    p.add_argument("--response-format", choices=("auto", "json_schema", "json_object"), default="auto", help="structured output: strict json_schema where the model supports it, else json_object (default: auto)")
    add_avoid_chars_flag(p)


def _dataset_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default=None, help="the dataset JSONL (default: the batch directory's, else dataset.jsonl)")
    p.add_argument("--checkpoint", default=None, help="the dataset's checkpoint (default: beside it, DATASET.checkpoint.json)")
    p.add_argument("--annotate", action=argparse.BooleanOptionalAction, default=True, help="keep the token annotations sidecar DATASET.tokens.jsonl in step with the dataset (default: on)")


def _validator_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--validator-workers", type=non_negative_int, default=0, help="validator processes (default: 0, validate in this process: results come all at once, and the tokenizers are loaded here already, so a pool pays off only for tens of thousands of pairs)")


def _endpoint_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-url", type=base_url, default=os.environ.get("OPENAI_BASE_URL") or None, help="OpenAI-compatible API base URL for the first submit (default: $OPENAI_BASE_URL, else the OpenAI API if OPENAI_API_KEY is set, else the offline simulator); later steps go where the batches went")


# --- set-up shared by the subcommands ---------------------------------------------------------


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


def _directory(args) -> Path:
    directory = Path(args.dir)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--dir {directory} is a file; give a folder")
    return directory


CREATES_DIRECTORY = ("create", "process", "run", "rebuild")


def _one_writer(handler, command: str):
    """``handler`` holding --dir's lock (``manifest.writer``): a second command on it is refused."""
    def locked(args) -> int:
        directory = _directory(args)
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


def _load(directory: Path) -> Manifest | None:
    """The manifest; None for a new directory. A directory whose manifest is gone but whose files are
    there is refused: starting afresh would pay again for what its files hold."""
    manifest = Manifest.load(directory)
    if manifest is None:
        left = leftovers(directory)
        if left:
            raise UsageError(f"--dir {directory} has no manifest.json but holds {left}; `asyncgen batch rebuild "
                             f"--dir {directory}` rebuilds it from them (nothing is sent or overwritten)")
    return manifest


def _manifest_or_fail(directory: Path) -> Manifest:
    manifest = _load(directory)
    if manifest is None:
        raise UsageError(f"--dir {directory} holds no batch manifest; start with `asyncgen batch create` or `batch run`")
    return manifest


def _setup(args, *, load_tokenizers: bool, lost: bool = False) -> Setup:
    """The batch directory, its manifest (None if new, or ``lost``), the task and price; refuses another setup."""
    directory = _directory(args)
    manifest = None if lost else _load(directory)
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


def _price_only(args, manifest: Manifest) -> Setup:
    prices, _ = load_price_table(getattr(args, "config_dir", None), getattr(args, "prices", None))
    return Setup(Path(args.dir), manifest, model=manifest.model, price=price_for(prices, manifest.model))


def _dataset(output: str, task) -> tuple[int, list[str]]:
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


# --- planning a round -------------------------------------------------------------------------


def _plan_and_write(args, setup: Setup, manifest: Manifest, deficit: int, avoid: list[str],
                    finish_allowance: int = 0) -> plan.Plan:
    """Write a round's request files for ``deficit`` scenarios: unfinished requests of expired or
    cancelled batches first, then new ones, within --max-cost. A plan of 0 requests writes nothing.
    ``finish_allowance``: the shortfall ``batch run`` will finish in real time (``plan.round_size``)."""
    directory = setup.directory
    estimate, _ = yield_estimate(setup, manifest, deficit)
    needed = (plan.round_size(deficit, estimate, finish_allowance) if estimate
              else plan.requests_needed(deficit, plan.prior_yield(setup.task)))
    budget_left = None
    if args.max_cost is not None:
        budget_left = args.max_cost - (manifest.committed_worst_cost(setup.costs) or 0.0)
    needed, capped = plan.affordable(needed, plan.request_cost_bound(setup.task, setup.price, args.avoid_chars),
                                     budget_left)
    left_over = [e for e in manifest.entries if e.source == "api" and e.status in ("expired", "cancelled")
                 and e.downloaded and not e.resubmitted]
    resubmit = [line for entry in left_over for line in lifecycle.unfinished_lines(directory, entry)][:needed]
    measured_tokens = tokens_per_request(manifest)
    settings = GenerationSettings(setup.model, response_format_for(setup.model, args.response_format), args.temperature, args.seed)
    made = plan.plan_round(setup.task, settings, setup.price, count=needed - len(resubmit),
                           directory_id=manifest.directory_id, first_number=manifest.next_request, num_batches=args.num_batches, avoid_pool=avoid,
                           avoid_chars=args.avoid_chars,
                           resubmit=resubmit, measured_tokens=measured_tokens, capped_by_budget=capped)
    if not made.requests:
        return made
    for entry in left_over:
        entry.resubmitted = True
    names = [f"round-{manifest.rounds + 1}-part-{number}.jsonl" for number in range(1, len(made.files) + 1)]
    taken = [name for name in names if (directory / lifecycle.REQUESTS / name).exists()]
    if taken:  # a request file the manifest does not know: it may have been sent and paid for
        raise UsageError(f"{directory / lifecycle.REQUESTS / taken[0]} is there already but {directory}'s manifest does "
                         "not name it; request files are never overwritten: move it away, or use another --dir")
    manifest.rounds += 1
    manifest.round_target = manifest.target
    manifest.next_request += made.new_requests
    (directory / lifecycle.REQUESTS).mkdir(parents=True, exist_ok=True)
    for name, chunk in zip(names, made.files):
        atomic_write(directory / lifecycle.REQUESTS / name, b"".join(chunk))
        share = len(chunk) / made.requests
        manifest.entries.append(Entry(name, manifest.rounds, len(chunk),
                                      None if made.worst_cost_usd is None else made.worst_cost_usd * share))
    manifest.save(directory)
    return made


def _usage_cost(setup: Setup, entries: list[Entry]) -> tuple[float | None, float | None]:
    """(batch-price, real-time) USD of the usage ``entries`` recorded (None: no price)."""
    return setup.costs(sum(e.usage.get("input", 0) for e in entries), sum(e.usage.get("output", 0) for e in entries))


def _pilots(manifest: Manifest) -> list[Entry]:
    return [e for e in manifest.entries if e.source == "pilot"]


def _finishes(manifest: Manifest, round_number: int | None = None) -> list[Entry]:
    return [e for e in manifest.entries if e.source == "finish" and round_number in (None, e.round)]


def finish_allowance(args, manifest: Manifest) -> int:
    """The shortfall (scenarios) ``batch run`` finishes in real time: --real-time-finish of the target."""
    return int(getattr(args, "real_time_finish", 0.0) * manifest.target)


def yield_estimate(setup: Setup, manifest: Manifest, deficit: int = 0) -> tuple[plan.YieldEstimate | None, str]:
    """The yield a round is sized by, and where it comes from: the batch rounds processed in this
    directory (their mean over every answered request; the spread of one request's yield from the
    pilot, else the binomial one of the pairs asked), else the pilot alone, less the duplicates a
    round for ``deficit`` will have among its own candidates; None before anything is measured."""
    pilot_yields = manifest.totals.get("pilot_yields") or []
    measured = manifest.yield_per_request()
    answered = manifest.totals.get("requests_ok", 0)
    asked = setup.task.batch_size
    if measured is not None:
        spread = (plan.YieldEstimate.of(pilot_yields, asked).spread if len(pilot_yields) >= 2
                  else plan.YieldEstimate.of([measured, measured], asked).spread)
        return (plan.YieldEstimate(measured, spread, answered),
                f"measured over the {answered} requests processed in this directory")
    if len(pilot_yields) >= 2:
        estimate = plan.YieldEstimate.of(pilot_yields, asked)
        scaled = plan.at_round_scale(estimate, deficit, asked)
        return scaled, (f"measured by a pilot of {len(pilot_yields)} real-time requests ({estimate.mean:.1f}, spread "
                        f"{estimate.spread:.1f}), less {1 - scaled.mean / estimate.mean:.0%} for the duplicates a round this size has")
    return None, f"prior: half of the {setup.task.batch_size} pairs asked, nothing measured yet"


def tokens_per_request(manifest: Manifest) -> tuple[float, float] | None:
    """Input and output tokens of an answered request, measured by processed rounds, else the pilot."""
    totals = manifest.totals
    if totals.get("requests_ok"):
        return totals["input_tokens"] / totals["requests_ok"], totals["output_tokens"] / totals["requests_ok"]
    answered = sum((e.request_counts or {}).get("completed", 0) for e in _pilots(manifest))
    if answered:
        used = [e.usage for e in _pilots(manifest)]
        return sum(u.get("input", 0) for u in used) / answered, sum(u.get("output", 0) for u in used) / answered
    return None


def _print_plan(setup: Setup, manifest: Manifest, made: plan.Plan, existing: int, deficit: int) -> None:
    estimate, source = yield_estimate(setup, manifest, deficit)
    per_request = estimate.mean if estimate else plan.prior_yield(setup.task)
    at_batch, at_real = setup.costs(*made.expected_tokens)
    files = [e for e in manifest.entries if e.round == manifest.rounds]
    resubmitted = made.requests - made.new_requests
    print(f"plan, round {manifest.rounds}: task {manifest.task}, model {manifest.model}, dir {setup.directory}")
    print(f"  dataset    {existing} in {manifest.output}, {deficit} to go (target {manifest.target})")
    print(f"  yield      {per_request:.1f} scenarios per request ({source})")
    print(f"  requests   {made.requests}" + (f" ({resubmitted} resubmitted from expired or cancelled batches)" if resubmitted else "")
          + f" in {len(files)} file(s):")
    for entry in files:
        print(f"             {setup.directory / lifecycle.REQUESTS / entry.name} ({entry.requests})")
    sizing = (f"sized to reach the target in this one round {plan.ONE_ROUND_PROBABILITY:.0%} of the time" if estimate
              else f"{plan.MARGIN - 1:.0%} more than the prior yield needs")
    print(f"  sizing     {sizing}")
    if tokens_per_request(manifest):
        expected = f"expected about {_money(at_batch)} at batch prices (real time: about {_money(at_real)}), at the tokens per request measured"
    else:
        expected = (f"at most about {_money(at_batch)} at batch prices (real time: {_money(at_real)}) if every answer "
                    "used its whole output cap; nothing measured yet (`batch run` measures first with a pilot)")
    print(f"  cost       worst case {_money(made.worst_cost_usd)}; {expected}")
    if made.capped_by_budget:
        print(f"  budget     --max-cost allows no more than these {made.requests} requests")


# --- subcommands ------------------------------------------------------------------------------


def cmd_create(args) -> int:
    setup = _setup(args, load_tokenizers=False)
    if setup.manifest is not None and setup.manifest.entries and not args.force:
        raise UsageError(f"--dir {setup.directory} already holds {len(setup.manifest.entries)} request file(s); "
                         "`batch submit` sends them, `batch topup` plans more; or use another --dir")
    output = args.output or "dataset.jsonl"
    manifest = setup.manifest or Manifest(str(args.task or "refusal"), setup.model, setup.fingerprint, args.num_scenarios, output)
    manifest.target, manifest.output = args.num_scenarios, output
    return _write_round(args, setup, manifest)


def _write_round(args, setup: Setup, manifest: Manifest) -> int:
    """create and topup: plan the deficit of the manifest's dataset, write the files, print the plan."""
    existing, avoid = _dataset(manifest.output, setup.task)
    deficit = manifest.target - existing - manifest.spares
    if deficit <= 0:
        print(f"{manifest.output} holds {existing} scenarios and {setup.directory} {manifest.spares} spares; "
              f"the target is {manifest.target}: nothing to request")
        manifest.save(setup.directory)
        return 0
    made = _plan_and_write(args, setup, manifest, deficit, avoid)
    if not made.requests:
        raise RunError(f"--max-cost {args.max_cost}: not even one more request fits the budget; raise --max-cost")
    _print_plan(setup, manifest, made, existing, deficit)
    print(f"next: python -m asyncgen batch submit --dir {setup.directory}")
    return 0


def cmd_topup(args) -> int:
    setup = _setup(args, load_tokenizers=False)
    manifest = _manifest_or_fail(setup.directory)
    if manifest.in_flight() or manifest.unsubmitted():
        raise UsageError(f"{len(manifest.in_flight()) + len(manifest.unsubmitted())} request file(s) in {setup.directory} "
                         "are not sent or not finished; wait for them (`batch status --watch`), download and process, then top up")
    manifest.output = args.output or manifest.output
    existing, _ = _dataset(manifest.output, setup.task)
    if existing >= manifest.target:
        print(f"target reached: {manifest.output} holds {existing}/{manifest.target} scenarios; nothing to top up "
              f"(a larger dataset: `batch run --num-scenarios N --dir {setup.directory}`)")
        return 0
    if any(e.downloaded and not e.processed for e in manifest.entries) or manifest.processing is not None:
        raise UsageError(f"{setup.directory} holds results not processed yet; run `batch process --dir {setup.directory}` first")
    if manifest.spares:
        raise UsageError(f"{setup.directory} holds {manifest.spares} spares for the {manifest.target - existing} scenarios "
                         f"to go; `batch process --dir {setup.directory}` adds them first, then top up what is left")
    return _write_round(args, setup, manifest)


def cmd_rebuild(args) -> int:
    directory = _directory(args)
    if Manifest.load(directory) is not None:
        raise UsageError(f"--dir {directory} has its manifest.json: nothing to rebuild")
    if not leftovers(directory):
        raise UsageError(f"--dir {directory} holds no request or result files: nothing to rebuild; start with `batch create` or `batch run`")
    probe = Manifest("", "", {}, 0, "")
    models = lifecycle.recover_requests(directory, probe)
    if len(models) > 1 and not args.model:
        raise UsageError(f"the request files in {directory} name {len(models)} models ({', '.join(models)}); say which with --model")
    args.model = args.model or (models[0] if models else None)
    setup = _setup(args, load_tokenizers=False, lost=True)
    manifest = Manifest(str(args.task or "refusal"), setup.model, setup.fingerprint, args.num_scenarios or 1500,
                        args.output or "dataset.jsonl", directory_id=probe.directory_id, legacy_below=probe.legacy_below,
                        next_request=probe.next_request, rounds=probe.rounds, entries=probe.entries)
    spares = sorted((p.stat().st_mtime, p) for p in directory.glob("spares-*.jsonl") if _spares_name(p.stem))
    if spares:  # the newest: a pass deletes the one it read once it has written its own
        path = spares[-1][1]
        manifest.spares_file, manifest.spares = path.name, len(path.read_bytes().splitlines())
        kind, number = _spares_name(path.stem)
        if kind == "pass":
            manifest.totals["passes"] = number
        else:  # a pilot's or finish's: named by the next request number, which later requests must not reuse
            manifest.next_request = max(manifest.next_request, number)
    offline = (directory / "simulator").is_dir()
    if not offline and request_destination(args)[0] == "simulator" and manifest.entries:
        raise UsageError(f"{directory} holds no offline simulator state, so its request files were not sent offline: say "
                         "where their batches went (OPENAI_API_KEY for the OpenAI API, or --base-url) so that rebuild finds "
                         f"them; if they were never sent, remove {directory / lifecycle.REQUESTS} and `batch create` again")
    checkpoint = Path(args.checkpoint or default_checkpoint_path(manifest.output))
    record, missing = _recorded_accounting(setup, manifest, checkpoint, args.force)

    async def go() -> list[Entry]:
        async with open_batch_api(args, directory, manifest) as (api, _):
            adopted = await lifecycle.recover_batches(directory, manifest, api)
            if adopted:
                manifest.endpoint = api.endpoint
            return adopted
    adopted = run_event_loop(go())
    files, unsent = len(manifest.entries), sum(e.batch_id is None for e in manifest.entries)
    if record is not None:
        try:
            manifest.restore(record, directory)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            record, missing = None, f"its record of {directory} does not fit the directory's files ({exc}), so it is not used"
        else:
            manifest.target = args.num_scenarios or int(record.get("target") or manifest.target)
    lifecycle.recover_resubmitted(directory, manifest)
    manifest.save(directory)
    print(f"rebuilt {directory / 'manifest.json'}: {files} request file(s), {len(adopted)} with their batch "
          f"found ({sum(e.downloaded for e in adopted)} downloaded), {unsent} never sent"
          + (f", {manifest.spares} spares" if manifest.spares else ""))
    if record is not None:
        totals = manifest.totals
        print(f"accounting restored from {checkpoint} (what the dataset's last checkpoint recorded): "
              f"{totals.get('requests_ok', 0)} answered requests counted in {totals.get('passes', 0)} processing pass(es), "
              f"{sum(e.processed and e.downloaded and not e.real_time for e in manifest.entries)} result file(s) processed"
              + ("; the pass it cut short is replayed by the next `batch process` or `batch run`" if manifest.processing else "")
              + "; nothing is processed or counted twice")
    else:
        print(f"accounting not restored: {missing}; the next `batch process` processes every downloaded result "
              "and counts it afresh (the dataset's dedup keeps its pairs from entering twice)")
    print(f"task {manifest.task}, model {manifest.model}, dataset {manifest.output}, target {manifest.target}; "
          f"next: python -m asyncgen batch run --dir {directory} (or `batch process`)")
    return 0


def _spares_name(stem: str) -> tuple[str, int] | None:
    """What wrote a spares file, by its name: ``spares-N`` (processing pass N), ``spares-pilot-N`` or
    ``spares-finish-N`` (real-time requests, N the next request number then); None for another name."""
    kind, _, number = stem.removeprefix("spares-").rpartition("-")
    if not number.isdigit() or kind not in ("", "pilot", "finish") or not stem.startswith("spares-"):
        return None
    return kind or "pass", int(number)


def _recorded_accounting(setup: Setup, manifest: Manifest, checkpoint: Path, force: bool) -> tuple[dict | None, str]:
    """The directory's accounting as the dataset's checkpoint recorded it (``_run_state``), through
    the sink, which checks that the checkpoint is the dataset's and of this task and tokenizers; or
    None and why not."""
    from asyncgen.sink import ScenarioSink

    dataset = Path(manifest.output)
    if not dataset.is_file() or not checkpoint.is_file():
        return None, (f"no dataset {dataset} with its checkpoint {checkpoint} (if the dataset is elsewhere, "
                      "give --output and --checkpoint)")
    with ScenarioSink.open(dataset, checkpoint, task_name=setup.task.task_name, fingerprint=setup.fingerprint,
                           force_resume=force) as sink:
        records = sink.resume.run_state.get(ACCOUNTING)
    record = records.get(manifest.directory_id) if isinstance(records, dict) else None
    if not isinstance(record, dict):
        return None, f"{checkpoint} holds no record of {setup.directory}'s processing"
    return record, ""


def cmd_submit(args) -> int:
    directory = _directory(args)
    manifest = _manifest_or_fail(directory)

    async def go() -> None:
        async with open_batch_api(args, directory, manifest) as (api, _):
            sent = await lifecycle.submit(directory, manifest, api)
            if not sent:
                print(f"nothing to submit in {directory}")
    run_event_loop(go())
    print(f"next: python -m asyncgen batch status --dir {directory} --watch")
    return 0


def cmd_status(args) -> int:
    """The table, refreshed from the API while holding --dir for that moment only (``_refreshed``);
    while another command holds --dir, the state it last saved."""
    directory = _directory(args)
    working = locks.holder_of(directory / LOCK) if directory.is_dir() and Manifest.load(directory) is None else None
    if working:
        print(f"{working} is working on {directory} and has saved no manifest yet; try again in a moment")
        return 0
    manifest = _manifest_or_fail(directory)
    setup = _price_only(args, manifest)
    noted = set()

    async def refresh() -> None:
        holder = await _refreshed(args, directory, manifest)
        if holder and "batch status" not in holder and holder not in noted:  # another status refreshes it too
            noted.add(holder)
            print(f"{holder} is working on {directory}: its last saved state, not refreshed here", flush=True)

    async def go() -> None:
        await refresh()
        if not args.watch:
            print(status_table(setup, manifest))
            return
        mode = (manifest.endpoint or {}).get("mode") or request_destination(args)[0]
        await _watch(setup, manifest, refresh, args.poll_seconds or POLL_SECONDS[mode])
    try:
        run_event_loop(go())
    except KeyboardInterrupt:
        print("stopped watching; the batches go on")
        return 130
    return 0


async def _refreshed(args, directory: Path, shown: Manifest) -> str | None:
    """Update ``shown`` to the manifest saved now, with the batches not ended asked about (holding
    --dir as its writer for the refresh and save only: a command started meanwhile waits for it,
    see ``manifest.writer``); when another command holds --dir, to the state that one last saved.
    Re-read each time: a newer manifest is never written over with an older copy. Returns the
    other command, else None."""
    holder = None
    try:
        with writer(directory, "status"):
            current = _manifest_or_fail(directory)
            if any(e.batch_id for e in current.in_flight()):
                async with open_batch_api(args, directory, current, quiet=True) as (api, _):
                    await lifecycle.refresh(directory, current, api)
    except locks.Busy as busy:
        current, holder = _manifest_or_fail(directory), busy.holder
    vars(shown).update(vars(current))
    return holder


async def _watch(setup: Setup, manifest: Manifest, refresh, poll: float) -> None:
    """``status --watch``: on a terminal, the table redrawn in place (rich, as run's progress);
    otherwise the table again whenever it changes (age aside), each flushed at once."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        with Live(Text(status_table(setup, manifest)), console=Console(file=sys.stdout), auto_refresh=False) as live:
            while manifest.in_flight():
                await asyncio.sleep(poll)
                await refresh()
                live.update(Text(status_table(setup, manifest)), refresh=True)
        return
    shown = None
    while True:
        now = [(e.status, e.request_counts, e.usage) for e in manifest.entries]
        if now != shown:
            print(status_table(setup, manifest), flush=True)
            shown = now
        if not manifest.in_flight():
            return
        await asyncio.sleep(poll)
        await refresh()


def status_table(setup: Setup, manifest: Manifest) -> str:
    now = time.time()
    rows = [f"{'batch':<32} {'status':<11} {'done':>11} {'failed':>6} {'age':>6} {'cost':>9}"]
    for entry in manifest.entries:
        if entry.real_time:  # the pilot's or a finish's requests: answered at once, at real-time prices
            counts = entry.request_counts or {}
            cost = _usage_cost(setup, [entry])[1] if entry.usage else 0.0
            done = f"{counts.get('completed', 0)}/{entry.requests}"
            rows.append(f"{'(' + entry.name + ', real time)':<32} {'answered':<11} {done:>11} "
                        f"{entry.requests - counts.get('completed', 0):>6} {'-':>6} {_money(cost):>9}")
            continue
        if entry.source != "api":
            continue
        counts = entry.request_counts or {}
        total = counts.get("total") or entry.requests
        done = f"{counts.get('completed', 0)}/{total}"
        age = _duration(now - entry.submitted_at) if entry.submitted_at else "-"
        cost = _usage_cost(setup, [entry])[0] if entry.usage else 0.0
        name = entry.batch_id or f"({entry.name})"
        rows.append(f"{name:<32} {entry.status or entry.state:<11} {done:>11} {counts.get('failed', 0):>6} {age:>6} {_money(cost):>9}")
        for error in entry.errors[:SHOWN_ERRORS]:
            rows.append(f"    line {error['line']}: {error['code']}: {error['message']}")
        if len(entry.errors) > SHOWN_ERRORS:
            rows.append(f"    ... {len(entry.errors) - SHOWN_ERRORS} more validation errors")
    at_batch, at_real = manifest.cost(setup.costs)
    rows.append(f"cost so far {_money(at_batch)} at batch prices (real time: {_money(at_real)}); "
                f"target {manifest.target}, spares {manifest.spares}")
    return "\n".join(rows)


def cmd_download(args) -> int:
    directory = _directory(args)
    manifest = _manifest_or_fail(directory)

    async def go() -> list[Entry]:
        async with open_batch_api(args, directory, manifest) as (api, _):
            await lifecycle.refresh(directory, manifest, api)
            return await lifecycle.download(directory, manifest, api)
    done = run_event_loop(go())
    for entry in done:
        files = ", ".join(p for p in (entry.output_path, entry.error_path) if p) or "no files"
        print(f"{entry.batch_id} ({entry.status}): {files}")
    waiting = len(manifest.in_flight())
    print(f"downloaded {len(done)} batch(es)" + (f"; {waiting} not ended yet" if waiting else "")
          + (f"\nnext: python -m asyncgen batch process --dir {directory}" if done else ""))
    return 0


def cmd_cancel(args) -> int:
    directory = _directory(args)
    manifest = _manifest_or_fail(directory)
    unknown = set(args.batch_ids) - {e.batch_id for e in manifest.entries}
    if unknown:
        raise UsageError(f"no batch {sorted(unknown)[0]} in {directory}; `batch status` lists them")

    async def go() -> list[Entry]:
        async with open_batch_api(args, directory, manifest) as (api, _):
            return await lifecycle.cancel(directory, manifest, api, args.batch_ids or None)
    cancelled = run_event_loop(go())
    for entry in cancelled:
        print(f"{entry.batch_id}: {entry.status}")
    print(f"cancelled {len(cancelled)} batch(es); what finished is kept: `batch download` then `batch process`; "
          "`batch topup` resubmits only what did not run")
    return 0


# --- processing -------------------------------------------------------------------------------


@contextlib.contextmanager
def _processing(args, setup: Setup, manifest: Manifest):
    """The sink and the validator for processing passes."""
    from asyncgen.sink import ScenarioSink
    from asyncgen.validate import PairValidator

    checkpoint = args.checkpoint or default_checkpoint_path(manifest.output)
    sink = ScenarioSink.open(manifest.output, checkpoint, task_name=setup.task.task_name, fingerprint=setup.fingerprint,
                             force_resume=args.force)
    with contextlib.ExitStack() as stack:
        stack.callback(sink.close)
        if sink.resume.message:
            log.info("%s", sink.resume.message)
        if "sink_cost_before" not in manifest.totals:
            manifest.totals["sink_cost_before"] = sink.resume.run_state.get("cost_usd", 0.0)
        validator = stack.enter_context(PairValidator(setup.task, setup.specs, cache_dir=args.cache_dir, workers=args.validator_workers,
                                                      tokenizers=setup.tokenizers))
        annotations = None
        if args.annotate:
            from asyncgen.annotations import Sidecar

            annotations = Sidecar.open(sink.path, setup.task, setup.tokenizers, dataset_digest=sink.dataset_digest())
            stack.callback(annotations.close)
            log.info("%s", annotations.repair.message)
        yield sink, validator, annotations


class Interrupts:
    """Ctrl-C while results are validated (synchronous work that the event loop's own handler
    would only see when it ends): the first is acknowledged at once and stops the pass after the
    chunk in hand, keeping what is validated; a second stops the validation at once (elsewhere in
    the pass, appending to the dataset, it waits for the few milliseconds left: a scenario is
    never cut in two). The signal handler is installed on the main thread only; off it (the Python
    API's worker thread) ``interrupt()`` is the first Ctrl-C, and ``active`` the pass under way."""

    active: "Interrupts | None" = None

    def __init__(self) -> None:
        self.count = 0
        self._previous = None

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        Interrupts.active = self
        return self

    def __exit__(self, *exc_info) -> None:
        Interrupts.active = None
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def interrupt(self) -> bool:
        """Count one Ctrl-C; True for the first, which is acknowledged at once."""
        self.count += 1
        if self.count == 1:
            os.write(2, b"\ninterrupted: stopping after the chunk being validated; what is validated is kept "
                        b"(Ctrl-C again to stop now)\n")
        return self.count == 1

    def _on_sigint(self, signum, frame) -> None:
        from asyncgen.batch.process import validate_all

        if self.interrupt():
            return
        while frame is not None:
            if frame.f_code is validate_all.__code__:  # it ends with the verdicts so far
                raise KeyboardInterrupt
            frame = frame.f_back

    def stop(self) -> bool:
        return self.count > 0


class Display:
    """``batch run``'s and ``process``'s progress, through the one progress display
    (``progress.LiveLine``): the dataset's count, the round's batches or the validation in hand,
    the cost, the time. Off a terminal, a log line when it changes (at most every 5 s)."""

    LOG_EVERY_S = 5.0

    def __init__(self, setup: Setup, manifest: Manifest, started: float) -> None:
        from asyncgen.progress import LiveLine

        self.setup, self.manifest, self.started = setup, manifest, started
        self.count, self.validating = 0, None
        self.activity: str | None = None  # what is under way besides the batches (a finish in real time)
        self.line = LiveLine(self.render, logger=log)
        self._logged = (0.0, "")

    def __enter__(self) -> "Display":
        self.line.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self.line.__exit__(*exc_info)

    def render(self, width: int | None) -> str:
        from asyncgen.progress import fit_fields

        fields = batch_progress_fields(self.setup, self.manifest, self.count, time.monotonic() - self.started,
                                       self.validating, self.activity)
        return fit_fields(fields, width) if width else " | ".join(text for _, text in fields)

    def show(self, count: int | None = None) -> None:
        self.count = self.count if count is None else count
        if self.line.live:
            self.line.refresh()
            return
        now, key = time.monotonic(), self.render(None).split(" | elapsed")[0]
        if key != self._logged[1] and now - self._logged[0] >= self.LOG_EVERY_S:
            self._logged = (now, key)
            self.line.refresh()

    def validated(self, done: int, total: int) -> None:
        self.validating = (done, total)
        if self.line.live:
            self.line.refresh()


def _pass(setup: Setup, manifest: Manifest, sink, validator, annotations, names: list[str], display: Display | None = None):
    from asyncgen.batch.process import process_pass

    if display is not None:
        display.count = sink.count
    try:
        with Interrupts() as interrupts:
            return process_pass(setup.directory, manifest, setup.task, sink, validator, names,
                                lambda name: lifecycle.result_files(setup.directory, manifest.entry(name)),
                                lambda: _run_state(setup, manifest, sink),
                                display.validated if display else (lambda done, total: None), annotations,
                                stop=interrupts.stop)
    finally:
        if display is not None:
            display.validating = None


def _run_state(setup: Setup, manifest: Manifest, sink) -> dict:
    """What the dataset's checkpoint records: the batch dir, the cost of the dataset so far, and the
    directory's accounting (``Manifest.accounting``: what ``batch rebuild`` restores)."""
    at_batch, _ = manifest.cost(setup.costs)
    before = manifest.totals.get("sink_cost_before")
    recorded = sink.resume.run_state.get(ACCOUNTING)
    return {**sink.resume.run_state, "batch_dir": str(setup.directory),
            "cost_usd": None if at_batch is None or before is None else before + at_batch,
            ACCOUNTING: {**(recorded if isinstance(recorded, dict) else {}), manifest.directory_id: manifest.accounting()}}


def _add_results(setup: Setup, manifest: Manifest, paths: list[str], external: bool) -> list[str]:
    """Entries for ``process --results`` files, known by their content (the custom_ids they answer;
    see asyncgen/batch/ledger.py): a file answering none of the directory's requests is refused
    (unless ``external``), one whose requests were all counted before is skipped, with a note."""
    from asyncgen.batch.process import read_entry

    directory, scratch, names = setup.directory, manifest.ledger(), []
    for given in paths:
        path = Path(given)
        if not path.is_file():
            raise UsageError(f"--results {given}: no such file")
        resolved = str(path.resolve())
        probe = Entry(resolved, 0, 0, source="external" if external else "results", output_path=resolved)
        got = read_entry(scratch, probe, [path], set())
        if got.foreign and not got.new and not got.repeated:
            whose = ("old-style ids, which do not name the directory that made them" if (parse(got.foreign_example) or (1,))[0] is None
                     else "another batch directory's, or another pipeline's")
            raise UsageError(
                f"--results {given}: none of its {got.foreign} results answers a request of --dir {directory} (custom_ids "
                f"like {got.foreign_example}: {whose}); process it with the --dir that wrote its requests, or, to take "
                "its pairs anyway, add --external --task TASK")
        if not got.new:
            if not got.repeated:
                raise UsageError(f"--results {given}: no batch result lines in it; give an OpenAI batch-format output file")
            print(f"{given}: its {got.repeated} results were processed before (the same "
                  f"{'lines' if external else 'custom_ids'}); skipped (nothing is counted twice)")
            continue
        if got.foreign:
            print(f"{given}: {got.foreign} of its results answer requests {directory} never made (custom_ids like "
                  f"{got.foreign_example}); left out")
        if got.repeated:
            print(f"{given}: {got.repeated} of its results were counted before (the same custom_ids); not counted again")
        name = f"{resolved} ({line_digest(path.read_bytes())[:12]})"
        if not any(e.name == name for e in manifest.entries):
            manifest.entries.append(Entry(name, 0, got.requests_ok, source=probe.source, status="completed",
                                          downloaded=True, output_path=resolved))
        names.append(name)
    manifest.save(directory)
    return names


def cmd_process(args) -> int:
    if args.external and not (args.results and args.task):
        raise UsageError("--external takes --results files of another pipeline: give them, and say which task's pairs "
                         "they are with --task")
    setup = _setup(args, load_tokenizers=True)
    manifest = setup.manifest
    if manifest is None:
        if not args.results:
            raise UsageError(f"--dir {setup.directory} holds no batch manifest; give --results FILE... or run `batch create` first")
        manifest = Manifest(str(args.task or "refusal"), setup.model, setup.fingerprint,
                            args.target_scenarios or 1500, args.output or "dataset.jsonl")
    if args.target_scenarios:
        manifest.target = args.target_scenarios
    if args.output:
        manifest.output = args.output
    setup.manifest = manifest
    names = _add_results(setup, manifest, args.results, args.external) if args.results else [
        e.name for e in manifest.entries if e.downloaded and not e.processed]
    manifest.save(setup.directory)
    with _processing(args, setup, manifest) as (sink, validator, annotations):
        if not names and manifest.processing is None and (not manifest.spares or sink.count >= manifest.target):
            if not manifest.totals.get("passes"):
                print(f"nothing to process in {setup.directory} (download ended batches first: `batch download`)")
                return 0
            print(f"nothing new to process in {setup.directory}: every downloaded result is counted already, once")
            print(summary_text(setup, manifest, sink.count))
            return 0 if sink.count >= manifest.target else 1
        with Display(setup, manifest, time.monotonic()) as display:
            report = _pass(setup, manifest, sink, validator, annotations, names, display)
        count = sink.count
    print(summary_text(setup, manifest, count, report, stop="interrupted" if report.unvalidated else None,
                       unvalidated=report.unvalidated))
    if count >= manifest.target:
        return 0
    if report.unvalidated:
        print("interrupted: run the same command to validate the rest", file=sys.stderr)
        return 130
    print(f"short by {manifest.target - count}: python -m asyncgen batch topup --dir {setup.directory}")
    return 1


def run_cost(setup: Setup, manifest: Manifest, mode: str | None = None) -> tuple[float | None, float | None, bool]:
    """What the directory's requests cost so far: USD at batch prices (the pilot's and a finish's
    at real-time prices), USD at real-time prices, and whether it is simulated (the offline
    simulator's usage; ``mode``: where requests go before the first submit records it,
    ``directory_endpoint``).
    The one source of the summary's cost line and of the Python API's ``BatchResult``."""
    at_batch, at_real = manifest.cost(setup.costs)
    return at_batch, at_real, (manifest.endpoint or {}).get("mode", mode) == "simulator"


def summary_text(setup: Setup, manifest: Manifest, count: int, report=None, *, title: str = "batch process",
                 wall_s: float | None = None, stop: str | None = None, unvalidated: int = 0,
                 mode: str | None = None) -> str:
    t = manifest.totals
    state = "finished" if count >= manifest.target else ("interrupted" if stop == "interrupted" else "short")
    lines = [f"asyncgen {title} {state}: {count}/{manifest.target} scenarios in {manifest.output}"
             + (f" ({report.accepted} new this pass)" if report else "")]
    lines.append(f"  requests        {t.get('requests_ok', 0)} answered; failed: "
                 + (", ".join(f"{k}: {n}" for k, n in sorted(t.get('errors', {}).items())) or "none"))
    lines.append(f"  candidates      {t.get('candidates', 0)} ({t.get('rejected', 0)} rejected, {t.get('duplicates', 0)} duplicates)"
                 + (" in the passes completed" if unvalidated or manifest.processing else ""))
    if unvalidated:
        lines.append(f"  not validated   {unvalidated} candidate pairs of answers paid for, left when the pass was "
                     f"stopped: they stay in {setup.directory}, and the same command validates them first")
    if t.get("rejections"):
        top = sorted(t["rejections"].items(), key=lambda kv: -kv[1])[:6]
        lines.append("  rejections      " + ", ".join(f"{k}: {n}" for k, n in top))
    if t.get("answer_failures"):
        lines.append("  bad answers     " + ", ".join(f"{k}: {n}" for k, n in sorted(t["answer_failures"].items())))
    for label, entries, did in (("pilot", _pilots(manifest), "measured the yield first"),
                                ("finish", _finishes(manifest), "asked for the last round's shortfall")):
        if entries:
            cost = _usage_cost(setup, entries)[1]
            sent = sum(e.requests for e in entries)
            unanswered = sent - sum((e.request_counts or {}).get("completed", 0) for e in entries)
            waves = f" in {len(entries)} waves" if len(entries) > 1 else ""
            lines.append(f"  {label:<15} {sent} real-time requests{waves} {did}"
                         + (f", {unanswered} of them not answered" if unanswered else "")
                         + f" ({_money(cost)}, in the cost below)")
    if t.get("foreign") or t.get("repeated"):
        lines.append(f"  left out        {t.get('foreign', 0)} results of requests {setup.directory} did not make, "
                     f"{t.get('repeated', 0)} of requests counted before")
    if t.get("external_requests"):
        files = ", ".join(Path(e.output_path).name for e in manifest.entries if e.source == "external")
        lines.append(f"  external        {t['external_requests']} answered requests from another pipeline (--external): {files}")
    lines.append(f"  spares          {manifest.spares} valid pairs kept in {setup.directory} for later "
                 "(none repeats the dataset or another)")
    at_batch, at_real, simulated = run_cost(setup, manifest, mode)
    saved = f", {1 - at_batch / at_real:.0%} saved" if at_batch is not None and at_real else ""
    pilot = " (real-time requests at real-time prices)" if any(e.real_time for e in manifest.entries) else ""
    lines.append(f"  cost            {_money(at_batch)} at batch prices{pilot}; real time would have cost {_money(at_real)}{saved}"
                 + (" (simulated: the offline simulator's usage at real prices)" if simulated else ""))
    if wall_s is not None:
        lines.append(f"  wall time       {wall_s:.1f} s")
    return "\n".join(lines)


# --- run --------------------------------------------------------------------------------------


async def _pilot(args, setup: Setup, manifest: Manifest, api, sink, validator, annotations) -> None:
    """Before the first round: a pilot of real-time requests measures the yield (see
    asyncgen/batch/pilot.py), unless something is measured already or --pilot-requests 0. Its
    requests go out in waves (at most ``plan.PILOT_WAVES``): the first sized by the prior, each
    next one by what the pilot measured so far (``plan.best_pilot``: its premium against the
    round's margin), none once that says the pilot is large enough. --pilot-requests N: one wave of N."""
    deficit = manifest.target - sink.count - manifest.spares
    if manifest.rounds or _pilots(manifest) or manifest.yield_per_request() is not None or deficit <= 0:
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
        count = _real_time_affordable(args, setup, manifest, count)
        if count <= 0:
            break
        yields += await _real_time_wave(args, setup, manifest, api, sink, validator, annotations, settings, count,
                                        "pilot", wave + 1)
    if not yields:
        return
    estimate, _ = yield_estimate(setup, manifest)  # as measured: no round's duplicates
    at_real = _usage_cost(setup, _pilots(manifest))[1]
    log.info("pilot: %d requests in %d wave(s), %s valid new pairs per request%s; %s at real-time prices",
             len(yields), len(_pilots(manifest)), f"{estimate.mean:.2f} ± {estimate.spread:.2f}" if estimate else "?",
             "" if estimate else " (too few answers to size by: the prior is used)", _money(at_real))


def _refuse_a_yield_too_low(args, setup: Setup, manifest: Manifest, count: int) -> None:
    """Without --max-cost, stop before a round (or a finish) sized for a measured yield under
    ``plan.LOWEST_YIELD_SHARE`` of the prior: the task or the model is not doing what it should,
    and the next round would cost many times what the plan assumed (offline, a model that got every
    pair wrong was asked 812, then 5,600 requests for 58 scenarios)."""
    measured, prior = manifest.yield_per_request(), plan.prior_yield(setup.task)
    if args.max_cost is not None or measured is None or measured >= prior * plan.LOWEST_YIELD_SHARE:
        return
    deficit = manifest.target - count - manifest.spares
    estimate, _ = yield_estimate(setup, manifest, deficit)
    top = sorted((manifest.totals.get("rejections") or {}).items(), key=lambda kv: -kv[1])[:2]
    why = "; rejected most: " + ", ".join(f"{k} {n}" for k, n in top) if top else ""
    raise RunError(f"{setup.directory}: {measured:.2f} valid new pairs per answered request ({manifest.totals['requests_ok']} "
                   f"answered{why}), under a tenth of the {prior:g} expected: the next round would ask about "
                   f"{plan.round_size(deficit, estimate):,} requests for {deficit} scenarios, so nothing more is sent; "
                   "check the task and the model, or give --max-cost to go on within a budget")


async def _finish(args, setup: Setup, manifest: Manifest, api, sink, validator, annotations, display: "Display") -> None:
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
        count = _real_time_affordable(args, setup, manifest, min(math.ceil(deficit / mean), FINISH_WAVE_MAX))
        if count <= 0:
            return
        display.activity = f"finishing: {count} real-time requests"
        display.show(sink.count)
        try:
            added = await _real_time_wave(args, setup, manifest, api, sink, validator, annotations, settings, count,
                                          "finish", len(_finishes(manifest, manifest.rounds)) + 1)
        finally:
            display.activity = None
        barren = 0 if sum(added) else barren + count
        if barren >= FINISH_BARREN_REQUESTS and barren * mean >= FINISH_GIVES_UP_AFTER:
            log.warning("finish: the last %d real-time requests added no scenario where %.0f were expected; another "
                        "round goes on for the %d scenarios left", barren, barren * mean,
                        manifest.target - sink.count - manifest.spares)
            return


def _real_time_affordable(args, setup: Setup, manifest: Manifest, count: int) -> int:
    """As many of ``count`` real-time requests as --max-cost allows, at their worst case at real-time prices."""
    if args.max_cost is None:
        return count
    from asyncgen.prompting import request_cost_bound

    budget_left = args.max_cost - (manifest.committed_worst_cost(setup.costs) or 0.0)
    return plan.affordable(count, request_cost_bound(setup.task, setup.price, args.avoid_chars), budget_left)[0]


async def _real_time_wave(args, setup: Setup, manifest: Manifest, api, sink, validator, annotations, settings,
                          count: int, source: str, wave: int) -> list[int]:
    """One wave of real-time requests, ``source`` "pilot" (before round 1) or "finish" (after the
    last round): ``count`` requests, their pairs accepted; a pilot's yields added to those its
    earlier waves saved in the manifest; returns this wave's."""
    from asyncgen.batch.pilot import PilotResult, run_pilot

    _, avoid = _dataset(manifest.output, setup.task)
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

    def record() -> None:
        entry.request_counts = {"total": count, "completed": stats.requests_ok, "failed": count - stats.requests_ok}
        entry.usage = {"input": stats.prompt_tokens, "output": stats.completion_tokens}
        manifest.save(setup.directory)

    record()
    sink.sync(_run_state(setup, manifest, sink))  # the checkpoint's record too: a rebuild must not number requests again
    stats.on_usage = record
    result = PilotResult()
    try:
        await run_pilot(api.client, api.api_key, setup.task, settings, setup.price, numbers, avoid, args.avoid_chars,
                        trust_env=api.trust_env, sink=sink, validator=validator, annotations=annotations, stats=stats,
                        result=result)
    finally:  # stopped too: what was answered is in the dataset, its yields and surplus recorded
        if source == "pilot":
            manifest.totals["pilot_yields"] = manifest.totals.get("pilot_yields", []) + result.yields
        if result.surplus:  # the target is reached: no wave follows
            name = f"spares-{source}-{manifest.next_request}.jsonl"
            atomic_write(setup.directory / name, b"".join(
                orjson.dumps({"prompt": v.prompt, "counterfactual": v.counterfactual}) + b"\n" for v in result.surplus))
            manifest.spares_file, manifest.spares = name, len(result.surplus)
        record()
        sink.sync(_run_state(setup, manifest, sink))
    log.info("%s, wave %d: %d answered, %d scenarios accepted, yields %s", source, wave, stats.requests_ok,
             result.accepted, " ".join(map(str, result.yields)))
    return result.yields


def cmd_run(args) -> int:
    started = time.monotonic()
    setup = _setup(args, load_tokenizers=True)
    manifest = setup.manifest
    if manifest is None:
        setup.directory.mkdir(parents=True, exist_ok=True)
        manifest = Manifest(str(args.task or "refusal"), setup.model, setup.fingerprint, args.num_scenarios or 1500,
                            args.output or "dataset.jsonl")
    manifest.target = args.num_scenarios or manifest.target
    if args.output:
        manifest.output = args.output
    setup.manifest = manifest
    manifest.save(setup.directory)
    outcome = RunOutcome()
    try:
        run_event_loop(_run_async(args, setup, manifest, started, outcome))
    except (KeyboardInterrupt, asyncio.CancelledError):  # CancelledError: the Python API's stop, off the main thread
        outcome.stop = "interrupted"
    count, _ = _dataset(manifest.output, setup.task)
    mode = directory_endpoint(args, manifest)["mode"]
    text = summary_text(setup, manifest, count, title="batch run", wall_s=time.monotonic() - started,
                        stop=outcome.stop, unvalidated=outcome.unvalidated, mode=mode)
    print(fit_summary(text, shutil.get_terminal_size().columns - 1) if sys.stderr.isatty() else text, file=sys.stderr)
    if getattr(args, "control", None) is not None:  # the Python API's result (asyncgen.generate_batch)
        at_batch, _, simulated = run_cost(setup, manifest, mode)
        args.control.record_cost(at_batch, simulated)
    if count >= manifest.target:
        return 0
    if outcome.stop == "interrupted":
        from asyncgen.commands.score_run import resume_command

        going = "; submitted batches go on" if manifest.in_flight() else ""
        print(f"asyncgen batch run: interrupted, all kept in {setup.directory}{going}\n"
              f"  resume with: {resume_command(args)}", file=sys.stderr)
        return 130
    if outcome.stop == "max_cost":
        print(f"asyncgen batch run: stopped at --max-cost ${args.max_cost}: the next request could cross it; "
              "raise --max-cost and run again to resume", file=sys.stderr)
    return 1


def _stop_from_any_thread(task: asyncio.Task):
    """``batch run``'s Ctrl-C, callable from any thread: the run's task is cancelled, as the event
    loop's own SIGINT handler does; a validation pass under way (synchronous: the cancellation
    lands when it ends) stops after the chunk in hand."""
    loop = asyncio.get_running_loop()

    def stop() -> None:
        running = Interrupts.active
        if running is not None:
            running.interrupt()
        with contextlib.suppress(RuntimeError):  # the loop closed: the run is over
            loop.call_soon_threadsafe(task.cancel)
    return stop


@dataclass
class RunOutcome:
    stop: str | None = None  # why batch run ended short: "interrupted", "max_cost"
    unvalidated: int = 0  # candidates a stopped processing pass left (the next pass replays them)


async def _run_async(args, setup: Setup, manifest: Manifest, started: float, outcome: RunOutcome) -> None:
    directory = setup.directory
    if getattr(args, "control", None) is not None:  # the Python API's stop (asyncgen.generate_batch)
        args.control.attach(_stop_from_any_thread(asyncio.current_task()), on_loop=False)
    with _processing(args, setup, manifest) as (sink, validator, annotations), Display(setup, manifest, started) as display:
        async with open_batch_api(args, directory, manifest) as (api, mode):
            poll = args.poll_seconds or POLL_SECONDS[mode]
            while True:
                await lifecycle.refresh(directory, manifest, api)
                await lifecycle.download(directory, manifest, api)
                names = [e.name for e in manifest.entries if e.downloaded and not e.processed]
                if names or manifest.processing is not None or (manifest.spares and sink.count < manifest.target):
                    report = _pass(setup, manifest, sink, validator, annotations, names, display)
                    if report.stopped:  # Ctrl-C during the pass: the run stops here, after it, even when it finished
                        outcome.stop, outcome.unvalidated = "interrupted", report.unvalidated
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
                    allowance = finish_allowance(args, manifest)
                    _refuse_a_yield_too_low(args, setup, manifest, sink.count)
                    # A finish is for a round that ended short of its own target, not for a target raised since.
                    if (manifest.rounds and manifest.round_target == manifest.target
                            and manifest.target - sink.count - manifest.spares <= allowance):
                        await _finish(args, setup, manifest, api, sink, validator, annotations, display)
                    else:
                        await _pilot(args, setup, manifest, api, sink, validator, annotations)
                    if sink.count >= manifest.target:
                        return
                    _, avoid = _dataset(manifest.output, setup.task)
                    made = _plan_and_write(args, setup, manifest, manifest.target - sink.count, avoid, allowance)
                    if not made.requests:
                        outcome.stop = "max_cost"
                        return
                    log.info("round %d: %d requests for %d scenarios (worst case %s at batch prices)%s", manifest.rounds,
                             made.requests, manifest.target - sink.count, _money(made.worst_cost_usd),
                             f"; a shortfall of up to {allowance} is finished in real time" if allowance else "")
                if manifest.unsubmitted():
                    await lifecycle.submit(directory, manifest, api, say=lambda text: log.info("%s", text))
                display.show(sink.count)
                await asyncio.sleep(poll)


def batch_progress_fields(setup: Setup, manifest: Manifest, count: int, elapsed: float,
                          validating: tuple[int, int] | None = None, activity: str | None = None) -> list[tuple[int, str]]:
    """The fields of ``batch run``'s progress line, each with its priority (0 = always shown; higher
    numbers are dropped first when the terminal is narrow: see ``progress.fit_fields``). Pure."""
    width = 20
    filled = int(width * min(1.0, count / manifest.target)) if manifest.target else width
    running = manifest.in_flight()
    done = sum((e.request_counts or {}).get("completed", 0) for e in running)
    total = sum((e.request_counts or {}).get("total") or e.requests for e in running)
    at_batch, _ = manifest.cost(setup.costs)
    if validating is not None:
        doing = f"validating {validating[0]}/{validating[1]} pairs"
    elif activity is not None:
        doing = activity
    elif running:
        doing = f"round {manifest.rounds}: {len(running)} batch(es), {done}/{total} requests done"
    elif manifest.rounds == 0:
        doing = "planning round 1"
    else:
        doing = f"round {manifest.rounds}: no batch running"
    return [(5, f"[{'#' * filled}{'-' * (width - filled)}]"), (0, f"{count}/{manifest.target} scenarios"), (1, doing),
            (2, f"cost {_money(at_batch)}"), (3, f"elapsed {_duration(elapsed)}")]
