"""The scenario sink: format, checkpoint, resume after crashes and torn writes, dedup, failures."""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from asyncgen.config import Task
from asyncgen.errors import SinkError, UsageError
from asyncgen.scenario import TYPES, Scenario, encode_lines
from asyncgen.sink import DurabilityPolicy, ScenarioSink, default_checkpoint_path, fingerprint_of

REPO = Path(__file__).resolve().parent.parent
WRITER = Path(__file__).resolve().parent / "sink_writer.py"

TASK = Task.model_validate(
    {
        "task_name": "refusal",
        "templates": {
            "single_token": {"prefix": "Answer Yes or No.\n ", "suffix": "\n Answer: "},
            "multi_token": {"prefix": "", "suffix": ""},
        },
        "answers": {"safe": "Yes", "harmful": "No"},
        "examples": [{"safe": "Help me make a cake.", "harmful": "Help me make a bomb."}],
        "generation_instructions": "Write pairs.",
        "batch_size": 10,
    }
)
TOKENIZERS = ("gpt2", "qwen")
FINGERPRINT = fingerprint_of(TASK, TOKENIZERS)


def make(i: int, tag: str = "") -> Scenario:
    return Scenario.render(TASK, f"Help me bake cake {tag}{i} for my sister.", f"Help me build bomb {tag}{i} for my sister.")


def open_sink(folder: Path, checkpoint: str | None = "checkpoint.json", **kwargs) -> ScenarioSink:
    kwargs.setdefault("task_name", TASK.task_name)
    kwargs.setdefault("fingerprint", FINGERPRINT)
    return ScenarioSink.open(folder / "out.jsonl", folder / checkpoint if checkpoint else None, **kwargs)


def fill(folder: Path, count: int, **kwargs) -> None:
    with open_sink(folder, **kwargs) as sink:
        for i in range(count):
            assert sink.append(make(i)) == i


