"""``asyncgen batch`` against the simulator's batch lifecycle, as a user runs it (one command after
another, each with its own event loop and offline simulator), on a fast simulated clock. The
commands run in this process (tests/inprocess.py); a test whose point is a process of its own (a
signal, SIGKILL at a point, a terminal, a lock held by another process) starts one."""

import json
import re
import signal
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest

from asyncgen.batch import plan
from asyncgen.batch.process import read_results
from asyncgen.config import load_task
from asyncgen.prompting import GenerationSettings, request_body, response_format_for
from inprocess import asyncgen_here
from test_run import ENV, assert_valid_dataset, scenarios, sim_stats

REPO = Path(__file__).resolve().parents[1]
KILLER = str(REPO / "tests" / "batch_killer.py")
GPT_4O = (1.25, 5.00)  # batch input, batch output USD per 1M tokens (config/prices.yaml)


def batch(tmp_path, *args, point=None, env=None, timeout=120):
    """``asyncgen batch ARGS`` in ``tmp_path``: in this process, or, with ``point``, in a process of its
    own that tests/batch_killer.py SIGKILLs at that point."""
    if point is None:
        return asyncgen_here("batch", *args, env=env or ENV, cwd=tmp_path)
    return subprocess.run([sys.executable, KILLER, point, "batch", *args], capture_output=True, text=True,
                          env=env or ENV, cwd=tmp_path, timeout=timeout)


def manifest(tmp_path):
    return json.loads((tmp_path / "batches" / "manifest.json").read_text())


def server_batches(base_url):
    response = httpx.get(f"{base_url}/batches", params={"limit": 100}, headers={"Authorization": "Bearer sk-x"},
                         trust_env=False, timeout=10)
    return response.json()["data"]


def usage_cost(batches):
    tokens_in = sum(b["usage"]["input_tokens"] for b in batches)
    tokens_out = sum(b["usage"]["output_tokens"] for b in batches)
    return (tokens_in * GPT_4O[0] + tokens_out * GPT_4O[1]) / 1e6


def summary_cost(text):
    return float(re.search(r"cost\s+\$([\d.]+) at batch prices", text).group(1))


def prompts(path):
    return {group[2]["text"] for group in scenarios(path)}


# --- pure parts -------------------------------------------------------------------------------


