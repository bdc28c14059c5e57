"""``asyncgen score``: run a dataset through a model under study; keep how it behaves on each pair.

Requests go as for ``run``: ``--base-url``, else the OpenAI API with ``OPENAI_API_KEY``, else the
offline simulator. The scores go to ``DATASET.scores/MODEL.jsonl`` (``asyncgen.scores``); the
requests and the rules are ``asyncgen.scoring`` and ``asyncgen.behavior``.
"""

from __future__ import annotations

import argparse
import os

from asyncgen.commands.argtypes import base_url, non_negative_float, positive_float, positive_int


def register(subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "score",
        parents=[common],
        description="Ask --model about both sides of every scenario: the next-token log-probabilities of the "
        "task's answers after the single-token texts (/v1/completions, or chat completions with logprobs), and "
        "its free answer to the multi-token texts (refusal verdict from the task's behavior block). Writes one "
        "line per scenario to DATASET.scores/MODEL.jsonl as answers arrive; a killed or interrupted run "
        "resumes where the file ends. Requests go as for `run` (offline: the built-in simulator).",
    )
    parser.add_argument("dataset", metavar="DATASET.jsonl", help="a dataset written by asyncgen run (it must pass validate)")
    parser.add_argument("--model", required=True, help="the model under study, as the server names it")
    parser.add_argument("--base-url", type=base_url, default=os.environ.get("OPENAI_BASE_URL") or None,
                        help="OpenAI-compatible API base URL, e.g. http://localhost:8000/v1 (default: $OPENAI_BASE_URL, "
                        "else the OpenAI API if OPENAI_API_KEY is set, else the offline simulator)")
    parser.add_argument("--form", choices=("single", "multi", "both"), default="both",
                        help="which form to score: single (answer log-probabilities), multi (free answers), both (default)")
    parser.add_argument("--chat", action="store_true",
                        help="ask the single-token form through chat completions (a user message) instead of "
                        "/v1/completions with the text as it is")
    parser.add_argument("--max-answer-tokens", type=positive_int, default=64,
                        help="length cap of a free answer, multi-token form (default: 64)")
    parser.add_argument("--judge-model", default=None, metavar="NAME",
                        help="multi-token form: ask this model whether each free answer refuses (one more chat "
                        "request per answer, at its price) instead of matching the task's refusal markers")
    parser.add_argument("--task", default=None, help="task name or YAML path (default: the task named in the dataset)")
    parser.add_argument("--config-dir", default=None, help="folder with tasks/*.yaml and prices.yaml (default: the shipped configs)")
    parser.add_argument("--tokenizer", action="append", default=[], metavar="NAME[=SPEC]",
                        help="the tokenizer of the served model: the dataset is validated under it and the answers "
                        "are looked up as its tokens spell them (default: validated under the task's tokenizers, "
                        "answers looked up as 'Yes' and ' Yes')")
    parser.add_argument("--cache-dir", default=None, help="where built tokenizers are cached")
    parser.add_argument("--concurrency", type=positive_int, default=32, help="most requests in flight at once (default: 32)")
    parser.add_argument("--rpm", type=positive_int, default=None, help="requests per minute limit (default: learned from the API's headers)")
    parser.add_argument("--tpm", type=positive_int, default=None, help="tokens per minute limit (default: learned from the API's headers)")
    parser.add_argument("--max-cost", type=non_negative_float, default=None,
                        help="USD budget for this run; no request starts that could cross it (--batch: no batch is "
                        "submitted whose worst case at batch prices, plus what the job spent, could cross it)")
    parser.add_argument("--prices", default=None, help="price table YAML (as for run)")
    parser.add_argument("--request-timeout", type=positive_float, default=60.0, help="seconds before a request is abandoned and retried (default: 60)")
    parser.add_argument("--max-attempts", type=positive_int, default=6, help="attempts per request before it is given up (default: 6)")
    parser.add_argument("--grace-period", type=non_negative_float, default=10.0, help="seconds in-flight requests get to finish after Ctrl-C (default: 10)")
    parser.add_argument("--write-requests", default=None, metavar="FILE",
                        help="write the scoring requests as OpenAI batch input lines (for `vllm run-batch` or the "
                        "Batch API) to FILE and exit; nothing is sent")
    parser.add_argument("--results", default=None, metavar="FILE",
                        help="read batch output lines (from --write-requests' requests) into the scores file instead "
                        "of sending requests")
    parser.add_argument("--batch", action="store_true",
                        help="send the requests through the Batch API at batch prices (half of real time; answers "
                        "within 24 h): one batch per endpoint, state in DATASET.scores/MODEL.batch/; Ctrl-C stops "
                        "waiting (the batches go on) and the same command resumes without submitting again")
    parser.add_argument("--cancel", action="store_true",
                        help="with --batch: cancel this scoring job's batches that have not ended; the next --batch "
                        "run reads what finished and asks again for the rest")
    parser.set_defaults(handler=_handler)


def _handler(args: argparse.Namespace) -> int:
    from asyncgen.commands.score_run import score

    return score(args)
