"""Load an OpenAI-compatible server through asyncgen's own request path, and measure the client.

    python bench/client_load.py --base-url URL --requests N --concurrency C [--duration S] [--rpm R] [--tpm T]

Runs in its own process (bench/run.py starts it as a child, the server in another process), so the
CPU time and peak RSS it reports are the client's alone. ``C`` worker coroutines share one
``asyncgen.workers.Generator`` (with its ``Throttle`` and ``RetryPolicy``) over
``openai.AsyncOpenAI(max_retries=0)`` with the same HTTP client as ``asyncgen run``, and
each calls ``generator.generate(i, [])`` until ``N`` requests have been started or ``S`` seconds
have passed, whichever first; requests in flight then finish. Every request answered is parsed
as a run parses it (``parse_answer``); nothing is validated or written.

Prints one JSON object on stdout:

- ``requests_ok`` answered, ``lost`` (given up after the retry policy's attempts, or failed with a
  permanent error), ``attempts`` sent (retries included), ``rate_limited`` 429s the client saw;
- ``wall_s`` from the first request to the last answer; ``requests_per_s`` = ok / wall;
- ``cpu_s`` user + system CPU of this process over that same span (``getrusage``; set-up and imports
  excluded), ``cpu_ms_per_request`` = cpu / ok, and a cProfile of the span with ``--profile FILE``;
- ``peak_rss_mb`` of this process (``ru_maxrss``), imports included;
- ``limits_learned``: the RPM/TPM the throttle ended with (from ``--rpm/--tpm`` or the headers).

``--via sdk`` sends each request through the SDK's own request path instead (``client.post`` over
the SDK's aiohttp transport, as asyncgen did before issue 13), everything else unchanged: a
comparison, not what a run uses (``asyncgen.transport.ChatTransport``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import openai  # noqa: E402
import orjson  # noqa: E402

from asyncgen.config import default_config_dir, load_task  # noqa: E402
from asyncgen.errors import ApiError  # noqa: E402
from asyncgen.eventloop import run_event_loop  # noqa: E402
from asyncgen.prices import load_prices, price_for  # noqa: E402
from asyncgen.prompting import largest_request_tokens, response_format_for  # noqa: E402
from asyncgen.stats import RunStats  # noqa: E402
from asyncgen.throttle import RetryPolicy, Throttle  # noqa: E402
from asyncgen.transport import ChatTransport  # noqa: E402
from asyncgen.workers import GenerationSettings, Generator  # noqa: E402


class SdkTransport:
    """The SDK's own request path with ``ChatTransport``'s contract: the comparison of ``--via sdk``."""

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self.client, self.base_url = client, str(client.base_url)

    async def post(self, body: dict):
        response = await self.client.post("/chat/completions", cast_to=httpx.Response, body=body)
        return response.headers, response.content

    async def close(self) -> None:
        pass


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def load(args: argparse.Namespace) -> dict:
    task = load_task("refusal")
    prices = load_prices(default_config_dir() / "prices.yaml")
    if args.via == "sdk":
        client = openai.AsyncOpenAI(api_key="sk-bench", base_url=args.base_url, max_retries=0,
                                    timeout=httpx.Timeout(args.request_timeout, connect=5.0),
                                    http_client=openai.DefaultAioHttpClient(
                                        limits=httpx.Limits(max_connections=args.concurrency,
                                                            max_keepalive_connections=args.concurrency),
                                        trust_env=False))
        transport = SdkTransport(client)
    else:  # what asyncgen run sends through; trust_env=False: a proxy must not see loopback calls
        client = openai.AsyncOpenAI(api_key="sk-bench", base_url=args.base_url, max_retries=0)
        transport = ChatTransport(client, concurrency=args.concurrency, timeout=args.request_timeout,
                                  trust_env=False)
    stats = RunStats(target=args.requests)
    throttle = Throttle(args.rpm, args.tpm, largest_request_tokens=largest_request_tokens(task))
    # seed + i per request: every body differs, as in a run (whose avoid lists differ).
    settings = GenerationSettings("gpt-4o", response_format_for("gpt-4o"), 1.0, args.seed)
    generator = Generator(transport, task, settings, throttle, RetryPolicy(max_attempts=args.max_attempts),
                          stats, price_for(prices, "gpt-4o"), "sk-bench")
    issued = 0
    errors: dict[str, int] = {}
    candidates = 0
    last_answer = 0.0

    async def worker() -> None:
        nonlocal issued, candidates, last_answer
        while issued < args.requests and time.monotonic() < deadline:
            number = issued
            issued += 1
            try:
                pairs = await generator.generate(number, [])
            except ApiError as exc:
                errors[str(exc)[:120]] = errors.get(str(exc)[:120], 0) + 1
            else:
                candidates += len(pairs)
            last_answer = time.monotonic()

    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    cpu_before = _cpu_seconds()
    started = time.monotonic()
    deadline = started + args.duration if args.duration else float("inf")
    if profiler is not None:
        profiler.enable()
    try:
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    finally:
        if profiler is not None:
            profiler.disable()
    ended = time.monotonic()
    cpu = _cpu_seconds() - cpu_before
    await transport.close()
    await client.close()
    if profiler is not None:
        profiler.dump_stats(args.profile)
    wall = (last_answer or ended) - started
    ok = stats.requests_ok
    rpm, tpm = throttle.limits
    return {
        "concurrency": args.concurrency,
        "requests_started": issued,
        "requests_ok": ok,
        "lost": stats.requests_given_up + sum(errors.values()),
        "given_up": stats.requests_given_up,
        "errors": errors,
        "attempts": stats.requests_sent,
        "rate_limited": stats.rate_limited,
        "retries": dict(stats.retries),
        "candidates": candidates,
        "wall_s": round(wall, 3),
        "requests_per_s": round(ok / wall, 2) if wall > 0 else None,
        "cpu_s": round(cpu, 3),
        "cpu_ms_per_request": round(1000 * cpu / ok, 4) if ok else None,
        "cpu_share_of_one_core": round(cpu / wall, 3) if wall > 0 else None,
        "cooldowns": throttle.cooldowns,
        "cooldown_s": round(throttle.cooldown_seconds, 3),
        "limits_learned": {"rpm": rpm, "tpm": tpm},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "via": args.via,
        "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        "pid": os.getpid(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:PORT/v1 (loopback)")
    parser.add_argument("--requests", type=int, required=True, help="most requests to start")
    parser.add_argument("--concurrency", type=int, default=32, help="worker coroutines, one request each in flight")
    parser.add_argument("--duration", type=float, default=None, help="stop starting requests after this many seconds")
    parser.add_argument("--rpm", type=int, default=None, help="give the throttle this RPM (default: learn it from headers)")
    parser.add_argument("--tpm", type=int, default=None, help="give the throttle this TPM (default: learn it from headers)")
    parser.add_argument("--seed", type=int, default=0, help="request i is sent with seed+i (default: 0)")
    parser.add_argument("--max-attempts", type=int, default=6, help="attempts per request (default: 6, as run)")
    parser.add_argument("--request-timeout", type=float, default=60.0, help="seconds per attempt (default: 60, as run)")
    parser.add_argument("--via", choices=("run", "sdk"), default="run",
                        help="run: the transport asyncgen run uses (asyncgen.transport.ChatTransport); sdk: the "
                        "SDK's own client.post over its aiohttp transport, for comparison")
    parser.add_argument("--profile", default=None, help="write a cProfile of the load to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result = run_event_loop(load(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
