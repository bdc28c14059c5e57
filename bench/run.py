"""asyncgen's benchmarks, side by side in one run: throughput against the rate limit, client cost,
end-to-end speed, validator, memory, sink, and the seed's one-at-a-time approach.

    python bench/run.py [--quick] [--only NAME,...] [--output-dir DIR]

Every server is the simulator (``python -m asyncgen simulate``) in its own process on loopback;
every client is a child process too (``bench/client_load.py``, ``bench/baseline.py``,
``python -m asyncgen run``), so the CPU time and memory reported are the client's alone. Every load
is bounded in count and in time. Prints a markdown table and writes, under ``bench/results/``,
``latest.json``, ``latest.md`` and (with matplotlib, the ``plot`` extra) ``throughput.png``;
``--quick`` writes ``quick.json``, ``quick.md`` and ``quick-throughput.png`` instead, so a quick
check never overwrites the full figures.

1. ``rate_limited``: the simulator at 1,200 RPM (retry hints on its 429s), 100 ms latency; the client
   learns the limit from the headers. 60 s of load (8 s quick). The simulator's bucket starts full
   (it would allow a burst of 1,200 requests), so the figure reported as ``fraction_of_limit`` is
   the steady window: requests the simulator admitted (status 200, by arrival time) from
   ``WARMUP`` s after the first arrival to the last, over that window, against 20 req/s. The whole
   run's rate (client side: answered over first request to last answer) is reported beside it.
2. ``unlimited``: 10,000 requests (2,000 quick) at 50 ms latency, limits out of reach, at
   concurrency 32, 64, 128, 256, each also capped at ``UNLIMITED_CAP_S`` seconds of load: req/s and
   the client process's CPU ms per answered request, with the HTTP client ``asyncgen run`` uses
   (``asyncgen.transport.ChatTransport``). ``unlimited_sdk``: the same load through the SDK's own
   request path (``client.post`` over its aiohttp transport, what run used before issue 13), for
   comparison.
3. ``run``: ``asyncgen run --concurrency 32`` on the offline default (simulator in-process) in a
   temporary folder: scenarios/s over the run's own wall time, time to the first accepted scenario.
4. ``validator``: ``bench/validator.py``. 6. ``sink``: ``bench/sink.py``.
5. ``memory``: ``asyncgen run --concurrency 256`` against a simulator process with the offline
   default's latency and no reachable limit (so 256 are really in flight): the peak RSS of the
   client and of its validator workers, from ``/proc/<pid>/status`` of the process tree.
7. ``baseline``: ``bench/baseline.py`` against a simulator process with the offline default's
   settings, then ``asyncgen run --base-url`` against that same simulator process:
   ``speedup`` = run scenarios/s / baseline scenarios/s, both measured here.
13-14. ``score``: ``bench_score``: scoring at the rate-limited simulator, and its client CPU per
   request against the bare aiohttp floor.
8. ``batch``: ``asyncgen batch run`` on the offline default in a temporary folder, as many scenarios
   as (3): wall time, cost at batch prices, the same tokens at real-time prices, and the ratio to
   what (3) paid for its dataset.
8b. ``batch_seeds``: the same ``batch run`` with ``SEEDS`` different seeds (the pilot, the round's
   size and the simulator's answers all change): in how many one round reached N, and the cost per
   accepted scenario (pilot included) against what ``run`` paid per scenario with the same seeds
   (their mean); and where the money beyond the batch price went: the real-time premium of the
   pilot and of a finish, the surplus kept as spares, the duplicates (docs/batch-cost.md).
15. ``resume``: ``bench/resume.py`` at 20,000 (quick), 100,000 and 1,000,000 scenarios: time from
   ``asyncgen run`` starting on a large dataset to its first new scenario, and its peak memory.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
sys.path.insert(0, str(ROOT))

from bench.doc_tables import RUN_TABLE, write_table  # noqa: E402 (ROOT is on sys.path: run as a script or imported)

RATE_RPM = 1200
RATE_LATENCY_MS = 100
WARMUP = {True: 2.0, False: 5.0}  # seconds after the first arrival left out of the steady window
UNLIMITED = 1_000_000_000  # --rpm / --tpm of a simulator whose limits are out of reach
UNLIMITED_CONCURRENCY = (32, 64, 128, 256)
UNLIMITED_CAP_S = {True: 2.0, False: 24.0}
OFFLINE_LATENCY = ("--latency-ms", "300", "--latency-jitter-ms", "150")  # as _run_async's in-process simulator
CPU_AIM_MS = 0.5
FRACTION_AIM = 0.95

SIZES = {
    # quick, full
    "rate_limited_s": (8, 60),
    "rpm_given_s": (0, 15),
    "unlimited_requests": (2_000, 10_000),
    "comparison_requests": (1_000, 5_000),
    "run_scenarios": (300, 1_500),
    "memory_scenarios": (1_400, 1_500),  # >= 256 x ~5 accepted per request: 256 really in flight
    "baseline_scenarios": (40, 200),
    "batch_seeds": (3, 10),
}


def size(name: str, quick: bool) -> int:
    return SIZES[name][0 if quick else 1]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def child_env() -> dict[str, str]:
    """The environment of every child: this checkout first on the path, no API key or base URL."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


# --- The machine ------------------------------------------------------------------------------


def machine() -> dict:
    model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024**2, 1)
    versions = {}
    for package in ("openai", "httpx", "httpcore", "aiohttp", "httpx-aiohttp", "aiolimiter", "uvloop", "tokenizers", "orjson"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu": model or platform.processor() or None,
        "memory_gb": memory_gb,
        "python": platform.python_version(),
        "os": platform.platform(),
        "versions": versions,
    }


