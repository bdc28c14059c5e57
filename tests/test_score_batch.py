"""``asyncgen score --batch``: scoring through the Batch API on the offline default simulator: the
same scores as real time at half the price, resumed after a kill or Ctrl-C without paying twice,
results of another job refused, --max-cost before anything is submitted, --cancel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asyncgen.scores import scores_path
from test_score import valid_pairs, write_dataset

REPO = Path(__file__).resolve().parents[1]
KILLER = str(REPO / "tests" / "batch_killer.py")
SCENARIOS = 32
BOTH_ENDPOINTS = "Qwen/Qwen2.5-0.5B-Instruct"  # the simulator serves it on /v1/completions and chat


@pytest.fixture(scope="module")
def pairs(builtin_tokenizers):
    return valid_pairs(builtin_tokenizers, SCENARIOS + 8)


@pytest.fixture
def offline(monkeypatch):
    """The offline default: no key, no base URL."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def dataset_in(folder: Path, pairs, count: int = SCENARIOS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_dataset(folder / "d.jsonl", pairs[:count])
    return folder / "d.jsonl"


def lines_by_id(path: Path) -> dict[int, bytes]:
    """The scores file's records, each as its bytes, by scenario id (the header aside)."""
    return {json.loads(raw)["scenario_id"]: raw for raw in path.read_bytes().splitlines()[1:]}


def job_of(dataset: Path, model: str) -> Path:
    return scores_path(dataset, model).with_suffix(".batch")


def server_batches(dataset: Path, model: str) -> list[dict]:
    """The batches the offline simulator of the job was asked to create (its persisted state)."""
    state = job_of(dataset, model) / "simulator" / "state.json"
    return json.loads(state.read_text())["batches"] if state.is_file() else []


def cost_of(err: str, label: str) -> float:
    return float(err.split(f"  {label}")[1].split("$")[1].split(" ")[0])


@pytest.mark.parametrize("model, endpoints", [("gpt-4o", {"/v1/chat/completions"}),
                                              (BOTH_ENDPOINTS, {"/v1/chat/completions", "/v1/completions"})])
def test_batch_scoring_writes_the_same_lines_as_real_time_one_batch_per_endpoint(tmp_path, pairs, cli, offline,
                                                                                  model, endpoints):
    real_time, batched = dataset_in(tmp_path / "rt", pairs), dataset_in(tmp_path / "b", pairs)
    code, _out, rt_err = cli("score", str(real_time), "--model", model)
    assert code == 0, rt_err
    code, _out, err = cli("score", str(batched), "--model", model, "--batch")
    assert code == 0, err
    assert f"{SCENARIOS}/{SCENARIOS} scenarios scored" in err
    expected = lines_by_id(scores_path(real_time, model))
    assert len(expected) == SCENARIOS and lines_by_id(scores_path(batched, model)) == expected
    batches = server_batches(batched, model)
    assert len(batches) == len(endpoints) and {b["endpoint"] for b in batches} == endpoints
    if model == "gpt-4o":  # a chat model: refused on completions once, up front, said once
        assert err.count("refused /v1/completions for gpt-4o (404: This is a chat model") == 1
        # Half the real-time price for the same usage (4-decimal dollars in the summaries).
        assert abs(2 * cost_of(err, "job cost") - cost_of(rt_err, "cost")) <= 0.0002
        assert "0.50x" in err
    code, _out, err = cli("score", str(batched), "--model", model, "--batch")
    assert code == 0 and len(server_batches(batched, model)) == len(endpoints)  # nothing to do, nothing sent


