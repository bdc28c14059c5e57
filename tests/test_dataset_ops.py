"""``asyncgen drop`` and ``asyncgen merge``: new datasets that every other command accepts as
asyncgen's own, the sources untouched, the output whole or absent (SIGKILL included)."""

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from asyncgen import locks
from asyncgen.dataset_ops import merged_run_state, parse_id_list, shared_runs
from asyncgen.errors import UsageError
from asyncgen.scenario import Scenario, read_dataset
from asyncgen.scores import read_scores, scores_path
from asyncgen.sink import ScenarioSink, default_checkpoint_path
from inprocess import asyncgen_here

REPO = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
ENV.update(PYTHONPATH=str(REPO), NO_PROXY="127.0.0.1,localhost")
MODEL, SINGLE_ONLY = "gpt-4o-mini", "gpt-4o"


def cli(*args, cwd=None):
    return asyncgen_here(*map(str, args), cwd=cwd, env=ENV)


@pytest.fixture(scope="module")
def made(tmp_path_factory, tokenizer_cache):
    """Two datasets of 20 from the offline default (seeds 1 and 2), both scored under MODEL, the
    first also under SINGLE_ONLY (single-token form only)."""
    folder = tmp_path_factory.mktemp("sources")
    for name, seed in (("a", 1), ("b", 2)):
        done = cli("run", "--output", folder / f"{name}.jsonl", "--num-scenarios", 20, "--seed", seed,
                   "--validator-workers", 0, "--cache-dir", tokenizer_cache)
        assert done.returncode == 0, done.stderr
        done = cli("score", folder / f"{name}.jsonl", "--model", MODEL, "--cache-dir", tokenizer_cache)
        assert done.returncode == 0, done.stderr
    done = cli("score", folder / "a.jsonl", "--model", SINGLE_ONLY, "--form", "single", "--cache-dir", tokenizer_cache)
    assert done.returncode == 0, done.stderr
    return folder


@pytest.fixture
def sources(made, tmp_path):
    """A copy of the sources in this test's folder, and a snapshot of every byte of them."""
    for path in made.iterdir():
        if path.is_dir():
            shutil.copytree(path, tmp_path / path.name)
        else:
            shutil.copy2(path, tmp_path / path.name)
    return tmp_path