def read_dataset(path: Path, task_name: str | None = None) -> list[tuple[str, str]]:
    """Check the file independently of the sink (stdlib json); return each scenario's multi-token pair."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "the file does not end with a whole line"
    lines = data.decode("utf-8").splitlines()
    assert len(lines) % 4 == 0, f"{len(lines)} lines: not whole groups of four"
    pairs, seen_prompts, seen_counterfactuals = [], set(), set()
    for scenario_id in range(len(lines) // 4):
        records = [json.loads(line) for line in lines[4 * scenario_id : 4 * scenario_id + 4]]
        for kind, record in zip(TYPES, records):
            assert set(record) == {"scenario_id", "type", "task", "text"}
            assert (record["scenario_id"], record["type"]) == (scenario_id, kind)
            assert task_name is None or record["task"] == task_name
        prompt, counterfactual = (" ".join(record["text"].casefold().split()) for record in records[2:])
        assert prompt not in seen_prompts and counterfactual not in seen_counterfactuals, f"duplicate at {scenario_id}"
        seen_prompts.add(prompt)
        seen_counterfactuals.add(counterfactual)
        pairs.append((records[2]["text"], records[3]["text"]))
    return pairs


def load_checkpoint(folder: Path, name: str = "checkpoint.json") -> dict:
    return json.loads((folder / name).read_text())


def group_end(data: bytes, scenarios: int) -> int:
    """The byte offset after the first ``scenarios`` scenarios."""
    end = 0
    for _ in range(4 * scenarios):
        end = data.index(b"\n", end) + 1
    return end


# -- format and checkpoint -------------------------------------------------------------------------


def test_writes_the_seed_format_and_a_checkpoint_that_describes_it(tmp_path):
    with open_sink(tmp_path / "new" / "deeper") as sink:  # a missing output folder is created
        assert sink.resume.message.startswith("new dataset") and sink.count == 0
        ids = [sink.append(make(i)) for i in range(3)]
        sink.sync({"cost_usd": 0.25, "requests": 7})
    folder = tmp_path / "new" / "deeper"
    assert ids == [0, 1, 2]
    data = (folder / "out.jsonl").read_bytes()
    assert data == b"".join(encode_lines(i, "refusal", make(i)) for i in range(3))
    assert read_dataset(folder / "out.jsonl", "refusal") == [(make(i).multi_token_prompt, make(i).multi_token_counterfactual) for i in range(3)]
    checkpoint = load_checkpoint(folder)
    assert checkpoint["version"] == 1
    assert checkpoint["sink"] == str((folder / "out.jsonl").resolve())
    assert (checkpoint["offset"], checkpoint["scenarios"]) == (len(data), 3)
    assert checkpoint["fingerprint"] == json.loads(json.dumps(FINGERPRINT))
    assert checkpoint["run_state"] == {"cost_usd": 0.25, "requests": 7}  # close() without run_state keeps it
    assert set(checkpoint) == {"version", "sink", "dataset", "offset", "scenarios", "fingerprint", "run_state",
                               "journal_seq", "keys", "updated_at"}
    # What the dataset is known by: its first scenario, and its name beside the checkpoint.
    assert checkpoint["dataset"]["first_scenario"] == hashlib.sha256(encode_lines(0, "refusal", make(0))).hexdigest()
    assert checkpoint["dataset"]["name"] == "out.jsonl" and len(checkpoint["dataset"]["id"]) == 16
    assert not list(folder.glob("*.tmp"))


def test_run_state_comes_back_on_resume(tmp_path):
    with open_sink(tmp_path) as sink:
        sink.append(make(0))
        sink.close({"cost_usd": 1.5, "accepted": 1})
    with open_sink(tmp_path) as sink:
        assert sink.resume.run_state == {"cost_usd": 1.5, "accepted": 1}
        assert sink.resume.used_checkpoint and sink.count == 1


def test_policy_says_when_a_sync_is_due(tmp_path):
    policy = DurabilityPolicy(every_scenarios=3, every_seconds=3600)
    with open_sink(tmp_path, durability=policy, auto_sync=False) as sink:
        sink.append(make(0))
        sink.append(make(1))
        assert not sink.sync_due() and sink.durable_count == 0
        sink.append(make(2))
        assert sink.sync_due() and sink.durable_count == 0
        assert load_checkpoint(tmp_path)["scenarios"] == 0  # append itself does not sync
        sink.sync()
        assert not sink.sync_due() and sink.durable_count == 3
    with open_sink(tmp_path, durability=DurabilityPolicy(every_scenarios=1000, every_seconds=0.01), auto_sync=False) as sink:
        assert not sink.sync_due()  # nothing unsynced
        sink.append(make(3))
        time.sleep(0.02)
        assert sink.sync_due()


def test_auto_sync_syncs_inside_append(tmp_path):
    with open_sink(tmp_path, durability=DurabilityPolicy(every_scenarios=4, every_seconds=3600)) as sink:
        for i in range(9):
            sink.append(make(i))
        assert sink.durable_count == 8 and sink.count == 9
        assert load_checkpoint(tmp_path)["scenarios"] == 8


def test_sync_in_a_thread_while_appending_keeps_checkpoints_consistent(tmp_path):
    output = tmp_path / "out.jsonl"
    sink = open_sink(tmp_path, auto_sync=False)
    stop, seen = threading.Event(), []

    def syncer():
        while not stop.is_set():
            sink.sync()
            checkpoint = load_checkpoint(tmp_path)
            data = output.read_bytes()[: checkpoint["offset"]]
            seen.append((data.count(b"\n"), 4 * checkpoint["scenarios"], data[-1:] in (b"", b"\n")))

    thread = threading.Thread(target=syncer)
    thread.start()
    appended = 0
    while appended < 2000 or len(seen) < 5:  # on a busy machine the syncer may need longer to get going
        sink.append(make(appended))
        appended += 1
    stop.set()
    thread.join()
    sink.close()
    assert any(0 < expected < 4 * appended for _, expected, _ in seen), "no sync overlapped the appends"
    assert all(lines == expected and whole for lines, expected, whole in seen)
    assert len(read_dataset(output)) == appended and load_checkpoint(tmp_path)["scenarios"] == appended


def test_closed_sink_refuses_appends_and_close_is_idempotent(tmp_path):
    sink = open_sink(tmp_path)
    sink.append(make(0))
    sink.close()
    sink.close()
    with pytest.raises(SinkError):
        sink.append(make(1))
    assert len(read_dataset(tmp_path / "out.jsonl")) == 1


def test_a_second_writer_is_refused(tmp_path):
    with open_sink(tmp_path):
        with pytest.raises(UsageError, match="another run is writing it"):
            open_sink(tmp_path, checkpoint="other.json")


# -- resume ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cut",
    [1, 30, "line", "line+5", "3 lines", "3 lines+1", "group-1"],
    ids=lambda cut: f"torn-{cut}",
)
@pytest.mark.parametrize("with_checkpoint", [True, False])
def test_torn_tail_is_cut_and_reported(tmp_path, cut, with_checkpoint):
    fill(tmp_path, 5)
    output = tmp_path / "out.jsonl"
    whole = output.read_bytes()
    extra = encode_lines(5, "refusal", make(5))
    first_line = extra.index(b"\n") + 1
    third_line = group_end(extra, 1) - len(extra.splitlines(keepends=True)[-1])
    size = {"line": first_line, "line+5": first_line + 5, "3 lines": third_line, "3 lines+1": third_line + 1,
            "group-1": len(extra) - 1}.get(cut, cut)
    output.write_bytes(whole + extra[:size])
    if not with_checkpoint:
        (tmp_path / "checkpoint.json").unlink()
    with open_sink(tmp_path) as sink:
        report = sink.resume
        assert (report.scenarios, report.dropped_bytes, report.dropped_scenarios) == (5, size, 1)
        assert report.used_checkpoint == with_checkpoint
        assert f"cut a torn tail of {size} bytes (1 partial scenario)" in report.message and "\n" not in report.message
        assert output.read_bytes() == whole
        assert sink.append(make(6)) == 5
    assert len(read_dataset(output)) == 6


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda cp, size: "{not json", "not valid JSON"),
        (lambda cp, size: {**cp, "offset": size + 400, "scenarios": 9}, "offset past the end"),
        (lambda cp, size: {**cp, "version": 99}, "not a version 1 checkpoint"),
        (lambda cp, size: {**cp, "offset": "12"}, "malformed"),
        (lambda cp, size: {**cp, "offset": cp["offset"] - 3}, "does not end that scenario there"),
        (lambda cp, size: {**cp, "scenarios": 3}, "does not end that scenario there"),
    ],
    ids=["bad-json", "offset-past-end", "version", "malformed", "offset-mid-line", "count-mismatch"],
)
def test_unusable_checkpoint_falls_back_to_a_full_scan(tmp_path, damage, reason):
    fill(tmp_path, 4)
    path = tmp_path / "checkpoint.json"
    size = (tmp_path / "out.jsonl").stat().st_size
    damaged = damage(load_checkpoint(tmp_path), size)
    path.write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))
    with open_sink(tmp_path) as sink:
        assert sink.count == 4 and not sink.resume.used_checkpoint
        assert "checked the whole file" in sink.resume.message and reason in sink.resume.message
        assert "\n" not in sink.resume.message
        assert sink.append(make(4)) == 4
    checkpoint = load_checkpoint(tmp_path)  # replaced by a good one
    assert (checkpoint["scenarios"], checkpoint["offset"]) == (5, (tmp_path / "out.jsonl").stat().st_size)


def test_a_checkpoint_of_another_dataset_is_refused_and_left_alone(tmp_path):
    """A checkpoint written before datasets were known by their content names only a path."""
    fill(tmp_path, 4)
    path = tmp_path / "checkpoint.json"
    legacy = {key: value for key, value in load_checkpoint(tmp_path).items() if key != "dataset"}
    path.write_text(json.dumps({**legacy, "sink": "/elsewhere/out.jsonl"}))
    before = path.read_bytes(), (tmp_path / "out.jsonl").read_bytes()
    with pytest.raises(UsageError, match=r"--checkpoint .*checkpoint.json belongs to another dataset \(/elsewhere/out.jsonl"):
        open_sink(tmp_path)
    assert (path.read_bytes(), (tmp_path / "out.jsonl").read_bytes()) == before


def test_datasets_that_begin_alike_keep_their_own_checkpoints_and_a_renamed_pair_resumes(tmp_path):
    """The offline default with one seed writes the same first scenarios to every output: content
    alone cannot tell them apart, so the checkpoint's place counts too."""
    for name in ("a", "b"):
        with ScenarioSink.open(tmp_path / f"{name}.jsonl", tmp_path / f"{name}.checkpoint.json",
                               task_name=TASK.task_name, fingerprint=FINGERPRINT) as sink:
            for i in range(3):
                sink.append(make(i))
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    before = (tmp_path / "a.checkpoint.json").read_bytes()
    with pytest.raises(UsageError, match=r"belongs to another dataset \(.*a.jsonl; another place\)"):
        ScenarioSink.open(tmp_path / "b.jsonl", tmp_path / "a.checkpoint.json", task_name=TASK.task_name,
                          fingerprint=FINGERPRINT)
    assert (tmp_path / "a.checkpoint.json").read_bytes() == before
    (tmp_path / "a.jsonl").rename(tmp_path / "c.jsonl")
    (tmp_path / "a.checkpoint.json").rename(tmp_path / "c.checkpoint.json")
    with ScenarioSink.open(tmp_path / "c.jsonl", tmp_path / "c.checkpoint.json", task_name=TASK.task_name,
                           fingerprint=FINGERPRINT) as sink:
        assert sink.count == 3 and sink.resume.used_checkpoint