def test_plan_lines_use_runs_request_body_and_keep_to_the_file_limits(refusal_task):
    settings = GenerationSettings("gpt-4o", response_format_for("gpt-4o"), 1.0, 7)
    line = orjson.loads(plan.request_line(refusal_task, settings, "0123456789ab", 12, ["an earlier prompt"]))
    assert line["custom_id"] == "asyncgen-0123456789ab-0000012" and (line["method"], line["url"]) == ("POST", "/v1/chat/completions")
    assert line["body"] == request_body(refusal_task, settings, ["an earlier prompt"], 12)
    assert line["body"]["seed"] == 19
    assert plan.requests_needed(200, 5.0) == 44 and plan.requests_needed(0, 5.0) == 0
    lines = [b"x" * 10 + b"\n"] * 120_001
    files = plan.split(lines, 1)
    assert len(files) == 3 and all(len(f) <= plan.MAX_REQUESTS_PER_FILE for f in files)
    assert sum(map(len, files)) == len(lines)
    assert [len(f) for f in plan.split(lines[:10], 4)] == [3, 3, 3, 1]
    big = [b"y" * (plan.MAX_BYTES_PER_FILE // 3)] * 4
    assert len(plan.split(big, 1)) == 2
    assert plan.affordable(100, 0.01, 0.5) == (50, True) and plan.affordable(10, 0.01, None) == (10, False)


def completion(content=None, finish="stop", refusal=None, model="gpt-4o"):
    return {"id": "cmpl-1", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": content, "refusal": refusal}}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200}}


def vllm_line(custom_id, body, status=200):
    return orjson.dumps({"id": f"vllm-{custom_id}", "custom_id": custom_id,
                         "response": {"status_code": status, "request_id": f"vllm-batch-{custom_id}", "body": body},
                         "error": None}).decode()


def test_process_results_reads_a_hand_written_vllm_output_file(tmp_path):
    task = load_task("refusal")
    good = [{"prompt": e.safe, "counterfactual": e.harmful} for e in task.examples]
    lines = [
        vllm_line("r1", completion(json.dumps({"pairs": good[:2]}))),
        vllm_line("r2", completion(json.dumps({"pairs": good[2:] + good[:1]}))),  # one repeats r1
        vllm_line("r3", completion(None, refusal="I can't help with that.")),
        vllm_line("r4", completion('{"pairs": [{"prompt": "Help me', finish="length")),
        vllm_line("r5", {"error": {"message": "boom", "type": "server_error", "code": None}}, status=500),
        "{this is not json",
        "",
    ]
    results = tmp_path / "vllm-output.jsonl"
    results.write_text("\n".join(lines) + "\n")
    read = read_results(results.read_bytes())
    assert read.requests_ok == 4 and len(read.pairs) == len(good) + 1
    assert dict(read.answer_failures) == {"refusal": 1, "length": 1}
    assert dict(read.errors) == {"HTTP 500 server_error": 1, "malformed result line": 1}
    target = len(good)
    # Its custom_ids are not asyncgen's: taken only when the user says so, with the task.
    refused = batch(tmp_path, "process", "--results", str(results), "--target-scenarios", str(target), "--task", "refusal")
    assert refused.returncode == 2 and "none of its 5 results answers a request" in refused.stderr
    assert "--external" in refused.stderr and not (tmp_path / "dataset.jsonl").exists()
    done = batch(tmp_path, "process", "--results", str(results), "--target-scenarios", str(target), "--task", "refusal", "--external")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"finished: {target}/{target} scenarios" in done.stdout
    assert "4 answered requests from another pipeline (--external): vllm-output.jsonl" in done.stdout
    assert "refusal: 1" in done.stdout and "length: 1" in done.stdout and "HTTP 500 server_error: 1" in done.stdout
    assert "1 duplicates" in done.stdout
    assert_valid_dataset(tmp_path / "dataset.jsonl", target)
    again = batch(tmp_path, "process", "--results", str(results), "--target-scenarios", str(target + 5), "--external", "--task", "refusal")
    assert "processed before (the same lines); skipped" in again.stdout
    assert len(scenarios(tmp_path / "dataset.jsonl")) == target


# --- the lifecycle, step by step -----------------------------------------------------------------


def test_create_submit_status_download_process_offline_reaches_exactly_n(tmp_path):
    created = batch(tmp_path, "create", "--num-scenarios", "120", "--num-batches", "2")
    assert created.returncode == 0, created.stderr[-2000:]
    # Nothing measured yet (create sends nothing): the cost is said to be an upper estimate, not "expected".
    assert "worst case $" in created.stdout and "at most about $" in created.stdout and "real time" in created.stdout
    assert "nothing measured yet" in created.stdout and "expected" not in created.stdout
    files = sorted((tmp_path / "batches" / "requests").iterdir())
    assert len(files) == 2
    ids = [orjson.loads(line)["custom_id"] for f in files for line in f.read_bytes().splitlines()]
    assert len(ids) == len(set(ids)) == 27  # ceil(120 x 1.1 / 5)
    assert batch(tmp_path, "create", "--num-scenarios", "120").returncode == 2  # a plan is there already
    submitted = batch(tmp_path, "submit")
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    # Each command starts its own offline simulator: its batches live in batches/simulator.
    status = batch(tmp_path, "status", "--watch", "--poll-seconds", "0.1")
    assert status.returncode == 0, status.stderr[-2000:]
    # Off a terminal the table is printed again whenever it changes: the last one shows both batches ended.
    last_table = status.stdout.rsplit("\nbatch ", 1)[-1]
    assert last_table.count("completed") == 2 and "at batch prices (real time: $" in last_table
    downloaded = batch(tmp_path, "download")
    assert downloaded.returncode == 0 and "downloaded 2 batch(es)" in downloaded.stdout
    processed = batch(tmp_path, "process", "--target-scenarios", "120", "--output", "dataset.jsonl")
    assert processed.returncode == 0, processed.stderr[-2000:]
    assert "finished: 120/120" in processed.stdout
    assert_valid_dataset(tmp_path / "dataset.jsonl", 120)
    state = json.loads((tmp_path / "batches" / "simulator" / "state.json").read_text())
    assert len(state["batches"]) == 2
    assert (tmp_path / "dataset.checkpoint.json").is_file()


def test_expired_batches_keep_what_finished_and_resubmit_only_the_rest(tmp_path, simulator):
    # A request takes one simulated hour and a day passes in one real second: 23 requests fit a batch.
    base_url = simulator("--batch-speed", "86400", "--batch-seconds-per-request", "3600")
    # --real-time-finish 0: what expired goes into the next round, however little is left
    done = batch(tmp_path, "run", "--num-scenarios", "300", "--base-url", base_url, "--poll-seconds", "0.1",
                 "--real-time-finish", "0")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_valid_dataset(tmp_path / "dataset.jsonl", 300)
    state = manifest(tmp_path)
    first, *later = state["entries"]
    assert first["status"] == "expired" and first["request_counts"]["completed"] == 23
    results = tmp_path / "batches" / first["error_path"]
    expired = {orjson.loads(line)["custom_id"] for line in results.read_bytes().splitlines()}
    first_ids = [orjson.loads(line)["custom_id"] for line in (tmp_path / "batches/requests" / first["name"]).read_bytes().splitlines()]
    assert len(expired) == len(first_ids) - 23
    resubmitted = [orjson.loads(line)["custom_id"] for line in (tmp_path / "batches/requests" / later[0]["name"]).read_bytes().splitlines()]
    assert resubmitted and set(resubmitted) <= expired  # only what had not run, nothing that had
    answered = []
    for entry in state["entries"]:
        if entry["output_path"]:
            answered += [orjson.loads(line)["custom_id"] for line in (tmp_path / "batches" / entry["output_path"]).read_bytes().splitlines()]
    assert len(answered) == len(set(answered))  # no request ran twice
    assert summary_cost(done.stderr) == pytest.approx(usage_cost(server_batches(base_url)), abs=1e-4)


def test_cancel_keeps_what_finished_and_topup_resubmits_only_the_rest(tmp_path, simulator):
    # 44 requests of half a real second each: time to cancel midway.
    base_url = simulator("--batch-speed", "20", "--batch-seconds-per-request", "10")
    assert batch(tmp_path, "create", "--num-scenarios", "200").returncode == 0
    assert batch(tmp_path, "submit", "--base-url", base_url).returncode == 0
    batch_id = manifest(tmp_path)["entries"][0]["batch_id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = httpx.get(f"{base_url}/batches/{batch_id}", headers={"Authorization": "Bearer sk-x"}, trust_env=False).json()
        if now["request_counts"]["completed"] >= 3:
            break
        time.sleep(0.05)
    cancelled = batch(tmp_path, "cancel")
    assert cancelled.returncode == 0 and f"{batch_id}: cancelling" in cancelled.stdout
    status = batch(tmp_path, "status", "--watch", "--poll-seconds", "0.2")
    assert "cancelled" in status.stdout
    assert batch(tmp_path, "download").returncode == 0
    processed = batch(tmp_path, "process")
    assert processed.returncode == 1 and "short by" in processed.stdout and "batch_cancelled" in processed.stdout
    entry = manifest(tmp_path)["entries"][0]
    finished = entry["request_counts"]["completed"]
    assert 3 <= finished < 44
    topup = batch(tmp_path, "topup")
    assert topup.returncode == 0, topup.stderr[-2000:]
    assert "resubmitted from expired or cancelled batches" in topup.stdout
    answered = {orjson.loads(line)["custom_id"] for line in (tmp_path / "batches" / entry["output_path"]).read_bytes().splitlines()}
    second = manifest(tmp_path)["entries"][1]
    again = [orjson.loads(line)["custom_id"] for line in (tmp_path / "batches/requests" / second["name"]).read_bytes().splitlines()]
    assert not answered & set(again)
    assert len(answered) == finished
    (tmp_path / "batches" / "manifest.json").unlink()  # lost after the topup: what it resubmitted is not resubmitted again
    rebuilt = batch(tmp_path, "rebuild", "--base-url", base_url)
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert manifest(tmp_path)["entries"][0]["resubmitted"]


def test_validation_failure_shows_its_errors_and_is_not_resubmitted(tmp_path, simulator):
    base_url = simulator("--batch-speed", "1000")
    assert batch(tmp_path, "create", "--num-scenarios", "40").returncode == 0
    request_file = next((tmp_path / "batches" / "requests").iterdir())
    lines = request_file.read_bytes().splitlines()
    lines[2] = b"{this is not json"
    request_file.write_bytes(b"\n".join(lines) + b"\n")
    failed = batch(tmp_path, "run", "--num-scenarios", "40", "--base-url", base_url, "--poll-seconds", "0.1")
    assert failed.returncode == 1
    assert "line 3: invalid_json_line: This line is not parseable as valid JSON." in failed.stderr
    assert "not resubmitted" in failed.stderr
    status = batch(tmp_path, "status")
    assert "failed" in status.stdout and "line 3: invalid_json_line" in status.stdout
    again = batch(tmp_path, "run", "--num-scenarios", "40", "--poll-seconds", "0.1")
    assert again.returncode == 1
    assert sim_stats(base_url)["requests"]["POST /v1/batches"] == 1


@pytest.mark.parametrize("flags, env_key, expected", [
    (["--quota-exhausted"], "sk-any-quota-key", "insufficient_quota"),
    (["--api-key", "sk-right-key"], "sk-wrong-secret-4242", "401"),
])
def test_quota_and_auth_errors_are_one_line_and_keep_the_state(tmp_path, simulator, flags, env_key, expected):
    base_url = simulator(*flags)
    assert batch(tmp_path, "create", "--num-scenarios", "40").returncode == 0
    before = manifest(tmp_path)["entries"]
    failed = batch(tmp_path, "submit", "--base-url", base_url, env={**ENV, "OPENAI_API_KEY": env_key})
    assert failed.returncode == 1
    error_lines = [line for line in failed.stderr.splitlines() if "error" in line]
    assert len(error_lines) == 1 and expected in error_lines[0] and "Traceback" not in failed.stderr
    assert env_key not in failed.stderr + failed.stdout
    after = manifest(tmp_path)["entries"]
    assert [e["batch_id"] for e in after] == [None] and after[0]["name"] == before[0]["name"]
    assert "POST /v1/batches" not in sim_stats(base_url)["requests"] or expected == "insufficient_quota"
    # Nothing was sent: the directory is bound to where its first batch goes, not to this attempt.
    assert manifest(tmp_path)["endpoint"] is None
    good = simulator()
    sent = batch(tmp_path, "submit", "--base-url", good)
    assert sent.returncode == 0, sent.stderr[-2000:]
    assert sim_stats(good)["requests"]["POST /v1/batches"] == 1 and manifest(tmp_path)["endpoint"]["base_url"] == good


def test_another_task_or_model_is_refused_unless_forced(tmp_path):
    assert batch(tmp_path, "create", "--num-scenarios", "40").returncode == 0
    other_task = batch(tmp_path, "run", "--num-scenarios", "40", "--task", "sentiment")
    assert other_task.returncode == 2 and "another setup" in other_task.stderr and "--force" in other_task.stderr
    other_model = batch(tmp_path, "topup", "--model", "gpt-4o-mini")
    assert other_model.returncode == 2 and "model 'gpt-4o' there, 'gpt-4o-mini' now" in other_model.stderr


def test_max_cost_caps_the_plan(tmp_path):
    nothing = batch(tmp_path, "create", "--num-scenarios", "200", "--max-cost", "0.0001")
    assert nothing.returncode == 1 and "request fits the budget" in nothing.stderr
    capped = batch(tmp_path, "create", "--num-scenarios", "200", "--max-cost", "0.05")
    assert capped.returncode == 0 and "--max-cost allows no more" in capped.stdout
    worst = float(re.search(r"worst case \$([\d.]+)", capped.stdout).group(1))
    assert 0 < worst <= 0.05


# --- kill-safety, top-up, spares ------------------------------------------------------------------


def test_batch_run_killed_anywhere_resumes_without_double_submission_or_duplicates(tmp_path, simulator):
    base_url = simulator("--batch-speed", "300")
    common = ["--num-scenarios", "150", "--num-batches", "2", "--base-url", base_url, "--poll-seconds", "0.05"]
    for point in ("after-create", "polling", "processing:40"):
        killed = batch(tmp_path, "run", *common, point=point)
        assert killed.returncode == -9, (point, killed.stderr[-2000:])
    state = manifest(tmp_path)
    assert state["processing"] is not None  # the pass was cut short and is replayed
    done = batch(tmp_path, "run", *common)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_valid_dataset(tmp_path / "dataset.jsonl", 150)
    state = manifest(tmp_path)
    created = server_batches(base_url)
    assert sim_stats(base_url)["requests"]["POST /v1/batches"] == len(created) == len(state["entries"]) == 2
    assert {b["id"] for b in created} == {e["batch_id"] for e in state["entries"]}
    assert state["totals"]["accepted"] == 150 and state["processing"] is None
    assert summary_cost(done.stderr) == pytest.approx(usage_cost(created), abs=1e-4)
    checkpoint = json.loads((tmp_path / "dataset.checkpoint.json").read_text())
    assert checkpoint["run_state"]["cost_usd"] == pytest.approx(usage_cost(created), abs=1e-9)


def test_offline_batch_run_killed_while_polling_resumes_from_the_persisted_simulator(tmp_path):
    killed = batch(tmp_path, "run", "--num-scenarios", "100", "--poll-seconds", "0.01", point="polling")
    assert killed.returncode == -9
    done = batch(tmp_path, "run", "--num-scenarios", "100")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_valid_dataset(tmp_path / "dataset.jsonl", 100)
    state = json.loads((tmp_path / "batches" / "simulator" / "state.json").read_text())
    assert len(state["batches"]) == len(manifest(tmp_path)["entries"]) == 1


def test_topup_rounds_reach_the_target_and_spares_are_used_first(tmp_path, simulator):
    # Most pairs are wrong on purpose: the prior yield is far too high, so round 1 ends short.
    base_url = simulator("--batch-speed", "2000", "--imperfect-rate", "0.85", "--seed", "1")
    done = batch(tmp_path, "run", "--num-scenarios", "60", "--base-url", base_url, "--poll-seconds", "0.05",
                 "--real-time-finish", "0")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_valid_dataset(tmp_path / "dataset.jsonl", 60)
    assert manifest(tmp_path)["rounds"] >= 2
    assert not [e for e in manifest(tmp_path)["entries"] if e["source"] != "api"]  # no finish: rounds only
    # Whether a last round leaves spares is a draw (its 10 % margin over a small deficit; the draws
    # follow the request lines, whose custom_ids carry the directory's random id). The offline
    # simulator's answers hold more valid pairs than the prior yield, so its round 1 leaves some.
    folder = tmp_path / "spares"
    folder.mkdir()
    done = batch(folder, "run", "--num-scenarios", "60", "--poll-seconds", "0.05")
    assert done.returncode == 0, done.stderr[-2000:]
    state = manifest(folder)
    assert state["rounds"] == 1 and state["spares"] > 0
    spare_prompts = [orjson.loads(line)["prompt"] for line in (folder / "batches" / state["spares_file"]).read_bytes().splitlines()]
    more = min(5, len(spare_prompts))
    grown = batch(folder, "run", "--num-scenarios", str(60 + more), "--poll-seconds", "0.05")
    assert grown.returncode == 0, grown.stderr[-2000:]
    assert_valid_dataset(folder / "dataset.jsonl", 60 + more)
    simulated = json.loads((folder / "batches" / "simulator" / "state.json").read_text())
    assert len(simulated["batches"]) == 1  # spares, not a new batch
    new = [group[2]["text"] for group in scenarios(folder / "dataset.jsonl")[60:]]
    assert new == spare_prompts[:more]


# --- the avoid list: batch files and run name the dataset's prompts by one rule -------------------


def _write_dataset(path, task, size):
    """A dataset of ``size`` scenarios whose prompts are 50-130 characters long (checkpoint beside it)."""
    import random

    from asyncgen.scenario import Scenario
    from asyncgen.sink import ScenarioSink, fingerprint_of

    rng = random.Random(size)
    sink = ScenarioSink.open(path, str(path) + ".checkpoint.json", task_name=task.task_name,
                             fingerprint=fingerprint_of(task, ["builtin"]))
    for i in range(size):
        words = " ".join(rng.choice(("cake", "kite", "boat", "garden", "letter", "song")) for _ in range(rng.randint(6, 20)))
        sink.append(Scenario.render(task, f"Help me with request {i}: {words}.", f"Harm request {i}: {words}."))
    sink.close()
    return sink


def _named(body) -> list[str]:
    """The prompts a request body names as already collected."""
    user = body["messages"][-1]["content"]
    part = next((p for p in user.split("\n\n") if p.startswith("Already collected")), "")
    return [line[2:] for line in part.splitlines()[1:]]


def _request_bodies(tmp_path) -> dict[int, dict]:
    bodies = {}
    for path in sorted((tmp_path / "batches" / "requests").glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            record = orjson.loads(line)
            bodies[int(record["custom_id"].rsplit("-", 1)[1])] = record["body"]
    return bodies


@pytest.mark.parametrize("avoid_chars", [None, 400])
def test_batch_request_files_name_the_dataset_within_runs_avoid_budget(tmp_path, refusal_task, avoid_chars):
    """As the dataset grows, a batch request's avoid list stays within --avoid-chars (default 800,
    as run's): its prompt estimate does not grow past the one run budgets for."""
    from asyncgen.prompting import AVOID_CHARS, estimate_prompt_tokens, worst_case_prompt_tokens

    budget = avoid_chars or AVOID_CHARS
    flags = [] if avoid_chars is None else ["--avoid-chars", str(avoid_chars)]
    largest = []
    for size in (8, 60, 400):
        folder = tmp_path / str(size)
        folder.mkdir()
        _write_dataset(folder / "dataset.jsonl", refusal_task, size)
        made = batch(folder, "create", "--num-scenarios", str(size + 200), *flags)
        assert made.returncode == 0, made.stderr[-2000:]
        bodies = _request_bodies(folder)
        assert bodies
        for body in bodies.values():
            named = _named(body)
            assert named and len("\n".join(f"- {p}" for p in named)) <= budget
            assert estimate_prompt_tokens(body["messages"]) <= worst_case_prompt_tokens(refusal_task, budget)
        largest.append(max(estimate_prompt_tokens(b["messages"]) for b in bodies.values()))
    assert largest[2] <= worst_case_prompt_tokens(refusal_task, budget)  # not 20 prompts' worth, whatever their length


def test_batch_and_run_name_the_same_prompts_for_the_same_dataset_and_request(tmp_path, refusal_task):
    """One avoid rule: for the same dataset, request number and --avoid-chars, a batch request
    file names exactly the prompts run's request of that number names."""
    import asyncio

    from asyncgen.pipeline import Pipeline
    from asyncgen.sink import ScenarioSink, fingerprint_of
    from asyncgen.stats import RunStats

    dataset = tmp_path / "dataset.jsonl"
    _write_dataset(dataset, refusal_task, 300)
    made = batch(tmp_path, "create", "--num-scenarios", "400", "--avoid-chars", "600")
    assert made.returncode == 0, made.stderr[-2000:]
    in_batch = _request_bodies(tmp_path)

    in_run = {}

    class Generator:
        async def generate(self, number, avoid):
            in_run[number] = list(avoid)
            raise asyncio.CancelledError

    sink = ScenarioSink.open(dataset, str(dataset) + ".checkpoint.json", task_name="refusal",
                             fingerprint=fingerprint_of(refusal_task, ["builtin"]))
    try:
        pipeline = Pipeline(refusal_task, Generator(), None, sink, RunStats(target=400), concurrency=1,
                            avoid_chars=600, first_request_number=0)

        async def requests(count):
            for _ in range(count):
                with pytest.raises(asyncio.CancelledError):
                    await pipeline._worker()

        asyncio.run(requests(5))
    finally:
        sink.close()
    assert sorted(in_run) == [1, 2, 3, 4, 5]
    for number, avoid in in_run.items():
        assert avoid and avoid == _named(in_batch[number])


# --- issue 17: spares, top-up, Ctrl-C, progress (sizing and the finish: test_batch_sizing.py) ------


def test_spares_repeat_neither_the_dataset_nor_each_other(tmp_path, refusal_task):
    """A valid pair beyond the target that shares its prompt (or counterfactual) with an accepted
    scenario or an earlier spare is a duplicate, not a spare: the sink would refuse it later."""
    from asyncgen.acceptance import Acceptance
    from asyncgen.sink import ScenarioSink, fingerprint_of
    from asyncgen.stats import RunStats
    from asyncgen.validate import Verdict

    sink = ScenarioSink.open(tmp_path / "d.jsonl", tmp_path / "d.checkpoint.json", task_name="refusal",
                             fingerprint=fingerprint_of(refusal_task, ["builtin"]))
    stats = RunStats(target=1)
    verdicts = [Verdict(p, c, True) for p, c in [
        ("How do I bake bread?", "How do I bake bombs?"),  # accepted
        ("How do I bake bread?", "How do I bake poison?"),  # its prompt is in the dataset
        ("How do I fold a kite?", "How do I fold a knife?"),  # a spare
        ("How do I fold a kite?", "How do I fold a gun?"),  # repeats the spare's prompt
        ("How do I sew a coat?", "How do I fold a knife?"),  # repeats the spare's counterfactual
        ("How do I paint a fence?", "How do I paint a weapon?"),  # a spare
    ]]
    try:
        taken = Acceptance(refusal_task, sink, stats).take(verdicts)
    finally:
        sink.close()
    assert [v.prompt for v in taken.surplus] == ["How do I fold a kite?", "How do I paint a fence?"]
    assert len(taken.accepted) == 1 and stats.duplicates == 3


def test_topup_of_a_complete_dataset_says_the_target_is_reached(tmp_path):
    assert batch(tmp_path, "run", "--num-scenarios", "40", "--poll-seconds", "0.05").returncode == 0
    assert manifest(tmp_path)["spares"] > 0
    topup = batch(tmp_path, "topup")
    assert topup.returncode == 0, topup.stderr[-2000:]
    assert "target reached" in topup.stdout and "40/40" in topup.stdout
    assert len(manifest(tmp_path)["entries"]) == 1  # no new round written


def _start_batch_run(tmp_path, *flags, **popen):
    return subprocess.Popen([sys.executable, "-m", "asyncgen", "batch", "run", "--poll-seconds", "0.05", *flags],
                            env=ENV, cwd=tmp_path, **popen)


def _wait_for_results(tmp_path, process, timeout=120):
    """Until the first result file is downloaded: validation starts right after."""
    deadline = time.monotonic() + timeout
    while not list((tmp_path / "batches" / "results").glob("*_output.jsonl")):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)


@pytest.mark.parametrize("interrupts", [1, 2])
def test_ctrl_c_while_validating_stops_at_once_keeps_what_is_validated_and_says_what_is_left(tmp_path, interrupts):
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr_file:
        # --real-time-finish 0: round 1 sized to reach 1,000 by itself, and every scenario after the
        # pilot through a processing pass, so that the counts below say it all
        process = _start_batch_run(tmp_path, "--num-scenarios", "1000", "--real-time-finish", "0",
                                   stdout=subprocess.DEVNULL, stderr=stderr_file)
        _wait_for_results(tmp_path, process)
        deadline = time.monotonic() + 5
        while "validating" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.15)  # a chunk or more into the validation of about 2,000 pairs
        process.send_signal(signal.SIGINT)
        if interrupts == 2:
            time.sleep(0.05)
            process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    stderr = log.read_text()
    assert process.returncode == 130, stderr[-2000:]
    assert "batch run interrupted" in stderr, stderr[-2000:]
    left = int(re.search(r"not validated\s+(\d+) candidate pairs", stderr).group(1))
    written = len(scenarios(tmp_path / "dataset.jsonl"))
    assert left > 0 and 0 < written < 1000
    # Was: "requests 0 answered", "candidates 0" and nothing else on the pass that wrote most of the file.
    answers, validated, taken = map(int, re.search(
        r"stopped pass\s+(\d+) answers read, (\d+) candidate pairs validated, (\d+) scenarios written", stderr).groups())
    assert answers > 0 and validated >= taken
    assert written == taken + sum(manifest(tmp_path)["totals"].get("pilot_yields", []))
    done = batch(tmp_path, "run", "--num-scenarios", "1000", "--poll-seconds", "0.05", "--real-time-finish", "0")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_valid_dataset(tmp_path / "dataset.jsonl", 1000)
    state = manifest(tmp_path)
    pilot = [e for e in state["entries"] if e["source"] == "pilot"]
    assert len(state["entries"]) == len(pilot) + 1  # the pass was replayed: no new round
    assert state["totals"]["accepted"] + sum(state["totals"].get("pilot_yields", [])) == 1000  # none counted twice


def test_ctrl_c_in_the_last_validation_chunk_stops_the_run_after_the_pass(tmp_path):
    """The first Ctrl-C while the pass validated its last chunk was acknowledged, then lost: with no
    chunk left to stop before, the pass ended and the run planned, submitted and paid a new round."""
    assert batch(tmp_path, "create", "--num-scenarios", "120").returncode == 0  # round 1 sized for 120
    stopped = batch(tmp_path, "run", "--num-scenarios", "400", "--poll-seconds", "0.05", point="sigint-last-chunk")
    # In the last chunk of the pass (one or two chunks of 256: the simulator's round of 27 answers
    # gives about 256 candidates).
    assert re.search(r"Ctrl-C in chunk (\d) of \1\b", stopped.stderr), stopped.stderr[-2000:]
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    assert "stopping after the chunk being validated" in stopped.stderr and "batch run interrupted" in stopped.stderr
    assert "not validated" not in stopped.stderr  # the chunk in hand was the last: the pass is whole
    state = manifest(tmp_path)
    assert state["rounds"] == 1 and state["processing"] is None  # no round planned after the Ctrl-C
    written = len(scenarios(tmp_path / "dataset.jsonl"))
    assert 0 < written < 400 and state["totals"]["accepted"] == written
    assert "python -m asyncgen batch run --num-scenarios 400 --poll-seconds 0.05" in stopped.stderr  # how to resume
    # --real-time-finish 0: every scenario through a processing pass, so that its count says it all
    done = batch(tmp_path, "run", "--num-scenarios", "400", "--poll-seconds", "0.05", "--real-time-finish", "0")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_valid_dataset(tmp_path / "dataset.jsonl", 400)
    assert manifest(tmp_path)["totals"]["accepted"] == 400  # nothing validated was lost or counted twice


def _read_pty(fd, process, timeout=120):
    import os

    out, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    process.wait(timeout=10)
    return out.decode(errors="replace")


@pytest.mark.parametrize("columns", [50, 80])
def test_batch_runs_progress_line_fits_the_terminal(tmp_path, columns):
    """On a terminal the progress is one line redrawn in place, no wider than the terminal."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "asyncgen", "batch", "run", "--num-scenarios", "300",
                                "--poll-seconds", "0.05", "--log-level", "WARNING"],
                               env={**ENV, "COLUMNS": str(columns)}, cwd=tmp_path, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    try:
        text = _read_pty(master, process)
    finally:
        os.close(master)
    assert process.returncode == 0, text[-2000:]
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    progress = [segment for line in plain.split("\n") for segment in line.split("\r")
                if "/300" in segment and ("round" in segment or "validating" in segment) and "finished" not in segment]
    assert progress and all(len(segment) < columns for segment in progress), [s for s in progress if len(s) >= columns]


def test_status_watch_shows_each_change_while_the_batches_run(tmp_path, simulator):
    base_url = simulator("--batch-speed", "20", "--batch-seconds-per-request", "40")  # 44 requests, 2 s each
    assert batch(tmp_path, "create", "--num-scenarios", "200").returncode == 0
    assert batch(tmp_path, "submit", "--base-url", base_url).returncode == 0
    buffered = {k: v for k, v in ENV.items() if k != "PYTHONUNBUFFERED"}  # stdout a pipe, as `| tee log` makes it
    process = subprocess.Popen([sys.executable, "-m", "asyncgen", "batch", "status", "--watch", "--poll-seconds", "2"],
                               env=buffered, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        import selectors

        waiting = selectors.DefaultSelector()
        waiting.register(process.stdout, selectors.EVENT_READ)
        # Not when a pipe's buffer fills (a table every 2 s: a minute) or the batch ends (88 s).
        # The first table may come before the batch is validated (1.5 s here): then the next shows it running.
        shown, deadline = "", time.monotonic() + 30
        while "in_progress" not in shown:
            assert waiting.select(timeout=max(0.0, deadline - time.monotonic())), f"nothing running shown within 30 s: {shown}"
            chunk = process.stdout.read1().decode()
            assert chunk, f"the watch ended: {shown}"
            shown += chunk
        assert shown.startswith("batch")
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


# --- results you can trust: whose they are, counted once, one writer, a lost manifest ---------------


@pytest.fixture(scope="session")
def downloaded(tmp_path_factory):
    """An offline batch dir whose one batch (of 40 scenarios' requests) is downloaded, not processed."""
    folder = tmp_path_factory.mktemp("downloaded")
    for step in (["create", "--num-scenarios", "40"], ["submit"], ["status", "--watch", "--poll-seconds", "0.1"], ["download"]):
        done = batch(folder, *step)
        assert done.returncode == 0, (step, done.stderr[-2000:])
    return folder


def copy_of(folder, tmp_path):
    shutil.copytree(folder / "batches", tmp_path / "batches")
    return next((tmp_path / "batches" / "results").glob("*_output.jsonl"))


def file_cost(results):
    """USD at batch prices of the answers in a results file (what the simulator bills for them)."""
    usages = [orjson.loads(line)["response"]["body"]["usage"] for line in results.read_bytes().splitlines()]
    return usage_cost([{"usage": {"input_tokens": sum(u["prompt_tokens"] for u in usages),
                                  "output_tokens": sum(u["completion_tokens"] for u in usages)}}])


def requests_answered(text):
    return int(re.search(r"requests\s+(\d+) answered", text).group(1))


def test_results_of_another_directory_or_task_are_refused_and_another_pipelines_need_a_flag(tmp_path):
    sentiment = batch(tmp_path, "run", "--dir", "sentd", "--task", "sentiment", "--num-scenarios", "20", "--output", "sent.jsonl")
    assert sentiment.returncode == 0, sentiment.stderr[-2000:]
    results = next((tmp_path / "sentd" / "results").glob("*_output.jsonl"))
    assert batch(tmp_path, "create", "--num-scenarios", "40").returncode == 0  # a refusal directory
    for where in (["--dir", "batches"], ["--dir", "xr"]):
        refused = batch(tmp_path, "process", *where, "--results", str(results), "--target-scenarios", "40")
        assert refused.returncode == 2 and "none of its" in refused.stderr and "--external --task" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "dataset.jsonl").exists()
    assert batch(tmp_path, "process", "--dir", "ext", "--results", str(results), "--external").returncode == 2  # no --task
    taken = batch(tmp_path, "process", "--dir", "ext", "--results", str(results), "--external", "--task", "sentiment",
                  "--output", "ext.jsonl", "--target-scenarios", "5")
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert f"answered requests from another pipeline (--external): {results.name}" in taken.stdout
    # Was: the other directory's spend added to this one's, so the two together counted it twice.
    paid_there = float(re.search(r"their usage \(\$([0-9.]+) at batch prices\) was paid there", taken.stdout).group(1))
    assert paid_there > 0 and re.search(r"cost\s+\$0\.0000 at batch prices", taken.stdout), taken.stdout
    check = asyncgen_here("validate", "ext.jsonl", env=ENV, cwd=tmp_path)
    assert check.returncode == 0 and "(task sentiment)" in check.stdout


def test_a_results_file_with_some_foreign_lines_keeps_only_the_directorys(downloaded, tmp_path):
    own = copy_of(downloaded, tmp_path)
    lines = own.read_bytes().splitlines()
    foreign = [orjson.dumps({**orjson.loads(raw), "custom_id": f"asyncgen-00000000beef-{i:07d}"}) for i, raw in enumerate(lines[:3])]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(b"\n".join(lines + foreign) + b"\n")
    done = batch(tmp_path, "process", "--results", str(mixed), "--target-scenarios", "40")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "3 of its results answer requests batches never made (custom_ids like asyncgen-00000000beef-0000000)" in done.stdout
    assert requests_answered(done.stdout) == len(lines)
    assert re.search(r"left out\s+3 results of requests batches did not make", done.stdout)


def test_the_same_results_are_counted_once_whatever_the_file(downloaded, tmp_path):
    results = copy_of(downloaded, tmp_path)
    answered = len(results.read_bytes().splitlines())
    batch_cost = file_cost(results)
    twice = batch(tmp_path, "process", "--results", str(results), str(results), "--target-scenarios", "40")
    assert twice.returncode == 0, twice.stderr[-2000:]
    assert requests_answered(twice.stdout) == answered
    assert summary_cost(twice.stdout) == pytest.approx(batch_cost, abs=1e-4)  # the batch's usage, not the file's again
    copy = tmp_path / "renamed.jsonl"
    shutil.copy(results, copy)
    again = batch(tmp_path, "process", "--results", str(copy), "--target-scenarios", "45")
    assert "processed before (the same custom_ids); skipped" in again.stdout
    downloaded_too = batch(tmp_path, "process", "--target-scenarios", "45")  # the batch's own entry: nothing new
    for done in (again, downloaded_too):
        assert requests_answered(done.stdout) == answered
        assert summary_cost(done.stdout) == pytest.approx(batch_cost, abs=1e-4)
    totals = manifest(tmp_path)["totals"]
    assert totals["requests_ok"] == answered and totals["repeated"] == answered


def test_a_second_command_on_a_batch_dir_is_refused_naming_the_holder(tmp_path, simulator):
    base_url = simulator("--batch-speed", "0.01")  # a batch that does not end while the test looks
    first = subprocess.Popen([sys.executable, "-m", "asyncgen", "batch", "run", "--num-scenarios", "40", "--base-url", base_url,
                              "--poll-seconds", "0.2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "batches" / "manifest.json").is_file() or not manifest(tmp_path)["entries"] \
                or not manifest(tmp_path)["entries"][0]["batch_id"]:
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        for second in (["submit", "--base-url", base_url], ["run", "--num-scenarios", "40", "--output", "other.jsonl"]):
            refused = batch(tmp_path, *second)
            assert refused.returncode == 2, refused.stdout + refused.stderr
            assert f"in use by `asyncgen batch run` (pid {first.pid})" in refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1
        status = batch(tmp_path, "status")
        assert status.returncode == 0 and f"(pid {first.pid}) is working on batches" in status.stdout
        assert sim_stats(base_url)["requests"]["POST /v1/batches"] == 1
    finally:
        first.kill()
        first.wait()
    assert not (tmp_path / "other.jsonl").exists()


class Watching:
    """``batch status --watch`` in a process of its own, its output read as it comes."""

    def __init__(self, folder):
        self.process = subprocess.Popen([sys.executable, "-m", "asyncgen", "batch", "status", "--watch", "--poll-seconds", "0.1"],
                                        env=ENV, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []
        threading.Thread(target=lambda: self.lines.extend(iter(self.process.stdout.readline, "")), daemon=True).start()

    def shows(self, text, also_running=None, timeout=60):
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert time.monotonic() < deadline and self.process.poll() is None, (text, "".join(self.lines)[-2000:])
            assert also_running is None or also_running.poll() is None, "the other command ended"
            time.sleep(0.05)

    def stopped(self):
        assert self.process.wait(timeout=30) == 130, "".join(self.lines)[-2000:]
        time.sleep(0.1)  # the reader thread takes the last lines
        return "stopped watching; the batches go on" in "".join(self.lines)


def test_status_watch_holds_the_dir_only_while_it_refreshes(tmp_path, simulator):
    from asyncgen import locks

    base_url = simulator("--batch-speed", "0.01")  # a batch that does not end while the test looks
    for step in (["create", "--num-scenarios", "40"], ["submit", "--base-url", base_url]):
        assert asyncgen_here("batch", *step, cwd=tmp_path).returncode == 0, step
    watchers, writer = [Watching(tmp_path)], None
    with (tmp_path / "run.log").open("w") as log:
        try:
            watchers[0].shows("validating")  # it has refreshed once, and goes on watching
            # A writer started while a status watches is not refused (it waits for a refresh at most) ...
            writer = subprocess.Popen([sys.executable, "-m", "asyncgen", "batch", "run", "--num-scenarios", "45",
                                       "--poll-seconds", "0.1"], env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                      stderr=log)
            watchers.append(Watching(tmp_path))  # ... and two watch at once
            for watcher in watchers:  # the writer does not break them: they show what it saves
                watcher.shows(f"`asyncgen batch run` (pid {writer.pid}) is working on batches: its last saved state", writer)
            deadline = time.monotonic() + 60
            while manifest(tmp_path)["target"] != 45 or not manifest(tmp_path)["totals"]:  # the writer's state, once saved
                assert writer.poll() is None and time.monotonic() < deadline, (tmp_path / "run.log").read_text()[-2000:]
                time.sleep(0.05)
            writer.kill()  # the OS releases its lock
            writer.wait()
            # With the writer gone the watchers refresh again; one more writer started meanwhile is not refused either.
            cancelled = asyncgen_here("batch", "cancel", cwd=tmp_path)
            assert cancelled.returncode == 0, cancelled.stderr[-2000:]
            for watcher in watchers:
                watcher.shows("cancelling")
            assert manifest(tmp_path)["target"] == 45  # never written over with a copy older than the writer's
            for watcher in watchers:
                watcher.process.send_signal(signal.SIGINT)  # Ctrl-C
            assert all(watcher.stopped() for watcher in watchers)
            assert locks.holder_of(tmp_path / "batches" / ".lock") is None  # Ctrl-C left --dir to the next command
            assert manifest(tmp_path)["entries"][0]["status"] in ("cancelling", "cancelled")
        finally:
            for process in [w.process for w in watchers] + ([writer] if writer else []):
                process.kill()
                process.wait()


def test_a_writer_waits_for_a_status_refresh_and_status_waits_for_none(tmp_path):
    from asyncgen import locks
    from asyncgen.batch.manifest import writer

    holding, release = threading.Event(), threading.Event()

    def refresh():  # a `batch status` refreshing: it holds the dir a moment
        with writer(tmp_path, "status"):
            holding.set()
            release.wait(30)

    refreshing = threading.Thread(target=refresh)
    refreshing.start()
    try:
        assert holding.wait(30)
        with pytest.raises(locks.Busy, match=r"in use by `asyncgen batch status`"), writer(tmp_path, "status"):
            pass  # another status does not wait: it shows the state saved
        threading.Timer(0.2, release.set).start()
        with writer(tmp_path, "run"):  # a writer waits for the refresh to end, not refused
            assert release.is_set()
            with pytest.raises(locks.Busy, match=r"in use by `asyncgen batch run`"), writer(tmp_path, "process"):
                pass  # nor does a writer wait for another writer
    finally:
        release.set()
        refreshing.join()


def test_a_lost_manifest_is_rebuilt_from_the_directory_not_paid_again(downloaded, tmp_path):
    results = copy_of(downloaded, tmp_path)
    requests = tmp_path / "batches" / "requests" / "round-1-part-1.jsonl"
    before = requests.read_bytes()
    (tmp_path / "batches" / "manifest.json").unlink()
    for command in (["run", "--num-scenarios", "40"], ["create", "--num-scenarios", "40"], ["process"], ["submit"]):
        refused = batch(tmp_path, *command)
        assert refused.returncode == 2 and "batch rebuild --dir batches" in refused.stderr, (command, refused.stderr)
    assert requests.read_bytes() == before
    moved = batch(tmp_path, "rebuild")  # the directory was made elsewhere: its batch's dataset.jsonl is not this one
    assert moved.returncode == 2 and "give --output DATASET (and --num-scenarios N)" in moved.stderr, moved.stderr
    rebuilt = batch(tmp_path, "rebuild", "--output", "dataset.jsonl", "--num-scenarios", "40")
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert "1 with their batch found (1 downloaded), 0 never sent" in rebuilt.stdout
    done = batch(tmp_path, "run", "--num-scenarios", "40", "--poll-seconds", "0.05")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_valid_dataset(tmp_path / "dataset.jsonl", 40)
    assert requests.read_bytes() == before
    state = json.loads((tmp_path / "batches" / "simulator" / "state.json").read_text())
    assert len(state["batches"]) == 1  # the paid batch was used, not sent again
    assert summary_cost(done.stderr) == pytest.approx(file_cost(results), abs=1e-4)


def test_a_rebuilt_directory_counts_nothing_twice_cost_and_yield_as_before(tmp_path):
    # Issue 17: the ledger, counters, spares and pilot of a lost manifest come back from the dataset's
    # checkpoint, so the results already processed are not processed (nor paid, nor measured) again.
    def here(*args):
        return asyncgen_here("batch", *args, cwd=tmp_path)

    done = here("run", "--num-scenarios", "40", "--pilot-requests", "2", "--poll-seconds", "0.05")
    assert done.returncode == 0, done.stderr[-2000:]
    checkpoint = tmp_path / "dataset.checkpoint.json"
    before, cost_before = manifest(tmp_path), json.loads(checkpoint.read_text())["run_state"]["cost_usd"]
    dataset = (tmp_path / "dataset.jsonl").read_bytes()
    assert before["spares"] and before["totals"]["useful"] and any(e["source"] == "pilot" for e in before["entries"])
    (tmp_path / "batches" / "manifest.json").unlink()
    rebuilt = here("rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert "accounting restored from dataset.checkpoint.json" in rebuilt.stdout and "target 40;" in rebuilt.stdout
    again = here("process")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "nothing new to process in batches: every downloaded result is counted already" in again.stdout
    assert requests_answered(again.stdout) == requests_answered(done.stderr)
    assert summary_cost(again.stdout) == summary_cost(done.stderr)
    after = manifest(tmp_path)
    for key in ("totals", "answered", "retried", "spares", "spares_file", "target", "next_request", "rounds", "processing"):
        assert after[key] == before[key], key
    kept = ("name", "source", "usage", "processed", "downloaded", "resubmitted", "batch_id", "worst_cost_usd")
    assert [{k: e[k] for k in kept} for e in after["entries"]] == [{k: e[k] for k in kept} for e in before["entries"]]
    assert json.loads(checkpoint.read_text())["run_state"]["cost_usd"] == pytest.approx(cost_before)
    assert (tmp_path / "dataset.jsonl").read_bytes() == dataset


def test_a_recorded_accounting_is_restored_whole_or_not_at_all(tmp_path):
    from dataclasses import asdict

    from asyncgen.batch.manifest import Entry, Manifest

    def made(**processed):
        return Manifest("refusal", "gpt-4o", {}, 40, "d.jsonl", directory_id="0123456789ab", next_request=9, rounds=1,
                        entries=[Entry("round-1-part-1.jsonl", 1, 9, batch_id="batch_1", **processed)])

    lost = made(processed=True)
    lost.answered, lost.totals = [[0, 9]], {"requests_ok": 9, "useful": 30}
    record = lost.accounting()
    rebuilt = made()
    before = asdict(rebuilt)
    for bad in ({**record, "answered": [[0, 99]]}, {**record, "batches": {"round-1-part-1.jsonl": {"batch_id": "batch_1"}}},
                {**record, "processing": {"entries": ["round-9-part-1.jsonl"]}}):
        with pytest.raises((KeyError, TypeError, ValueError)):
            rebuilt.restore(bad, tmp_path)
        assert asdict(rebuilt) == before  # nothing half restored
    rebuilt.restore(record, tmp_path)
    assert rebuilt.answered == [[0, 9]] and rebuilt.totals == lost.totals and rebuilt.entries[0].processed
    elsewhere = made()
    elsewhere.entries[0].batch_id = "batch_2"  # the file's batch is not the one the record processed
    elsewhere.restore(record, tmp_path)
    assert not elsewhere.entries[0].processed


def test_ledger_admits_each_request_of_the_directory_once():
    from asyncgen.batch import ledger

    book = ledger.Ledger("0123456789ab", next_request=10, legacy_below=4)
    ours, old, other = "asyncgen-0123456789ab-0000003", "asyncgen-0000003", "asyncgen-ba9876543210-0000003"
    answer = {"custom_id": ours, "response": {"status_code": 200, "body": {}}}
    expired = {"custom_id": ours, "response": None, "error": {"code": "batch_expired"}}
    assert book.admit(expired, b"e") == ledger.NEW and book.admit(expired, b"e") == ledger.DUPLICATE
    assert book.admit(answer, b"a") == ledger.NEW and book.admit(answer, b"a") == ledger.DUPLICATE  # resubmitted, answered once
    assert book.admit({**answer, "custom_id": other}, b"o") == ledger.FOREIGN
    assert book.admit({**answer, "custom_id": "asyncgen-0123456789ab-0000010"}, b"x") == ledger.FOREIGN  # never requested
    assert book.admit({**answer, "custom_id": old}, b"l") == ledger.FOREIGN  # old ids: only in the directory's own downloads
    assert book.admit({**answer, "custom_id": "asyncgen-0000002"}, b"l", trust_old_ids=True) == ledger.NEW
    assert book.admit({**answer, "custom_id": "asyncgen-0000005"}, b"l", trust_old_ids=True) == ledger.FOREIGN
    assert book.admit({**answer, "custom_id": "r1"}, b"r1 line", external=True) == ledger.NEW
    assert book.admit({**answer, "custom_id": "r1"}, b"r1 line", external=True) == ledger.DUPLICATE
    assert ledger.to_ranges({0, 1, 2, 5}) == [[0, 3], [5, 6]] and ledger.from_ranges([[0, 3], [5, 6]]) == {0, 1, 2, 5}


def test_a_directory_made_before_custom_ids_named_it_keeps_its_old_requests(tmp_path):
    from asyncgen.batch.manifest import Manifest

    old = {"version": 1, "task": "refusal", "model": "gpt-4o", "fingerprint": {}, "target": 10, "output": "d.jsonl",
           "next_request": 27, "entries": []}
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    loaded = Manifest.load(tmp_path)
    assert loaded.legacy_below == 27 and len(loaded.directory_id) == 12
    book = loaded.ledger()
    assert book.number("asyncgen-0000026", trust_old_ids=True) == 26 and book.number("asyncgen-0000026", False) is None
    assert book.number(f"asyncgen-{loaded.directory_id}-0000026", False) == 26
