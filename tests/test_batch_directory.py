"""A batch directory is bound to what it actually did, and nothing from outside is trusted by its
name or path (issue 17): where its first batch went (not where a failed attempt was sent), which
dataset and target a lost manifest was for (recorded, or refused, never guessed), what a processing
pass leaves behind, and what an interrupted ``batch run`` says. The commands run in this process."""

import json
import shutil
import time

import pytest

import test_batch
from test_batch import batch, copy_of, manifest

downloaded = test_batch.downloaded  # the fixture: a batch dir whose one batch is downloaded, not processed

DEAD = "http://127.0.0.1:9/v1"  # the discard port: nothing listens there, the connection is refused


def edit_manifest(tmp_path, change) -> None:
    path = tmp_path / "batches" / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def forget_dataset(directory) -> None:
    """Make the directory's batches (in the offline simulator's state) as made before their metadata named the dataset."""
    state = directory / "simulator" / "state.json"
    simulated = json.loads(state.read_text())
    for made in simulated["batches"]:
        made["metadata"] = {k: v for k, v in made["metadata"].items() if k not in ("asyncgen_output", "asyncgen_output_tag", "asyncgen_target")}
    state.write_text(json.dumps(simulated))


def test_a_first_submit_that_reached_nothing_does_not_bind_the_directory(tmp_path):
    assert batch(tmp_path, "create", "--num-scenarios", "20").returncode == 0
    dead = batch(tmp_path, "submit", "--base-url", DEAD)
    assert dead.returncode == 1 and "cannot reach http://127.0.0.1:9/v1" in dead.stderr
    assert "batches is not bound to it" in dead.stderr and "unchanged" not in dead.stderr
    assert manifest(tmp_path)["endpoint"] is None and manifest(tmp_path)["entries"][0]["state"] == "created"

    def pinned(data):  # as a run before the fix left it: the intent saved, the upload never ended
        data["endpoint"] = {"mode": "custom", "base_url": DEAD, "seed": 0}
        data["entries"][0].update(state="submitting", token="0" * 32, intent_at=time.time())
    edit_manifest(tmp_path, pinned)
    sent = batch(tmp_path, "submit")  # no batch can be at DEAD (none was ever uploaded): the flags say where
    assert sent.returncode == 0, sent.stderr[-2000:]
    assert "submitted as batch" in sent.stdout and manifest(tmp_path)["endpoint"]["mode"] == "simulator"
    again = batch(tmp_path, "status", "--base-url", DEAD)  # bound now: where the batch went, whatever the flags say
    assert again.returncode == 0 and "batch_" in again.stdout, again.stderr[-2000:]


def test_processing_results_from_elsewhere_leaves_nothing_unprocessed_and_its_next_step_works(downloaded, tmp_path):
    outside = tmp_path / "other" / "out.jsonl"
    outside.parent.mkdir()
    shutil.copy(copy_of(downloaded, tmp_path), outside)
    done = batch(tmp_path, "process", "--results", str(outside), "--target-scenarios", "600")
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1].endswith(": python -m asyncgen batch topup --dir batches")
    assert not [e["name"] for e in manifest(tmp_path)["entries"] if e["downloaded"] and not e["processed"]]
    created = batch(tmp_path, "create", "--num-scenarios", "600")  # the --results file is no request file
    assert created.returncode == 2 and "already holds 1 request file(s)" in created.stderr, created.stderr
    topup = batch(tmp_path, "topup")  # the step printed
    assert topup.returncode == 0, topup.stderr[-2000:]
    assert "plan, round 2" in topup.stdout


