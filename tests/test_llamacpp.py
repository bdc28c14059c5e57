"""``asyncgen run --base-url`` against a real llama.cpp server (tests/llamacpp.py): SmolLM2-135M on
loopback, llama-cpp-python 0.3.36's OpenAI-compatible ``llama_cpp.server``.

A 135M model writes few valid pairs, so these tests check the protocol, not a dataset: the output
cap is honoured, json_schema falls back to json_object with one line, every answer is salvaged or
counted, errors give up at once in the server's words, every request is accounted for, time is
bounded and nothing is left running. If the server cannot be installed or started, they fail and
say why; they never skip.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from inprocess import asyncgen_here
from llamacpp import ServerSetupError, llama_server
from test_run import ENV

KEY = "sk-llamacpp-test-key"
SMALL_BATCH = 1  # pairs asked per request: a cap of 1 * 60 + 60 = 120 tokens, a few seconds each
CAP = SMALL_BATCH * 60 + 60
ANSWERED = re.compile(r"request \d+ answered: (\d+) prompt \+ (\d+) completion tokens \(cap (\d+)\), (\d+) pairs, bad answer (\S+)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log_path = tmp_path_factory.mktemp("llamacpp") / "server.log"
    try:
        with llama_server(KEY, log_path) as (base_url, process):
            yield base_url
            assert process.poll() is None, "the server died during the tests:\n" + log_path.read_text()[-3000:]
    except ServerSetupError as exc:
        pytest.fail(f"the llama.cpp server could not be set up: {exc}", pytrace=False)
    assert process.poll() is not None  # stopped, not left running


def task_file(tmp_path, batch_size):
    from asyncgen.config import default_config_dir

    text = (default_config_dir() / "tasks" / "refusal.yaml").read_text()
    assert "batch_size: 10" in text
    path = tmp_path / "refusal-small.yaml"
    path.write_text(text.replace("batch_size: 10", f"batch_size: {batch_size}"))
    return path


def command(tmp_path, base_url, *flags):
    return [sys.executable, "-m", "asyncgen", "run", "--base-url", base_url, "--output", str(tmp_path / "dataset.jsonl"),
            "--checkpoint", str(tmp_path / "checkpoint.json"), "--validator-workers", "1", *flags]


def run_env(tmp_path, key=KEY):
    """The run's environment, marked with the test's folder: its validator workers (spawned, so
    their command lines do not name it) inherit the mark, and ``leftovers`` finds them by it."""
    return {**ENV, "OPENAI_API_KEY": key, "ASYNCGEN_TEST_MARK": str(tmp_path)}


def leftovers(tmp_path) -> list[str]:
    """Processes started for this test that are still running: there must be none."""
    mark = f"ASYNCGEN_TEST_MARK={tmp_path}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if mark in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(proc.name + ": " + (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return found


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("asyncgen run: error:")]


def test_a_wrong_key_stops_at_once_in_the_servers_words(tmp_path, server):
    started = time.monotonic()
    result = subprocess.run(command(tmp_path, server, "--num-scenarios", "5", "--task", str(task_file(tmp_path, 2))),
                            capture_output=True, text=True, env=run_env(tmp_path, "sk-wrong-key-1234"), timeout=120)
    assert result.returncode == 1, result.stderr[-3000:]
    assert error_lines(result.stderr) == [
        "asyncgen run: error: the API refused the request permanently: 401: Invalid API key; check the API key"]
    assert "Error code" not in result.stderr and "sk-wrong-key-1234" not in result.stderr
    assert "stopped (failed: see the error below)" in result.stderr
    assert time.monotonic() - started < 60 and not leftovers(tmp_path)


def test_json_schema_asked_for_explicitly_gives_up_at_once_in_the_servers_words(tmp_path, server):
    started = time.monotonic()
    result = subprocess.run(command(tmp_path, server, "--num-scenarios", "5", "--response-format", "json_schema",
                                    "--concurrency", "1",
                                    "--task", str(task_file(tmp_path, 2))),
                            capture_output=True, text=True, env=run_env(tmp_path), timeout=120)
    assert result.returncode == 1, result.stderr[-3000:]
    [error] = error_lines(result.stderr)
    assert "refused response_format json_schema" in error and "Input should be 'text' or 'json_object'" in error
    assert "--response-format json_object" in error and "File " not in error
    assert re.search(r"requests +1 sent: 0 answered, 0 retries, 0 given up, 1 refused", result.stderr), result.stderr
    assert time.monotonic() - started < 60 and not leftovers(tmp_path)


def test_a_run_on_llama_cpp_caps_answers_falls_back_and_counts_everything(tmp_path, server):
    """The default --model gpt-4o asks for json_schema, which this server refuses with a 500."""
    process = subprocess.Popen(
        command(tmp_path, server, "--num-scenarios", "100", "--concurrency", "2", "--seed", "1", "--log-level", "DEBUG",
                "--task", str(task_file(tmp_path, SMALL_BATCH)), "--grace-period", "30"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env(tmp_path))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    started = time.monotonic()
    while time.monotonic() - started < 90 and process.poll() is None and len(ANSWERED.findall("".join(lines))) < 4:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)  # as a user would: stop, let the answers in flight arrive
    process.wait(60)
    reader.join(10)
    stderr = "".join(lines)
    elapsed = time.monotonic() - started
    assert process.returncode == 130, stderr[-3000:]
    answers = ANSWERED.findall(stderr)
    assert len(answers) >= 4, stderr[-3000:]
    # 1. The cap reaches the server and is honoured: no answer longer than asked. The first requests
    # go with the task's bound; later ones with the cap learned from the answers (raised after a cut).
    assert int(answers[0][2]) == CAP, answers
    assert all(int(completion) <= int(cap) for _, completion, cap, _, _ in answers), answers
    # 3. json_schema refused (HTTP 500): one line says so, everything after asks for json_object.
    fallbacks = [line for line in stderr.splitlines() if "refused response_format json_schema" in line]
    assert len(fallbacks) == 1 and "WARNING" in fallbacks[0] and "Input should be 'text' or 'json_object'" in fallbacks[0]
    # 4. Every answer gave pairs or is counted as a bad answer of a named kind.
    assert all(int(pairs) > 0 or kind != "none" for _, _, _, pairs, kind in answers), answers
    bad = sum(1 for *_, pairs, kind in answers if kind != "none")
    if bad:
        assert "bad answers" in stderr
    # Every request accounted for: sent = answered + retries + sent again another way + given up + cancelled at stop.
    requests = next(line for line in stderr.splitlines() if line.startswith("  requests"))
    numbers = dict((what, int(n)) for n, what in re.findall(
        r"(\d+) (sent again another way|sent|answered|retries|given up|cancelled at stop)", requests))
    assert numbers["sent"] == (numbers["answered"] + numbers["retries"] + numbers.get("sent again another way", 0)
                               + numbers["given up"] + numbers.get("cancelled at stop", 0))
    assert numbers["answered"] == len(answers) and numbers["given up"] == 0
    assert "response_format:" in requests  # the refused json_schema attempts, sent again as json_object
    assert "cost            unknown this run" in stderr  # a local server: no price without --prices
    state = json.loads((tmp_path / "checkpoint.json").read_text())["run_state"]
    assert state["requests_ok"] == len(answers) and state["completion_tokens"] <= CAP * len(answers)
    assert elapsed < 150 and not leftovers(tmp_path)
    # Still serving; its one slot may first finish the answers abandoned at the stop (slow on a busy machine).
    assert httpx.get(server + "/models", headers={"Authorization": f"Bearer {KEY}"}, trust_env=False, timeout=90).status_code == 200


def test_timeouts_are_retried_with_back_off_and_their_cost_is_stated_unknown(tmp_path, server):
    """Answers of up to 660 tokens take about 25 s here; a 2 s timeout abandons every attempt.
    Last in this module: the one-slot server goes on generating what was abandoned."""
    started = time.monotonic()
    process = subprocess.Popen(
        command(tmp_path, server, "--num-scenarios", "5", "--concurrency", "1", "--seed", "3", "--request-timeout", "2",
                "--max-attempts", "2", "--response-format", "json_object", "--log-level", "DEBUG",
                "--task", str(task_file(tmp_path, 10)), "--grace-period", "0"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env(tmp_path))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    while time.monotonic() - started < 60 and process.poll() is None and "given up after 2 attempts" not in "".join(lines):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    process.wait(30)
    reader.join(10)
    stderr = "".join(lines)
    assert process.returncode == 130, stderr[-3000:]
    assert "given up after 2 attempts; last error: timeout: no answer within --request-timeout" in stderr
    assert re.search(r"cost +unknown this run, unknown in all; \d+ abandoned attempts cost unknown", stderr), stderr[-2000:]
    state = json.loads((tmp_path / "checkpoint.json").read_text())["run_state"]
    assert state["abandoned_attempts"] >= 2
    assert time.monotonic() - started < 90 and not leftovers(tmp_path)


def test_score_through_completions_and_chat_logprobs(server, tmp_path, builtin_tokenizers, tokenizer_cache):
    """``asyncgen score`` at llama.cpp: the single-token form through /v1/completions with logprobs (the
    text as it is) and, with --chat, through chat completions with top_logprobs; free answers with a
    refusal verdict. Every scenario scored once, every answer's log-probability a number (exact or a
    bound), never unknown: its tokens spell the answers as the readings do. In this process
    (tests/inprocess.py): the server's time goes to the scenarios, not to a process start-up."""
    from asyncgen.scores import read_scores, scores_path
    from test_score import valid_pairs, write_dataset

    pairs = valid_pairs(builtin_tokenizers, 20)
    # 20 scenarios (issue 18 asks for at least 20 in CI) in both forms through completions; 4 more through chat logprobs (time: the server
    # answers one request at a time).
    for count, model, flags in ((20, "smollm2", ["--max-answer-tokens", "4"]),
                                (4, "smollm2-chat", ["--chat", "--form", "single"])):
        dataset = tmp_path / f"d{count}.jsonl"
        write_dataset(dataset, pairs[:count])
        result = asyncgen_here("score", dataset, "--model", model, "--base-url", server, "--concurrency", "2",
                               "--cache-dir", tokenizer_cache, *flags, env=run_env(tmp_path))
        assert result.returncode == 0, result.stderr[-2000:]
        records = read_scores(scores_path(dataset, model)).records
        assert sorted(records) == list(range(count))
        via = "chat" if "--chat" in flags else "completions"
        for record in records.values():
            single = record["single"]
            assert single["via"] == via and single["flips"] in (True, False, None)
            for side in ("prompt", "counterfactual"):
                for answer in single[side]["answers"].values():
                    assert isinstance(answer["logprob"], float), answer
        if "--chat" not in flags:
            assert all(isinstance(record["multi"]["prompt"]["answer"], str) and
                       record["multi"]["prompt"]["refuses"] in (True, False) for record in records.values())
        assert "refused /v1/completions" not in result.stderr
