"""``asyncgen simulate`` as a user runs it: a foreground server, its URL first on stdout, clean stop."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from inprocess import asyncgen_here, within

REPO = Path(__file__).resolve().parents[1]


def simulate(*flags: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "asyncgen", "simulate", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )


@pytest.mark.parametrize("stop_with", [signal.SIGINT, signal.SIGTERM])
def test_serves_in_the_foreground_and_stops_on_a_signal(stop_with):
    process = simulate("--seed", "4", "--rpm", "77", "--api-key", "sk-cli", "--faults", "bad_json=0.5")
    try:
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        with httpx.Client(trust_env=False, timeout=5) as http:
            answer = http.post(
                f"{base_url}/chat/completions",
                headers={"Authorization": "Bearer sk-cli"},
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Write exactly 2 pairs."}]},
            )
            assert answer.status_code == 200 and answer.headers["x-ratelimit-limit-requests"] == "77"
            assert http.get(f"{base_url}/models", headers={"Authorization": "Bearer other"}).status_code == 401
        process.send_signal(stop_with)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--faults", "500=0.5,explode=0.1"], "unknown kind 'explode'"),
        (["--faults", "500=0.7,502=0.5"], "add up to"),
        (["--rpm", "0"], "--rpm 0"),
        (["--imperfect-mix", "typo=1"], "unknown kind 'typo'"),
        (["--task", "no-such-task"], "no-such-task"),
        (["--latency-dist", "pareto"], "invalid choice"),
    ],
)
def test_bad_flags_exit_2_with_one_line(flags, message):
    """Flags refused as they are parsed: in this process (a refusal needs none of its own), bounded
    by ``within`` (a simulator that accepted them would serve until stopped). ``--task`` is loaded
    once the server starts, which sets signal handlers: only in a main thread, so a process."""
    if flags[0] == "--task":
        process = simulate(*flags)
        stdout, stderr = process.communicate(timeout=30)
        result = subprocess.CompletedProcess(flags, process.returncode, stdout, stderr)
    else:
        result = within(60, lambda: asyncgen_here("simulate", *flags, cwd=REPO))
    assert result.returncode == 2
    assert result.stdout == "" and message in result.stderr