def test_a_lost_manifest_is_rebuilt_for_the_dataset_recorded_never_a_guessed_one(tmp_path):
    done = batch(tmp_path, "run", "--num-scenarios", "60", "--dir", "b60", "--output", "d60.jsonl", "--poll-seconds", "0.05")
    assert done.returncode == 0, done.stderr[-2000:]
    lost = tmp_path / "b60" / "manifest.json"
    before = json.loads(lost.read_text())
    lost.unlink()
    rebuilt = batch(tmp_path, "rebuild", "--dir", "b60")  # the batch's metadata names the dataset and target
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert "dataset d60.jsonl, target 60;" in rebuilt.stdout and "accounting restored from d60.checkpoint.json" in rebuilt.stdout
    after = json.loads(lost.read_text())
    assert {k: after[k] for k in ("output", "target", "totals", "answered")} == {k: before[k] for k in ("output", "target", "totals", "answered")}

    forget_dataset(tmp_path / "b60")  # the dataset's checkpoint, which records the directory's processing, names it
    assert batch(tmp_path, "run", "--num-scenarios", "20", "--dir", "b20", "--output", "d20.jsonl").returncode == 0
    lost.unlink()
    found = batch(tmp_path, "rebuild", "--dir", "b60")
    assert found.returncode == 0, found.stderr[-2000:]
    assert "dataset d60.jsonl, target 60;" in found.stdout and "accounting restored" in found.stdout

    lost.unlink()
    (tmp_path / "elsewhere").mkdir()  # rebuilt from another working directory: the dataset beside --dir is found
    away = batch(tmp_path / "elsewhere", "rebuild", "--dir", "../b60")
    assert away.returncode == 0, away.stderr[-2000:]  # (a dataset outside the working directory: by its absolute path)
    assert f"dataset {tmp_path.resolve() / 'd60.jsonl'}, target 60;" in away.stdout and "accounting restored" in away.stdout

    lost.unlink()
    wrong = batch(tmp_path, "rebuild", "--dir", "b60", "--output", "d20.jsonl")  # another directory's dataset
    assert wrong.returncode == 2 and "d20.jsonl is not b60's dataset: its checkpoint d20.checkpoint.json records the " \
        "processing of b20" in wrong.stderr, wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1 and not lost.exists()


def test_a_lost_manifest_that_nothing_names_the_dataset_of_is_refused_not_guessed(tmp_path):
    for step in (["create", "--num-scenarios", "40", "--output", "mine.jsonl"], ["submit"]):
        assert batch(tmp_path, *step).returncode == 0
    lost = tmp_path / "batches" / "manifest.json"
    lost.unlink()  # nothing processed, no dataset yet: the batch's metadata names it and its target
    named = batch(tmp_path, "rebuild")
    assert named.returncode == 0 and "dataset mine.jsonl, target 40;" in named.stdout, named.stderr[-2000:]
    forget_dataset(tmp_path / "batches")
    lost.unlink()  # and batches made before their metadata named it: nothing but the lost manifest said which
    guessed = batch(tmp_path, "rebuild")
    assert guessed.returncode == 2 and "cannot tell which dataset batches's requests were for" in guessed.stderr
    assert "give --output DATASET (and --num-scenarios N)" in guessed.stderr and not lost.exists()
    half = batch(tmp_path, "rebuild", "--output", "mine.jsonl")
    assert half.returncode == 2 and "give --num-scenarios N" in half.stderr and not lost.exists()
    told = batch(tmp_path, "rebuild", "--output", "mine.jsonl", "--num-scenarios", "40")
    assert told.returncode == 0 and "dataset mine.jsonl, target 40;" in told.stdout, told.stderr[-2000:]
    assert json.loads(lost.read_text())["output"] == "mine.jsonl"