@pytest.mark.parametrize("point", ["after-create", "polling:1", "scoring:5"])
def test_sigkilled_at_any_point_then_run_again_completes_without_a_second_submit(tmp_path, pairs, cli, offline,
                                                                                 tokenizer_cache, point):
    dataset = dataset_in(tmp_path, pairs)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env.update(PYTHONPATH=str(REPO), NO_PROXY="127.0.0.1,localhost")
    killed = subprocess.run([sys.executable, KILLER, point, "score", str(dataset), "--model", BOTH_ENDPOINTS,
                             "--batch", "--cache-dir", tokenizer_cache], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=120)
    assert killed.returncode == -9, killed.stderr
    before = lines_by_id(scores_path(dataset, BOTH_ENDPOINTS)) if scores_path(dataset, BOTH_ENDPOINTS).exists() else {}
    assert len(before) == (5 if point.startswith("scoring") else 0)
    code, _out, err = cli("score", str(dataset), "--model", BOTH_ENDPOINTS, "--batch")
    assert code == 0, err
    assert sorted(lines_by_id(scores_path(dataset, BOTH_ENDPOINTS))) == list(range(SCENARIOS))  # each once
    assert len(server_batches(dataset, BOTH_ENDPOINTS)) == 2  # one per endpoint, created once
    if point == "after-create":
        assert "created before the last run stopped" in err


def test_ctrl_c_stops_waiting_says_how_to_resume_or_cancel_and_cancel_then_resume_asks_again(
        tmp_path, pairs, cli, offline, monkeypatch, tokenizer_cache):
    from asyncgen.batch import lifecycle
    from asyncgen.batch import endpoint as batch_endpoint

    dataset = dataset_in(tmp_path, pairs)
    refresh = lifecycle.refresh

    async def refresh_then_ctrl_c(directory, manifest, api):
        await refresh(directory, manifest, api)
        if manifest.in_flight():
            raise KeyboardInterrupt

    monkeypatch.setattr(batch_endpoint, "OFFLINE_BATCH_SPEED", 1.0)  # the batch takes minutes, not a second
    monkeypatch.setattr(lifecycle, "refresh", refresh_then_ctrl_c)
    code, _out, err = cli("score", str(dataset), "--model", "gpt-4o", "--batch")
    assert code == 130, err
    assert "stopped waiting; the batches go on at the server" in err
    resume, cancel = err.strip().splitlines()[-2:]
    assert resume.endswith(f"score {dataset} --model gpt-4o --batch --cache-dir {tokenizer_cache}")
    assert cancel == f"  or cancel them with: {resume.split('with: ')[1]} --cancel"
    monkeypatch.setattr(lifecycle, "refresh", refresh)
    err = cancel_then_score_again(cli, monkeypatch, dataset)
    assert sorted(lines_by_id(scores_path(dataset, "gpt-4o"))) == list(range(SCENARIOS))
    assert "128 sent: 128 answered, 0 retries, 0 given up" in err  # the cancelled batch's unrun requests aside
    batches = server_batches(dataset, "gpt-4o")
    assert len(batches) == 2 and batches[0]["cancel_at"] is not None  # the cancelled one, then the new round


def test_results_of_another_job_are_refused(tmp_path, pairs, cli, offline):
    dataset = dataset_in(tmp_path, pairs, 6)
    assert cli("score", str(dataset), "--model", "gpt-4o", "--batch")[0] == 0
    job = job_of(dataset, "gpt-4o")
    manifest = json.loads((job / "manifest.json").read_text())
    theirs = manifest["directory_id"]
    # This job's state pointing at another job's downloaded results (a copied folder, say).
    manifest["directory_id"] = "0123456789ab"
    for entry in manifest["entries"]:
        entry["processed"] = False
    (job / "manifest.json").write_text(json.dumps(manifest))
    scores_path(dataset, "gpt-4o").rename(tmp_path / "moved-away.jsonl")
    code, _out, err = cli("score", str(dataset), "--model", "gpt-4o", "--batch")
    assert code == 2
    assert err.strip().splitlines()[-1].endswith(
        f"is a request of scoring job {theirs}, not of this scoring job (0123456789ab): these results belong to "
        "another job; move the file away")
    assert lines_by_id(scores_path(dataset, "gpt-4o")) == {}


