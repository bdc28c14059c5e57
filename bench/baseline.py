"""The seed's approach, for comparison: one request at a time, validated inline, until N scenarios.

    python bench/baseline.py --base-url URL [--scenarios 200] [--max-seconds 120]

A synchronous ``openai.OpenAI`` client (the SDK's own retries, default settings; no proxy for
loopback) sends the same generation request ``asyncgen run`` sends (same prompt builder, schema,
token cap, temperature and per-request seed, and the same "already collected" sample of recent
prompts), waits for the answer, parses it with the same ``parse_answer``, validates its pairs
inline with the same ``validate_pairs`` under the task's tokenizers, drops duplicates, and appends
each accepted scenario to a JSONL file in the dataset format, flushed after each answer. Then the
next request, until ``N`` scenarios are written or ``--max-seconds`` have passed.

Prints one JSON object on stdout: ``scenarios``, ``requests``, ``seconds`` (from the first request
to the last scenario written; loading the tokenizers before it is reported apart, as
``setup_s``), ``scenarios_per_s``, ``first_scenario_s``, and the counts of what was rejected.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import openai  # noqa: E402
import orjson  # noqa: E402

from asyncgen.validate import load_task_and_tokenizers  # noqa: E402
from asyncgen.pipeline import AVOID_POOL  # noqa: E402
from asyncgen.prompting import AVOID_CHARS, avoid_list  # noqa: E402
from asyncgen.prompting import build_messages, max_output_tokens, parse_answer, response_format_for  # noqa: E402
from asyncgen.scenario import Scenario, encode_lines  # noqa: E402
from asyncgen.validate import validate_pairs  # noqa: E402


def run(base_url: str, scenarios: int = 200, *, task_name: str = "refusal", model: str = "gpt-4o",
        seed: int = 0, max_seconds: float = 120.0, output: str | None = None) -> dict:
    started_setup = time.perf_counter()
    task, _, tokenizers = load_task_and_tokenizers(task_name, None, [], None)
    client = openai.OpenAI(api_key="sk-baseline", base_url=base_url,
                           http_client=openai.DefaultHttpxClient(trust_env=False))
    setup_s = time.perf_counter() - started_setup
    rng = random.Random(seed)
    recent: deque[str] = deque(maxlen=AVOID_POOL)
    seen: set[tuple[str, str]] = set()
    written = requests = failed = candidates = rejected = duplicates = 0
    first_scenario_s = None
    with tempfile.TemporaryDirectory(prefix="asyncgen-baseline-") as folder:
        path = Path(output) if output else Path(folder) / "dataset.jsonl"
        with open(path, "wb") as sink:
            started = time.perf_counter()
            while written < scenarios and time.perf_counter() - started < max_seconds:
                avoid = avoid_list(list(recent), AVOID_CHARS, rng)
                requests += 1
                try:
                    completion = client.chat.completions.create(
                        model=model,
                        messages=build_messages(task, avoid),
                        response_format=response_format_for(model),
                        max_completion_tokens=max_output_tokens(task),
                        temperature=1.0,
                        seed=seed + requests,
                    )
                except openai.APIError as exc:
                    failed += 1
                    logging.warning("request %d failed: %s", requests, exc)
                    continue
                pairs = []
                for choice in completion.choices:
                    pairs += parse_answer(choice.message.content, choice.finish_reason, choice.message.refusal).pairs
                candidates += len(pairs)
                for verdict in validate_pairs(pairs, task, tokenizers):
                    if written >= scenarios:
                        break
                    if not verdict.valid:
                        rejected += 1
                        continue
                    scenario = Scenario.render(task, verdict.prompt, verdict.counterfactual)
                    keys = scenario.dedup_keys()
                    if keys in seen:
                        duplicates += 1
                        continue
                    seen.add(keys)
                    sink.write(encode_lines(written, task.task_name, scenario))
                    written += 1
                    recent.append(verdict.prompt)
                    if first_scenario_s is None:
                        first_scenario_s = time.perf_counter() - started
                sink.flush()
            seconds = time.perf_counter() - started
    client.close()
    return {
        "scenarios": written,
        "target": scenarios,
        "requests": requests,
        "failed_requests": failed,
        "candidates": candidates,
        "rejected": rejected,
        "duplicates": duplicates,
        "seconds": round(seconds, 3),
        "scenarios_per_s": round(written / seconds, 2) if seconds > 0 else None,
        "first_scenario_s": None if first_scenario_s is None else round(first_scenario_s, 3),
        "setup_s": round(setup_s, 3),
        "pid": os.getpid(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:PORT/v1")
    parser.add_argument("--scenarios", type=int, default=200, help="scenarios to write (default: 200)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="stop after this long anyway (default: 120)")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the requests (default: 0)")
    parser.add_argument("--output", default=None, help="keep the JSONL here (default: a temporary file, removed)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result = run(args.base_url, args.scenarios, seed=args.seed, max_seconds=args.max_seconds, output=args.output)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