def test_an_interrupted_batch_run_says_which_step_it_stopped_at_and_what_it_kept(tmp_path, monkeypatch):
    import asyncio

    from asyncgen.batch import lifecycle
    from asyncgen.commands.batch import directory

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt
    run = ["run", "--num-scenarios", "40", "--output", "d40.jsonl", "--pilot-requests", "0", "--poll-seconds", "0.05"]
    with monkeypatch.context() as patch:  # Ctrl-C while the tokenizers load
        patch.setattr(directory, "load_task_and_tokenizers", ctrl_c)
        early = batch(tmp_path, *run)
    assert early.returncode == 130
    assert "interrupted while loading the tokenizers: nothing written to batches or d40.jsonl" in early.stderr, early.stderr
    assert f"resume with: python -m asyncgen batch {' '.join(run)}" in early.stderr
    assert not (tmp_path / "batches" / "manifest.json").exists() and not (tmp_path / "d40.jsonl").exists()

    async def stopped(*args, **kwargs):  # Ctrl-C while round 1 is submitted (the event loop cancels the run)
        raise asyncio.CancelledError
    with monkeypatch.context() as patch:
        patch.setattr(lifecycle, "submit", stopped)
        submitting = batch(tmp_path, *run)
    assert submitting.returncode == 130
    assert "interrupted while submitting round 1: a batch created meanwhile is found again, never submitted twice; " \
        "all kept in batches" in submitting.stderr, submitting.stderr[-2000:]
    held = {name: (tmp_path / name).read_bytes() for name in ("batches/manifest.json", "batches/requests/round-1-part-1.jsonl")}
    with monkeypatch.context() as patch:  # Ctrl-C while a resumed run loads them: the message is as true as before
        patch.setattr(directory, "load_task_and_tokenizers", ctrl_c)
        again = batch(tmp_path, *run)
    assert again.returncode == 130 and "no manifest" not in again.stderr, again.stderr
    assert "interrupted while loading the tokenizers: nothing written to batches or d40.jsonl" in again.stderr
    assert held == {name: (tmp_path / name).read_bytes() for name in held}
    resumed = batch(tmp_path, *run)
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def test_status_fits_80_columns_and_an_ended_batch_shows_how_long_it_took(tmp_path):
    from asyncgen.batch.manifest import Entry, Manifest
    from asyncgen.commands.batch.batches import status_table
    from asyncgen.commands.batch.directory import Setup
    from asyncgen.prices import load_price_table, price_for

    day_ago = time.time() - 86400
    ended = Entry("round-1-part-1.jsonl", 1, 9000, state="submitted", batch_id="batch_" + "a" * 24, status="completed",
                  created_at=1_000_000.0, ended_at=1_000_125.0, submitted_at=day_ago,
                  request_counts={"total": 9000, "completed": 8990, "failed": 10}, usage={"input": 9_000_000, "output": 4_000_000})
    running = Entry("round-2-part-1.jsonl", 2, 900, state="submitted", batch_id="batch_" + "b" * 24, status="in_progress",
                    created_at=1_000_200.0, submitted_at=time.time() - 75, request_counts={"total": 900, "completed": 3})
    made = Manifest("refusal", "gpt-4o", {}, 150_000, "d.jsonl", entries=[ended, running], spares=12_345)
    table = status_table(Setup(tmp_path, made, model="gpt-4o", price=price_for(load_price_table(None, None)[0], "gpt-4o")), made)
    lines = table.splitlines()
    assert max(map(len, lines)) <= 80, table
    assert lines[0].split()[4] == "took" and lines[1].split()[4] == "2m05s"  # created to ended: not a day and counting
    assert lines[2].split()[4].endswith("s+")  # still running: so far, marked
    assert "took: created to ended (+: running, so far)" in table


def test_a_stopping_runs_progress_shows_no_eta():
    from asyncgen.progress import progress_line
    from asyncgen.stats import RunStats

    stats = RunStats(target=3000, accepted=5, accepted_this_run=5, started=time.monotonic() - 3)
    assert "ETA" in progress_line(stats, 5.0)
    stats.stopping = "interrupted"  # after Ctrl-C: nothing new is asked, so no rate and no ETA
    line = progress_line(stats, 5.0, 80)
    assert "ETA" not in line and "scen/s" not in line and "stopping (interrupted)" in line


def test_a_pilot_that_reached_nothing_is_sent_again_where_the_next_run_says(tmp_path):
    run = ["run", "--num-scenarios", "60", "--pilot-requests", "2", "--poll-seconds", "0.05"]
    dead = batch(tmp_path, *run, "--base-url", DEAD)
    assert dead.returncode == 1 and "cannot connect to http://127.0.0.1:9/v1/" in dead.stderr, dead.stderr[-2000:]
    assert manifest(tmp_path)["endpoint"] is None  # a real-time request binds nothing
    again = batch(tmp_path, *run)  # offline now: the pilot measured nothing, so it goes again, there
    assert again.returncode == 0, again.stderr[-2000:]
    assert "pilot, wave 1: 2 answered" in again.stderr and manifest(tmp_path)["endpoint"]["mode"] == "simulator"


