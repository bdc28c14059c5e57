"""``asyncgen batch SUBCOMMAND``: the Batch API workflow, at batch prices (half of real time).

create, submit, status, download, cancel and process are the seed's five scripts (plus cancel);
topup plans a follow-up round for a deficit; run does all of it, polling, until the dataset holds
exactly N scenarios. State: one manifest in --dir (see asyncgen/batch/manifest.py); the dataset
keeps its own checkpoint, as with ``run``. Where requests go: as ``run`` (--base-url, else the
OpenAI API with OPENAI_API_KEY, else the built-in simulator, whose files and batches live in
--dir/simulator so that a killed offline run resumes); after the first submit, wherever the
batch directory's batches went.

This module registers the subcommands and their flags; each subcommand lives in the module of its
stage, which the data flows through one way:

- ``directory``: the set-up every subcommand starts from (``Setup``: --dir, its manifest, the task
  and price), --dir's one-writer lock, the dataset's count;
- ``rounds``: ``create`` and ``topup``, planning a round and writing its request files;
- ``rebuild``: ``rebuild``, a lost manifest made again from the directory's files and the API;
- ``batches``: ``submit``, ``status`` (``--watch``), ``download``, ``cancel``;
- ``processing``: ``process``, results through the validator and the sink, and Ctrl-C during it;
- ``summary``: the summary a processing pass or a run ends with, and what it cost;
- ``display``: the progress line of ``process`` and ``run``;
- ``real_time``: ``run``'s real-time requests, the pilot before round 1 and the finish after the last;
- ``run``: ``run``, all of the above until the dataset holds exactly N.
"""

from __future__ import annotations

import argparse
import os

from asyncgen.batch import plan
from asyncgen.commands._shared import add_avoid_chars_flag, add_tokenizer_flags
from asyncgen.commands.argtypes import (base_url, non_negative_float, non_negative_int, positive_float, positive_int, seed,
                                         share, temperature)
from asyncgen.commands.batch.batches import cmd_cancel, cmd_download, cmd_status, cmd_submit
from asyncgen.commands.batch.directory import one_writer
from asyncgen.commands.batch.processing import cmd_process
from asyncgen.commands.batch.rebuild import cmd_rebuild
from asyncgen.commands.batch.rounds import cmd_create, cmd_topup
from asyncgen.commands.batch.run import cmd_run


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
        p.set_defaults(handler=handler if name == "status" else one_writer(handler, name))
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

    status = add("status", "show each batch's status, request counts, how long it took and cost", "Ask the API about every "
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
    rebuild.add_argument("--num-scenarios", type=positive_int, default=None, help="scenarios the dataset must hold (default: the target the dataset's checkpoint or the directory's batches recorded; neither: refused)")
    rebuild.add_argument("--output", default=None, help="the dataset JSONL (default: the one whose checkpoint, here or beside --dir, records the directory's processing, else the one its batches name; neither: refused)")
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
    p.add_argument("--temperature", type=temperature, default=1.0, help="sampling temperature, 0 to 2 (default: 1.0)")
    p.add_argument("--seed", type=seed, default=None, help="base seed sent with requests (request i gets seed+i); also seeds the offline simulator")
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