def test_max_cost_refuses_to_submit_a_batch_whose_worst_case_crosses_it(tmp_path, pairs, cli, offline):
    dataset = dataset_in(tmp_path, pairs)
    code, _out, err = cli("score", str(dataset), "--model", "gpt-4o", "--batch", "--max-cost", "0.005")
    assert code == 1
    assert "nothing submitted: the batch for the 32 unscored scenarios could cost up to $0.0" in err
    assert "crosses --max-cost $0.005" in err
    assert server_batches(dataset, "gpt-4o") == [] and lines_by_id(scores_path(dataset, "gpt-4o")) == {}
    code, _out, err = cli("score", str(dataset), "--model", "gpt-4o", "--batch", "--max-cost", "0.05")
    assert code == 0, err
    assert cost_of(err, "job cost") <= 0.05 and len(server_batches(dataset, "gpt-4o")) == 1


@pytest.mark.parametrize("flags, words", [
    (["--cancel"], "--cancel cancels the batches of a --batch scoring job; pass --batch --cancel"),
    (["--batch", "--results", "out.jsonl"], "--results is the round trip through another engine"),
    (["--batch", "--judge-model", "gpt-4o"], "--judge-model asks the judge about answers as they arrive"),
    (["--batch", "--cancel"], "no --batch scoring job of 'gpt-4o' in"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, pairs, cli, offline, flags, words):
    dataset = dataset_in(tmp_path, pairs, 2)
    code, _out, err = cli("score", str(dataset), "--model", "gpt-4o", *flags)
    assert code == 2 and words in err.strip().splitlines()[-1], err
    assert len(err.strip().splitlines()) == 1 or "validating" in err


def test_an_unknown_model_is_one_line_in_the_servers_words(tmp_path, pairs, cli, offline):
    dataset = dataset_in(tmp_path, pairs, 2)
    before = sorted(tmp_path.rglob("*"))
    code, _out, err = cli("score", str(dataset), "--model", "nope", "--batch")
    assert code == 1
    assert err.strip().splitlines()[-1].endswith(
        "refused (404): The model `nope` does not exist or you do not have access to it.; check --model and --base-url")
    assert sorted(tmp_path.rglob("*")) == before  # nothing asked, nothing left: no empty nope.batch/, no scores file
    # A job directory (and a scores folder) that held something before the run are kept.
    job = job_of(dataset, "nope")
    job.mkdir(parents=True)
    (job / "notes.txt").write_text("mine")
    code, _out, err = cli("score", str(dataset), "--model", "nope", "--batch")
    assert code == 1 and (job / "notes.txt").read_text() == "mine"
    assert not scores_path(dataset, "nope").exists()


def test_what_a_failed_run_made_goes_while_the_scores_lock_is_held(tmp_path, pairs, cli, offline, monkeypatch):
    """Was: the header-only scores file and its lock were removed after the lock was let go, so a
    real-time `score` of the same model starting in between could lose the file it had opened."""
    import fcntl

    from asyncgen import score_batch_job
    from asyncgen.scores import lock_path

    dataset = dataset_in(tmp_path, pairs, 2)
    lock = lock_path(scores_path(dataset, "nope"))
    seen = []
    remove_made = score_batch_job.remove_made

    def probing(made, tree=None):
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append("free")
        except BlockingIOError:
            seen.append("held")
        finally:
            os.close(fd)
        remove_made(made, tree=tree)

    monkeypatch.setattr(score_batch_job, "remove_made", probing)
    before = sorted(tmp_path.rglob("*"))
    code, _out, err = cli("score", str(dataset), "--model", "nope", "--batch")
    assert code == 1 and "refused (404)" in err
    assert seen == ["held"]
    assert sorted(tmp_path.rglob("*")) == before


def test_a_batch_that_fails_validation_shows_its_errors_and_the_next_run_submits_it_again(
        tmp_path, pairs, cli, offline, monkeypatch):
    from asyncgen.simulator import batches as simulated

    dataset = dataset_in(tmp_path, pairs, 4)
    parse_input = simulated.parse_input
    monkeypatch.setattr(simulated, "parse_input", lambda data, endpoint, _limit: parse_input(data, endpoint, 10))
    code, _out, err = cli("score", str(dataset), "--model", "gpt-4o", "--batch")
    assert code == 1
    assert "token_limit_exceeded: Enqueued token limit reached for gpt-4o" in err
    assert err.strip().splitlines()[-1].endswith(
        "failed validation (errors above), so none of their requests ran; fix the cause, then run the same command "
        "to submit them in a new round")
    monkeypatch.setattr(simulated, "parse_input", parse_input)
    code, _out, err = cli("score", str(dataset), "--model", "gpt-4o", "--batch")
    assert code == 0, err
    assert sorted(lines_by_id(scores_path(dataset, "gpt-4o"))) == [0, 1, 2, 3]
    assert len(server_batches(dataset, "gpt-4o")) == 2


def test_a_server_without_the_batch_api_says_what_to_do_instead(tmp_path, pairs, cli):
    from fake_server import FakeServer
    from score_model import model_under_study

    dataset = dataset_in(tmp_path, pairs, 2)
    with FakeServer(model_under_study) as server:
        code, _out, err = cli("score", str(dataset), "--model", "m", "--base-url", server.base_url, "--batch")
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"asyncgen score: error: {server.base_url} has no Batch API (/v1/files: 404); score in real time there, or "
        "write the requests with --write-requests FILE, run them (e.g. `vllm run-batch`) and read them back with "
        "--results")


def test_a_second_writer_is_refused_and_a_job_folder_without_its_manifest_is_not_paid_again(
        tmp_path, pairs, cli, offline):
    from asyncgen import locks

    dataset = dataset_in(tmp_path, pairs, 2)
    job = job_of(dataset, "gpt-4o")
    job.mkdir(parents=True)
    held = locks.hold(job / ".lock", str(job), "score --batch")
    try:
        code, _out, err = cli("score", str(dataset), "--model", "gpt-4o", "--batch")
    finally:
        os.close(held)
    assert code == 2 and f"is in use by `asyncgen score --batch` (pid {os.getpid()})" in err
    assert cli("score", str(dataset), "--model", "gpt-4o", "--batch")[0] == 0
    (job / "manifest.json").unlink()
    scores_path(dataset, "gpt-4o").unlink()
    code, _out, err = cli("score", str(dataset), "--model", "gpt-4o", "--batch")
    assert code == 2 and "holds 1 request file(s) and 1 result file(s) but no manifest.json" in err
    assert len(server_batches(dataset, "gpt-4o")) == 1


def test_cancel_finds_the_batch_a_killed_run_created_before_it_could_record_it(
        tmp_path, pairs, cli, offline, tokenizer_cache, monkeypatch):
    from asyncgen.batch import endpoint as batch_endpoint

    dataset = dataset_in(tmp_path, pairs, 4)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env.update(PYTHONPATH=str(REPO), NO_PROXY="127.0.0.1,localhost")
    killed = subprocess.run([sys.executable, KILLER, "after-create", "score", str(dataset), "--model", "gpt-4o",
                             "--batch", "--cache-dir", tokenizer_cache], capture_output=True, text=True, env=env,
                            timeout=120)
    assert killed.returncode == -9, killed.stderr
    monkeypatch.setattr(batch_endpoint, "OFFLINE_BATCH_SPEED", 1.0)  # still validating when cancelled
    cancel_then_score_again(cli, monkeypatch, dataset)
    assert sorted(lines_by_id(scores_path(dataset, "gpt-4o"))) == [0, 1, 2, 3]
    assert len(server_batches(dataset, "gpt-4o")) == 2  # the cancelled one, then one new round


def cancel_then_score_again(cli, monkeypatch, dataset) -> str:
    """``score --batch --cancel`` (it cancels the one batch in flight), then ``score --batch`` at full
    speed until done; the second command's stderr."""
    from asyncgen.batch import endpoint as batch_endpoint

    code, out, err = cli("score", str(dataset), "--model", "gpt-4o", "--batch", "--cancel")
    assert code == 0, err
    assert "(/v1/chat/completions): cancelling" in out and "cancelled 1 batch(es)" in out
    monkeypatch.setattr(batch_endpoint, "OFFLINE_BATCH_SPEED", 600.0)
    code, _out, err = cli("score", str(dataset), "--model", "gpt-4o", "--batch")
    assert code == 0, err
    return err
