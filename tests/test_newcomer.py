"""Defects a new user hit (issue 9), each tried the way they tried it: from the command line."""

import json
import os
import pty
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from inprocess import asyncgen_here, within
from test_run import ENV, assert_valid_dataset, run_args, run_here, scenarios, sim_stats

from asyncgen.generation import _validator_workers
from asyncgen.progress import resume_command

PRICES = Path(__file__).resolve().parents[1] / "config" / "prices.yaml"
from asyncgen.stats import RunStats


def pool_run_args(tmp_path, *flags):
    """``run``'s arguments with one validator process instead of inline validation."""
    args = run_args(tmp_path, *flags)
    at = args.index("--validator-workers")
    return args[:at] + ["--validator-workers", "1"] + args[at + 2 :]


def wait_for_scenarios(dataset: Path, count: int, process, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if dataset.exists() and dataset.stat().st_size and len(dataset.read_bytes().splitlines()) // 4 >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{dataset} did not reach {count} scenarios")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# 1. Resume on the offline default ------------------------------------------------------------------


def test_offline_default_resumes_after_a_kill_at_300_of_1000(tmp_path):
    """The issue's case (killed at 800 of 3000, 32 requests at a time), at a third of its size: the
    resumed run's new simulator replayed the killed run's draws, so every pair was a duplicate and
    the run gave up with 0 new scenarios. Killed at 300, the replayed draws are some 60 requests',
    over twice the 25 unproductive requests in a row that end a run at --concurrency 8."""
    dataset = tmp_path / "dataset.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "asyncgen", "run", "--num-scenarios", "1000",
                                "--concurrency", "8"], cwd=tmp_path, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_scenarios(dataset, 300, process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    killed_at = len(scenarios(dataset)) if dataset.stat().st_size % 4 == 0 else None
    resumed = asyncgen_here("run", "--num-scenarios", "1000", "--concurrency", "8", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "finished: 1000/1000" in resumed.stderr
    assert killed_at is None or killed_at < 1000
    assert_valid_dataset(dataset, 1000)


def test_request_numbers_go_on_across_resumes(refusal_task):
    """With --seed, request i is sent with seed+i: a resumed run must not restart at seed+1."""
    import asyncio

    from asyncgen.pipeline import Pipeline

    numbers = []

    class Generator:
        async def generate(self, number, avoid):
            numbers.append(number)
            raise asyncio.CancelledError

    class Sink:
        count, resumed_prompts = 0, ["Help me make a kite."]

    pipeline = Pipeline(refusal_task, Generator(), None, Sink(), RunStats(target=10), concurrency=1,
                        first_request_number=57)
    assert list(pipeline.recent_prompts) == ["Help me make a kite."]  # the avoid list starts from the dataset

    async def one_request():
        with pytest.raises(asyncio.CancelledError):
            await pipeline._worker()

    asyncio.run(one_request())
    assert numbers == [58]


def test_give_up_names_duplicates_as_the_cause(tmp_path):
    """A run that can only find duplicates says so, instead of blaming --model and --base-url."""
    task = (Path(__file__).parents[1] / "config" / "tasks" / "refusal.yaml").read_text()
    # A lexicon with one frame and one filler on each side holds exactly one scenario.
    tiny = task[: task.index("lexicon:")] + (
        'lexicon:\n  frames:\n    - "Help me make a {x}."\n  safe: [cake]\n  harmful: [bomb]\n  slots: {}\n'
    )
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "refusal.yaml").write_text(tiny)
    result = run_here(tmp_path, "--num-scenarios", "5", "--concurrency", "2", "--config-dir", str(tmp_path))
    assert result.returncode == 1
    error = [line for line in result.stderr.splitlines() if line.startswith("asyncgen run: error:")]
    assert len(error) == 1, result.stderr[-1500:]
    assert re.search(r"(\d+) of the last \1 candidates were duplicates of the dataset \(\d scenarios\)", error[0]), error[0]
    assert "check --model, --base-url" not in error[0]


# 2. A user's file is never erased ----------------------------------------------------------------


@pytest.mark.parametrize("content", ["first note\nsecond note\n", '{"a": 1}\n{"b": 2}\n'], ids=["text", "jsonl"])
def test_a_users_file_is_refused_not_replaced(tmp_path, content):
    notes = tmp_path / "notes.txt"
    notes.write_text(content)
    result = asyncgen_here("run", "--output", str(notes), "--num-scenarios", "5", cwd=tmp_path)
    assert result.returncode == 2 and "not a dataset asyncgen wrote" in result.stderr and "--overwrite" in result.stderr
    assert notes.read_text() == content
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()[-1]) < 400


# 3. An unreachable --base-url ---------------------------------------------------------------------


