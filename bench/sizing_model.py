"""What `batch run`'s sizing rules cost by themselves, without the simulator: a Monte Carlo of the
pilot waves (``plan.pilot_wave``), the round (``plan.at_round_scale``, ``plan.round_size``) and the
real-time finish, with each request's yield drawn from the per-request yields the bench's pilots
measured (``bench/results/batch-seeds*.json``) and the round's duplicates as ``plan.duplicate_share``
says. Cost is in batch requests (a real-time request costs two); the ratio to `run` leaves out the
avoid lists (the batch requests' longer prompts: +0.023x at 1,500 in bench row 8b).

    python bench/sizing_model.py [--scenarios 1500] [--finish-share 0.1] [--trials 4000]

See docs/batch-cost.md ("Why 0.55x is not reached")."""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from pathlib import Path

from asyncgen.batch import plan
from asyncgen.batch.plan import YieldEstimate

RESULTS = Path(__file__).resolve().parent / "results"
PAIRS_ASKED = 10  # the refusal task's batch_size


def measured_yields() -> list[int]:
    pool = []
    for path in sorted(RESULTS.glob("batch-seeds*.json")):
        for run in json.loads(path.read_text())["batch_seeds"]["runs"]:
            pool += run["pilot_yields"]
    return pool


def one_run(scenarios: int, finish_share: float, draw) -> dict | None:
    """One `batch run`: its pilot, round and finish, in batch requests; None when the round fell
    short by more than the finish takes (a second round)."""
    allowance = int(scenarios * finish_share)
    yields: list[int] = []
    deficit = scenarios
    prior = plan.PRIOR_YIELD_SHARE * PAIRS_ASKED
    for _ in range(plan.PILOT_WAVES):
        wave = plan.pilot_wave(deficit, yields, PAIRS_ASKED, prior, allowance)
        if wave <= 0:
            break
        got = [draw() for _ in range(wave)]
        yields += got
        deficit -= sum(got)
    estimate = plan.at_round_scale(YieldEstimate.of(yields, PAIRS_ASKED), deficit, PAIRS_ASKED)
    round_requests = plan.round_size(deficit, estimate, allowance)
    duplicates = plan.duplicate_share(round_requests * PAIRS_ASKED)
    short = deficit - sum(draw() for _ in range(round_requests)) * (1 - duplicates)
    finish = 0
    if short > allowance:
        return None
    while short > 0:
        wave = math.ceil(short / estimate.mean)
        finish += wave
        short -= sum(draw() for _ in range(wave)) * (1 - duplicates)
    return {"cost": round_requests + 2 * len(yields) + 2 * finish, "pilot": len(yields), "finish": finish,
            "spares": -short}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", type=int, default=1500)
    parser.add_argument("--finish-share", type=float, default=plan.FINISH_SHARE)
    parser.add_argument("--trials", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pool = measured_yields()
    rng = random.Random(args.seed)
    runs = [one_run(args.scenarios, args.finish_share, lambda: rng.choice(pool)) for _ in range(args.trials)]
    done = [r for r in runs if r is not None]
    mean = statistics.fmean(pool)
    # `run` asks the same pairs at real-time prices (two batch requests each), duplicates as a round's
    run_requests = args.scenarios / (mean * (1 - plan.duplicate_share(args.scenarios / mean * PAIRS_ASKED)))
    cost = statistics.fmean(r["cost"] for r in done)
    print(json.dumps({
        "scenarios": args.scenarios, "finish_share": args.finish_share, "trials": args.trials,
        "yields_measured": len(pool), "yield_mean": round(mean, 2), "yield_sd": round(statistics.stdev(pool), 2),
        "second_round": len(runs) - len(done),
        "cost_batch_requests": round(cost, 1), "ideal_batch_requests": round(run_requests, 1),
        "ratio_to_run_without_avoid_lists": round(cost / (2 * run_requests), 4),
        "pilot_mean": round(statistics.fmean(r["pilot"] for r in done), 1),
        "finish_mean": round(statistics.fmean(r["finish"] for r in done), 1),
        "spares_mean": round(statistics.fmean(r["spares"] for r in done), 1),
    }, indent=1))


if __name__ == "__main__":
    main()