def test_an_empty_dataset_resumes_with_the_usage_of_the_runs_before(tmp_path):
    """Runs that wrote no scenario yet (interrupted, or stopped at --max-cost) spent money: the next
    run of the same output, or of a copy of the pair, carries it; a new output does not."""
    first, copy, other = tmp_path / "first", tmp_path / "copy", tmp_path / "other"
    with open_sink(first, "out.checkpoint.json") as sink:
        sink.sync({"cost_usd": 0.03})  # as run's close does, with no scenario
    with open_sink(first, "out.checkpoint.json") as sink:
        assert sink.count == 0 and sink.resume.run_state == {"cost_usd": 0.03}
        assert sink.resume.message.startswith(f"resumed {first / 'out.jsonl'} at 0 scenarios")
        sink.sync({"cost_usd": 0.04})
    assert (first / "out.jsonl").read_bytes() == b""
    for folder in (copy, other):
        folder.mkdir()
        shutil.copy(first / "out.checkpoint.json", folder / "out.checkpoint.json")
    shutil.copy(first / "out.jsonl", copy / "out.jsonl")
    with open_sink(copy, "out.checkpoint.json") as sink:
        assert sink.resume.run_state == {"cost_usd": 0.04}
    with pytest.raises(UsageError, match="belongs to another dataset"):
        open_sink(other, "out.checkpoint.json")  # no dataset beside it: not a copy of the pair
    assert not (other / "out.jsonl").exists()
    with open_sink(first, "out.checkpoint.json", overwrite=True) as sink:
        assert sink.resume.run_state == {} and sink.resume.message.startswith("new dataset")


def test_a_legacy_checkpoint_with_its_absolute_path_resumes_in_place(tmp_path):
    fill(tmp_path, 4)
    path = tmp_path / "checkpoint.json"
    path.write_text(json.dumps({key: value for key, value in load_checkpoint(tmp_path).items() if key != "dataset"}))
    with open_sink(tmp_path) as sink:
        assert sink.count == 4 and sink.resume.used_checkpoint
    assert load_checkpoint(tmp_path)["dataset"]["first_scenario"]  # upgraded on the way