def snapshot(folder: Path, *names: str) -> dict:
    """Every file that belongs to the datasets ``names`` (dataset, checkpoint, sidecars, scores), by content."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name.split(".")[0] in names}


def texts(path: Path) -> list[tuple]:
    return [s.texts() for s in read_dataset(path).scenarios]


def checkpoint(path: Path) -> dict:
    return json.loads(path.with_name(path.stem + ".checkpoint.json").read_text())


def dedup_keys_hold(path: Path, fingerprint: dict, scenarios: list[tuple]) -> bool:
    """Whether the sink, resuming ``path`` from its checkpoint and index, refuses each of ``scenarios``."""
    sink = ScenarioSink.open(path, default_checkpoint_path(path), task_name="refusal", fingerprint=fingerprint)
    try:
        assert sink.resume.used_checkpoint and "rebuilt" not in sink.resume.message, sink.resume.message
        return all(sink.is_duplicate(Scenario(*texts)) for texts in scenarios)
    finally:
        sink.close()


def one_line_error(result, code=2) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


# --- the rules --------------------------------------------------------------------------------------


def test_the_ids_are_parsed_and_a_bad_one_is_named():
    assert parse_id_list("3, 17,42,") == [3, 17, 42]
    with pytest.raises(UsageError, match="'x' is not a scenario id"):
        parse_id_list("3,x")
    with pytest.raises(UsageError, match="names no scenario"):
        parse_id_list(",")


def test_merged_run_figures_are_sums_and_an_unknown_cost_stays_unknown():
    first = {"cost_usd": 0.5, "runs": 1, "requests_ok": 4, "rejections": {"a": 1}, "batch_dir": "x"}
    second = {"cost_usd": 0.25, "runs": 2, "requests_ok": 6, "rejections": {"a": 2, "b": 1}}
    merged = merged_run_state([first, second])
    assert merged == {"cost_usd": 0.75, "runs": 3, "requests_ok": 10, "rejections": {"a": 3, "b": 1}}
    assert merged_run_state([first, {**second, "cost_usd": None}])["cost_usd"] is None


def test_ids_are_told_and_kept_as_ranges():
    from asyncgen.dataset_ops import describe_ids, drop_entry, ids_of

    assert describe_ids([17, 3, 40, 41, 42]) == "3, 17, 40-42"
    assert describe_ids(range(0, 40, 2), limit=3) == "0, 2, 4 and 17 more"
    entry = drop_entry({}, [5, 3, 4, 9], None, "now")
    assert entry["dropped"] == [[3, 6], [9, 10]] and ids_of(entry["dropped"]) == [3, 4, 5, 9]


def test_sources_made_from_one_dataset_are_said_to_share_runs():
    dropped = [{"op": "drop", "source": {"dataset_id": "A", "history": []}}]
    assert shared_runs([("a", "A", []), ("b", "B", [])]) == []
    assert len(shared_runs([("a", "A", []), ("c", "C", dropped)])) == 1
    assert len(shared_runs([("c", "C", dropped), ("d", "D", dropped)])) == 1


def test_runs_are_told_by_origin_so_shared_ones_count_once():
    from asyncgen.dataset_ops import combine_origins, origins_run_state, run_origins, shared_origins

    a_then = {"cost_usd": 0.5, "runs": 1, "requests_ok": 4, "rejections": {"x": 1}}
    a_now = {"cost_usd": 0.75, "runs": 2, "requests_ok": 6, "rejections": {"x": 2}}
    dropped = [{"op": "drop", "source": {"dataset_id": "A", "run_state": a_then}}]
    c_now = {"cost_usd": 0.6, "runs": 2, "requests_ok": 5, "rejections": {"x": 1, "y": 1}}  # a run after the drop
    a, c = run_origins("A", a_now, []), run_origins("C", c_now, dropped)
    assert c == {"A": a_then, "C": {"cost_usd": pytest.approx(0.1), "runs": 1, "requests_ok": 1, "rejections": {"y": 1}}}
    merged = origins_run_state(combine_origins([a, c]))  # a's runs once (its later figures), c's own once
    assert merged == {"cost_usd": pytest.approx(0.85), "runs": 3, "requests_ok": 7, "rejections": {"x": 2, "y": 1}}
    assert shared_origins([("a", a), ("c", c)]) == ["a and c share 1 run: counted once"]
    assert run_origins("C", a_then, dropped) == {"A": a_then}  # nothing run since the drop
    old_drop = [{"op": "drop", "source": {"dataset_id": "A"}}]  # written before drops recorded the figures
    assert run_origins("C", c_now, old_drop) is None


# --- drop -------------------------------------------------------------------------------------------


def test_drop_writes_a_renumbered_dataset_that_every_command_accepts(sources, tokenizer_cache, capfd):
    a, c = sources / "a.jsonl", sources / "c.jsonl"
    before = snapshot(sources, "a")
    done = cli("drop", a, "--ids", "3,17", "--output", c, "--reason", "ambiguous pairs")
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and "18 scenarios" in done.stdout
    assert snapshot(sources, "a") == before  # the source is never changed
    kept = [t for i, t in enumerate(texts(a)) if i not in (3, 17)]
    assert texts(c) == kept
    assert cli("validate", c, "--cache-dir", tokenizer_cache).returncode == 0

    # The checkpoint: the source's run figures and setup, a new identity, the drop in its history.
    source_checkpoint, new = checkpoint(a), checkpoint(c)
    assert new["run_state"] == source_checkpoint["run_state"] and new["fingerprint"] == source_checkpoint["fingerprint"]
    assert new["dataset"]["id"] != source_checkpoint["dataset"]["id"] and new["sink"] == str(c.resolve())
    (entry,) = new["history"]
    assert entry["op"] == "drop" and entry["dropped"] == [[3, 4], [17, 18]] and entry["reason"] == "ambiguous pairs"
    assert entry["source"]["dataset_id"] == source_checkpoint["dataset"]["id"] and entry["source"]["scenarios"] == 20
    from asyncgen.cli import main

    capfd.readouterr()
    assert main(["inspect", str(c), "--json", "--no-tokens", "--cache-dir", tokenizer_cache]) == 0
    report = json.loads(capfd.readouterr().out)  # --json writes to the stdout's bytes: read at the descriptor
    assert report["run"]["runs"] == 1 and report["run"]["cost_usd"] == source_checkpoint["run_state"]["cost_usd"]
    assert report["history"] == new["history"]
    shown = cli("inspect", c, "--no-tokens", "--cache-dir", tokenizer_cache).stdout
    assert "drop: 2 of 20 scenarios of a.jsonl (ids 3, 17), because ambiguous pairs" in shown.replace("\n" + " " * 16, " ")

    # The annotations: re-keyed lines that tokenizing again agrees with, byte for byte.
    annotated = cli("annotate", c, "--cache-dir", tokenizer_cache)
    assert annotated.returncode == 0 and "all 18 agree" in annotated.stdout, annotated.stdout

    # The scores: re-keyed, naming the new dataset, read by export.
    old, new_scores = read_scores(scores_path(a, MODEL)), read_scores(scores_path(c, MODEL))
    assert new_scores.header["dataset"] == "c.jsonl" and new_scores.header["model"] == MODEL
    old_ids = [i for i in range(20) if i not in (3, 17)]
    assert all({**old.records[o], "scenario_id": n} == new_scores.records[n] for n, o in enumerate(old_ids))
    exported = cli("export", c, "--format", "jsonl", "--scores", MODEL, "--scores", SINGLE_ONLY,
                   "--cache-dir", tokenizer_cache)
    assert exported.returncode == 0, exported.stderr

    # The sink resumes it from its checkpoint and dedup index, which hold every kept scenario's keys.
    assert dedup_keys_hold(c, new["fingerprint"], kept) and not dedup_keys_hold(c, new["fingerprint"], texts(a)[3:4])

    # run resumes it: from the checkpoint, history kept.
    resumed = cli("run", "--output", c, "--num-scenarios", 21, "--validator-workers", 0, "--cache-dir", tokenizer_cache)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stderr and "at 18 scenarios (from its checkpoint)" in resumed.stderr
    assert "18 by the record of an earlier check" in resumed.stderr  # the carried annotations were trusted
    assert texts(c)[:18] == kept and len(texts(c)) == 21
    after_run = checkpoint(c)
    assert after_run["history"] == new["history"] and after_run["run_state"]["runs"] == 2
    assert cli("validate", c, "--cache-dir", tokenizer_cache).returncode == 0


def test_drop_from_a_file_of_ids_or_of_exported_rows(sources, tokenizer_cache):
    a = sources / "a.jsonl"
    ids = sources / "ids.txt"
    ids.write_text("# flagged by hand\n2\n\n5\n2\n")
    done = cli("drop", a, "--from", ids, "--output", sources / "c.jsonl")
    assert done.returncode == 0, done.stderr
    assert texts(sources / "c.jsonl") == [t for i, t in enumerate(texts(a)) if i not in (2, 5)]
    assert checkpoint(sources / "c.jsonl")["history"][0]["dropped"] == [[2, 3], [5, 6]]

    # Rows written by export: their ids, their texts checked against the dataset.
    assert cli("export", a, "--format", "jsonl", "--out", sources / "rows.jsonl",
               "--cache-dir", tokenizer_cache).returncode == 0
    rows = [json.loads(line) for line in open(sources / "rows.jsonl")]
    (sources / "some.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows[4:7]))
    done = cli("drop", a, "--from", sources / "some.jsonl", "--output", sources / "d.jsonl")
    assert done.returncode == 0, done.stderr
    assert texts(sources / "d.jsonl") == [t for i, t in enumerate(texts(a)) if i not in (4, 5, 6)]

    # The same rows against another dataset: refused, nothing written.
    line = one_line_error(cli("drop", sources / "b.jsonl", "--from", sources / "some.jsonl",
                              "--output", sources / "e.jsonl"))
    assert "the file was made from another dataset" in line and "scenario 4" in line
    assert not (sources / "e.jsonl").exists() and not list(sources.glob(".e.jsonl*"))


@pytest.mark.parametrize("flags, expected", [
    (["--ids", "3,99,120"], "has no scenario 99, 120 (its ids are 0 to 19)"),
    (["--ids", "3,x"], "'x' is not a scenario id"),
    (["--ids", ",".join(map(str, range(20)))], "would be left"),
    (["--from", "missing.txt"], "--from missing.txt: cannot read it"),
    (["--from", "bad.txt"], "--from bad.txt:2: neither a scenario id nor a JSON object"),
    (["--from", "empty.txt"], "names no scenario id"),
    (["--ids", "1", "--output", "."], "--output . is a folder; name the dataset file to write"),
])
def test_bad_ids_are_one_line_and_nothing_is_written(sources, flags, expected):
    (sources / "bad.txt").write_text("3\nthree\n")
    (sources / "empty.txt").write_text("# nothing\n")
    line = one_line_error(cli("drop", "a.jsonl", "--output", "c.jsonl", *flags, cwd=sources))
    assert expected in line, line
    assert not (sources / "c.jsonl").exists() and not (sources / "c.checkpoint.json").exists()
    assert not list(sources.glob(".c.jsonl*"))


def test_a_source_left_by_a_killed_run_gives_its_whole_scenarios_and_latest_usage(sources):
    a = sources / "a.jsonl"
    whole = a.read_bytes()
    with open(a, "ab") as handle:  # a torn append, as a killed run leaves
        handle.write(whole.split(b"\n")[0][:30])
    stored = checkpoint(a)
    later = {**stored["run_state"], "cost_usd": 9.5, "requests_ok": 99}  # noted after the last checkpoint
    journal = {"seq": stored["journal_seq"] + 1, "dataset_id": stored["dataset"]["id"], "run_state": later}
    (sources / "a.checkpoint.json.journal").write_text(json.dumps(journal) + "\n")
    done = cli("drop", "a.jsonl", "--ids", "0", "--output", "c.jsonl", cwd=sources)
    assert done.returncode == 0, done.stderr
    assert "left out an incomplete last scenario (30 bytes)" in done.stderr
    assert len(texts(sources / "c.jsonl")) == 19 and checkpoint(sources / "c.jsonl")["run_state"] == later
    assert a.read_bytes() == whole + whole.split(b"\n")[0][:30]  # still as the run left it


# --- merge ------------------------------------------------------------------------------------------


def test_merge_sums_the_run_figures_and_carries_what_every_source_has(sources, tokenizer_cache):
    a, b, m = sources / "a.jsonl", sources / "b.jsonl", sources / "m.jsonl"
    before = snapshot(sources, "a", "b")
    done = cli("merge", a, b, "--output", m)
    assert done.returncode == 0, done.stderr
    assert snapshot(sources, "a", "b") == before
    assert texts(m) == texts(a) + texts(b) and "no duplicates" in done.stdout
    assert cli("validate", m, "--cache-dir", tokenizer_cache).returncode == 0
    assert dedup_keys_hold(m, checkpoint(m)["fingerprint"], texts(a) + texts(b))
    first, second, merged = checkpoint(a)["run_state"], checkpoint(b)["run_state"], checkpoint(m)["run_state"]
    assert merged["runs"] == 2 and merged["requests_ok"] == first["requests_ok"] + second["requests_ok"]
    assert merged["cost_usd"] == pytest.approx(first["cost_usd"] + second["cost_usd"])
    (entry,) = checkpoint(m)["history"]
    assert [(s["name"], s["kept"], s["run_state"]) for s in entry["sources"]] == [("a.jsonl", 20, first),
                                                                                ("b.jsonl", 20, second)]
    shown = cli("inspect", m, "--no-tokens", "--cache-dir", tokenizer_cache).stdout.replace("\n" + " " * 16, " ")
    assert "merge: a.jsonl 20 of 20, 1 run(s)" in shown and "2 run(s)" in shown
    # MODEL scored both: carried; SINGLE_ONLY only a: not carried, and how to score it is said.
    assert f"scores carried, re-keyed: {MODEL}" in done.stdout
    assert f"scores of {SINGLE_ONLY}: not carried (b.jsonl has none); score again with `asyncgen score" in done.stdout
    assert sorted(read_scores(scores_path(m, MODEL)).records) == list(range(40))
    assert not scores_path(m, SINGLE_ONLY).exists()
    assert "token annotations: carried" in done.stdout
    assert "all 40 agree" in cli("annotate", m, "--cache-dir", tokenizer_cache).stdout
    scored = cli("score", m, "--model", MODEL, "--cache-dir", tokenizer_cache)
    assert scored.returncode == 0 and "already scores all 40 scenarios" in scored.stdout, scored.stderr
    resumed = cli("run", "--output", m, "--num-scenarios", 41, "--validator-workers", 0, "--cache-dir", tokenizer_cache)
    assert resumed.returncode == 0 and "at 40 scenarios (from its checkpoint)" in resumed.stderr, resumed.stderr


def test_merge_leaves_out_duplicates_says_which_and_what_is_not_carried(sources, tokenizer_cache):
    a, b = sources / "a.jsonl", sources / "b.jsonl"
    assert cli("drop", a, "--ids", "0,1", "--output", sources / "c.jsonl").returncode == 0
    (sources / "b.tokens.jsonl").unlink()  # b's annotations are gone: the merge has none
    done = cli("merge", b, sources / "c.jsonl", a, "--output", sources / "m.jsonl")
    assert done.returncode == 0, done.stderr
    assert texts(sources / "m.jsonl") == texts(b) + texts(a)[2:] + texts(a)[:2]
    assert "left out 18 duplicates of earlier scenarios" in done.stdout and "a.jsonl: ids 2-19" in done.stdout
    # c was made from a: their runs are counted once, and said so.
    assert f"run figures: {sources / 'c.jsonl'} and {a} share 1 run: counted once" in done.stdout
    assert "come from one dataset" not in done.stderr
    first, second = checkpoint(a)["run_state"], checkpoint(b)["run_state"]
    merged = checkpoint(sources / "m.jsonl")["run_state"]
    assert merged["runs"] == 2 and merged["requests_ok"] == first["requests_ok"] + second["requests_ok"]
    assert merged["cost_usd"] == pytest.approx(first["cost_usd"] + second["cost_usd"])
    assert "token annotations: not carried (b.jsonl: it has none); `asyncgen annotate" in done.stdout
    assert not (sources / "m.tokens.jsonl").exists()
    (entry,) = checkpoint(sources / "m.jsonl")["history"]
    assert [(s["kept"], s["duplicates"]) for s in entry["sources"]] == [(20, []), (18, []), (2, [[2, 20]])]
    assert entry["sources"][1]["history"][0]["op"] == "drop"
    assert cli("validate", sources / "m.jsonl", "--cache-dir", tokenizer_cache).returncode == 0


def test_merge_of_a_dataset_and_its_resumed_drop_counts_each_run_once(sources, tokenizer_cache):
    """drop then run again on the drop: merged with its source, the source's run was summed twice
    (only a warning said so); now each run counts once. A drop recorded before runs had an origin
    (no run figures in its entry) keeps the warning and the sum."""
    a, c = sources / "a.jsonl", sources / "c.jsonl"
    assert cli("drop", a, "--ids", "0,1,2,3,4", "--output", c).returncode == 0
    grown = cli("run", "--output", c, "--num-scenarios", 18, "--seed", 7, "--validator-workers", 0,
                "--cache-dir", tokenizer_cache)
    assert grown.returncode == 0, grown.stderr
    first, after = checkpoint(a)["run_state"], checkpoint(c)["run_state"]
    assert after["runs"] == 2 and after["cost_usd"] > first["cost_usd"]
    done = cli("merge", a, c, "--output", sources / "m.jsonl")
    assert done.returncode == 0, done.stderr
    assert f"run figures: {a} and {c} share 1 run: counted once" in done.stdout
    merged = checkpoint(sources / "m.jsonl")["run_state"]
    assert (merged["runs"], merged["requests_ok"]) == (2, after["requests_ok"])
    assert merged["cost_usd"] == pytest.approx(after["cost_usd"])
    old = checkpoint(c)
    del old["history"][-1]["source"]["run_state"]
    (sources / "c.checkpoint.json").write_text(json.dumps(old))
    done = cli("merge", a, c, "--output", sources / "n.jsonl")
    assert done.returncode == 0 and "come from one dataset" in done.stderr and "share" not in done.stdout
    assert checkpoint(sources / "n.jsonl")["run_state"]["runs"] == 3  # summed, as the warning says


def test_merge_refuses_sources_of_another_setup_naming_it(sources):
    other = checkpoint(sources / "b.jsonl")
    other["fingerprint"]["tokenizers"] = other["fingerprint"]["tokenizers"][:2]
    (sources / "b.checkpoint.json").write_text(json.dumps(other))
    line = one_line_error(cli("merge", "a.jsonl", "b.jsonl", "--output", "m.jsonl", cwd=sources))
    assert "b.jsonl and a.jsonl differ in tokenizers" in line, line
    other["fingerprint"]["task"] = "sycophancy"
    (sources / "b.checkpoint.json").write_text(json.dumps(other))
    assert "differ in task ('sycophancy' vs 'refusal')" in one_line_error(
        cli("merge", "a.jsonl", "b.jsonl", "--output", "m.jsonl", cwd=sources))
    assert "named twice" in one_line_error(cli("merge", "a.jsonl", "./a.jsonl", "--output", "m.jsonl", cwd=sources))
    assert "at least two" in one_line_error(cli("merge", "a.jsonl", "--output", "m.jsonl", cwd=sources))
    assert not (sources / "m.jsonl").exists()


def test_scores_of_other_settings_are_not_merged(sources, tokenizer_cache):
    path = scores_path(sources / "b.jsonl", MODEL)
    lines = path.read_text().splitlines(keepends=True)
    header = json.loads(lines[0])
    header["forms"] = ["single"]
    path.write_text(json.dumps(header) + "\n" + "".join(lines[1:]))
    done = cli("merge", "a.jsonl", "b.jsonl", "--output", "m.jsonl", cwd=sources)
    assert done.returncode == 0, done.stderr
    assert f"scores of {MODEL}: not carried (the sources were scored with the forms differing)" in done.stdout
    header.update(forms=["single", "multi"], endpoint="http://localhost:8000/v1")  # as `score`: said, not refused
    path.write_text(json.dumps(header) + "\n" + "".join(lines[1:]))
    done = cli("merge", "a.jsonl", "b.jsonl", "--output", "m.jsonl", "--overwrite", cwd=sources)
    assert f"scores carried, re-keyed: {MODEL}" in done.stdout
    assert f"the scores of {MODEL} were made at simulator and http://localhost:8000/v1" in done.stderr


# --- what is refused ---------------------------------------------------------------------------------


def test_an_existing_output_is_replaced_only_with_overwrite_and_whole(sources):
    assert cli("drop", "a.jsonl", "--ids", "1", "--output", "c.jsonl", cwd=sources).returncode == 0
    first = snapshot(sources, "c")
    line = one_line_error(cli("drop", "b.jsonl", "--ids", "1", "--output", "c.jsonl", cwd=sources))
    assert "--output c.jsonl already exists; nothing was changed" in line and "--overwrite" in line
    assert snapshot(sources, "c") == first
    (sources / "b.tokens.jsonl").unlink()
    shutil.rmtree(sources / "b.scores")
    done = cli("drop", "b.jsonl", "--ids", "1", "--output", "c.jsonl", "--overwrite", cwd=sources)
    assert done.returncode == 0, done.stderr
    assert texts(sources / "c.jsonl") == [t for i, t in enumerate(texts(sources / "b.jsonl")) if i != 1]
    # Nothing of the old output is left beside the new one: its annotations and scores went with it.
    assert not (sources / "c.tokens.jsonl").exists() and not (sources / "c.scores").exists()
    assert sorted(p.name for p in sources.glob("*c.*")) == ["c.checkpoint.json", "c.checkpoint.json.keys", "c.jsonl"]


@pytest.mark.parametrize("name, expected", [("missing.jsonl", "cannot read the dataset (No such file"),
                                            ("folder", "not a dataset file"), ("fifo", "not a dataset file")])
def test_a_source_that_is_no_dataset_file_is_one_line(sources, name, expected):
    (sources / "folder").mkdir()
    os.mkfifo(sources / "fifo")  # opening it would block
    line = one_line_error(cli("merge", "a.jsonl", name, "--output", "m.jsonl", cwd=sources))
    assert f"{name}: {expected}" in line, line


def test_the_output_may_not_be_a_source(sources):
    line = one_line_error(cli("drop", "a.jsonl", "--ids", "1", "--output", "a.jsonl", "--overwrite", cwd=sources))
    assert "is a source of this drop" in line
    line = one_line_error(cli("drop", "a.jsonl", "--ids", "1", "--output", "a.tokens.jsonl", "--overwrite", cwd=sources))
    assert "would write a.tokens.jsonl, which belongs to the source a.jsonl" in line


def test_a_source_a_run_writes_or_a_scorer_writes_is_refused(sources):
    fd = os.open(sources / "a.jsonl", os.O_WRONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a run's sink holds it
    try:
        line = one_line_error(cli("drop", "a.jsonl", "--ids", "1", "--output", "c.jsonl", cwd=sources))
        assert "a.jsonl: a run is writing it; wait for that run to end" in line
    finally:
        os.close(fd)
    lock = locks.hold(Path(str(scores_path(sources / "b.jsonl", MODEL)) + ".lock"), "scores", "score")
    try:
        line = one_line_error(cli("merge", "a.jsonl", "b.jsonl", "--output", "m.jsonl", cwd=sources))
        assert f"{MODEL}.jsonl are being written by `asyncgen score` (pid {os.getpid()})" in line
    finally:
        os.close(lock)
    assert not (sources / "c.jsonl").exists() and not (sources / "m.jsonl").exists()


def test_an_output_held_by_another_writer_is_refused(sources):
    assert cli("drop", "a.jsonl", "--ids", "1", "--output", "c.jsonl", cwd=sources).returncode == 0
    fd = os.open(sources / "c.jsonl", os.O_WRONLY | os.O_APPEND)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a run resuming it
    try:
        line = one_line_error(cli("drop", "a.jsonl", "--ids", "2", "--output", "c.jsonl", "--overwrite", cwd=sources))
        assert "--output c.jsonl: a run is writing it" in line
    finally:
        os.close(fd)
    lock = locks.hold(Path(str(scores_path(sources / "c.jsonl", MODEL)) + ".lock"), "scores", "score")
    try:  # its scores being written: replacing them would pull them from under the scorer
        line = one_line_error(cli("drop", "a.jsonl", "--ids", "2", "--output", "c.jsonl", "--overwrite", cwd=sources))
        assert f"--output c.jsonl: its scores {MODEL}.jsonl are being written by `asyncgen score`" in line
    finally:
        os.close(lock)
    lock = locks.hold(sources / ".d.jsonl.lock", "--output d.jsonl", "merge")
    try:
        line = one_line_error(cli("drop", "a.jsonl", "--ids", "2", "--output", "d.jsonl", cwd=sources))
        assert "is in use by `asyncgen merge`" in line
    finally:
        os.close(lock)


def test_a_source_without_its_checkpoint_is_refused_saying_how_to_make_one(sources):
    (sources / "a.checkpoint.json").unlink()
    line = one_line_error(cli("drop", "a.jsonl", "--ids", "1", "--output", "c.jsonl", cwd=sources))
    assert "no checkpoint at" in line and "asyncgen run --output a.jsonl" in line


def test_a_stale_copy_of_the_sources_scores_is_refused_by_the_new_dataset(sources, tokenizer_cache):
    assert cli("drop", "a.jsonl", "--ids", "3", "--output", "c.jsonl", cwd=sources).returncode == 0
    shutil.copy(scores_path(sources / "a.jsonl", MODEL), scores_path(sources / "c.jsonl", MODEL))
    line = one_line_error(cli("export", "c.jsonl", "--format", "jsonl", "--scores", MODEL,
                              "--cache-dir", tokenizer_cache, cwd=sources))
    assert "texts differ from c.jsonl's" in line


def test_a_stale_copy_of_the_sources_annotations_is_not_trusted_by_the_new_dataset(sources, builtin_tokenizers,
                                                                                     refusal_task):
    from asyncgen.annotations import Sidecar, record_path, sidecar_path

    c = sources / "c.jsonl"
    assert cli("drop", "a.jsonl", "--ids", "3", "--output", "c.jsonl", cwd=sources).returncode == 0
    with Sidecar.open(c, refusal_task, builtin_tokenizers) as carried:  # the copy's record holds: nothing to redo
        assert carried.repair.verified == 19 and carried.repair.written == 0, carried.repair.message
    for path in (sidecar_path(sources / "a.jsonl"), record_path(sidecar_path(sources / "a.jsonl"))):
        shutil.copy(path, sources / path.name.replace("a.", "c.", 1))
    with Sidecar.open(c, refusal_task, builtin_tokenizers) as stale:
        assert stale.repair.verified == 0 and "checked them all" in stale.repair.message
        assert stale.repair.kept == 3 and stale.repair.written == 16  # rewritten from the first dropped id on


# --- SIGKILL ----------------------------------------------------------------------------------------


def killed(point: str, *args, cwd: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "tests" / "dataset_ops_killer.py"), point, *map(str, args)],
                            capture_output=True, text=True, env=ENV, cwd=cwd, timeout=120)
    assert result.returncode == -9, (point, result.returncode, result.stderr)


@pytest.mark.parametrize("point", ["append:5", "move:1", "move:3", "move:5"])
def test_a_killed_drop_leaves_no_output_and_the_same_command_then_writes_it(sources, point, tokenizer_cache):
    command = ("drop", "a.jsonl", "--ids", "3,17", "--output", "c.jsonl", "--reason", "r")
    killed(point, *command, cwd=sources)
    assert not (sources / "c.jsonl").exists()  # the dataset file is moved in last
    assert "cannot read" in one_line_error(cli("validate", "c.jsonl", "--cache-dir", tokenizer_cache, cwd=sources))
    again = cli(*command, cwd=sources)
    assert again.returncode == 0, again.stderr
    assert not list(sources.glob(".c.jsonl*")) and texts(sources / "c.jsonl") == [
        t for i, t in enumerate(texts(sources / "a.jsonl")) if i not in (3, 17)]
    assert cli("validate", "c.jsonl", "--cache-dir", tokenizer_cache, cwd=sources).returncode == 0
    assert "all 18 agree" in cli("annotate", "c.jsonl", "--cache-dir", tokenizer_cache, cwd=sources).stdout


def test_a_drop_killed_once_its_dataset_is_in_place_left_it_whole(sources, tokenizer_cache):
    killed("move:6", "drop", "a.jsonl", "--ids", "3", "--output", "c.jsonl", cwd=sources)
    assert cli("validate", "c.jsonl", "--cache-dir", tokenizer_cache, cwd=sources).returncode == 0
    assert checkpoint(sources / "c.jsonl")["history"][0]["dropped"] == [[3, 4]]
    assert list(sources.glob(".c.jsonl.partial-*"))  # the emptied build folder; the next write there removes it
    assert cli("drop", "a.jsonl", "--ids", "4", "--output", "c.jsonl", "--overwrite", cwd=sources).returncode == 0
    assert not list(sources.glob(".c.jsonl*"))


def test_a_merge_killed_while_replacing_leaves_neither_and_is_done_again(sources, tokenizer_cache):
    assert cli("drop", "a.jsonl", "--ids", "1", "--output", "m.jsonl", cwd=sources).returncode == 0
    command = ("merge", "a.jsonl", "b.jsonl", "--output", "m.jsonl", "--overwrite")
    killed("move:2", *command, cwd=sources)
    assert not (sources / "m.jsonl").exists()  # the old one went first; the new one was not yet in
    assert cli(*command, cwd=sources).returncode == 0
    assert len(texts(sources / "m.jsonl")) == 40
    assert cli("validate", "m.jsonl", "--cache-dir", tokenizer_cache, cwd=sources).returncode == 0
