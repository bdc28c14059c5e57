"""``asyncgen run`` as a user runs it, against the simulator."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from asyncgen.scenario import normalize
from inprocess import asyncgen_here

REPO = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
ENV.update(PYTHONPATH=str(REPO), NO_PROXY="127.0.0.1,localhost")
# For tests of what happens once retries run out, not of how long they wait: the retry back-off at a
# tenth (0.05 s doubling per attempt, not 0.5 s); the attempts and the give-up rules are the product's.
QUICK_BACK_OFF_ENV = {**ENV, "ASYNCGEN_TEST_RETRY_DELAY_SCALE": "0.1"}
PRICES = str(REPO / "config" / "prices.yaml")


def test_requests_go_to_base_url_else_openai_with_a_key_else_the_simulator(monkeypatch):
    """generation.request_destination decides it (was the private ``_endpoint``, imported by four modules)."""
    from argparse import Namespace

    from asyncgen.generation import OFFLINE_KEY, request_destination
    from asyncgen.workers import NO_KEY_SET

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert request_destination(Namespace(base_url=None)) == ("simulator", None, OFFLINE_KEY)
    assert request_destination(Namespace(base_url="http://h/v1")) == ("custom", "http://h/v1", NO_KEY_SET)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-mine")
    assert request_destination(Namespace(base_url=None)) == ("openai", None, "sk-mine")
    assert request_destination(Namespace(base_url="http://h/v1")) == ("custom", "http://h/v1", "sk-mine")


def sim_stats(base_url):
    return httpx.get(base_url.removesuffix("/v1") + "/_stats", trust_env=False, timeout=10).json()


def run_args(tmp_path, *flags):
    checkpoint = [] if "--no-checkpoint" in flags else ["--checkpoint", str(tmp_path / "checkpoint.json")]
    return [sys.executable, "-m", "asyncgen", "run", "--output", str(tmp_path / "dataset.jsonl"),
            *checkpoint, "--validator-workers", "0", *flags]


def run(tmp_path, *flags, env=None, timeout=180):
    return subprocess.run(run_args(tmp_path, *flags), capture_output=True, text=True, env=env or ENV,
                          timeout=timeout, cwd=tmp_path)


def run_here(tmp_path, *flags, env=None):
    """``run`` in this process (tests/inprocess.py): for a test that needs no process of its own."""
    return asyncgen_here(*run_args(tmp_path, *flags)[3:], env=env or ENV, cwd=tmp_path)


def scenarios(path):
    lines = [json.loads(line) for line in open(path)]
    assert len(lines) % 4 == 0
    return [lines[i : i + 4] for i in range(0, len(lines), 4)]


def assert_valid_dataset(path, n):
    groups = scenarios(path)
    assert len(groups) == n
    assert [g[0]["scenario_id"] for g in groups] == list(range(n))
    prompts = [normalize(g[2]["text"]) for g in groups]
    counterfactuals = [normalize(g[3]["text"]) for g in groups]
    assert len(set(prompts)) == n and len(set(counterfactuals)) == n
    check = asyncgen_here("validate", str(path), env=ENV)
    assert check.returncode == 0, check.stdout[-2000:]


def test_offline_default_writes_exactly_n_valid_scenarios(tmp_path):
    result = run_here(tmp_path, "--num-scenarios", "60", "--concurrency", "8", "--validator-workers", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "built-in OpenAI simulator" in result.stderr and "export OPENAI_API_KEY" in result.stderr
    assert "finished: 60/60 scenarios" in result.stderr
    assert_valid_dataset(tmp_path / "dataset.jsonl", 60)
    checkpoint = json.loads((tmp_path / "checkpoint.json").read_text())
    assert checkpoint["scenarios"] == 60 and checkpoint["offset"] == (tmp_path / "dataset.jsonl").stat().st_size
    # Run again: nothing to do, nothing added.
    again = run_here(tmp_path, "--num-scenarios", "60")
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert len(scenarios(tmp_path / "dataset.jsonl")) == 60


def test_resume_after_sigkill_reaches_exactly_n(tmp_path, simulator):
    base_url = simulator("--latency-ms", "150")
    process = subprocess.Popen(run_args(tmp_path, "--base-url", base_url, "--num-scenarios", "120", "--concurrency", "2"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=tmp_path)
    dataset = tmp_path / "dataset.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not dataset.exists() or dataset.stat().st_size < 20 * 600):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = len(open(dataset).read().splitlines()) // 4
    assert 0 < killed_at < 120
    result = run_here(tmp_path, "--base-url", base_url, "--num-scenarios", "120")
    assert result.returncode == 0, result.stderr[-2000:]
    assert_valid_dataset(dataset, 120)


def test_mixed_faults_still_reach_n(tmp_path, simulator):
    faults = "500=0.04,502=0.03,503=0.03,timeout=0.02,reset=0.03,bad_json=0.04,length=0.03,content_filter=0.02,refusal=0.02,bad_shape=0.03"
    base_url = simulator("--faults", faults, "--hang-s", "30", "--latency-ms", "20")
    result = run_here(tmp_path, "--base-url", base_url, "--num-scenarios", "150", "--concurrency", "16", "--request-timeout", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert_valid_dataset(tmp_path / "dataset.jsonl", 150)
    stats = sim_stats(base_url)
    chat_requests = stats["requests"]["POST /v1/chat/completions"]
    assert sum(stats["faults"].values()) >= max(5, 0.15 * chat_requests)  # faults really happened
    assert "retries" in result.stderr and "bad answers" in result.stderr


@pytest.mark.parametrize("flags, env_key, expected, log_level", [
    (["--quota-exhausted"], "sk-any-quota-key", "insufficient_quota", "INFO"),
    (["--api-key", "sk-right-key"], "sk-wrong-secret-4242", "401", "INFO"),
    (["--api-key", "sk-right-key"], "sk-wrong-secret-4242", "401", "DEBUG"),
])
def test_permanent_errors_stop_fast_and_clean(tmp_path, simulator, flags, env_key, expected, log_level):
    base_url = simulator(*flags)
    result = run_here(tmp_path, "--base-url", base_url, "--num-scenarios", "50", "--concurrency", "8",
                 "--log-level", log_level, env={**ENV, "OPENAI_API_KEY": env_key})
    assert result.returncode == 1
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("asyncgen run: error:")]
    assert len(error_lines) == 1 and expected in error_lines[0]
    assert ("Traceback" in result.stderr) == (log_level == "DEBUG")
    assert env_key not in result.stderr + result.stdout
    assert env_key not in (tmp_path / "checkpoint.json").read_text()
    # Stopped at once: no request retried (the probe sends at most a few before the first answer).
    assert sim_stats(base_url)["requests"].get("POST /v1/chat/completions", 0) <= 8
    # The sink stays consistent and resumable.
    assert (tmp_path / "dataset.jsonl").read_text() == ""


def test_concurrency_is_a_hard_bound(tmp_path, simulator):
    base_url = simulator("--latency-ms", "100")
    result = run_here(tmp_path, "--base-url", base_url, "--num-scenarios", "80", "--concurrency", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    stats = sim_stats(base_url)
    assert 1 <= stats["max_in_flight"] <= 3


def test_cost_equals_simulator_usage_times_price(tmp_path, simulator):
    base_url = simulator("--latency-ms", "5")
    # At a --base-url other than OpenAI's, only a price table the user passes prices a run.
    result = run_here(tmp_path, "--base-url", base_url, "--num-scenarios", "40", "--concurrency", "1", "--prices", PRICES)
    assert result.returncode == 0, result.stderr[-2000:]
    tokens = sim_stats(base_url)["tokens"]
    # A request still in flight when the target is reached is abandoned: the simulator bills its
    # answer but never delivers it, and the client can only say that its cost is unknown.
    delivered_prompt = tokens["prompt"] - tokens["undelivered_prompt"]
    delivered_completion = tokens["completion"] - tokens["undelivered_completion"]
    expected = (delivered_prompt * 2.50 + delivered_completion * 10.00) / 1e6  # gpt-4o in config/prices.yaml
    state = json.loads((tmp_path / "checkpoint.json").read_text())["run_state"]
    assert state["cost_usd"] == pytest.approx(expected, rel=1e-9)
    assert f"${expected:.4f} this run" in result.stderr
    if tokens["undelivered_prompt"]:
        assert "abandoned attempts cost unknown" in result.stderr


def test_unknown_model_cost_is_unknown_not_a_crash(tmp_path, simulator):
    base_url = simulator()
    (tmp_path / "prices.yaml").write_text(
        "models:\n  gpt-4.1: {input: 2, cached_input: 0.5, output: 8, batch_input: 1, batch_output: 4}\n"
    )
    result = run_here(tmp_path, "--base-url", base_url, "--num-scenarios", "20", "--prices", str(tmp_path / "prices.yaml"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "unknown this run" in result.stderr


def test_sigint_flushes_summarises_and_the_printed_command_resumes(tmp_path, simulator):
    base_url = simulator("--latency-ms", "300")
    process = subprocess.Popen(run_args(tmp_path, "--base-url", base_url, "--num-scenarios", "200", "--concurrency", "2"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)
    dataset = tmp_path / "dataset.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not dataset.exists() or dataset.stat().st_size == 0):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert "stopped (interrupted)" in stderr and "resume with" in stderr
    written = len(scenarios(dataset))
    assert 0 < written < 200
    assert json.loads((tmp_path / "checkpoint.json").read_text())["scenarios"] == written
    command = next(line for line in stderr.splitlines() if "resume with" in line).split("resume with", 1)[1].strip()
    assert command.startswith("python -m asyncgen run ")
    resumed = asyncgen_here(*shlex.split(command)[3:], env=ENV, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_valid_dataset(dataset, 200)


def test_the_interrupt_line_says_in_flight_only_what_was_sent_and_the_rest_apart(tmp_path, simulator):
    """At 60 rpm with answers taking 3 s, most workers wait for the request limiter when Ctrl-C comes:
    the line's "in flight" are the requests the server has (with no grace period, each is cancelled
    at the stop), the waiting ones are said apart, and none of them reaches the server."""
    import re
    import threading

    base_url = simulator("--latency-ms", "3000")

    def interrupt_when_two_are_at_the_server() -> None:
        deadline = time.monotonic() + 60
        while (sim_stats(base_url)["requests"].get("POST /v1/chat/completions", 0) < 2
               and time.monotonic() < deadline):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)  # as a terminal's Ctrl-C: the run's loop takes it

    watcher = threading.Thread(target=interrupt_when_two_are_at_the_server, daemon=True)
    watcher.start()
    result = run_here(tmp_path, "--base-url", base_url, "--num-scenarios", "500", "--concurrency", "8",
                      "--rpm", "60", "--grace-period", "0")
    watcher.join()
    assert result.returncode == 130, result.stderr[-2000:]
    line = next(line for line in result.stderr.splitlines() if "interrupted: no new requests" in line)
    said = re.search(r"the (\d+) waiting for the rate limits are not sent; waiting up to 0 s for (\d+) in flight", line)
    assert said, line
    waiting, in_flight = int(said[1]), int(said[2])
    sent = re.search(r"requests +(\d+) sent: .*?(\d+) cancelled at stop", result.stderr)
    assert sent, result.stderr[-2000:]
    assert in_flight >= 2 and waiting >= 1 and in_flight + waiting <= 8, result.stderr
    assert int(sent[2]) == in_flight  # those in flight were at the server; the waiting ones never went
    assert sim_stats(base_url)["requests"]["POST /v1/chat/completions"] == int(sent[1])


def test_dry_run_prints_a_plan_and_calls_nothing(tmp_path):
    result = run_here(tmp_path, "--dry-run", "--num-scenarios", "1000")
    assert result.returncode == 0
    assert "requests        about 200" in result.stdout and "cost" in result.stdout
    assert not (tmp_path / "dataset.jsonl").exists()


def test_bad_flags_exit_2(tmp_path):
    result = run_here(tmp_path, "--concurrency", "0")
    assert result.returncode == 2 and "--concurrency" in result.stderr
    result = run_here(tmp_path, "--max-cost", "1", "--model", "my-local-llama")
    assert result.returncode == 2 and "has no price" in result.stderr
    (tmp_path / "blocker").write_text("")
    result = asyncgen_here("run", "--output", tmp_path / "blocker" / "x.jsonl", env=ENV)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_log_formatter_redacts_the_key_in_messages_and_tracebacks(monkeypatch):
    import logging

    from asyncgen.cli import RedactingFormatter

    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-abcdef123456")
    try:
        raise RuntimeError("server said: bad key sk-live-abcdef123456")
    except RuntimeError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "using %s", ("sk-live-abcdef123456",), sys.exc_info())
    text = RedactingFormatter("%(message)s").format(record)
    assert "sk-live-abcdef123456" not in text and text.count("sk-...REDACTED") >= 2


def test_second_sigint_stops_at_once(tmp_path, simulator):
    base_url = simulator("--latency-ms", "4000")
    process = subprocess.Popen(run_args(tmp_path, "--base-url", base_url, "--num-scenarios", "50", "--concurrency", "4",
                                        "--grace-period", "60"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not sim_stats(base_url)["requests"].get("POST /v1/chat/completions"):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    # The grace period is 60 s and the answers take 4 s: only the second Ctrl-C ends it this soon.
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 130, stderr[-2000:]
    assert "stopped (interrupted)" in stderr
    assert (tmp_path / "dataset.jsonl").read_text() == ""
    assert json.loads((tmp_path / "checkpoint.json").read_text())["scenarios"] == 0


def test_progress_line_and_summary():
    from asyncgen.progress import progress_line, summary
    from asyncgen.stats import RunStats

    stats = RunStats(target=100, accepted=25, accepted_this_run=25, requests_ok=5, requests_sent=7, in_flight=3,
                     rate_limited=2, cost_usd=0.5)
    stats.retries["429"] = 2
    line = progress_line(stats, 5.0)
    assert "[#####---------------] | 25/100 scenarios" in line and "in flight 3" in line and "429s: 2" in line
    assert "retries: 429 2" in line and "cost $0.5000" in line and "answered 5" in line
    text = summary(stats, stop_reason="interrupted", output="d.jsonl", resume_command="python -m asyncgen run")
    assert "stopped (interrupted): 25/100" in text and "resume with     python -m asyncgen run" in text
    stats.cost_usd = None
    assert "cost            unknown this run" in summary(stats, stop_reason=None, output="d", resume_command=None)


def test_resume_guards_from_the_command_line(tmp_path):
    first = run_here(tmp_path, "--num-scenarios", "12", "--concurrency", "4")
    assert first.returncode == 0, first.stderr[-2000:]
    before = (tmp_path / "dataset.jsonl").read_bytes()
    # Another task on the same dataset: refused before any request, nothing written.
    other = run_here(tmp_path, "--num-scenarios", "20", "--task", "sentiment")
    assert other.returncode == 2 and "--force-resume" in other.stderr and "Traceback" not in other.stderr
    assert (tmp_path / "dataset.jsonl").read_bytes() == before
    # --no-checkpoint never overwrites a non-empty output silently ...
    refused = run_here(tmp_path, "--num-scenarios", "12", "--no-checkpoint")
    assert refused.returncode == 2 and "--overwrite" in refused.stderr
    assert (tmp_path / "dataset.jsonl").read_bytes() == before
    # ... and with --overwrite starts over.
    (tmp_path / "checkpoint.json").unlink()
    fresh = run_here(tmp_path, "--num-scenarios", "8", "--no-checkpoint", "--overwrite")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert_valid_dataset(tmp_path / "dataset.jsonl", 8)
    assert not (tmp_path / "checkpoint.json").exists()


def test_ctrl_c_in_a_terminal_reaches_the_pool_workers_too(tmp_path, simulator):
    """A terminal sends SIGINT to the whole process group: the validator workers must not die of it."""
    base_url = simulator("--latency-ms", "300")
    args = run_args(tmp_path, "--base-url", base_url, "--num-scenarios", "400", "--concurrency", "2")
    args[args.index("--validator-workers") + 1] = "1"
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                               cwd=tmp_path, start_new_session=True)
    dataset = tmp_path / "dataset.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not dataset.exists() or dataset.stat().st_size == 0):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert "stopped (interrupted)" in stderr and "BrokenProcessPool" not in stderr and "Traceback" not in stderr
    assert json.loads((tmp_path / "checkpoint.json").read_text())["scenarios"] == len(scenarios(dataset))


def test_max_cost_is_never_crossed(tmp_path, simulator):
    base_url = simulator("--latency-ms", "20")
    too_small = run_here(tmp_path, "--base-url", base_url, "--num-scenarios", "200", "--max-cost", "0.001", "--prices", PRICES)
    assert too_small.returncode == 2 and "raise --max-cost" in too_small.stderr
    assert sim_stats(base_url)["requests"].get("POST /v1/chat/completions", 0) == 0
    budget = 0.05
    result = run_here(tmp_path, "--base-url", base_url, "--num-scenarios", "2000", "--max-cost", str(budget), "--concurrency", "4",
                 "--prices", PRICES)
    assert result.returncode == 1 and "stopped (max_cost)" in result.stderr
    state = json.loads((tmp_path / "checkpoint.json").read_text())["run_state"]
    tokens = sim_stats(base_url)["tokens"]
    spent = (tokens["prompt"] * 2.50 + tokens["completion"] * 10.00) / 1e6
    assert state["cost_usd"] == pytest.approx(spent) and 0 < spent <= budget
    assert 0 < len(scenarios(tmp_path / "dataset.jsonl")) < 2000


def test_a_run_that_gets_no_usable_answers_gives_up(tmp_path, simulator):
    base_url = simulator("--faults", "503=1.0")
    result = run_here(tmp_path, "--base-url", base_url, "--num-scenarios", "20", "--concurrency", "2", "--max-attempts", "2",
                      env=QUICK_BACK_OFF_ENV)
    assert result.returncode == 1
    assert "gave no new scenario" in result.stderr and "Traceback" not in result.stderr
    assert sim_stats(base_url)["requests"]["POST /v1/chat/completions"] <= 2 * (25 + 2)


def test_task_from_a_yaml_path_runs_offline_and_validates(tmp_path):
    import shutil

    from asyncgen.config import default_config_dir

    task_file = tmp_path / "mytask.yaml"
    shutil.copy(default_config_dir() / "tasks" / "refusal.yaml", task_file)
    task_file.write_text(task_file.read_text().replace("task_name: refusal", "task_name: mytask"))
    result = run_here(tmp_path, "--task", str(task_file), "--num-scenarios", "15")
    assert result.returncode == 0, result.stderr[-2000:]
    check = asyncgen_here("validate", tmp_path / "dataset.jsonl", "--task", task_file, env=ENV)
    assert check.returncode == 0 and "15 valid" in check.stdout, check.stdout + check.stderr


def _recording_validator(monkeypatch, events: list):
    """PairValidator as run makes it, noting when it is made (run starts nothing before it)."""
    import asyncgen.validate

    original = asyncgen.validate.PairValidator

    class Recorded(original):
        def __init__(self, *args, **kwargs):
            events.append("validator")
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(asyncgen.validate, "PairValidator", Recorded)


def test_the_sink_opens_in_a_thread_and_nothing_starts_before_it_returns(tmp_path, monkeypatch):
    """Issue 17 item 16: a resume's start-up reads the checkpointed prefix through sha256 in a thread
    (beside the SDK's import), but the validator, the simulator and the first request wait for it."""
    import threading

    from asyncgen.sink import ScenarioSink

    first = run_here(tmp_path, "--num-scenarios", "6", "--concurrency", "4")
    assert first.returncode == 0, first.stderr[-2000:]
    events = []
    original = ScenarioSink.open.__func__

    def slow_open(cls, *args, **kwargs):
        events.append("open in the main thread" if threading.current_thread() is threading.main_thread() else "open")
        time.sleep(0.3)  # a large dataset's digest
        sink = original(cls, *args, **kwargs)
        events.append("opened")
        return sink

    monkeypatch.setattr(ScenarioSink, "open", classmethod(slow_open))
    _recording_validator(monkeypatch, events)
    resumed = run_here(tmp_path, "--num-scenarios", "10", "--concurrency", "4")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert events == ["open", "opened", "validator"]
    assert_valid_dataset(tmp_path / "dataset.jsonl", 10)


def test_a_resume_whose_first_scenario_does_not_match_is_refused_before_anything_starts(tmp_path, monkeypatch):
    """The checkpoint knows its dataset by the sha256 of its first scenario: when it differs, the
    open (now in a thread) refuses, exit 2 in one line, before a validator or a request is started,
    and neither file is changed."""
    first = run_here(tmp_path, "--num-scenarios", "6", "--concurrency", "4")
    assert first.returncode == 0, first.stderr[-2000:]
    dataset, checkpoint = tmp_path / "dataset.jsonl", tmp_path / "checkpoint.json"
    lines = dataset.read_bytes().splitlines(keepends=True)
    record = json.loads(lines[0])
    record["text"] = record["text"].replace("e", "a", 1)
    lines[0] = json.dumps(record).encode() + b"\n"
    dataset.write_bytes(b"".join(lines))
    before = dataset.read_bytes(), checkpoint.read_bytes()
    events = []
    _recording_validator(monkeypatch, events)
    refused = run_here(tmp_path, "--num-scenarios", "10", "--concurrency", "4")
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr and "another dataset" in refused.stderr
    assert events == []
    assert (dataset.read_bytes(), checkpoint.read_bytes()) == before


def test_a_large_resume_starts_the_validator_during_the_open_and_closes_it_if_refused(tmp_path, monkeypatch):
    """A dataset of EARLY_VALIDATOR_BYTES or more: the validator process loads its tokenizers while
    the sink's open digests the prefix. A resume the open refuses closes it, writes nothing and
    exits 2; one it accepts uses it and reaches N."""
    import asyncgen.generation as generation
    import asyncgen.validate
    from asyncgen.sink import ScenarioSink

    first = run_here(tmp_path, "--num-scenarios", "6", "--concurrency", "4")
    assert first.returncode == 0, first.stderr[-2000:]
    monkeypatch.setattr(generation, "EARLY_VALIDATOR_BYTES", 1)
    events, made = [], []
    original_open = ScenarioSink.open.__func__

    def slow_open(cls, *args, **kwargs):
        time.sleep(0.3)  # a large dataset's digest
        sink = original_open(cls, *args, **kwargs)
        events.append("opened")
        return sink

    class Recorded(asyncgen.validate.PairValidator):
        def __init__(self, *args, **kwargs):
            events.append("validator")
            made.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(ScenarioSink, "open", classmethod(slow_open))
    monkeypatch.setattr(asyncgen.validate, "PairValidator", Recorded)
    dataset, checkpoint = tmp_path / "dataset.jsonl", tmp_path / "checkpoint.json"
    kept = dataset.read_bytes()
    dataset.write_bytes(kept.replace(b"e", b"a", 1))  # its first scenario is not the checkpoint's
    before = dataset.read_bytes(), checkpoint.read_bytes()
    refused = run_here(tmp_path, "--num-scenarios", "10", "--concurrency", "4", "--validator-workers", "1")
    assert refused.returncode == 2 and "another dataset" in refused.stderr, refused.stderr[-2000:]
    assert (dataset.read_bytes(), checkpoint.read_bytes()) == before
    assert events == ["validator"] and made[0]._pool is None  # started during the open, closed
    dataset.write_bytes(kept)
    events.clear()
    resumed = run_here(tmp_path, "--num-scenarios", "10", "--concurrency", "4", "--validator-workers", "1")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert events == ["validator", "opened"] and len(made) == 2
    assert_valid_dataset(dataset, 10)


def test_the_summary_and_inspect_account_for_every_candidate_the_surplus_too(tmp_path, cli, monkeypatch):
    """Answers in flight when the target is reached bring valid pairs beyond it (and pairs never
    validated): the summary counts each candidate once, and inspect names what its yield measures."""
    import re

    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    dataset = tmp_path / "d.jsonl"
    code, _out, err = cli("run", "--num-scenarios", "12", "--output", str(dataset), "--validator-workers", "0")
    assert code == 0, err
    found = re.search(r"candidates +(\d+) \((\d+) rejected, (\d+) duplicates, (\d+) beyond the target"
                      r"(?:, (\d+) not validated: the run ended first)?\)", err)
    assert found, err  # answers of 10 pairs each, 12 scenarios asked: a surplus there must be
    candidates, rejected, duplicates, beyond, unchecked = (int(g or 0) for g in found.groups())
    assert beyond > 0 and candidates == 12 + rejected + duplicates + beyond + unchecked
    code, out, err = cli("inspect", str(dataset), "--no-tokens", "--json")
    run = json.loads(out)["run"]
    assert (run["candidates"], run["accepted"], run["beyond_target"], run["unchecked"]) == (candidates, 12, beyond, unchecked)
    assert run["yield"] == round(12 / candidates, 4)
    assert run["usable_share"] == round((12 + beyond) / (candidates - unchecked), 4)
    code, out, err = cli("inspect", str(dataset), "--no-tokens")
    flat = " ".join(out.split())
    assert f"yield {100 * run['yield']:.1f}% of candidates" in flat
    assert f"{100 * run['usable_share']:.1f}% of the candidates validated were valid and new; {beyond} of those came " \
           "beyond the target and were not kept" in flat


def test_the_surplus_figures_of_a_dataset_whose_earlier_runs_did_not_count_them_stay_unknown():
    from asyncgen.stats import RunStats

    fresh = RunStats(target=10, candidates=30, rejected=5, duplicates=2, accepted_this_run=10, beyond_target=8)
    assert (fresh.to_run_state()["beyond_target"], fresh.to_run_state()["unchecked"]) == (8, 5)
    resumed = RunStats(target=20, candidates=30, accepted_this_run=10, beyond_target=8,
                       carried={"runs": 1, "candidates": 40, "accepted": 10})  # a checkpoint of an older asyncgen
    assert "beyond_target" not in resumed.to_run_state() and "unchecked" not in resumed.to_run_state()
    resumed.carried.update(beyond_target=3, unchecked=1)
    assert (resumed.to_run_state()["beyond_target"], resumed.to_run_state()["unchecked"]) == (11, 13)