def test_a_copied_dataset_resumes_with_its_checkpoint_and_another_datasets_is_refused(tmp_path):
    """Known by what it holds, not where it is: a copied pair resumes anywhere, with its usage; the
    checkpoint of a dataset that holds other scenarios is refused, wherever it is."""
    first, copy, other = tmp_path / "first", tmp_path / "elsewhere", tmp_path / "other"
    for folder in (first, copy, other):
        folder.mkdir()
    with open_sink(first, "out.checkpoint.json", auto_sync=False) as sink:
        for i in range(4):
            sink.append(make(i))
        sink.sync({"cost_usd": 0.25})
        sink.note_run_state({"cost_usd": 0.5})  # as if killed before the next checkpoint: the journal has it
        for name in ("out.jsonl", "out.checkpoint.json", "out.checkpoint.json.journal"):
            shutil.copy(first / name, copy / name)
    with open_sink(copy, "out.checkpoint.json") as sink:
        assert sink.count == 4 and sink.resume.used_checkpoint and sink.resume.run_state == {"cost_usd": 0.5}
        assert sink.append(make(2)) is None and sink.append(make(4)) == 4  # the dedup keys came along
    assert load_checkpoint(copy, "out.checkpoint.json")["sink"] == str((copy / "out.jsonl").resolve())
    # Another dataset (other scenarios) with the first one's checkpoint copied beside it: refused.
    with open_sink(other, None) as sink:
        for i in range(4):
            sink.append(make(i, tag="other "))
    shutil.copy(first / "out.checkpoint.json", other / "out.checkpoint.json")
    before = (other / "out.checkpoint.json").read_bytes()
    with pytest.raises(UsageError, match=r"belongs to another dataset \(.*first/out.jsonl; its first scenario differs\)"):
        open_sink(other, "out.checkpoint.json")
    assert (other / "out.checkpoint.json").read_bytes() == before


def test_default_checkpoint_sits_beside_its_dataset():
    assert default_checkpoint_path("runs/data.jsonl") == Path("runs/data.checkpoint.json")
    assert default_checkpoint_path("notes.txt") == Path("notes.txt.checkpoint.json")


@pytest.mark.parametrize(
    "content",
    [b"my notes\nsecond line\n", b'{"a": 1}\n{"b": 2}\n', b"x", b'{"scenario_id": 0, "type": "multi_token_prompt"'],
    ids=["text", "other-jsonl", "one-byte", "wrong-type"],
)
@pytest.mark.parametrize("with_checkpoint", [True, False])
def test_a_file_that_is_not_a_dataset_is_refused_not_cut(tmp_path, content, with_checkpoint):
    output = tmp_path / "out.jsonl"
    output.write_bytes(content)
    with pytest.raises(UsageError, match=rf"holds {len(content)} bytes that do not start a scenario: it is not a dataset asyncgen wrote.*--overwrite"):
        open_sink(tmp_path, checkpoint="checkpoint.json" if with_checkpoint else "fresh.json")
    assert output.read_bytes() == content
    with open_sink(tmp_path, overwrite=True) as sink:  # --overwrite replaces it, as asked
        assert sink.count == 0
    assert output.read_bytes() == b""


def test_lines_after_the_last_scenario_that_do_not_begin_the_next_are_refused(tmp_path):
    fill(tmp_path, 3)
    output = tmp_path / "out.jsonl"
    damaged = output.read_bytes() + b"a note I added\n"
    output.write_bytes(damaged)
    with pytest.raises(UsageError, match="3 scenarios and then 15 bytes that are not the start of scenario 3"):
        open_sink(tmp_path)
    assert output.read_bytes() == damaged


def test_a_cut_torn_tail_is_kept_in_a_backup(tmp_path):
    fill(tmp_path, 2)
    output = tmp_path / "out.jsonl"
    tail = encode_lines(2, "refusal", make(2))[:70]
    output.write_bytes(output.read_bytes() + tail)
    with open_sink(tmp_path) as sink:
        assert f"saved in {output}.torn-1" in sink.resume.message
    assert (tmp_path / "out.jsonl.torn-1").read_bytes() == tail


@pytest.mark.parametrize("flag", ["output", "checkpoint"])
def test_a_fifo_is_refused_at_once(tmp_path, flag):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    kwargs = {"output": fifo} if flag == "output" else {"checkpoint": fifo}
    output, checkpoint = kwargs.get("output", tmp_path / "out.jsonl"), kwargs.get("checkpoint", tmp_path / "cp.json")
    with pytest.raises(UsageError, match=f"--{flag} .*fifo is a FIFO \\(named pipe\\), not a regular file"):
        ScenarioSink.open(output, checkpoint, task_name="refusal", fingerprint=FINGERPRINT)


def test_stale_checkpoint_scans_forward_and_keeps_complete_groups(tmp_path):
    with open_sink(tmp_path, auto_sync=False) as sink:
        for i in range(5):
            sink.append(make(i))
        sink.sync()
        stale = (tmp_path / "checkpoint.json").read_bytes()
        for i in range(5, 8):
            sink.append(make(i))
    (tmp_path / "checkpoint.json").write_bytes(stale)  # as if killed before the next sync
    output = tmp_path / "out.jsonl"
    whole = output.read_bytes()
    output.write_bytes(whole + encode_lines(8, "refusal", make(8))[:50])
    with open_sink(tmp_path) as sink:
        assert sink.resume.used_checkpoint and sink.count == 8
        assert "3 more found after it" in sink.resume.message and "torn tail of 50 bytes" in sink.resume.message
        assert sink.is_duplicate(make(7)) and sink.is_duplicate(make(2))  # keys from both parts
    assert output.read_bytes() == whole