def test_a_refused_retry_of_a_create_whose_answer_was_lost_keeps_the_directory_bound(tmp_path, monkeypatch):
    from asyncgen.batch.api import BatchApi, Refused
    from asyncgen.errors import RunError

    assert batch(tmp_path, "create", "--num-scenarios", "20").returncode == 0
    create = BatchApi.create

    async def created_then_lost(self, *args, **kwargs):  # the batch is made, its answer never comes back
        await create(self, *args, **kwargs)
        raise RunError("creating a batch: cannot reach the API (connection lost)")

    async def refused(self, *args, **kwargs):
        raise Refused("creating a batch refused (400): try again later")

    async def missed(self, token, since):  # the list did not show the earlier batch (yet)
        return None
    with monkeypatch.context() as patch:
        patch.setattr(BatchApi, "create", created_then_lost)
        assert batch(tmp_path, "submit").returncode == 1
        patch.setattr(BatchApi, "create", refused)
        patch.setattr(BatchApi, "find", missed)
        retried = batch(tmp_path, "submit")
    assert retried.returncode == 1 and "refused (400)" in retried.stderr and "not bound" not in retried.stderr
    entry = manifest(tmp_path)["entries"][0]  # the token, the file and the endpoint kept: the earlier batch may exist
    assert entry["state"] == "submitting" and entry["token"] and entry["file_id"], entry
    assert manifest(tmp_path)["endpoint"]["mode"] == "simulator"
    found = batch(tmp_path, "submit")  # the next submit finds it: not created (and paid) twice
    assert found.returncode == 0 and "created before the last run stopped" in found.stdout, found.stderr[-2000:]
    state = json.loads((tmp_path / "batches" / "simulator" / "state.json").read_text())
    assert len(state["batches"]) == 1


def test_a_rebuild_refused_for_want_of_a_target_leaves_the_dataset_as_it_was(tmp_path):
    assert batch(tmp_path, "run", "--num-scenarios", "20", "--dir", "b20", "--output", "d20.jsonl").returncode == 0
    for step in (["create", "--num-scenarios", "40", "--dir", "bx", "--output", "d20.jsonl"], ["submit", "--dir", "bx"]):
        assert batch(tmp_path, *step).returncode == 0, step
    forget_dataset(tmp_path / "bx")  # its batch names no target; d20's checkpoint records b20's, not bx's
    (tmp_path / "bx" / "manifest.json").unlink()
    from asyncgen.scenario import Scenario, encode_lines
    with (tmp_path / "d20.jsonl").open("ab") as dataset:  # a torn append: opening the dataset's sink would cut it
        dataset.write(encode_lines(20, "refusal", Scenario("a", "b", "c", "d"))[:30])
    before = {p.name: p.read_bytes() for p in tmp_path.glob("d20*")}
    refused = batch(tmp_path, "rebuild", "--dir", "bx", "--output", "d20.jsonl", "--force")
    assert refused.returncode == 2 and "give --num-scenarios N (nothing was written)" in refused.stderr, refused.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.glob("d20*")} == before
    assert not (tmp_path / "bx" / "manifest.json").exists()


