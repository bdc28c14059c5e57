"""A batch directory is bound to what it actually did, and nothing from outside is trusted by its
name or path (issue 17): where its first batch went (not where a failed attempt was sent), which
dataset and target a lost manifest was for (recorded, or refused, never guessed), what a processing
pass leaves behind, and what an interrupted ``batch run`` says. The commands run in this process."""

import json
import shutil
import time

import test_batch
from test_batch import batch, copy_of, manifest

downloaded = test_batch.downloaded  # the fixture: a batch dir whose one batch is downloaded, not processed

DEAD = "http://127.0.0.1:9/v1"  # the discard port: nothing listens there, the connection is refused


def edit_manifest(tmp_path, change) -> None:
    path = tmp_path / "batches" / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


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