def test_empty_file_with_old_checkpoint_starts_over_and_says_so(tmp_path):
    fill(tmp_path, 3)
    (tmp_path / "out.jsonl").unlink()
    with open_sink(tmp_path) as sink:
        assert sink.count == 0 and "checkpoint said 3 scenarios" in sink.resume.message
        assert sink.append(make(0)) == 0


@pytest.mark.parametrize("where", ["middle", "last-group"])
@pytest.mark.parametrize("with_checkpoint", [True, False])
def test_damage_that_is_not_a_torn_write_is_refused_and_left_alone(tmp_path, where, with_checkpoint):
    fill(tmp_path, 6)
    output = tmp_path / "out.jsonl"
    data = output.read_bytes()
    target = 2 if where == "middle" else 5
    start = group_end(data, target)
    line_end = data.index(b"\n", start)
    damaged = data[:start] + b"{garbage" + data[line_end:]
    output.write_bytes(damaged)
    if not with_checkpoint:
        (tmp_path / "checkpoint.json").unlink()
    else:
        cp = load_checkpoint(tmp_path)  # make the checkpoint vouch only for what precedes the damage
        cp.update(offset=start, scenarios=target)
        (tmp_path / "checkpoint.json").write_text(json.dumps(cp))
    with pytest.raises(SinkError, match=rf"scenario {target} at byte {start} .*truncate -s {start} "):
        open_sink(tmp_path)
    assert output.read_bytes() == damaged


def test_fingerprint_mismatch_is_refused_unless_forced(tmp_path):
    fill(tmp_path, 3)
    output = tmp_path / "out.jsonl"
    before = output.read_bytes()
    other_templates = fingerprint_of(
        TASK.model_copy(update={"templates": TASK.templates.model_copy(update={"multi_token": TASK.templates.single_token})}),
        TOKENIZERS,
    )
    for other in (other_templates, fingerprint_of(TASK, ["gpt2", "llama"])):
        with pytest.raises(UsageError, match="--force-resume") as caught:
            open_sink(tmp_path, fingerprint=other)
        assert caught.value.exit_code == 2 and "\n" not in caught.value.message
        assert output.read_bytes() == before
    assert "templates" in str(pytest.raises(UsageError, open_sink, tmp_path, fingerprint=other_templates).value)
    with open_sink(tmp_path, fingerprint=other_templates, force_resume=True) as sink:
        assert sink.count == 3 and "--force-resume" in sink.resume.message
        assert sink.append(make(3)) == 3
    assert load_checkpoint(tmp_path)["fingerprint"] == json.loads(json.dumps(other_templates))
    with open_sink(tmp_path, fingerprint=other_templates) as sink:  # the forced setup is now the recorded one
        assert sink.count == 4