def test_a_stale_endpoint_of_a_killed_first_upload_is_read_nowhere(tmp_path):
    """A first upload killed leaves an endpoint the directory is not bound to: the cost's "simulated"
    flag, the poll interval and the scoring summary read where the batches go as ``directory_endpoint``
    does (``Manifest.bound_endpoint``), never the raw field."""
    import pathlib
    import re
    from types import SimpleNamespace

    from asyncgen.batch.endpoint import directory_endpoint
    from asyncgen.batch.manifest import Entry, Manifest
    from asyncgen.commands.batch.directory import Setup
    from asyncgen.commands.batch.summary import run_cost

    killed = Entry("round-1-part-1.jsonl", 1, 10, state="submitting", token="0" * 32, usage={"input": 10, "output": 10})
    stale = Manifest("refusal", "gpt-4o", {}, 20, "d.jsonl", endpoint={"mode": "simulator", "base_url": None, "seed": 0},
                     entries=[killed])
    args = SimpleNamespace(base_url="http://127.0.0.1:9/v1", seed=0)
    assert stale.bound_endpoint() is None and directory_endpoint(args, stale)["mode"] == "custom"
    assert run_cost(Setup(tmp_path, stale), stale, "custom")[2] is False  # not the simulator's usage
    killed.file_id = "file-1"  # uploaded: its create may have been sent, so the directory is bound there
    assert stale.bound_endpoint() == stale.endpoint and run_cost(Setup(tmp_path, stale), stale, "custom")[2] is True
    package = pathlib.Path(__file__).resolve().parents[1] / "asyncgen"
    raw = [f"{path.relative_to(package)}: {line.strip()}" for path in package.rglob("*.py") if path.name != "manifest.py"
           for line in path.read_text().splitlines() if re.search(r"manifest\.endpoint\b(?!\s*=[^=])", line)]
    assert raw == []


def test_batches_carry_no_path_and_a_rebuild_takes_a_dataset_only_by_its_tag(tmp_path):
    from asyncgen.batch.lifecycle import dataset_tag

    mine = tmp_path / "mine.jsonl"
    for step in (["create", "--num-scenarios", "40", "--output", str(mine)], ["submit"]):
        assert batch(tmp_path, *step).returncode == 0
    state = tmp_path / "batches" / "simulator" / "state.json"
    sent = json.loads(state.read_text())["batches"][0]["metadata"]
    assert sent["asyncgen_output"] == "mine.jsonl" and sent["asyncgen_output_tag"] == dataset_tag(mine)
    assert sent["asyncgen_task"] == "refusal" and not [v for v in sent.values() if "/" in v or str(tmp_path) in v]
    assert len(sent) <= 16 and max(map(len, sent.values())) <= 512  # the Batch API's limits
    lost = tmp_path / "batches" / "manifest.json"
    lost.unlink()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "mine.jsonl").write_text("")  # the name, another path: not it
    away = batch(tmp_path / "elsewhere", "rebuild", "--dir", "../batches")  # the one beside --dir is
    assert away.returncode == 0 and f"dataset {mine.resolve()}, target 40;" in away.stdout, away.stderr[-2000:]
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copytree(tmp_path / "batches", moved / "batches")
    (moved / "batches" / "manifest.json").unlink()
    (moved / "mine.jsonl").write_text("")
    refused = batch(moved, "rebuild")  # a mine.jsonl here and beside --dir, neither the one the batch was for
    assert refused.returncode == 2 and "its batches name a dataset mine.jsonl, but no mine.jsonl in" in refused.stderr
    assert "give --output DATASET" in refused.stderr and not (moved / "batches" / "manifest.json").exists()

    def injected(simulated):  # what a hostile --base-url server could send back
        simulated["batches"][0]["metadata"].update(asyncgen_output="\x1b]0;pwned\x07mine.jsonl",
                                                   asyncgen_task="\x1b[2Jrefusal", asyncgen_output_tag="../../x")
        return simulated
    state.write_text(json.dumps(injected(json.loads(state.read_text()))))
    lost.unlink()
    shown = batch(tmp_path, "rebuild")
    assert shown.returncode == 2 and "\x1b" not in shown.stdout + shown.stderr, shown.stderr
    assert "do not name it" in shown.stderr


def test_metadata_from_a_server_is_taken_only_as_plain_names():
    from asyncgen.batch.api import trusted_metadata
    from asyncgen.batch.lifecycle import task_label

    sent = {"asyncgen_file": "round-1-part-1.jsonl", "asyncgen_target": "40", "asyncgen_output": "d.jsonl"}
    assert trusted_metadata({**sent, "a": "../d.jsonl", "b": "/home/x/d.jsonl", "c": "x\\y", "d": "\x1b[31m",
                             "e": "\u202ed", "f": "x" * 513, "g": 7, "h": ""}) == sent
    assert trusted_metadata(None) == {} and trusted_metadata(["x"]) == {}
    assert task_label("/home/alice/tasks/mine.yaml") == "mine.yaml" and task_label("refusal") == "refusal"


