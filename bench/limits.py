"""Throughput at the limits real keys have (issue 13): rows 9-12 of the benchmark table (docs/performance.md).

    python bench/limits.py [--quick]     (bench/run.py --only limits runs it and keeps its figures)

1. ``tier1``: the simulator at OpenAI's first tier for gpt-4o (500 RPM, 30,000 TPM), 2 s latency,
   its buckets started drained; ``asyncgen run --concurrency 32 --base-url`` learns the limits from
   the headers. Scenarios per minute over the run's wall time, and the ratio to the ideal: TPM over
   the tokens (prompt + completion) used per accepted scenario in the same run. Beside it the
   steady rate: requests the simulator admitted from ``TIER1_WARMUP`` s after the first to the
   last, times the run's accepted scenarios per answered request (the start, where the drained
   bucket turns the first requests away and the cap is still the task's bound, left out).
2. ``tokens``: the offline default at each ``--avoid-chars`` budget: prompt and completion tokens,
   and duplicates, per accepted scenario; dollars per scenario and for 1,500 scenarios at gpt-4o
   prices, real time and batch (the batch figure: the same tokens at batch prices).
3. ``told_too_high``: the simulator at 1,200 RPM (100 ms latency, drained), the client told 1,440
   (``bench/client_load.py --rpm 1440``): the admitted rate in the steady window as a fraction of
   1,200, and the 429s per 600 requests.
4. ``cpu_floor``: client CPU per request of ``bench/client_load.py`` (asyncgen's request path)
   against ``bench/raw_floor.py`` (a bare aiohttp client: the floor), alternately on one simulator
   process with no reachable limit, 50 ms latency, at concurrency 32 and 256: the ratio.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from run import UNLIMITED, Simulator, asyncgen_run, client_load, run_json  # noqa: E402

from asyncgen.config import default_config_dir  # noqa: E402
from asyncgen.prices import batch_cost_usd, cost_usd, load_prices, price_for  # noqa: E402

_CANDIDATES = re.compile(r"candidates\s+(\d+) \((\d+) rejected, (\d+) duplicates\)")
_TOKENS = re.compile(r"tokens\s+(\d+) prompt \(\d+ cached\), (\d+) completion")
_SENT = re.compile(r"requests\s+(\d+) sent: (\d+) answered")
_CAP = re.compile(r"output cap\s+(\d+) tokens at the end \(learned\); (\d+) answers cut")
_429 = re.compile(r"429: (\d+)")


def summary_figures(text: str) -> dict:
    candidates, tokens, sent = _CANDIDATES.search(text), _TOKENS.search(text), _SENT.search(text)
    cap, limited = _CAP.search(text), _429.search(text)
    return {
        "candidates": int(candidates.group(1)), "duplicates": int(candidates.group(3)),
        "prompt_tokens": int(tokens.group(1)), "completion_tokens": int(tokens.group(2)),
        "requests_sent": int(sent.group(1)), "requests_ok": int(sent.group(2)),
        "output_cap_end": int(cap.group(1)) if cap else None, "cut_at_cap": int(cap.group(2)) if cap else None,
        "retried_429": int(limited.group(1)) if limited else 0,
    }


TIER1_WARMUP = 20.0


def tier1(quick: bool) -> dict:
    rpm, tpm = 500, 30_000
    scenarios = 150 if quick else 400
    with Simulator("--rpm", rpm, "--tpm", tpm, "--latency-ms", 2000, "--start-drained") as sim:
        result = asyncgen_run(scenarios, 32, base_url=sim.base_url, timeout=600, keep_summary=True)
        stats = sim.stats()
    figures = summary_figures(result.pop("summary"))
    accepted = result["scenarios"]
    used = (figures["prompt_tokens"] + figures["completion_tokens"]) / accepted
    per_minute = accepted / result["wall_s"] * 60
    ideal = tpm / used
    admitted = [t for t, status in stats["chat"]["arrivals"] if status == 200]
    window = [t for t in admitted if t >= admitted[0] + TIER1_WARMUP]
    steady = (len(window) - 1) / (window[-1] - window[0]) * 60 * accepted / figures["requests_ok"]
    return {"rpm": rpm, "tpm": tpm, "latency_ms": 2000, "concurrency": 32, "scenarios": accepted,
            "wall_s": result["wall_s"], "scenarios_per_min": round(per_minute, 1),
            "tokens_per_scenario": round(used, 1), "ideal_per_min": round(ideal, 1),
            "ratio_to_ideal": round(per_minute / ideal, 3),
            "steady_scenarios_per_min": round(steady, 1), "steady_ratio_to_ideal": round(steady / ideal, 3),
            "steady_from_s": TIER1_WARMUP,
            "tokens_per_request": round((figures["prompt_tokens"] + figures["completion_tokens"])
                                        / max(1, figures["requests_ok"]), 1),
            "server_429": int(stats["statuses"].get("429", 0)), **figures}


def tokens(quick: bool) -> dict:
    price = price_for(load_prices(default_config_dir() / "prices.yaml"), "gpt-4o")
    scenarios = 300 if quick else 1500
    rows = {}
    for chars in ((0, 800) if quick else (0, 400, 800, 1600)):
        result = asyncgen_run(scenarios, 32, extra=("--avoid-chars", str(chars)), keep_summary=True, timeout=600)
        figures = summary_figures(result.pop("summary"))
        accepted = result["scenarios"]
        prompt, completion = figures["prompt_tokens"] / accepted, figures["completion_tokens"] / accepted
        real_time = cost_usd(price, prompt, completion)
        rows[str(chars)] = {
            "scenarios": accepted, "prompt_per_scenario": round(prompt, 1), "completion_per_scenario": round(completion, 1),
            "tokens_per_scenario": round(prompt + completion, 1),
            "duplicates_per_scenario": round(figures["duplicates"] / accepted, 4),
            "usd_per_scenario": round(real_time, 6),
            "usd_1500_real_time": round(1500 * real_time, 3),
            "usd_1500_batch_same_tokens": round(1500 * batch_cost_usd(price, prompt, completion), 3),
            "output_cap_end": figures["output_cap_end"], "cut_at_cap": figures["cut_at_cap"],
        }
    return {"model_prices": "gpt-4o", "avoid_chars": rows}


def told_too_high(quick: bool) -> dict:
    limit, told, seconds, warmup = 1200, 1440, (12 if quick else 40), 5.0
    with Simulator("--rpm", limit, "--tpm", UNLIMITED, "--latency-ms", 100, "--start-drained") as sim:
        load = run_json([str(BENCH / "client_load.py"), "--base-url", sim.base_url, "--requests", str(limit),
                         "--concurrency", "32", "--duration", str(seconds), "--rpm", str(told),
                         "--tpm", str(UNLIMITED)], timeout=seconds + 120)
        stats = sim.stats()
    admitted = [t for t, status in stats["chat"]["arrivals"] if status == 200]
    start = admitted[0] + warmup
    window = [t for t in admitted if t >= start]
    steady = (len(window) - 1) / (window[-1] - start)
    rejected = int(stats["statuses"].get("429", 0))
    steady_429 = sum(1 for t, status in stats["chat"]["arrivals"] if status == 429 and t >= start)
    return {"limit_rpm": limit, "told_rpm": told, "load_s": seconds, "warmup_s": warmup,
            "fraction_of_limit": round(steady / (limit / 60), 4),
            "server_429": rejected, "requests_ok": load["requests_ok"],
            "429_per_600": round(600 * rejected / max(1, load["requests_ok"]), 1),
            "429_per_600_steady": round(600 * steady_429 / max(1, len(window)), 1),
            "limits_kept": load["limits_learned"], "cooldowns": load["cooldowns"]}


def cpu_floor(quick: bool) -> dict:
    requests = 1000 if quick else 4000
    rows = {}
    with Simulator("--rpm", UNLIMITED, "--tpm", UNLIMITED, "--latency-ms", 50) as sim:
        for concurrency in (32, 256):
            raw, ours = [], []
            for _ in range(2):  # alternately, so that a noisy neighbour weighs on both
                raw.append(run_json([str(BENCH / "raw_floor.py"), "--base-url", sim.base_url, "--requests",
                                     str(requests), "--concurrency", str(concurrency)], timeout=300)["cpu_ms_per_request"])
                ours.append(client_load(sim.base_url, requests, concurrency)["cpu_ms_per_request"])
            rows[str(concurrency)] = {"requests": requests, "raw_aiohttp_ms": min(raw), "asyncgen_ms": min(ours),
                                      "ratio": round(min(ours) / min(raw), 2), "raw_runs": raw, "asyncgen_runs": ours}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter loads")
    parser.add_argument("--only", default="tier1,tokens,told_too_high,cpu_floor", help="comma-separated rows to run")
    args = parser.parse_args()
    rows = {"tier1": tier1, "tokens": tokens, "told_too_high": told_too_high, "cpu_floor": cpu_floor}
    result = {name: rows[name](args.quick) for name in args.only.split(",")}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