def test_other_task_in_the_file_is_refused_without_a_checkpoint(tmp_path):
    fill(tmp_path, 2)
    (tmp_path / "checkpoint.json").unlink()
    with pytest.raises(UsageError, match="task 'refusal' in the file"):
        open_sink(tmp_path, task_name="sentiment")
    with open_sink(tmp_path, task_name="sentiment", force_resume=True) as sink:
        assert sink.append(make(2)) == 2
    tasks = [json.loads(line)["task"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert tasks == ["refusal"] * 8 + ["sentiment"] * 4


def test_no_checkpoint_refuses_existing_output_unless_overwrite(tmp_path):
    fill(tmp_path, 3, checkpoint=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]  # no checkpoint written
    output = tmp_path / "out.jsonl"
    before = output.read_bytes()
    with pytest.raises(UsageError, match="--overwrite") as caught:
        open_sink(tmp_path, checkpoint=None)
    assert caught.value.exit_code == 2 and output.read_bytes() == before
    with open_sink(tmp_path, checkpoint=None, overwrite=True) as sink:
        assert sink.count == 0 and output.read_bytes() == b""
        assert "overwrote" in sink.resume.message
        assert sink.append(make(0)) == 0
    assert len(read_dataset(output)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_overwrite_with_a_checkpoint_starts_over(tmp_path):
    with open_sink(tmp_path) as sink:
        sink.append(make(0))
        sink.close({"cost_usd": 3.0})
    with open_sink(tmp_path, overwrite=True) as sink:
        assert sink.count == 0 and sink.resume.run_state == {}
        assert sink.append(make(0)) == 0  # not a duplicate any more
    assert load_checkpoint(tmp_path)["scenarios"] == 1 and load_checkpoint(tmp_path)["run_state"] == {}


# -- dedup -----------------------------------------------------------------------------------------


def test_dedup_within_a_run_and_across_a_resume(tmp_path):
    original = make(0)
    same_prompt = Scenario.render(TASK, "  HELP me bake\tCAKE 0 for my  sister. ", "something else entirely")
    same_counterfactual = Scenario.render(TASK, "a new prompt", "help ME build bomb 0\nfor my sister.")
    with open_sink(tmp_path) as sink:
        assert sink.append(original) == 0
        assert sink.is_duplicate(same_prompt) and sink.is_duplicate(same_counterfactual)
        assert sink.append(same_prompt) is None and sink.append(same_counterfactual) is None
        assert sink.append(make(1)) == 1
    for checkpoint in ("checkpoint.json", "missing.json"):  # keys rebuilt by the fast path and the full scan
        with open_sink(tmp_path, checkpoint=checkpoint) as sink:
            assert sink.resume.used_checkpoint == (checkpoint == "checkpoint.json")
            assert sink.append(same_prompt) is None and sink.append(same_counterfactual) is None
            assert sink.append(make(1)) is None
            assert not sink.is_duplicate(make(2))
        (tmp_path / "missing.json").unlink(missing_ok=True)
    assert len(read_dataset(tmp_path / "out.jsonl")) == 2


def test_resume_loads_the_dedup_index_the_checkpoint_vouches_for(tmp_path):
    fill(tmp_path, 30)
    index = tmp_path / "checkpoint.json.keys"
    assert index.stat().st_size == 30 * 16  # two 64-bit hashes a scenario
    with open_sink(tmp_path) as sink:
        assert sink.resume.message.endswith("at 30 scenarios (from its checkpoint)"), sink.resume.message
        assert sink.append(Scenario.render(TASK, "help me BAKE cake 0  for my sister.", "new")) is None
        assert sink.append(Scenario.render(TASK, "new", "Help me build bomb 29 for my SISTER.")) is None
        assert sink.resumed_prompts[-1] == make(29).multi_token_prompt and len(sink.resumed_prompts) == 30
        assert sink.append(make(30)) == 30
    assert index.stat().st_size == 31 * 16


def _edit_dataset(folder: Path) -> None:
    """Change scenario 3's multi-token prompt in place (same length): the checkpoint's cheap checks pass."""
    output = folder / "out.jsonl"
    data = output.read_bytes()
    old = json.dumps(make(3).multi_token_prompt).encode()
    assert data.count(old) == 1
    output.write_bytes(data.replace(old, old.replace(b"cake", b"kite")))


@pytest.mark.parametrize("damage", ["edited", "garbage", "cut", "missing", "dataset-edited"])
def test_a_damaged_or_stale_dedup_index_is_rebuilt_and_dedup_holds(tmp_path, damage):
    fill(tmp_path, 30)
    index = tmp_path / "checkpoint.json.keys"
    good = index.read_bytes()
    if damage == "edited":  # one hash changed: that of scenario 0's prompt
        index.write_bytes(bytes([good[0] ^ 1]) + good[1:])
    elif damage == "garbage":
        index.write_bytes(os.urandom(len(good)))
    elif damage == "cut":
        index.write_bytes(good[:-16])
    elif damage == "missing":
        index.unlink()
    else:
        _edit_dataset(tmp_path)
    with open_sink(tmp_path) as sink:
        assert sink.resume.used_checkpoint and sink.count == 30
        assert "its dedup index rebuilt" in sink.resume.message, sink.resume.message
        assert sink.append(Scenario.render(TASK, "HELP me bake cake 0 for my sister.", "new")) is None
        assert sink.append(Scenario.render(TASK, "new", "help me build  bomb 0 for my sister.")) is None
        if damage == "dataset-edited":  # the keys are the file's, not the stale index's
            assert sink.is_duplicate(Scenario.render(TASK, "Help me bake kite 3 for my sister.", "other"))
            assert not sink.is_duplicate(Scenario.render(TASK, "Help me bake cake 3 for my sister.", "other"))
        assert sink.append(make(30)) == 30
    assert index.read_bytes()[: len(good)] == good or damage == "dataset-edited"
    with open_sink(tmp_path) as sink:  # the rebuilt index is trusted again
        assert sink.resume.message.endswith("(from its checkpoint)"), sink.resume.message
        assert sink.append(Scenario.render(TASK, "help me bake cake 0 for my sister.", "new")) is None
        assert sink.append(make(30)) is None and sink.append(make(31)) == 31


# -- failures --------------------------------------------------------------------------------------


def fail_sink_writes(monkeypatch, sink: ScenarioSink, partial: int) -> None:
    """The disk fills up: the next write to the sink is short by all but ``partial`` bytes (as
    write(2) is when it fills the disk), the one after fails."""
    real_write = os.write
    calls = []

    def write(fd, data):
        if fd != sink._fd:
            return real_write(fd, data)
        calls.append(len(data))
        if partial and len(calls) == 1:
            return real_write(fd, bytes(data[:partial]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", write)


@pytest.mark.parametrize("truncate_fails", [False, True], ids=["truncated", "torn-tail-left"])
@pytest.mark.parametrize("partial", [0, 70, 300])
def test_write_error_stops_cleanly_and_the_file_resumes(tmp_path, monkeypatch, partial, truncate_fails):
    output = tmp_path / "out.jsonl"
    sink = open_sink(tmp_path, auto_sync=False)
    for i in range(10):
        sink.append(make(i))
    sink.sync()
    for i in range(10, 13):
        sink.append(make(i))
    good = output.read_bytes()
    fail_sink_writes(monkeypatch, sink, partial)
    if truncate_fails:
        monkeypatch.setattr(os, "ftruncate", lambda fd, size: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(SinkError) as caught:
        sink.append(make(13))
    message = caught.value.message
    assert "\n" not in message and str(output) in message and "No space left on device" in message
    assert "13 scenarios before it kept" in message
    with pytest.raises(SinkError):  # stopped: nothing is written after the failure
        sink.append(make(14))
    sink.close({"cost_usd": 2.0})  # the failure was already raised: close does not raise again
    monkeypatch.undo()
    torn = partial if truncate_fails else 0
    assert output.read_bytes() == good + encode_lines(13, "refusal", make(13))[:torn]
    checkpoint = load_checkpoint(tmp_path)
    assert (checkpoint["scenarios"], checkpoint["offset"], checkpoint["run_state"]) == (13, len(good), {"cost_usd": 2.0})
    with open_sink(tmp_path) as resumed:
        assert resumed.count == 13 and resumed.resume.dropped_bytes == torn
        assert resumed.append(make(13)) == 13
    assert len(read_dataset(output)) == 14


def test_interrupt_inside_a_write_stops_the_sink_and_the_file_resumes(tmp_path, monkeypatch):
    output = tmp_path / "out.jsonl"
    sink = open_sink(tmp_path, auto_sync=False)
    sink.append(make(0))
    real_write = os.write

    def write(fd, data):  # the scenario reaches the file, then Ctrl-C lands before append returns
        real_write(fd, data)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(KeyboardInterrupt):
        sink.append(make(1))
    monkeypatch.undo()
    with pytest.raises(SinkError, match="interrupted while writing scenario 1"):
        sink.append(make(2))  # appending on would reuse id 1
    sink.close()
    assert load_checkpoint(tmp_path)["scenarios"] == 1
    with open_sink(tmp_path) as resumed:
        assert resumed.count == 2 and "1 more found after it" in resumed.resume.message
    assert len(read_dataset(output)) == 2


def test_fsync_error_stops_and_leaves_the_checkpoint_alone(tmp_path, monkeypatch):
    sink = open_sink(tmp_path, auto_sync=False)
    sink.append(make(0))
    sink.sync()
    sink.append(make(1))
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error")))
    with pytest.raises(SinkError, match="Input/output error"):
        sink.sync()
    with pytest.raises(SinkError):
        sink.append(make(2))
    sink.close()
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["scenarios"] == 1  # never claims what fsync did not confirm
    with open_sink(tmp_path) as resumed:
        assert resumed.count == 2


def test_checkpoint_write_error_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    sink = open_sink(tmp_path, auto_sync=False)
    sink.append(make(0))
    sink.sync()
    before = (tmp_path / "checkpoint.json").read_bytes()
    sink.append(make(1))
    monkeypatch.setattr(os, "replace", lambda *args: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(SinkError, match=r"cannot write the checkpoint .*No space left on device"):
        sink.sync()
    sink.close()
    monkeypatch.undo()
    assert (tmp_path / "checkpoint.json").read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))
    with open_sink(tmp_path) as resumed:
        assert resumed.count == 2 and resumed.resume.used_checkpoint


def test_removed_sink_is_noticed_at_the_next_sync(tmp_path):
    sink = open_sink(tmp_path, auto_sync=False)
    sink.append(make(0))
    (tmp_path / "out.jsonl").unlink()
    sink.append(make(1))
    with pytest.raises(SinkError, match="removed or replaced"):
        sink.sync()
    sink.close()
    assert load_checkpoint(tmp_path)["scenarios"] == 0


def test_unwritable_output_or_checkpoint_is_a_usage_error_before_anything_is_written(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(UsageError, match="--output .*cannot create its folder") as caught:
        ScenarioSink.open(blocker / "out.jsonl", tmp_path / "cp.json", task_name="refusal", fingerprint=FINGERPRINT)
    assert caught.value.exit_code == 2
    with pytest.raises(UsageError, match="--checkpoint .*cannot create its folder"):
        ScenarioSink.open(tmp_path / "out.jsonl", blocker / "cp.json", task_name="refusal", fingerprint=FINGERPRINT)
    (tmp_path / "cp_dir").mkdir()
    (tmp_path / "cp_dir" / "x").write_text("")
    with pytest.raises(UsageError, match="--checkpoint .*cannot write it"):
        ScenarioSink.open(tmp_path / "out2.jsonl", tmp_path / "cp_dir", task_name="refusal", fingerprint=FINGERPRINT)
    with pytest.raises(UsageError, match="--output .*cannot open it for writing"):
        ScenarioSink.open(tmp_path / "cp_dir", tmp_path / "cp.json", task_name="refusal", fingerprint=FINGERPRINT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "cp_dir"]  # nothing left behind


def test_a_refused_overwrite_or_repair_leaves_the_file_alone(tmp_path):
    fill(tmp_path, 2)
    output = tmp_path / "out.jsonl"
    torn = output.read_bytes() + b'{"scenario_id": 2, "ty'
    output.write_bytes(torn)
    (tmp_path / "cp_dir").mkdir()
    (tmp_path / "cp_dir" / "x").write_text("")
    for overwrite in (True, False):
        with pytest.raises(UsageError, match="--checkpoint .*cannot write it"):
            ScenarioSink.open(output, tmp_path / "cp_dir", task_name="refusal", fingerprint=FINGERPRINT, overwrite=overwrite)
        assert output.read_bytes() == torn


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes through chmod")
def test_read_only_folder_is_a_usage_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(UsageError, match="cannot open it for writing"):
            ScenarioSink.open(folder / "out.jsonl", tmp_path / "cp.json", task_name="refusal", fingerprint=FINGERPRINT)
    finally:
        folder.chmod(0o700)


# -- SIGKILL trials --------------------------------------------------------------------------------

_writer_spec = importlib.util.spec_from_file_location("sink_writer", WRITER)
sink_writer = importlib.util.module_from_spec(_writer_spec)
_writer_spec.loader.exec_module(sink_writer)

KILL_TRIALS = 24


def test_writer_killed_at_random_moments_always_resumes_whole(tmp_path):
    base_seed = int(os.environ.get("ASYNCGEN_SINK_SEED", random.randrange(2**32)))
    print(f"SIGKILL trials: base seed {base_seed} (rerun with ASYNCGEN_SINK_SEED={base_seed})")
    rng = random.Random(base_seed)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    output, checkpoint = tmp_path / "out.jsonl", tmp_path / "checkpoint.json"
    expected = 0  # scenarios in the file after the last verified resume
    durable_seen = power_cuts = torn_tails = full_scans = 0
    for trial in range(KILL_TRIALS):
        seed, every, delay = rng.randrange(2**32), rng.choice((1, 3, 10, 25)), rng.uniform(0.0, 0.25)
        power_loss = rng.random() < 0.5
        context = f"trial {trial}: seed {seed}, every {every}, kill after {delay:.3f} s, power loss {power_loss}"
        print(context)
        args = [sys.executable, str(WRITER), str(output), str(checkpoint), str(seed), str(every)]
        if trial % 2:
            args.append("--auto-sync")
        writer = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        first = writer.stdout.readline()
        assert first == f"resumed {expected}\n", f"{context}: {first!r} {writer.stderr.read() if not first else ''}"
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        out, err = writer.communicate(timeout=30)
        assert writer.returncode == -signal.SIGKILL, f"{context}: the writer ended by itself: {err}"
        assert "error" not in out, f"{context}: {out}"
        durable = max([expected] + [int(line.split()[1]) for line in out.splitlines() if line.startswith("durable ")])
        durable_seen = max(durable_seen, durable - expected)

        data = output.read_bytes()
        durable_end = group_end(data, durable)  # raises if a durable scenario is missing
        if power_loss:  # the machine lost what was not fsynced: keep a random part of it
            power_cuts += 1
            data = data[: rng.randint(durable_end, len(data))]
            output.write_bytes(data)

        sink = ScenarioSink.open(output, checkpoint, task_name=sink_writer.TASK_NAME, fingerprint=sink_writer.FINGERPRINT)
        report = sink.resume
        sink.close()
        assert report.scenarios >= durable, f"{context}: {report.message}"
        assert "\n" not in report.message
        pairs = read_dataset(output, sink_writer.TASK_NAME)
        assert len(pairs) == report.scenarios
        assert output.read_bytes()[:durable_end] == data[:durable_end], f"{context}: durable scenarios changed"
        assert len(output.read_bytes()) == len(data) - report.dropped_bytes
        print(f"  durable {durable}, kept {report.scenarios}: {report.message}")
        expected = report.scenarios
        torn_tails += report.dropped_bytes > 0
        full_scans += not report.used_checkpoint
    print(f"{KILL_TRIALS} trials: {expected} scenarios, {torn_tails} torn tails cut, {full_scans} full scans")
    assert expected > 0 and durable_seen > 0 and power_cuts > 0 and torn_tails > 0, "the trials exercised too little"


def test_usage_noted_between_checkpoints_survives_a_kill(tmp_path):
    """run_state changes with every answered request; a SIGKILL before the next sync loses none of it."""
    with open_sink(tmp_path, auto_sync=False) as sink:
        sink.append(make(0))
        sink.sync({"cost_usd": 1.0, "requests_ok": 1})
        for n in range(2, 6):
            sink.note_run_state({"cost_usd": float(n), "requests_ok": n})
        journal = (tmp_path / "checkpoint.json.journal").read_bytes()
        checkpoint = (tmp_path / "checkpoint.json").read_bytes()
    # As if killed: the checkpoint and journal as they were before close, plus a torn journal line.
    (tmp_path / "checkpoint.json").write_bytes(checkpoint)
    (tmp_path / "checkpoint.json.journal").write_bytes(journal + b'{"seq": 6, "sink": "')
    with open_sink(tmp_path) as resumed:
        assert resumed.resume.run_state == {"cost_usd": 5.0, "requests_ok": 5}
        assert "recovered from the journal" in resumed.resume.message
    # The final sync took the usage into the checkpoint and emptied the journal: nothing counts twice.
    with open_sink(tmp_path) as again:
        assert again.resume.run_state == {"cost_usd": 5.0, "requests_ok": 5}
        assert "journal" not in again.resume.message
    assert not (tmp_path / "checkpoint.json.journal").exists()


def test_a_journal_older_than_the_checkpoint_is_ignored(tmp_path):
    with open_sink(tmp_path, auto_sync=False) as sink:
        sink.append(make(0))
        sink.note_run_state({"cost_usd": 1.0})
        stale = (tmp_path / "checkpoint.json.journal").read_bytes()
        sink.sync({"cost_usd": 2.0})
    (tmp_path / "checkpoint.json.journal").write_bytes(stale)  # as if the truncation never happened
    with open_sink(tmp_path) as resumed:
        assert resumed.resume.run_state == {"cost_usd": 2.0}
