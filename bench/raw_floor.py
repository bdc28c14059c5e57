"""The floor for client CPU per request: a bare aiohttp client, no SDK, no throttle, no retries.

    python bench/raw_floor.py --base-url URL --requests N --concurrency C

``C`` worker coroutines share one ``aiohttp.ClientSession`` (a connection pool of ``C``) and post the
same kind of chat request ``asyncgen run`` sends (the body from ``asyncgen.prompting.request_body``,
serialised with orjson per request), then read each answer with orjson and parse it
(``parse_answer``), until ``N`` requests have been answered. What it leaves out is what asyncgen
adds: the SDK's transport and typed errors, the throttle, the retry policy and the counters. Prints
one JSON object with ``cpu_ms_per_request`` measured as ``bench/client_load.py`` measures it
(``getrusage`` of this process over the load, per answered request).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp  # noqa: E402
import orjson  # noqa: E402

from asyncgen.config import load_task  # noqa: E402
from asyncgen.eventloop import run_event_loop  # noqa: E402
from asyncgen.prompting import GenerationSettings, parse_answer, request_body, response_format_for  # noqa: E402


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def score_load(args: argparse.Namespace) -> dict:
    """The floor of ``asyncgen score``'s requests: the same bodies (both sides of both forms of each
    scenario, as ``bench/score_load.py`` sends them), each answer read with orjson and its top-k or
    text taken out; nothing else."""
    from asyncgen.behavior import chat_text, top_k_of_completion
    from asyncgen.scoring import TOP_K, ScoreSettings, request_body as score_body, requests_of
    from score_load import MODEL, scenarios

    task = load_task("refusal")
    settings = ScoreSettings(MODEL, task.answers.safe, task.answers.harmful, {}, completions_top_k=TOP_K)
    jobs = iter([(form, text) for scenario in scenarios(args.requests // 4)
                 for form, _side, text in requests_of(scenario, settings.forms)])
    urls = {"single": args.base_url.rstrip("/") + "/completions", "multi": args.base_url.rstrip("/") + "/chat/completions"}
    headers = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}
    ok = errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency), trust_env=False) as session:
        async def worker() -> None:
            nonlocal ok, errors
            for form, text in jobs:
                body = orjson.dumps(score_body(settings, form, text, "completions" if form == "single" else "chat"))
                async with session.post(urls[form], data=body, headers=headers) as response:
                    content = await response.read()
                if response.status != 200:
                    errors += 1
                    continue
                answer = orjson.loads(content)
                top_k_of_completion(answer) if form == "single" else chat_text(answer)
                ok += 1

        cpu_before, started = _cpu_seconds(), time.monotonic()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        cpu, wall = _cpu_seconds() - cpu_before, time.monotonic() - started
    return {"client": "raw aiohttp (score requests)", "concurrency": args.concurrency, "requests_ok": ok,
            "errors": errors, "wall_s": round(wall, 3), "requests_per_s": round(ok / wall, 1) if wall else None,
            "cpu_ms_per_request": round(1000 * cpu / ok, 4) if ok else None}


async def load(args: argparse.Namespace) -> dict:
    if args.score:
        return await score_load(args)
    task = load_task("refusal")
    settings = GenerationSettings("gpt-4o", response_format_for("gpt-4o"), 1.0, 0)
    url = args.base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    counter = iter(range(args.requests))
    ok = errors = 0
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
        async def worker() -> None:
            nonlocal ok, errors
            for number in counter:
                body = orjson.dumps(request_body(task, settings, (), number))
                async with session.post(url, data=body, headers=headers) as response:
                    content = await response.read()
                if response.status != 200:
                    errors += 1
                    continue
                answer = orjson.loads(content)
                for choice in answer["choices"]:
                    parse_answer(choice["message"].get("content"), choice.get("finish_reason"),
                                 choice["message"].get("refusal"))
                ok += 1

        cpu_before, started = _cpu_seconds(), time.monotonic()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        cpu, wall = _cpu_seconds() - cpu_before, time.monotonic() - started
    return {"client": "raw aiohttp", "concurrency": args.concurrency, "requests_ok": ok, "errors": errors,
            "wall_s": round(wall, 3), "requests_per_s": round(ok / wall, 1) if wall else None,
            "cpu_ms_per_request": round(1000 * cpu / ok, 4) if ok else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:PORT/v1 (loopback)")
    parser.add_argument("--requests", type=int, required=True, help="requests to answer")
    parser.add_argument("--concurrency", type=int, default=32, help="worker coroutines, one request each in flight")
    parser.add_argument("--score", action="store_true", help="send asyncgen score's requests instead of run's")
    args = parser.parse_args()
    sys.stdout.write(orjson.dumps(run_event_loop(load(args))).decode() + "\n")


if __name__ == "__main__":
    main()