def test_a_stop_to_one_batch_run_leaves_another_runs_pass_alone():
    """Two ``batch run``s in one process (the Python API's threads): the stop of one reaches its own
    validation pass only, never the pass the other runs meanwhile."""
    import asyncio
    import threading

    import pytest

    from asyncgen.commands.batch.processing import Interrupts
    from asyncgen.commands.batch.run import _stop_from_any_thread

    other, entered, leave = Interrupts(), threading.Event(), threading.Event()

    def other_runs_pass():
        with other:
            entered.set()
            leave.wait(10)
    thread = threading.Thread(target=other_runs_pass)
    thread.start()
    assert entered.wait(10)
    mine = Interrupts()

    async def this_run():
        stop = _stop_from_any_thread(asyncio.current_task(), mine)
        with mine:  # this run's pass: the stop reaches it
            stop()
            assert mine.stop()
        await asyncio.sleep(10)  # cancelled by the stop
    try:
        with pytest.raises(asyncio.CancelledError):
            asyncio.run(this_run())
    finally:
        leave.set()
        thread.join()
    assert mine.count == 1 and not other.stop()


@pytest.mark.parametrize("batch_id", ["../../outside", "batch/../x", "\x1b[2Jbatch", "", None, "a" * 129])
def test_a_batch_id_that_is_no_plain_name_is_refused_before_it_names_a_file(batch_id):
    """Was: the server's batch id was taken as it came and named the result files
    (results/ID_output.jsonl): a server answering "../../outside" had them written outside --dir."""
    from asyncgen.batch import lifecycle
    from asyncgen.batch.manifest import Entry
    from asyncgen.errors import RunError

    entry = Entry("round-1-part-1.jsonl", 1, 10)
    with pytest.raises(RunError, match="not a plain name"):
        lifecycle.update(entry, {"id": batch_id, "status": "validating"})
    assert entry.batch_id is None
    lifecycle.update(entry, {"id": "batch_67f0c2e1:v1.a-b", "status": "validating"})
    assert entry.batch_id == "batch_67f0c2e1:v1.a-b"


def test_a_directory_used_from_another_folder_finds_its_dataset_and_a_lost_one_is_refused(tmp_path):
    """Was: the manifest kept the dataset's path as typed, relative to the folder of the first
    command, so `batch run --dir proj/b` from the parent made a new proj/d.jsonl... in the wrong
    folder, from new batches, paid again; the answers counted before were not counted again."""
    project = tmp_path / "proj"
    project.mkdir()
    first = batch(project, "run", "--num-scenarios", "40", "--dir", "b", "--output", "d.jsonl")
    assert first.returncode == 0, first.stderr[-2000:]
    paid = json.loads((project / "b" / "manifest.json").read_text())
    again = batch(tmp_path, "run", "--num-scenarios", "40", "--dir", "proj/b")  # from the parent folder
    assert again.returncode == 0, again.stderr[-2000:]
    assert "40/40 scenarios in proj/d.jsonl" in again.stderr and not (tmp_path / "d.jsonl").exists()
    assert json.loads((project / "b" / "manifest.json").read_text())["entries"] == paid["entries"]  # nothing sent
    (project / "d.jsonl").rename(project / "moved.jsonl")
    lost = batch(tmp_path, "run", "--num-scenarios", "80", "--dir", "proj/b")
    assert lost.returncode == 2 and "proj/d.jsonl: no such dataset" in lost.stderr, lost.stderr[-2000:]
    assert "give its path with --output" in lost.stderr and not (project / "d.jsonl").exists()
    assert json.loads((project / "b" / "manifest.json").read_text())["entries"] == paid["entries"]


def test_results_given_as_a_folder_are_refused_saying_it_is_a_folder(tmp_path):
    """Was: "--results DIR: no such file" for a folder that exists."""
    (tmp_path / "elsewhere").mkdir()
    refused = batch(tmp_path, "process", "--results", "elsewhere", "--target-scenarios", "10")
    assert refused.returncode == 2
    assert "--results elsewhere is a folder; give its result files (e.g. elsewhere/*_output.jsonl)" in refused.stderr