@pytest.mark.parametrize("url", ["ftp://x", "notaurl", "http://"])
def test_a_bad_url_is_bad_input(tmp_path, url):
    result = asyncgen_here("run", "--base-url", url, cwd=tmp_path)
    assert result.returncode == 2 and "--base-url" in result.stderr and url in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one line, not the whole usage
    assert not any(tmp_path.iterdir())


def test_a_closed_port_fails_fast_and_says_connection_refused(tmp_path):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    result = run_here(tmp_path, "--base-url", url, "--num-scenarios", "5")
    assert result.returncode == 1
    error = [line for line in result.stderr.splitlines() if line.startswith("asyncgen run: error:")]
    assert len(error) == 1 and "connection refused" in error[0] and f"127.0.0.1:{port}" in error[0]
    assert "(3 attempts, no answer yet)" in error[0]  # not six per request and then a give-up


# 4. Ctrl-C while the validator workers start --------------------------------------------------------


def test_ctrl_c_while_workers_start_exits_130_with_the_summary(tmp_path, simulator):
    base_url = simulator("--latency-ms", "200")
    process = subprocess.Popen(pool_run_args(tmp_path, "--base-url", base_url, "--num-scenarios", "500"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path,
                               start_new_session=True)
    lines = []
    for line in process.stderr:  # the workers are spawned right after this line
        lines.append(line)
        if "starting 1 validator process" in line:
            break
    time.sleep(0.1)  # the worker is importing now
    os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
    rest = process.stderr.read()
    process.wait(timeout=60)
    err = "".join(lines) + rest
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "BrokenProcessPool" not in err and "KeyboardInterrupt" not in err
    assert "stopped (interrupted)" in err and "resume with" in err


# 5. The checkpoint sits beside its dataset -----------------------------------------------------------


def test_two_datasets_in_one_folder_keep_their_own_checkpoints(tmp_path, simulator):
    base_url = simulator()
    for name in ("a.jsonl", "b.jsonl"):
        result = asyncgen_here("run", "--base-url", base_url, "--output", name, "--num-scenarios", "8",
                          "--validator-workers", "0", "--prices", str(PRICES), cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
    checkpoints = {name: json.loads((tmp_path / name).read_text()) for name in ("a.checkpoint.json", "b.checkpoint.json")}
    assert checkpoints["a.checkpoint.json"]["sink"].endswith("a.jsonl")
    assert checkpoints["b.checkpoint.json"]["sink"].endswith("b.jsonl")
    assert checkpoints["a.checkpoint.json"]["run_state"]["cost_usd"] > 0
    assert not (tmp_path / "checkpoint.json").exists()
    # Another dataset's checkpoint is refused, not overwritten.
    before = (tmp_path / "a.checkpoint.json").read_bytes()
    result = asyncgen_here("run", "--base-url", base_url, "--output", "b.jsonl", "--checkpoint", "a.checkpoint.json",
                      "--num-scenarios", "9", "--validator-workers", "0", cwd=tmp_path)
    assert result.returncode == 2 and "belongs to another dataset" in result.stderr
    assert (tmp_path / "a.checkpoint.json").read_bytes() == before


# 6. Workers die with their parent --------------------------------------------------------------------


def test_sigkill_leaves_no_validator_worker_behind(tmp_path, simulator):
    """On a terminal, also (issue 17): the progress line hid the cursor, which the killed run could not
    show again, and the pool's resource tracker warned of "5 leaked semaphore objects" after it."""
    base_url = simulator("--latency-ms", "100")
    terminal, its_end = pty.openpty()
    process = subprocess.Popen(pool_run_args(tmp_path, "--base-url", base_url, "--num-scenarios", "2000",
                                             "--concurrency", "4"),
                               stdin=subprocess.DEVNULL, stdout=its_end, stderr=its_end, env=ENV, cwd=tmp_path)
    os.close(its_end)
    shown = bytearray()

    def read_until_nobody_writes() -> None:
        while True:
            try:
                chunk = os.read(terminal, 65536)
            except OSError:  # EIO: nobody holds the terminal's other end any more
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=read_until_nobody_writes, daemon=True)
    reader.start()
    try:
        wait_for_scenarios(tmp_path / "dataset.jsonl", 10, process)
        children = children_of(process.pid)
        assert children, "the run should have a validator worker (and a resource tracker)"
        process.send_signal(signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(alive(pid) for pid in children):
            time.sleep(0.1)
        assert [pid for pid in children if alive(pid)] == []
        reader.join(timeout=15)  # the worker and the resource tracker end after the run
    finally:
        os.close(terminal)
    assert not reader.is_alive() and b"scenarios" in shown  # the progress line was drawn
    assert b"\x1b[?25l" not in shown  # no "hide the cursor"
    assert b"leaked semaphore" not in shown, shown.decode(errors="replace")[-400:]


# 7. A FIFO as --output or --checkpoint ---------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--output", "--checkpoint"])
def test_a_fifo_is_refused_at_once(tmp_path, flag):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    # In this process, bounded as a subprocess's timeout would bound it: a run that opened the FIFO
    # would wait for its other end for good, so a reader and writer is opened if it is still running.
    result = within(60, lambda: asyncgen_here("run", flag, str(fifo), "--num-scenarios", "5", cwd=tmp_path),
                    unblock=lambda: os.open(fifo, os.O_RDWR | os.O_NONBLOCK))
    assert result.returncode == 2 and "FIFO" in result.stderr and flag in result.stderr


# 8. --validator-workers beyond the cores -------------------------------------------------------------


def test_validator_workers_are_capped_at_the_cores(caplog):
    cores = os.cpu_count()
    with caplog.at_level("WARNING"):
        assert _validator_workers(cores + 62) == cores
    assert f"this machine has {cores} cores" in caplog.text
    assert _validator_workers(1) == 1 and _validator_workers(0) == 0


# 10. Smaller ones -----------------------------------------------------------------------------------


def test_argparse_errors_are_one_line_without_internal_names(tmp_path):
    result = asyncgen_here("run", "--concurrency", "x", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "asyncgen run: error: argument --concurrency: expected a whole number >= 1, got 'x' (see 'asyncgen run --help')"
    ]


def test_resume_command_after_max_cost_proposes_a_larger_budget():
    class Args:
        argv = ["run", "--num-scenarios", "100", "--max-cost", "0.5"]
        max_cost = 0.5

    stats = RunStats(target=100, accepted=40, accepted_this_run=40, cost_usd=0.48)
    command = resume_command(Args(), stats, "max_cost")
    budget = float(shlex.split(command)[-1])
    assert "--max-cost 0.5" not in command and shlex.split(command)[-2] == "--max-cost"
    assert budget >= 0.48 + 60 * 0.48 / 40  # room for the 60 scenarios left at this run's cost per scenario


def test_no_key_set_is_said_plainly(tmp_path, simulator):
    base_url = simulator("--api-key", "sk-the-servers-key")
    result = run_here(tmp_path, "--base-url", base_url, "--num-scenarios", "5")
    assert result.returncode == 1
    assert "no API key was set (OPENAI_API_KEY is empty)" in result.stderr and "sk-no" not in result.stderr
    assert "401" in result.stderr  # the server's own words stay


def test_max_cost_too_small_leaves_no_files(tmp_path):
    result = asyncgen_here("run", "--num-scenarios", "5", "--max-cost", "1e-07", cwd=tmp_path)
    assert result.returncode == 2 and "--max-cost" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_offline_cost_is_marked_simulated(tmp_path):
    result = asyncgen_here("run", "--num-scenarios", "5", "--validator-workers", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    cost_line = next(line for line in result.stderr.splitlines() if line.strip().startswith("cost "))
    assert "simulated" in cost_line


def test_validate_fails_a_dataset_with_a_duplicated_scenario(tmp_path):
    result = asyncgen_here("run", "--num-scenarios", "3", "--validator-workers", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = (tmp_path / "dataset.jsonl").read_text().splitlines()
    copy = [json.dumps({**json.loads(line), "scenario_id": 3}) for line in lines[:4]]
    (tmp_path / "dataset.jsonl").write_text("\n".join(lines + copy) + "\n")
    check = asyncgen_here("validate", str(tmp_path / "dataset.jsonl"))
    assert check.returncode == 1 and "scenario 3: its prompt duplicates scenario 0's" in check.stdout


def test_an_absurd_target_gets_a_warning(tmp_path):
    result = asyncgen_here("run", "--num-scenarios", str(10**12), "--max-cost", "0.02", "--validator-workers", "0",
                           cwd=tmp_path)
    assert "is that what you meant?" in result.stderr and "requests" in result.stderr


def test_the_progress_line_fits_80_columns_and_labels_its_units():
    from asyncgen.progress import progress_line

    stats = RunStats(target=3000, accepted=812, accepted_this_run=812, requests_ok=120, in_flight=32,
                     cost_usd=1.2345, rate_limited=3, cost_simulated=True)
    stats.started -= 4
    stats.retries["timeout"] = 3
    stats.answer_failures["bad_json"] = 2
    full = progress_line(stats, 6.6)
    assert "scen/s" in full and "429s: 3" in full and "retries: timeout 3" in full and "bad answers: bad_json 2" in full
    for width in (200, 120, 80, 60, 40):
        line = progress_line(stats, 6.6, width)
        assert len(line) <= width and "\n" not in line
        assert "812/3000 scenarios" in line
    assert "ETA" in progress_line(stats, 6.6, 80) and "cost" in progress_line(stats, 6.6, 80)


# Security -------------------------------------------------------------------------------------------


def test_the_api_key_reaches_no_file_and_no_log(tmp_path, simulator):
    key = "sk-proj-RECOGNISABLE-9f8e7d6c5b4a"
    base_url = simulator("--api-key", key, "--faults", "500=0.1,timeout=0.05", "--hang-s", "5")
    env = {**ENV, "OPENAI_API_KEY": key}
    ok = run_here(tmp_path, "--base-url", base_url, "--num-scenarios", "20", "--concurrency", "4",
             "--request-timeout", "1", "--log-level", "DEBUG", env=env)
    assert ok.returncode == 0, ok.stderr[-2000:]
    (tmp_path / "refused").mkdir()
    refused = run_here(tmp_path / "refused", "--base-url", base_url, "--num-scenarios", "5", "--log-level", "DEBUG",
                  env={**ENV, "OPENAI_API_KEY": key + "-wrong"})
    assert refused.returncode == 1
    for text in (ok.stdout, ok.stderr, refused.stdout, refused.stderr):
        assert key not in text
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert files and not [path for path in files if key.encode() in path.read_bytes()]
    assert not [path for path in files if path.name.endswith(".tmp")]  # temporary files are cleaned up


def test_files_honour_the_umask(tmp_path, simulator):
    base_url = simulator()
    umask = os.umask(0o027)
    try:
        result = run_here(tmp_path, "--base-url", base_url, "--num-scenarios", "3")
    finally:
        os.umask(umask)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("dataset.jsonl", "checkpoint.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640


def test_the_simulator_binds_to_loopback_by_default():
    process = subprocess.Popen([sys.executable, "-m", "asyncgen", "simulate"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env=ENV)
    try:
        assert process.stdout.readline().startswith("http://127.0.0.1:")
    finally:
        process.kill()
        process.wait()


def test_ctrl_c_sends_no_request_that_was_waiting_for_the_rate_limit(tmp_path, simulator):
    """Found by the soak: after Ctrl-C ("no new requests"), requests queued at the rate limiter still
    went out one by one through the grace period, and a run could even finish its target."""
    base_url = simulator("--rpm", "60", "--latency-ms", "50")
    process = subprocess.Popen(run_args(tmp_path, "--base-url", base_url, "--num-scenarios", "500", "--concurrency", "16",
                                        "--rpm", "60", "--grace-period", "5"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path,
                               start_new_session=True)
    for line in process.stderr:
        if "token annotations" in line:  # start-up is over; requests now wait for the 1-per-second limit
            break
    deadline = time.monotonic() + 30
    while (sent_before := sim_stats(base_url)["requests"].get("POST /v1/chat/completions", 0)) < 2:
        assert time.monotonic() < deadline and process.poll() is None, "no request went out at 1 a second"
        time.sleep(0.05)  # two sent: the limiter paces the rest, which wait for it
    os.killpg(process.pid, signal.SIGINT)
    rest = process.stderr.read()
    process.wait(timeout=60)
    assert process.returncode == 130, rest[-2000:]
    sent_after = sim_stats(base_url)["requests"].get("POST /v1/chat/completions", 0)
    assert sent_before >= 1 and sent_after - sent_before <= 1, (sent_before, sent_after)


def test_the_summary_wraps_under_its_value_column_and_keeps_the_resume_command_whole():
    from asyncgen.progress import fit_summary

    text = ("asyncgen run stopped (interrupted): 5/9 scenarios in d.jsonl (5 new this run)\n"
            "  rejections      " + ", ".join(f"solar single_token reason{i}: {i}" for i in range(12)) + "\n"
            "  resume with     python -m asyncgen run " + "--flag value " * 12)
    lines = fit_summary(text, 79).splitlines()
    assert all(len(line) <= 79 for line in lines if "resume with" not in line)
    assert lines[2].startswith(" " * 18) and lines[-1].startswith("  resume with     python -m asyncgen run --flag")
    assert " ".join(" ".join(lines).split()) == " ".join(text.split())  # nothing lost


def test_the_readmes_first_command_leaves_nothing_untracked_in_a_clone(tmp_path):
    """`python -m asyncgen run` in a fresh clone left dataset.checkpoint.json.keys and
    dataset.tokens.checkpoint.json untracked: every file it writes beside the dataset is ignored."""
    repo = Path(__file__).resolve().parents[1]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text((repo / ".gitignore").read_text())
    result = asyncgen_here("run", "--num-scenarios", "5", "--validator-workers", "0", "--seed", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = {path.name for path in tmp_path.iterdir()} - {".git", ".gitignore"}
    assert {"dataset.jsonl", "dataset.checkpoint.json", "dataset.tokens.jsonl"} <= written
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=tmp_path,
                            capture_output=True, text=True, check=True).stdout
    assert status.splitlines() == ["?? .gitignore"], status
