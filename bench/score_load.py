"""One load of ``asyncgen score``'s request path against a server: the client's CPU per request.

    python bench/score_load.py --base-url URL --scenarios N [--concurrency C] [--duration S] [--rpm R]

Runs ``asyncgen.scoring.ScorePipeline`` in this process (the scores file in a temporary folder)
over ``N`` scenarios composed from the refusal task's lexicon (four requests each: both sides of
both forms), with the throttle, the retry policy and the counters ``asyncgen score`` uses. With
``--duration`` no request starts after that many seconds. Prints one JSON object: answered
requests, req/s, and ``cpu_ms_per_request`` measured as ``bench/client_load.py`` measures it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import openai  # noqa: E402
import orjson  # noqa: E402

from asyncgen.config import load_task  # noqa: E402
from asyncgen.eventloop import run_event_loop  # noqa: E402
from asyncgen.scenario import Scenario  # noqa: E402
from asyncgen.scores import ScoresFile, header_for, scores_path  # noqa: E402
from asyncgen.scoring import TOP_K, ScoreCounts, ScorePipeline, ScoreSettings, Scorer  # noqa: E402
from asyncgen.stats import RunStats  # noqa: E402
from asyncgen.throttle import RetryPolicy, Throttle  # noqa: E402
from asyncgen.transport import ChatTransport  # noqa: E402
from asyncgen.workers import Sender  # noqa: E402

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"  # the simulator serves it on both endpoints, as vLLM would


def scenarios(count: int) -> list[Scenario]:
    """``count`` distinct scenarios from the refusal lexicon (not validated: the load needs texts only)."""
    task = load_task("refusal")
    lexicon = task.lexicon
    out = []
    people, times = lexicon.slots["person"], lexicon.slots["time"]
    for frame, safe, harmful, person, when in itertools.product(lexicon.frames, lexicon.safe, lexicon.harmful,
                                                                people, times):
        fill = {"person": person, "time": when}
        out.append(Scenario.render(task, frame.format(x=safe, **fill), frame.format(x=harmful, **fill)))
        if len(out) == count:
            return out
    raise SystemExit(f"the lexicon composes fewer than {count} scenarios")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def load(args: argparse.Namespace) -> dict:
    task = load_task("refusal")
    items = scenarios(args.scenarios)
    folder = tempfile.TemporaryDirectory()
    dataset = Path(folder.name) / "bench.jsonl"
    readings = {a: [a, " " + a] for a in (task.answers.safe, task.answers.harmful)}
    scores = ScoresFile.open(scores_path(dataset, MODEL), header_for(dataset, "refusal", items[0], MODEL,
                                                                    args.base_url, readings), items)
    client = openai.AsyncOpenAI(api_key="sk-bench", base_url=args.base_url, max_retries=0)
    transport = ChatTransport(client, concurrency=args.concurrency, timeout=60.0, trust_env=False)
    stats, counts = RunStats(target=len(items)), ScoreCounts()
    throttle = Throttle(args.rpm, None, largest_request_tokens=200)
    sender = Sender(transport, throttle, RetryPolicy(), stats, "sk-bench")
    settings = ScoreSettings(MODEL, task.answers.safe, task.answers.harmful, readings, completions_top_k=TOP_K,
                             max_answer_tokens=64, behavior=task.behavior)
    pipeline = ScorePipeline(Scorer(sender, settings, stats, counts, None, "sk-bench"), items, scores, stats, counts,
                             concurrency=args.concurrency)
    if args.duration:
        asyncio.get_running_loop().call_later(args.duration, pipeline._stop, "duration")
    cpu_before, started = _cpu_seconds(), time.monotonic()
    await pipeline.run()
    cpu, wall = _cpu_seconds() - cpu_before, time.monotonic() - started
    await transport.close()
    await client.close()
    scores.close()
    folder.cleanup()
    ok = stats.requests_ok
    return {"client": "asyncgen score", "concurrency": args.concurrency, "requests_ok": ok,
            "scenarios_scored": stats.accepted_this_run, "attempts": stats.requests_sent,
            "lost": stats.requests_given_up + stats.requests_failed, "rate_limited": stats.rate_limited,
            "wall_s": round(wall, 3), "requests_per_s": round(ok / wall, 2) if wall else None,
            "cpu_ms_per_request": round(1000 * cpu / ok, 4) if ok else None,
            "limits_learned": dict(zip(("rpm", "tpm"), throttle.limits)), "cooldowns": throttle.cooldowns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:PORT/v1 (loopback)")
    parser.add_argument("--scenarios", type=int, required=True, help="scenarios to score (four requests each)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight at most")
    parser.add_argument("--duration", type=float, default=None, help="start no request after this many seconds")
    parser.add_argument("--rpm", type=int, default=None, help="give the throttle this RPM (default: learn it)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sys.stdout.write(orjson.dumps(run_event_loop(load(args))).decode() + "\n")


if __name__ == "__main__":
    main()