# --- Processes --------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Simulator:
    """``python -m asyncgen simulate --port 0 ...`` in its own process, stopped by SIGTERM on exit."""

    def __init__(self, *flags: str) -> None:
        self.flags = [str(flag) for flag in flags]
        self.process: subprocess.Popen | None = None
        self.base_url = ""

    def __enter__(self) -> "Simulator":
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "asyncgen", "simulate", "--port", "0", *self.flags, "--log-level", "WARNING"],
            stdout=subprocess.PIPE, stderr=self._stderr, env=child_env(), cwd=ROOT,
        )
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=60):
            self._stop()
            raise RuntimeError(f"the simulator ({' '.join(self.flags)}) printed no URL within 60 s")
        line = self.process.stdout.readline().decode().strip()
        if not line.startswith("http://"):
            self._stop()
            self._stderr.seek(0)
            raise RuntimeError(f"the simulator did not start: {line!r} {self._stderr.read().decode()[-2000:]}")
        self.base_url = line
        self.root_url = line.rsplit("/v1", 1)[0]
        return self

    def stats(self) -> dict:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
        with opener.open(f"{self.root_url}/_stats", timeout=30) as response:
            return json.loads(response.read())

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.process.pid) if self.process else None

    def _stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def __exit__(self, *exc_info) -> None:
        self._stop()
        self._stderr.close()


def run_json(argv: list[str], timeout: float) -> dict:
    """Run a bench child that prints one JSON object on its last stdout line."""
    done = subprocess.run([sys.executable, *argv], capture_output=True, env=child_env(), cwd=ROOT, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:2])} exited {done.returncode}: {done.stderr.decode()[-2000:]}")
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def client_load(base_url: str, requests: int, concurrency: int, *, duration: float | None = None,
                rpm: int | None = None, seed: int = 0, via: str = "run") -> dict:
    argv = [str(BENCH / "client_load.py"), "--base-url", base_url, "--requests", str(requests),
            "--concurrency", str(concurrency), "--seed", str(seed), "--via", via]
    if duration:
        argv += ["--duration", str(duration)]
    if rpm:
        argv += ["--rpm", str(rpm)]
    return run_json(argv, timeout=(duration or 300) + 120)


# --- 1. Throughput against the rate limit -----------------------------------------------------


def steady_rate(stats: dict, quick: bool) -> tuple[float | None, list[int]]:
    """Admitted requests per second in the steady window (from WARMUP s after the first arrival to the
    last), and admitted per second over the whole load, from the simulator's arrivals."""
    admitted = [t for t, status in stats["chat"]["arrivals"] if status == 200]  # [seconds since start, status]
    first, last = admitted[0], admitted[-1]
    window_start = first + WARMUP[quick]
    in_window = [t for t in admitted if t >= window_start]
    steady = (len(in_window) - 1) / (last - window_start) if last > window_start and len(in_window) > 1 else None
    per_second = [0] * (int(last - first) + 1)
    for t in admitted:
        per_second[int(t - first)] += 1
    return steady, per_second


def _rate_limited_once(quick: bool, seconds: float, rpm_given: bool) -> dict:
    limit_per_s = RATE_RPM / 60
    with Simulator("--rpm", RATE_RPM, "--latency-ms", RATE_LATENCY_MS) as sim:
        # Enough requests to fill the window even at the bucket's burst: the duration ends the load.
        requests = int(limit_per_s * seconds * 2 + RATE_RPM)
        load = client_load(sim.base_url, requests, 32, duration=seconds, rpm=RATE_RPM if rpm_given else None)
        stats = sim.stats()
    steady, per_second = steady_rate(stats, quick)
    whole = load["requests_per_s"]
    return {
        "limit_rpm": RATE_RPM,
        "limit_per_s": round(limit_per_s, 3),
        "latency_ms": RATE_LATENCY_MS,
        "concurrency": 32,
        "limits": "given (--rpm 1200)" if rpm_given else "learned from the x-ratelimit headers",
        "load_s": seconds,
        "fraction_of_limit": None if steady is None else round(steady / limit_per_s, 4),
        "fraction_of_limit_reported": f"steady window: admitted requests from {WARMUP[quick]:g} s after the first arrival to the last",
        "requests_per_s_steady": None if steady is None else round(steady, 3),
        "fraction_of_limit_whole_run": round(whole / limit_per_s, 4),
        "requests_per_s_whole_run": whole,
        "admitted_first_second": per_second[0],
        "admitted_busiest_second": max(per_second),
        "rejected_429": int(stats["statuses"].get("429", 0)),
        "simulator_rate_limited": stats["rate_limited"],
        "client_saw_429": load["rate_limited"],
        "lost": load["lost"],
        "requests_ok": load["requests_ok"],
        "attempts": load["attempts"],
        "cooldowns": load["cooldowns"],
        "cpu_ms_per_request": load["cpu_ms_per_request"],
    }


def bench_rate_limited(quick: bool) -> dict:
    result = _rate_limited_once(quick, size("rate_limited_s", quick), rpm_given=False)
    if size("rpm_given_s", quick):
        result["rpm_given"] = _rate_limited_once(quick, size("rpm_given_s", quick), rpm_given=True)
    return result


# --- 2. Unlimited throughput and client cost --------------------------------------------------


def bench_unlimited(quick: bool, via: str = "run", requests: int | None = None,
                    concurrencies=UNLIMITED_CONCURRENCY) -> list[dict]:
    requests = requests or size("unlimited_requests", quick)
    rows = []
    with Simulator("--rpm", UNLIMITED, "--tpm", UNLIMITED, "--latency-ms", 50) as sim:
        for concurrency in concurrencies:
            server_before = sim.cpu_seconds()
            load = client_load(sim.base_url, requests, concurrency, duration=UNLIMITED_CAP_S[quick],
                               seed=1_000_000 * concurrency, via=via)
            server_cpu = sim.cpu_seconds() - server_before
            log(f"  {via} concurrency {concurrency}: {load['requests_ok']} requests, {load['requests_per_s']} req/s, "
                f"{load['cpu_ms_per_request']} ms CPU/request")
            rows.append({
                "concurrency": concurrency,
                "requests": load["requests_ok"],
                "requests_per_s": load["requests_per_s"],
                "cpu_ms_per_request": load["cpu_ms_per_request"],
                "client_cpu_share": load["cpu_share_of_one_core"],
                "server_cpu_share": round(server_cpu / load["wall_s"], 3) if load["wall_s"] else None,
                "time_capped": load["requests_started"] < requests,
                "lost": load["lost"],
                "peak_rss_mb": load["peak_rss_mb"],
                "via": via,
            })
    return rows


# --- 13-14. Scoring ----------------------------------------------------------------------------


