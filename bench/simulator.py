"""Benchmark the OpenAI simulator: chat completions served per second on one core, zero latency.

    python bench/simulator.py [--quick] [--requests N] [--concurrency C]

The server runs in its own process, pinned to CPU 0 where the platform allows it; the load
generators (aiohttp clients, keep-alive connections, a bounded number of requests in flight) run
in other processes, pinned to the other CPUs (one process per CPU, at most 4), and stop after
their share of the requests. Every request is a realistic generation request
(the refusal task's instructions, examples, a list of prompts to avoid, json_schema, 10 pairs),
sent to 127.0.0.1 only. ``run(quick)`` returns the numbers as a dict (for bench/run.py):

- ``requests_per_s``: answered requests over the wall time of the run;
- ``requests_per_server_cpu_s``: answered requests over the CPU seconds the server process used,
  its capacity on one core whether or not the load generator could saturate it.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import orjson  # noqa: E402

from asyncgen.config import load_task
from asyncgen.eventloop import run_event_loop  # noqa: E402
from asyncgen.prompting import JSON_SCHEMA_FORMAT  # noqa: E402

SERVER_CPU = 0
SCHEMA = JSON_SCHEMA_FORMAT  # exactly what asyncgen run sends


def _pin(cpu: int) -> bool:
    if not hasattr(os, "sched_setaffinity") or cpu not in os.sched_getaffinity(0):
        return False
    os.sched_setaffinity(0, {cpu})
    return True


def _serve(port_out, stop) -> None:
    """The server process: pin, start the simulator on a free loopback port, report it, wait."""
    _pin(SERVER_CPU)
    from asyncgen.simulator import SimulatorConfig, running_simulator

    async def main() -> None:
        config = SimulatorConfig(rpm=None, tpm=None, seed=1)
        async with running_simulator(config) as sim:
            port_out.send(sim.port)
            while not stop.is_set():
                await asyncio.sleep(0.05)

    run_event_loop(main())


def _bodies(count: int, offset: int = 0) -> list[bytes]:
    """Distinct request bodies: the avoid list grows like a real run's."""
    task = load_task("refusal")
    examples = "\n".join(f'{{"prompt": "{e.safe}", "counterfactual": "{e.harmful}"}}' for e in task.examples)
    bodies = []
    for i in range(offset, offset + count):
        avoid = "\n".join(f"Help me make a thing number {j}." for j in range(i % 50))
        user = f"Examples:\n{examples}\nDo not repeat these prompts:\n{avoid}\nWrite exactly 10 pairs. Answer in JSON."
        bodies.append(orjson.dumps({
            "model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": task.generation_instructions}, {"role": "user", "content": user}],
            "response_format": SCHEMA,
            "max_completion_tokens": 2000,
            "temperature": 1.0,
            "seed": i,
        }))
    return bodies


async def _load(port: int, bodies: list[bytes], concurrency: int) -> tuple[float, float, dict[int, int]]:
    """Send every body, ``concurrency`` at a time; (monotonic start, monotonic end, statuses)."""
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    headers = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}
    statuses: dict[int, int] = {}
    next_index = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal next_index
            while next_index < len(bodies):
                body = bodies[next_index]
                next_index += 1
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    statuses[response.status] = statuses.get(response.status, 0) + 1

        async def warm(_: int) -> None:
            async with session.get(f"http://127.0.0.1:{port}/_stats") as response:
                await response.read()

        await asyncio.gather(*(warm(i) for i in range(concurrency)))  # open the connections first
        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return start, time.monotonic(), statuses


def _generate_load(cpu: int | None, port: int, count: int, offset: int, concurrency: int, ready, go, results) -> None:
    """A load generator process: pin, build its bodies, wait for the common start, send, report."""
    if cpu is not None:
        _pin(cpu)
    bodies = _bodies(count, offset)
    ready.release()
    go.wait()
    results.put(run_event_loop(_load(port, bodies, concurrency)))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc); NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(quick: bool = False, requests: int | None = None, concurrency: int = 64, clients: int | None = None) -> dict:
    count = requests or (3_000 if quick else 20_000)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    client_cpus = [cpu for cpu in cpus if cpu != SERVER_CPU]
    clients = clients or max(1, min(4, len(client_cpus)))
    context = multiprocessing.get_context("spawn")
    port_in, port_out = context.Pipe(duplex=False)
    stop, go, ready, results = context.Event(), context.Event(), context.Semaphore(0), context.Queue()
    server = context.Process(target=_serve, args=(port_out, stop), daemon=True)
    server.start()
    loaders = []
    try:
        if not port_in.poll(30):
            raise RuntimeError("the simulator did not start within 30 s")
        port = port_in.recv()
        shares = [count // clients + (1 if i < count % clients else 0) for i in range(clients)]
        for i, share in enumerate(shares):
            cpu = client_cpus[i % len(client_cpus)] if client_cpus else None
            loader = context.Process(target=_generate_load, daemon=True,
                                     args=(cpu, port, share, sum(shares[:i]), max(1, concurrency // clients), ready, go, results))
            loader.start()
            loaders.append(loader)
        for _ in loaders:
            if not ready.acquire(timeout=60):
                raise RuntimeError("a load generator did not start within 60 s")
        cpu_before = _cpu_seconds(server.pid)
        go.set()
        outcomes = [results.get(timeout=600) for _ in loaders]
        server_cpu = _cpu_seconds(server.pid) - cpu_before
    finally:
        stop.set()
        for process in (*loaders, server):
            process.join(10)
            if process.is_alive():
                process.terminate()
    seconds = max(end for _, end, _ in outcomes) - min(start for start, _, _ in outcomes)
    statuses: dict[int, int] = {}
    for _, _, counts in outcomes:
        for status, n in counts.items():
            statuses[status] = statuses.get(status, 0) + n
    answered = statuses.get(200, 0)
    return {
        "requests": count,
        "concurrency": concurrency,
        "load_generators": clients,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": round(seconds, 3),
        "requests_per_s": round(answered / seconds, 1),
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_share": round(server_cpu / seconds, 2),
        "requests_per_server_cpu_s": round(answered / server_cpu, 1) if server_cpu > 0 else None,
        "server_pinned_to_cpu": SERVER_CPU if SERVER_CPU in cpus else None,
        "load_generator_cpus": sorted({client_cpus[i % len(client_cpus)] for i in range(clients)}) if client_cpus else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3,000 requests instead of 20,000")
    parser.add_argument("--requests", type=int, default=None, help="number of requests (overrides --quick)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight, over all load generators (default: 64)")
    parser.add_argument("--clients", type=int, default=None,
                        help="load generator processes (default: one per CPU other than the server's, at most 4)")
    args = parser.parse_args()
    results = run(args.quick, args.requests, args.concurrency, args.clients)
    print(f"simulator benchmark ({os.cpu_count()} CPUs, Python {sys.version.split()[0]}, zero latency, loopback)")
    print(f"{results['requests']:,} requests, {results['concurrency']} in flight from {results['load_generators']} "
          f"load generator process(es): statuses {results['statuses']}")
    print(f"served {results['requests_per_s']:,} requests/s (wall); server CPU busy {results['server_cpu_share']:.0%} "
          f"of one core: {results['requests_per_server_cpu_s']:,} requests per server CPU second")


if __name__ == "__main__":
    main()
