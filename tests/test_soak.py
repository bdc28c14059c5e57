"""The crash loop of bench/soak.py, short: SIGKILL and SIGINT three times each mid-run, then finish.
``--parallel``: the SIGKILL series (then the score of its dataset) and the SIGINT series (then the
batch run) at the same time, as they wait on their processes more than they compute (93 s -> 65 s
wall on a quiet 2-core machine, the same CPU time)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_killed_and_interrupted_runs_lose_nothing_and_count_every_cent(tmp_path):
    out = tmp_path / "soak.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "soak.py"), "--quick", "--parallel", "--seed", "5", "--json", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert [(r["command"], r["signal"]) for r in results] == [
        ("run", "KILL"), ("run", "INT"), ("score", "KILL"), ("batch run", "KILL")]
    for run in results:
        where = f"{run['command']} SIG{run['signal']}: {run}"
        if run["command"] == "score":  # the SIGKILLed run's dataset, scored under kills: each scenario once
            assert run["kills"] == 2 and not run.get("unexpected"), where
            assert run["lost"] == 0 and run["orphans"] == 0 and run["problems"] == [], where
            assert run["final_scenarios"] == 300 and run["final_exit"] == 0, where
            continue
        assert run["kills"] == (2 if run["command"] == "batch run" else 3), where  # every signal landed mid-run
        assert not run.get("unexpected"), where
        assert run["lost"] == 0 and run["orphans"] == 0 and run["problems"] == [], where
        assert run["final_scenarios"] == 300 and run["validate_ok"], where
        recorded, served = run["cost_recorded_usd"], run["cost_simulator_usd"]
        assert recorded <= served * (1 + 1e-9), where  # never counted twice
        if run["command"] == "batch run":  # no batch submitted twice, every batch's usage counted once
            assert run["batches_created"] == run["batches_in_manifest"], where
            assert recorded == pytest.approx(served, rel=1e-6), where
            continue
        assert sum(run["faults"].values()) > 0, where
        if run["signal"] == "INT":  # in-flight requests finish in the grace period: every answer is counted
            assert recorded == pytest.approx(served, rel=1e-9), where
        else:  # only answers in transit at the moment of a SIGKILL can be missed
            assert recorded >= 0.95 * served, where