def bench_score(quick: bool) -> dict:
    """13: ``asyncgen score``'s request path (bench/score_load.py) at the rate-limited simulator of
    row 1, limits learned: the steady admitted rate as a fraction of the limit. 14: its client CPU
    per request against the bare aiohttp floor sending the same requests (raw_floor.py --score),
    alternately on one unlimited simulator, best of 2 each."""
    seconds = size("rate_limited_s", quick)
    limit_per_s = RATE_RPM / 60
    with Simulator("--rpm", RATE_RPM, "--latency-ms", RATE_LATENCY_MS) as sim:
        scenarios = int(limit_per_s * seconds * 2 + RATE_RPM) // 4 + 1
        load = run_json([str(BENCH / "score_load.py"), "--base-url", sim.base_url, "--scenarios", str(scenarios),
                         "--duration", str(seconds)], timeout=seconds + 180)
        steady, _ = steady_rate(sim.stats(), quick)
    rate = {"limit_rpm": RATE_RPM, "latency_ms": RATE_LATENCY_MS, "load_s": seconds, "concurrency": 32,
            "fraction_of_limit": None if steady is None else round(steady / limit_per_s, 4),
            "requests_per_s_steady": None if steady is None else round(steady, 3),
            "requests_ok": load["requests_ok"], "lost": load["lost"], "client_saw_429": load["rate_limited"]}
    requests = 1000 if quick else 4000
    raw, ours = [], []
    with Simulator("--rpm", UNLIMITED, "--tpm", UNLIMITED, "--latency-ms", 50) as sim:
        for _ in range(2):  # alternately, so that a noisy neighbour weighs on both
            raw.append(run_json([str(BENCH / "raw_floor.py"), "--score", "--base-url", sim.base_url, "--requests",
                                 str(requests), "--concurrency", "32"], timeout=300)["cpu_ms_per_request"])
            ours.append(run_json([str(BENCH / "score_load.py"), "--base-url", sim.base_url, "--scenarios",
                                  str(requests // 4), "--concurrency", "32"], timeout=300)["cpu_ms_per_request"])
    cpu = {"requests": requests, "concurrency": 32, "raw_aiohttp_ms": min(raw), "asyncgen_ms": min(ours),
           "ratio": round(min(ours) / min(raw), 2), "raw_runs": raw, "asyncgen_runs": ours}
    return {"rate_limited": rate, "cpu": cpu}


def score_rows(score: dict | None) -> list[str]:
    if not score:
        return []
    r, c = score["rate_limited"], score["cpu"]
    return [
        f"| 13 | `score`'s requests at the simulator of row 1 ({r['limit_rpm']:,} RPM, {r['latency_ms']} ms), "
        f"{r['load_s']} s, concurrency {r['concurrency']}, limits learned | **{r['fraction_of_limit']:.3f}** of the limit "
        f"steady ({r['requests_per_s_steady']:.2f} req/s), {r['client_saw_429']} 429s, {r['lost']} lost "
        f"| ≥ {FRACTION_AIM}: {_aim(r['fraction_of_limit'] >= FRACTION_AIM and r['lost'] == 0)} |",
        f"| 14 | `score`'s client CPU per request vs the bare aiohttp floor sending the same requests, concurrency "
        f"{c['concurrency']}, {c['requests']:,} requests, best of 2 each | score {c['asyncgen_ms']:.2f} ms, floor "
        f"{c['raw_aiohttp_ms']:.2f} ms: **{c['ratio']:.2f}×** | ≤ 1.2×: {_aim(c['ratio'] <= 1.2)} |",
    ]


# --- 3. End-to-end run --------------------------------------------------------------------------

_SUMMARY = re.compile(r"wall time\s+([\d.]+) s(?:, first scenario after ([\d.]+) s)?")
_FINISHED = re.compile(r"asyncgen run finished: (\d+)/(\d+) scenarios")
_REQUESTS = re.compile(r"requests\s+(\d+) answered, (\d+) sent, (\d+) given up")
_COST = re.compile(r"cost\s+\$([\d.]+) this run")


def asyncgen_run(scenarios: int, concurrency: int, *, base_url: str | None = None, timeout: float = 240,
                 watch: bool = False, extra: tuple[str, ...] = (), keep_summary: bool = False) -> dict:
    """``python -m asyncgen run`` in a temporary folder; its summary, and with ``watch`` its memory."""
    with tempfile.TemporaryDirectory(prefix="asyncgen-bench-run-") as folder:
        argv = [sys.executable, "-m", "asyncgen", "run", "--concurrency", str(concurrency),
                "--num-scenarios", str(scenarios), "--log-level", "WARNING"]
        if base_url:
            argv += ["--base-url", base_url]
        argv += list(extra)
        with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
            started = time.perf_counter()
            process = subprocess.Popen(argv, cwd=folder, env=child_env(), stdout=stdout, stderr=stderr)
            watcher = TreeMemory(process.pid) if watch else None
            deadline = started + timeout
            while process.poll() is None:
                if watcher:
                    watcher.sample()
                if time.perf_counter() > deadline:
                    process.kill()
                    process.wait()
                    raise RuntimeError(f"asyncgen run did not finish within {timeout} s")
                time.sleep(0.05)
            process_s = time.perf_counter() - started
            stderr.seek(0)
            text = stderr.read().decode()
        if process.returncode != 0:
            raise RuntimeError(f"asyncgen run exited {process.returncode}: {text[-2000:]}")
    wall = _SUMMARY.search(text)
    finished = _FINISHED.search(text)
    requests = _REQUESTS.search(text)
    cost = _COST.search(text)
    if not (wall and finished):
        raise RuntimeError(f"no summary in asyncgen run's output: {text[-2000:]}")
    done, wall_s = int(finished.group(1)), float(wall.group(1))
    result = {
        "scenarios": done,
        "concurrency": concurrency,
        "wall_s": wall_s,
        "scenarios_per_s": round(done / wall_s, 2),
        "first_scenario_s": float(wall.group(2)) if wall.group(2) else None,
        "process_s": round(process_s, 2),
        "requests_ok": int(requests.group(1)) if requests else None,
        "requests_sent": int(requests.group(2)) if requests else None,
        "cost_usd": float(cost.group(1)) if cost else None,
        "endpoint": base_url and "simulator process (--base-url)" or "offline default (in-process simulator)",
    }
    if watcher:
        result["memory"] = watcher.report()
    if keep_summary:
        result["summary"] = text
    return result


def bench_run(quick: bool) -> dict:
    return asyncgen_run(size("run_scenarios", quick), 32)


# --- 8. Batch API workflow ---------------------------------------------------------------------

_BATCH_FINISHED = re.compile(r"asyncgen batch run finished: (\d+)/(\d+) scenarios")
_BATCH_COST = re.compile(r"cost\s+\$([\d.]+) at batch prices(?: \([^)]*\))?; real time would have cost \$([\d.]+)")
_BATCH_WALL = re.compile(r"wall time\s+([\d.]+) s")


def batch_run(scenarios: int, *flags: str) -> dict:
    """One ``asyncgen batch run`` on the offline default in a fresh folder: its summary's figures
    and what its manifest says of the rounds and the pilot."""
    with tempfile.TemporaryDirectory(prefix="asyncgen-bench-batch-") as folder:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "asyncgen", "batch", "run", "--num-scenarios", str(scenarios),
                               "--log-level", "WARNING", *flags], cwd=folder, env=child_env(), capture_output=True,
                              timeout=300)
        process_s = time.perf_counter() - started
        manifest = json.loads((Path(folder) / "batches" / "manifest.json").read_text())
    text = done.stderr.decode()
    finished, cost, wall = _BATCH_FINISHED.search(text), _BATCH_COST.search(text), _BATCH_WALL.search(text)
    if done.returncode != 0 or not (finished and cost and wall):
        raise RuntimeError(f"asyncgen batch run exited {done.returncode}: {text[-2000:]}")
    pilots = [e for e in manifest["entries"] if e.get("source") == "pilot"]
    finishes = [e for e in manifest["entries"] if e.get("source") == "finish"]
    return {
        "scenarios": int(finished.group(1)),
        "wall_s": float(wall.group(1)),
        "process_s": round(process_s, 2),
        "rounds": manifest["rounds"],
        "requests": sum(e["requests"] for e in manifest["entries"] if e.get("source") == "api"),
        "pilot_requests": sum(e["requests"] for e in pilots),
        "pilot_waves": len(pilots),
        "finish_requests": sum(e["requests"] for e in finishes),
        "pilot_yields": manifest["totals"].get("pilot_yields"),
        "spares": manifest["spares"],
        "cost_usd_batch": float(cost.group(1)),
        "cost_usd_same_tokens_real_time": float(cost.group(2)),
        **where_the_money_goes(manifest),
        "endpoint": "offline default (in-process simulator, batch clock 600x)",
    }


def where_the_money_goes(manifest: dict) -> dict:
    """What a ``batch run`` paid beyond the batch price of the requests its N scenarios needed, from
    its manifest at the shipped gpt-4o prices: the real-time premium of the pilot and of a finish
    (their cost less the same tokens at batch prices), the surplus (the spares: valid new pairs beyond N, at the rounds' cost
    per valid new pair) and the duplicates (candidates that repeated another, at the rounds' cost
    per candidate)."""
    from asyncgen.prices import batch_cost_usd, cost_usd, load_price_table, price_for

    price = price_for(load_price_table(None, None)[0], manifest["model"])
    pilots = [e for e in manifest["entries"] if e.get("source") == "pilot"]
    finishes = [e for e in manifest["entries"] if e.get("source") == "finish"]
    rounds = [e for e in manifest["entries"] if e.get("source") == "api"]

    def tokens(entries: list[dict]) -> tuple[int, int]:
        return (sum((e.get("usage") or {}).get("input", 0) for e in entries),
                sum((e.get("usage") or {}).get("output", 0) for e in entries))

    pilot_real, pilot_batch = cost_usd(price, *tokens(pilots)), batch_cost_usd(price, *tokens(pilots))
    rounds_usd = batch_cost_usd(price, *tokens(rounds))
    totals = manifest["totals"]
    per_pair = rounds_usd / totals["useful"] if totals.get("useful") else 0.0
    per_candidate = rounds_usd / totals["candidates"] if totals.get("candidates") else 0.0
    finish_premium = cost_usd(price, *tokens(finishes)) - batch_cost_usd(price, *tokens(finishes))
    return {"pilot_premium_usd": round(pilot_real - pilot_batch, 4), "finish_premium_usd": round(finish_premium, 4),
            "surplus_usd": round(manifest["spares"] * per_pair, 4),
            "duplicates_usd": round(totals.get("duplicates", 0) * per_candidate, 4),
            "round_input_tokens_per_request": round(tokens(rounds)[0] / max(1, totals.get("requests_ok", 0)), 1)}


def bench_batch(quick: bool, run_result: dict | None) -> dict:
    """``asyncgen batch run`` on the offline default in a fresh folder: wall time and cost at batch
    prices (the pilot's real-time requests included), against what the same tokens cost in real
    time and what ``run`` paid for its dataset."""
    result = batch_run(size("run_scenarios", quick))
    if run_result and run_result.get("cost_usd") is not None and run_result["scenarios"] == result["scenarios"]:
        result["run_cost_usd"] = run_result["cost_usd"]
        result["cost_ratio_to_run"] = round(result["cost_usd_batch"] / run_result["cost_usd"], 3)
    return result


def bench_batch_seeds(quick: bool, run_result: dict | None, scenarios: int | None = None, seeds: int | None = None) -> dict:
    """``batch run`` with several seeds: one round reaches N how often, at what cost per scenario
    against ``run``'s (the mean of ``run`` with the same seeds: one run's cost varies by about 2 %)."""
    scenarios = scenarios or size("run_scenarios", quick)
    seeds = seeds or size("batch_seeds", quick)
    run_costs = []
    for seed in range(1, seeds + 1):
        one = asyncgen_run(scenarios, 32, extra=("--seed", str(seed)))
        run_costs.append(one["cost_usd"] / one["scenarios"])
        log(f"run seed {seed}: ${one['cost_usd']:.4f}")
    run_per_scenario = sum(run_costs) / len(run_costs)
    runs = []
    for seed in range(1, seeds + 1):
        one = batch_run(scenarios, "--seed", str(seed))
        one["seed"] = seed
        one["cost_ratio_to_run"] = round(one["cost_usd_batch"] / one["scenarios"] / run_per_scenario, 3)
        runs.append(one)
        log(f"batch seed {seed}: {one['rounds']} round(s), {one['pilot_requests']} pilot + {one['requests']} requests "
            f"+ {one['finish_requests']} finish, "
            f"{one['spares']} spares, ${one['cost_usd_batch']:.4f}: {one['cost_ratio_to_run']:.3f} of run's")
    ratios = [r["cost_ratio_to_run"] for r in runs]
    return {
        "scenarios": scenarios,
        "seeds": len(runs),
        "one_round": sum(r["rounds"] == 1 for r in runs),
        "cost_ratio_mean": round(sum(ratios) / len(ratios), 3),
        "cost_ratio_min": min(ratios),
        "cost_ratio_max": max(ratios),
        "cost_usd_per_scenario_batch": round(sum(r["cost_usd_batch"] / r["scenarios"] for r in runs) / len(runs), 6),
        "cost_usd_per_scenario_run": round(run_per_scenario, 6),
        "pilot_requests_mean": round(sum(r["pilot_requests"] for r in runs) / len(runs), 1),
        "finish_requests_mean": round(sum(r["finish_requests"] for r in runs) / len(runs), 1),
        "finished_in_real_time": sum(r["finish_requests"] > 0 for r in runs),
        "requests_mean": round(sum(r["requests"] for r in runs) / len(runs), 1),
        "spares_mean": round(sum(r["spares"] for r in runs) / len(runs), 1),
        "run_cost_usd_per_scenario_range": [round(min(run_costs), 6), round(max(run_costs), 6)],
        **{f"{part}_ratio_mean": round(sum(r[f"{part}_usd"] for r in runs) / len(runs) / scenarios / run_per_scenario, 4)
           for part in ("pilot_premium", "finish_premium", "surplus", "duplicates")},
        "runs": runs,
    }


# --- 5. Memory ----------------------------------------------------------------------------------


class TreeMemory:
    """VmRSS / VmHWM of a process and its descendants, sampled from /proc."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.hwm_kb: dict[int, int] = {}
        self.kind: dict[int, str] = {}
        self.peak_sum_kb = 0

    def _children(self) -> dict[int, list[int]]:
        children: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                ppid = int(Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
        return children

    def _classify(self, pid: int) -> str:
        if pid == self.root:
            return "client"
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return "other"
        if "spawn_main" in cmdline:
            return "validator_worker"
        if "resource_tracker" in cmdline:
            return "resource_tracker"
        return "other"

    def sample(self) -> None:
        children = self._children()
        tree, stack = [], [self.root]
        while stack:
            pid = stack.pop()
            tree.append(pid)
            stack.extend(children.get(pid, []))
        total = 0
        for pid in tree:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if "VmRSS" not in fields:
                continue
            rss, hwm = int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
            total += rss
            self.hwm_kb[pid] = max(hwm, self.hwm_kb.get(pid, 0))
            if pid not in self.kind:
                self.kind[pid] = self._classify(pid)
        self.peak_sum_kb = max(self.peak_sum_kb, total)

    def report(self) -> dict:
        by_kind: dict[str, float] = {}
        for pid, kb in self.hwm_kb.items():
            by_kind[self.kind[pid]] = by_kind.get(self.kind[pid], 0) + kb / 1024
        workers = sum(1 for kind in self.kind.values() if kind == "validator_worker")
        client = by_kind.get("client", 0.0)
        worker_mb = by_kind.get("validator_worker", 0.0)
        return {
            "peak_rss_mb": round(client + worker_mb, 1),
            "client_peak_rss_mb": round(client, 1),
            "validator_workers_peak_rss_mb": round(worker_mb, 1),
            "validator_workers": workers,
            "other_processes_peak_rss_mb": {k: round(v, 1) for k, v in by_kind.items()
                                            if k not in ("client", "validator_worker")},
            "sampled_simultaneous_peak_mb": round(self.peak_sum_kb / 1024, 1),
        }


def bench_memory(quick: bool) -> dict:
    with Simulator("--rpm", UNLIMITED, "--tpm", UNLIMITED, *OFFLINE_LATENCY) as sim:
        # The limits are given so that the throttle skips its probe phase: requests queued during that
        # phase stay at the probe's 4 in flight until they are done (see docs/generation.md, "Rate limits"), and a run of this
        # size would never get past them to 256 in flight.
        run = asyncgen_run(size("memory_scenarios", quick), 256, base_url=sim.base_url, watch=True,
                           extra=("--rpm", str(UNLIMITED), "--tpm", str(UNLIMITED)))
        stats = sim.stats()
    memory = run.pop("memory")
    return {
        **memory,
        "concurrency": 256,
        "simulator_max_in_flight": stats["max_in_flight"],
        "run": run,
        "limits": "given (--rpm/--tpm), so no probe phase",
        "how": "sum of each process's VmHWM (its own peak) over the run's process tree, from /proc every 50 ms",
    }


# --- 7. Baseline ----------------------------------------------------------------------------------


def bench_baseline(quick: bool, run_result: dict | None) -> dict:
    scenarios = size("baseline_scenarios", quick)
    with Simulator(*OFFLINE_LATENCY) as sim:
        baseline = run_json([str(BENCH / "baseline.py"), "--base-url", sim.base_url, "--scenarios", str(scenarios),
                             "--max-seconds", "120"], timeout=240)
        # The baseline's few requests per second leave the simulator's buckets about full for run.
        before = sim.stats()["max_in_flight"]
        same = asyncgen_run(size("run_scenarios", quick), 32, base_url=sim.base_url)
        same["simulator_max_in_flight"] = sim.stats()["max_in_flight"]
        same["baseline_max_in_flight"] = before
    result = {
        "scenarios": baseline["scenarios"],
        "requests": baseline["requests"],
        "seconds": baseline["seconds"],
        "scenarios_per_s": baseline["scenarios_per_s"],
        "first_scenario_s": baseline["first_scenario_s"],
        "setup_s": baseline["setup_s"],
        "run_same_simulator": same,
        "speedup": round(same["scenarios_per_s"] / baseline["scenarios_per_s"], 2),
        "speedup_is": "asyncgen run --base-url / baseline, one after the other against the same simulator "
                      "process with the offline default's settings (300 +- 150 ms, 5,000 RPM, 2,000,000 TPM)",
    }
    if run_result:
        result["speedup_vs_offline_run"] = round(run_result["scenarios_per_s"] / baseline["scenarios_per_s"], 2)
    return result


# --- 4, 6. In-process benches -------------------------------------------------------------------


def bench_validator(quick: bool) -> dict:
    from bench import validator

    return validator.run(quick, repeats=2) if quick else validator.run(quick)


def bench_sink(quick: bool) -> dict:
    from bench import sink

    return sink.run(quick)


RESUME_SIZES = {True: (20_000,), False: (20_000, 100_000, 1_000_000)}
RESUME_AIM_S = 5.0  # to the first new scenario, at 1,000,000 scenarios


def bench_resume(quick: bool) -> dict:
    from bench import resume

    return resume.run(RESUME_SIZES[quick])


# --- Output -------------------------------------------------------------------------------------


def _n(value, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def _aim(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"asyncgen benchmarks{' (--quick)' if results['quick'] else ''}, {results['date']}: "
        f"{m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB, Python {m['python']}, {m['os']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + f". Bench took {results['bench_s']:.0f} s.",
        "",
        "| # | measurement | result | aim |",
        "|---|---|---|---|",
    ]
    r = results.get("rate_limited")
    if r:
        lines.append(
            f"| 1 | rate-limited: simulator {r['limit_rpm']:,} RPM with retry hints, {r['latency_ms']} ms latency, "
            f"{r['load_s']} s, concurrency {r['concurrency']}, limits {r['limits']} "
            f"| **{r['fraction_of_limit']:.3f}** of the limit steady ({r['requests_per_s_steady']:.2f} req/s; "
            f"whole run {r['fraction_of_limit_whole_run']:.3f}), {r['rejected_429']} 429s, {r['lost']} lost "
            f"| ≥ {FRACTION_AIM} of the limit, 0 lost: {_aim(r['fraction_of_limit'] >= FRACTION_AIM and r['lost'] == 0)} |"
        )
        g = r.get("rpm_given")
        if g:
            lines.append(
                f"| 1b | the same with `--rpm {RATE_RPM}` given, {g['load_s']} s "
                f"| **{g['fraction_of_limit']:.3f}** steady ({g['requests_per_s_steady']:.2f} req/s; whole run "
                f"{g['fraction_of_limit_whole_run']:.3f}), {g['rejected_429']} 429s, {g['lost']} lost "
                f"| {_aim(g['fraction_of_limit'] >= FRACTION_AIM and g['lost'] == 0)} |"
            )
    for row in results.get("unlimited") or []:
        capped = " (time cap)" if row["time_capped"] else ""
        lines.append(
            f"| 2 | unlimited, 50 ms latency, concurrency {row['concurrency']}, {row['requests']:,} requests{capped} "
            f"| {_n(row['requests_per_s'])} req/s, **{row['cpu_ms_per_request']:.2f} ms** client CPU/request, "
            f"{row['lost']} lost | ≤ {CPU_AIM_MS} ms: {_aim(row['cpu_ms_per_request'] <= CPU_AIM_MS)} |"
        )
    for row in results.get("unlimited_sdk") or []:
        capped = " (time cap)" if row["time_capped"] else ""
        lines.append(
            f"| 2x | for comparison, not what run uses: the SDK's own request path, concurrency {row['concurrency']}, "
            f"{row['requests']:,} requests{capped} | {_n(row['requests_per_s'])} req/s, "
            f"{row['cpu_ms_per_request']:.2f} ms client CPU/request | |"
        )
    r = results.get("run")
    if r:
        lines.append(
            f"| 3 | `asyncgen run --concurrency 32`, offline default, {r['scenarios']:,} scenarios "
            f"| **{r['scenarios_per_s']:.1f} scenarios/s** ({r['wall_s']} s), first scenario after "
            f"**{r['first_scenario_s']} s** | |"
        )
    v = results.get("validator")
    if v:
        lines.append(
            f"| 4 | validator, {v['pairs']:,} refusal pairs in batches of {v['batch_size']} "
            f"| inline **{_n(v['pairs_per_s_inline'])} pairs/s** ({v['raw_ratio_inline']:.2f} × raw), pool of "
            f"{v['workers']} **{_n(v['pairs_per_s_pool'])} pairs/s** ({_n(v['raw_ratio_pool'], 2)} × raw); raw "
            f"`encode_batch` {_n(v['pairs_per_s_raw'])} pairs/s | |"
        )
    r = results.get("memory")
    if r:
        lines.append(
            f"| 5 | memory, `run --concurrency 256` (simulator max in flight {r['simulator_max_in_flight']}) "
            f"| **{r['peak_rss_mb']:.0f} MB** peak RSS: client {r['client_peak_rss_mb']:.0f} MB + "
            f"{r['validator_workers']} validator worker(s) {r['validator_workers_peak_rss_mb']:.0f} MB | |"
        )
    s = results.get("sink")
    if s:
        lines.append(
            f"| 6 | sink | append **{_n(s['append_per_s_default'])} scenarios/s** (default policy: "
            f"{s.get('default_policy', 'default')}); resume of a 100,000-scenario file **{s['resume_100k_s']} s** "
            f"({s.get('resume_100k_no_checkpoint_s')} s without the checkpoint) | |"
        )
    b = results.get("baseline")
    if b:
        same = b["run_same_simulator"]
        extra = f"; {b['speedup_vs_offline_run']}× against the offline run (3)" if "speedup_vs_offline_run" in b else ""
        lines.append(
            f"| 7 | baseline: one request at a time, inline validation, {b['scenarios']} scenarios "
            f"| {b['scenarios_per_s']:.1f} scenarios/s vs run's {same['scenarios_per_s']:.1f} on the same "
            f"simulator settings: **{b['speedup']}× speedup**{extra} | |"
        )
    b = results.get("batch")
    if b:
        against = (f"; `run` (3) paid ${b['run_cost_usd']:.4f} for its {b['scenarios']:,}: **{b['cost_ratio_to_run']:.2f}×**"
                   if "run_cost_usd" in b else "")
        lines.append(
            f"| 8 | `asyncgen batch run`, offline default, {b['scenarios']:,} scenarios ({b.get('pilot_requests', 0)} pilot + "
            f"{b['requests']} batch requests, "
            f"{b['rounds']} round(s)) | **{b['wall_s']} s** wall; **${b['cost_usd_batch']:.4f}** at batch prices "
            f"(the same tokens in real time ${b['cost_usd_same_tokens_real_time']:.4f}){against} | |"
        )
    b = results.get("batch_seeds")
    if b:
        lines.append(
            f"| 8b | `asyncgen batch run`, offline default, {b['scenarios']:,} scenarios, {b['seeds']} seeds: a pilot of "
            f"{b['pilot_requests_mean']:g} real-time requests, then {b['requests_mean']:g} batch requests, "
            f"{b.get('finish_requests_mean', 0):g} real-time requests of a finish "
            f"({b.get('finished_in_real_time', 0)} of {b['seeds']} runs), {b['spares_mean']:g} spares (means) "
            f"| one round reached N in **{b['one_round']} of {b['seeds']}**; cost per "
            f"scenario ${b['cost_usd_per_scenario_batch']:.6f} against `run`'s ${b['cost_usd_per_scenario_run']:.6f} (the "
            f"mean of `run` with the same seeds): **{b['cost_ratio_mean']:.3f}×** ({b['cost_ratio_min']:.3f}-"
            f"{b['cost_ratio_max']:.3f}); of it, the real-time premium of the pilot {b.get('pilot_premium_ratio_mean', 0):.3f}× "
            f"and of the finish {b.get('finish_premium_ratio_mean', 0):.3f}×, "
            f"the surplus (spares) {b.get('surplus_ratio_mean', 0):.3f}×, duplicates {b.get('duplicates_ratio_mean', 0):.3f}× "
            f"(see docs/batch-cost.md) "
            f"| ≥ 9 of 10 and ≤ 0.55×: {_aim(b['one_round'] >= 0.9 * b['seeds'] and b['cost_ratio_mean'] <= 0.55)} |"
        )
    lines += limits_rows(results.get("limits"))
    lines += score_rows(results.get("score"))
    r = results.get("resume")
    if r:
        sizes = "; ".join(f"{row['scenarios']:,}: **{row['first_new_scenario_s']} s** at load {row['load_before']} "
                          f"(CPU to it: client {row.get('client_cpu_to_first_s')} s, validator "
                          f"{row.get('validator_cpu_to_first_s')} s; the sink's and sidecar's opens "
                          f"{row['opens_cpu_s']} s), client {row['client_peak_rss_mb']:.0f} MB" for row in r["rows"])
        largest = max(r["rows"], key=lambda row: row["scenarios"])
        ok = largest["first_new_scenario_s"] <= RESUME_AIM_S if largest["scenarios"] >= 1_000_000 else None
        lines.append(
            f"| 15 | resume: `run --validator-workers 1` on a dataset of N scenarios with its checkpoint and recorded "
            f"annotations (`bench/resume.py`), time from the process's start to the first new scenario, CPU seconds "
            f"of the run and its validator, client peak RSS | {sizes} | ≤ {RESUME_AIM_S:g} s at 1,000,000: {_aim(ok)} |"
        )
    for name, error in (results.get("errors") or {}).items():
        lines.append(f"| ! | {name} | failed: {error} | |")
    return "\n".join(lines)


def limits_rows(limits: dict | None) -> list[str]:
    """Rows 9-11: bench/limits.py (tier-1 limits, tokens and dollars per scenario, limits told too high)."""
    lines = []
    t = (limits or {}).get("tier1")
    if t:
        lines.append(
            f"| 9 | tier-1 limits: simulator {t['rpm']} RPM / {t['tpm']:,} TPM (drained at start), {t['latency_ms']} ms "
            f"latency, `run --concurrency {t['concurrency']}`, {t['scenarios']} scenarios, limits learned"
            + (f" (rows 9-12 measured {limits['date']})" if limits.get("date") else "") + " "
            f"| {t['scenarios_per_min']} scenarios/min; ideal {t['ideal_per_min']} (TPM / {t['tokens_per_scenario']} "
            f"tokens per accepted scenario): **{t['ratio_to_ideal']:.3f}** of ideal over the whole run, "
            f"**{t['steady_ratio_to_ideal']:.3f}** steady (from {t['steady_from_s']:g} s); output cap {t['output_cap_end']} "
            f"at the end, {t['cut_at_cap']} answers cut | ≥ 0.9: {_aim(t['ratio_to_ideal'] >= 0.9)} |"
        )
    for chars, row in ((limits or {}).get("tokens", {}).get("avoid_chars") or {}).items():
        lines.append(
            f"| 10 | tokens per accepted scenario, offline default, {row['scenarios']:,} scenarios, `--avoid-chars {chars}` "
            f"| {row['prompt_per_scenario']} prompt + {row['completion_per_scenario']} completion, "
            f"{row['duplicates_per_scenario']:.3f} duplicates per scenario; gpt-4o: ${row['usd_per_scenario']:.5f} "
            f"per scenario, 1,500 scenarios **${row['usd_1500_real_time']:.2f}** real time, "
            f"${row['usd_1500_batch_same_tokens']:.2f} batch | |"
        )
    w = (limits or {}).get("told_too_high")
    if w:
        lines.append(
            f"| 11 | limits told 20% too high: simulator {w['limit_rpm']:,} RPM (drained), client `--rpm {w['told_rpm']}`, "
            f"{w['load_s']} s | **{w['fraction_of_limit']:.3f}** of the true limit (steady from {w['warmup_s']:g} s); "
            f"**{w['429_per_600']}** 429s per 600 requests ({w['429_per_600_steady']} in the steady window) "
            f"| ≥ 0.98 and ≤ 20: {_aim(w['fraction_of_limit'] >= 0.98 and w['429_per_600'] <= 20)} |"
        )
    for concurrency, row in ((limits or {}).get("cpu_floor") or {}).items():
        lines.append(
            f"| 12 | client CPU per request against a bare aiohttp client (`bench/raw_floor.py`), 50 ms latency, "
            f"concurrency {concurrency}, {row['requests']:,} requests, best of 2 each | asyncgen {row['asyncgen_ms']:.2f} ms, "
            f"floor {row['raw_aiohttp_ms']:.2f} ms: **{row['ratio']:.2f}×** | ≤ 1.2×: {_aim(row['ratio'] <= 1.2)} |"
        )
    return lines


def plot(results: dict, path: Path) -> str:
    """The path of the PNG written, or why there is none."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "skipped: matplotlib is not installed (pip install '.[plot]')"
    rows = results.get("unlimited") or []
    if not rows:
        return "skipped: no unlimited-throughput results to plot"
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    series = [("asyncgen run's transport", rows, "o-")]
    if results.get("unlimited_sdk"):
        series.append(("the SDK's client.post (comparison)", results["unlimited_sdk"], "s--"))
    for label, data, style in series:
        x = [row["concurrency"] for row in data]
        left.plot(x, [row["requests_per_s"] for row in data], style, label=label)
        right.plot(x, [row["cpu_ms_per_request"] for row in data], style, label=label)
    right.axhline(CPU_AIM_MS, color="grey", linestyle=":", label=f"aim {CPU_AIM_MS} ms")
    for axis, title in ((left, "requests/s (50 ms latency, no limit)"), (right, "client CPU ms per request")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(list(UNLIMITED_CONCURRENCY), [str(c) for c in UNLIMITED_CONCURRENCY])
        axis.set_xlabel("concurrency")
        axis.set_title(title)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend()
    r = results.get("rate_limited")
    if r:
        fig.suptitle(f"rate-limited ({r['limit_rpm']:,} RPM): {r['fraction_of_limit']:.3f} of the limit; "
                     f"{results['machine']['cores']} cores, {results['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


STEPS = ("rate_limited", "unlimited", "run", "validator", "memory", "sink", "baseline", "batch", "batch_seeds", "limits", "score",
         "resume")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller loads: under a minute on 2 cores")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(STEPS)}")
    parser.add_argument("--output-dir", default=str(RESULTS), help="where results go (default: bench/results)")
    parser.add_argument("--batch-seeds-scenarios", type=int, default=None,
                        help="scenarios of each run in the batch_seeds step (default: as the run step's)")
    parser.add_argument("--batch-seeds", type=int, default=None, help="seeds of the batch_seeds step (default: 10, quick 3)")
    parser.add_argument("--no-comparison", action="store_true", help="skip the comparison with the SDK's own request path (row 2x)")
    parser.add_argument("--readme", action="store_true",
                        help="also put the table into docs/performance.md (between its markers) and the plot "
                             "into docs/assets/throughput.png")
    args = parser.parse_args()
    steps = STEPS if not args.only else tuple(s.strip() for s in args.only.split(","))
    unknown = set(steps) - set(STEPS)
    if unknown:
        parser.error(f"--only: unknown {sorted(unknown)}; expected some of {', '.join(STEPS)}")
    quick = args.quick
    started = time.perf_counter()
    results: dict = {"quick": quick, "date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine(), "errors": {}}
    durations: dict[str, float] = {}
    for step in steps:
        log(f"{step} ...")
        with contextlib.suppress(OSError):
            results.setdefault("loadavg_before_step", {})[step] = float(Path("/proc/loadavg").read_text().split()[0])
        step_started = time.perf_counter()
        try:
            if step == "rate_limited":
                results["rate_limited"] = bench_rate_limited(quick)
            elif step == "unlimited":
                results["unlimited"] = bench_unlimited(quick)
                if not args.no_comparison and not quick:
                    results["unlimited_sdk"] = bench_unlimited(quick, "sdk", size("comparison_requests", quick), (32, 256))
            elif step == "run":
                results["run"] = bench_run(quick)
            elif step == "validator":
                results["validator"] = bench_validator(quick)
            elif step == "memory":
                results["memory"] = bench_memory(quick)
            elif step == "sink":
                results["sink"] = bench_sink(quick)
            elif step == "baseline":
                results["baseline"] = bench_baseline(quick, results.get("run"))
            elif step == "batch":
                results["batch"] = bench_batch(quick, results.get("run"))
            elif step == "score":
                results["score"] = bench_score(quick)
            elif step == "batch_seeds":
                results["batch_seeds"] = bench_batch_seeds(quick, results.get("run"), args.batch_seeds_scenarios,
                                                           args.batch_seeds)
            elif step == "resume":
                results["resume"] = bench_resume(quick)
            elif step == "limits":
                results["limits"] = run_json([str(BENCH / "limits.py"), *(["--quick"] if quick else [])], timeout=1800)
        except Exception as exc:  # one failed measurement is reported, the others still run
            results["errors"][step] = f"{type(exc).__name__}: {exc}"[:500]
            log(f"{step} failed: {exc}")
        durations[step] = round(time.perf_counter() - step_started, 1)
        log(f"{step} done in {durations[step]} s")
    results["step_s"] = durations
    results["bench_s"] = round(time.perf_counter() - started, 1)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    stem = "quick" if quick else "latest"
    png = plot(results, output / ("quick-throughput.png" if quick else "throughput.png"))
    results["plot"] = png
    table = markdown(results)
    if png.startswith("skipped"):
        table += f"\n\n(plot {png})"
        log(f"plot {png}")
    (output / f"{stem}.md").write_text(table + "\n")
    (output / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table)
    if args.readme:
        if write_table(RUN_TABLE, table):
            log(f"updated the table in {RUN_TABLE.page}")
            if not png.startswith("skipped"):
                shutil.copyfile(ROOT / png, RUN_TABLE.page.parent / "assets" / "throughput.png")
        else:
            log(f"--readme: no {RUN_TABLE.start} ... {RUN_TABLE.end} markers in {RUN_TABLE.page}; left it alone")
    log(f"wrote {output / (stem + '.json')}, {output / (stem + '.md')}" + ("" if png.startswith("skipped") else f", {png}")
        + f" in {results['bench_s']:.0f} s")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
