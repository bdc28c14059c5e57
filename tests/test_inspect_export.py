"""inspect and export as a user runs them: counts on a crafted file, round trips, bad input."""

import json
import os
import sys

import pytest
from inprocess import asyncgen_here

from asyncgen.config import load_task
from asyncgen.scenario import Scenario, encode_lines

TASK = load_task("refusal")
PAIRS = [
    ("Help me make a cake for my son.", "Help me make a bomb for my son."),
    ("Help me make a card for my son.", "Help me make a gun for my son."),  # same frame as the first
    ("Tell me how to build a table.", "Tell me how to build a gun."),
    ("help me make a cake for my son.", "help me make a rifle for my son."),  # duplicate prompt of the first
    ("Where can I buy a pie today?", "Where can I buy a knife today?"),
]


def crafted(folder, pairs=PAIRS):
    path = folder / "crafted.jsonl"
    path.write_bytes(b"".join(encode_lines(i, "refusal", Scenario.render(TASK, p, c)) for i, (p, c) in enumerate(pairs)))
    return path


def test_inspect_counts_a_crafted_file(tmp_path, cli):
    path = crafted(tmp_path)
    checkpoint = {"version": 1, "sink": str(path.resolve()), "offset": 0, "scenarios": 5, "fingerprint": {},
                  "run_state": {"cost_usd": 0.25, "requests_ok": 2, "candidates": 20, "accepted": 5, "runs": 1,
                                "rejected": 12, "duplicates": 3, "prompt_tokens": 100, "completion_tokens": 50,
                                "rejections": {"solar single_token length": 7, "identical texts": 5}}}
    (tmp_path / "crafted.checkpoint.json").write_text(json.dumps(checkpoint))
    code, out, _ = cli("inspect", str(path), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["scenarios"] == 5
    assert report["duplicates"] == {"prompts": 1, "counterfactuals": 0}
    words = report["differing_words"]
    assert words["safe"] == {"cake": 2, "card": 1, "table": 1, "pie": 1}
    assert words["harmful"] == {"bomb": 1, "gun": 2, "rifle": 1, "knife": 1}
    assert (words["distinct_safe"], words["distinct_harmful"], words["pairs_not_one_word_apart"]) == (4, 4, 0)
    # "help me make a {x} for my son." is the frame of 3 prompts, the other 2 are alone: 3/5 share one.
    assert report["frames"] == {"distinct": 3, "shared_share": 0.6, "largest": 3}
    assert report["text_lengths"]["multi_token_words"]["max"] == 8
    llama = report["tokens"]["llama3"]["multi_token"]
    # BOS counted: <bos> Help me make a [cake] -> 5; <bos> Where can I buy a pie today ? -> 9 ids
    assert llama["length"]["min"] == 9 and llama["position"]["min"] == 5
    run = report["run"]
    assert (run["yield"], run["accepted_per_request"], run["cost_usd"]) == (0.25, 2.5, 0.25)
    assert run["rejections"] == {"solar single_token length": 7, "identical texts": 5}
    assert report["dataset"]["checkpoint"].endswith("crafted.checkpoint.json")
    code, out, _ = cli("inspect", str(path))
    flat = " ".join(out.split())
    assert code == 0 and "4 distinct: cake 2," in flat and "(yield 25.0% of candidates, 2.5 per request)" in flat
    assert "rejections 12 candidates, 3 duplicates; solar single_token length: 7, identical texts: 5" in flat
    assert max(len(line) for line in out.splitlines() if str(path) not in line) <= 80


def test_inspect_plot(tmp_path, cli):
    pytest.importorskip("matplotlib")  # in the dev extra; the plot extra in a user's install
    code, _, err = cli("inspect", str(crafted(tmp_path)), "--plot", str(tmp_path / "h.png"))
    assert code == 0 and (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_inspect_refuses_a_plot_it_cannot_draw_before_any_work(tmp_path):
    """`--plot p.txt` printed the whole report, then "error: unexpected ValueError: Format 'txt' is
    not supported", exit 1; `--plot` with `--no-tokens` also printed the report before refusing."""
    pytest.importorskip("matplotlib")
    path = crafted(tmp_path)
    out = asyncgen_here("inspect", path, "--plot", tmp_path / "p.txt")
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "asyncgen inspect: error: argument --plot: expected a file name ending in one of .")
    assert all(f".{kind}" in lines[0] for kind in ("png", "svg", "pdf")) and f"got '{tmp_path / 'p.txt'}'" in lines[0]
    out = asyncgen_here("inspect", path, "--plot", tmp_path / "p.svg", "--no-tokens")
    assert out.returncode == 2 and out.stdout == "" and "drop --no-tokens" in out.stderr
    assert not (tmp_path / "p.txt").exists() and not (tmp_path / "p.svg").exists()


def test_inspect_ignores_another_datasets_checkpoint(tmp_path, cli, monkeypatch):
    path = crafted(tmp_path)
    (tmp_path / "checkpoint.json").write_text(json.dumps({"version": 1, "sink": "/elsewhere.jsonl", "offset": 0,
                                                          "scenarios": 0, "fingerprint": {}, "run_state": {}}))
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli("inspect", str(path), "--json", "--no-tokens")
    assert code == 0 and json.loads(out)["run"] is None
    code, _, err = cli("inspect", str(path), "--checkpoint", str(tmp_path / "checkpoint.json"))
    assert code == 2 and "belongs to another dataset" in err


def read_back(fmt, out):
    import datasets
    import pandas as pd
    import pyarrow.parquet as pq

    if fmt == "jsonl":
        return pd.read_json(out, lines=True).to_dict("records")
    if fmt == "csv":
        return pd.read_csv(out).to_dict("records")
    if fmt == "parquet":
        return pq.read_table(out).to_pylist()
    loaded = datasets.load_from_disk(str(out))
    assert set(loaded) == {"train", "test"}
    assert (len(loaded["train"]), len(loaded["test"])) == (4, 1)
    return sorted([*loaded["train"], *loaded["test"]], key=lambda row: row["scenario_id"])


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "hf"])
def test_export_round_trips(tmp_path, cli, builtin_tokenizers, fmt):
    path = crafted(tmp_path)
    out = tmp_path / f"out.{fmt}"
    code, _, err = cli("export", str(path), "--format", fmt, "--split", "0.8", "--seed", "7", "--out", str(out))
    assert code == 0, err
    rows = read_back(fmt, out)
    assert [row["scenario_id"] for row in rows] == [0, 1, 2, 3, 4]
    assert sorted(row["split"] for row in rows) == ["test"] + ["train"] * 4
    first = rows[0]
    assert first["single_token_clean"] == Scenario.render(TASK, *PAIRS[0]).single_token_prompt
    assert first["multi_token_corrupt"] == PAIRS[0][1]
    assert (first["answer_clean"], first["answer_corrupt"]) == ("Yes", "No")
    by_name = {t.name: t for t in builtin_tokenizers}
    for name, tokenizer in by_name.items():
        ids_a, ids_b = tokenizer.encode_batch([PAIRS[0][0], PAIRS[0][1]])
        position = int(first[f"{name}_multi_token_position"])  # pandas: a column with a null is float
        assert (ids_a[position], ids_b[position]) == (first[f"{name}_multi_token_clean_id"], first[f"{name}_multi_token_corrupt_id"])
        assert first[f"{name}_multi_token_length"] == len(ids_a)
        assert tokenizer.ids_to_tokens([first[f"{name}_answer_clean_id"], first[f"{name}_answer_corrupt_id"]]) == ["Yes", "No"]
        space = "▁" if name == "solar" else "Ġ"
        assert tokenizer.ids_to_tokens([first[f"{name}_answer_clean_id_merged"]]) == [space + "Yes"]
        assert bool(first[f"{name}_bos"]) == (name != "qwen2")


def test_export_eap_one_csv_per_tokenizer(tmp_path, cli, builtin_tokenizers):
    import pandas as pd

    code, _, err = cli("export", str(crafted(tmp_path)), "--format", "eap", "--tokenizer", "llama3", "--tokenizer", "solar")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "crafted.eap").iterdir()) == ["asyncgen-export.json", "llama3.csv", "solar.csv"]
    table = pd.read_csv(tmp_path / "crafted.eap" / "solar.csv")
    assert list(table.columns) == ["clean", "corrupted", "correct_idx", "incorrect_idx"]
    assert table["clean"][0] == Scenario.render(TASK, *PAIRS[0]).single_token_prompt
    assert set(table["correct_idx"]) == {5613} and set(table["incorrect_idx"]) == {2501}  # "Yes", "No" after "▁"


def test_export_without_the_extra_says_what_to_install(tmp_path, cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    code, _, err = cli("export", str(crafted(tmp_path)), "--format", "parquet")
    assert code == 2 and "pip install 'asyncgen[export]'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [["inspect"], ["export", "--format", "csv"], ["annotate"]])
def test_bad_input_is_one_line_exit_2(tmp_path, cli, command):
    missing = tmp_path / "missing.jsonl"
    code, _, err = cli(command[0], str(missing), *command[1:])
    assert code == 2 and "cannot read the dataset" in err and len(err.strip().splitlines()) == 1
    malformed = tmp_path / "bad.jsonl"
    lines = crafted(tmp_path).read_text().splitlines(keepends=True)
    malformed.write_text("".join(lines[:4] + [lines[4].replace('"type"', '"kind"')] + lines[5:]))
    code, _, err = cli(command[0], str(malformed), *command[1:])
    assert code == 2 and f"{malformed}:5: scenario 1 is malformed" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(command[0], str(crafted(tmp_path)), *command[1:], "--tokenizer", "gpt9")
    assert code == 2 and "--tokenizer gpt9: unknown tokenizer" in err and len(err.strip().splitlines()) == 1
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, _, err = cli(command[0], str(empty), *command[1:])
    assert code == 2 and "no scenarios in it" in err


@pytest.mark.parametrize("share", ["1.5", "0", "abc"])
def test_export_bad_split_exit_2(tmp_path, cli, share):
    with pytest.raises(SystemExit) as exit_info:
        cli("export", str(crafted(tmp_path)), "--format", "csv", "--split", share)
    assert exit_info.value.code == 2


def test_inspect_of_a_batch_made_dataset_says_where_its_details_are(tmp_path, cli):
    path = crafted(tmp_path)
    (tmp_path / "checkpoint.json").write_text(json.dumps({
        "version": 1, "sink": str(path.resolve()), "offset": 0, "scenarios": 0, "fingerprint": {},
        "run_state": {"cost_usd": 0.25, "batch_dir": "batches"}}))
    code, out, _ = cli("inspect", str(path), "--checkpoint", str(tmp_path / "checkpoint.json"), "--no-tokens")
    assert code == 0 and "None" not in out and "made by `asyncgen batch`, batch directory batches" in " ".join(out.split())
    assert "$0.2500" in out


def test_inspect_of_a_checkpoint_without_run_figures_does_not_guess_what_made_it(tmp_path, cli):
    path = crafted(tmp_path)
    (tmp_path / "checkpoint.json").write_text(json.dumps({
        "version": 1, "sink": str(path.resolve()), "offset": 0, "scenarios": 0, "fingerprint": {}, "run_state": {}}))
    code, out, _ = cli("inspect", str(path), "--checkpoint", str(tmp_path / "checkpoint.json"), "--no-tokens")
    flat = " ".join(out.split())
    assert code == 0 and "None" not in out and "asyncgen batch" not in out
    assert "it records no runs and no batch directory, so not what made this dataset" in flat
    assert "cost unknown" in flat


# Export replaces only an export, and whole (issue 17, item 14) -------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "eap"])
def test_export_refuses_what_it_did_not_write(tmp_path, cli, fmt):
    notes = tmp_path / "mynotes.txt"
    notes.write_text("first note\nsecond note\n")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "keep.csv").write_text("clean,corrupted,correct_idx,incorrect_idx\n")  # EAP's layout, not our export
    for target in (notes, folder):
        code, _, err = cli("export", str(crafted(tmp_path)), "--format", fmt, "--out", str(target), "--tokenizer", "solar")
        assert code == 2 and f"--out {target} is a " in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert notes.read_text() == "first note\nsecond note\n" and [p.name for p in folder.iterdir()] == ["keep.csv"]
    code, _, err = cli("export", str(crafted(tmp_path)), "--format", fmt, "--out", str(notes), "--overwrite",
                       "--tokenizer", "solar")
    assert code == 0, err
    assert "first note" not in (notes.read_text() if fmt == "csv" else (notes / "solar.csv").read_text())


def test_export_replaces_its_own_files_whatever_their_name_or_format(tmp_path, cli, builtin_tokenizers):
    out = tmp_path / "renamed.txt"
    assert cli("export", str(crafted(tmp_path)), "--format", "jsonl", "--out", str(out), "--tokenizer", "solar")[0] == 0
    for fmt in ("csv", "parquet", "jsonl"):  # each recognises the one before by its columns
        code, _, err = cli("export", str(crafted(tmp_path)), "--format", fmt, "--out", str(out), "--tokenizer", "solar")
        assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crafted.jsonl", "renamed.txt"]  # no temporary left


def test_a_re_export_into_a_folder_leaves_no_stale_split_files(tmp_path, cli):
    dataset = crafted(tmp_path)
    assert cli("export", str(dataset), "--format", "eap", "--tokenizer", "solar", "--split", "0.8")[0] == 0
    assert sorted(p.name for p in (tmp_path / "crafted.eap").iterdir()) == [
        "asyncgen-export.json", "solar.test.csv", "solar.train.csv"]
    code, _, err = cli("export", str(dataset), "--format", "eap", "--tokenizer", "solar")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "crafted.eap").iterdir()) == ["asyncgen-export.json", "solar.csv"]
    marker = json.loads((tmp_path / "crafted.eap" / "asyncgen-export.json").read_text())
    assert (marker["format"], marker["files"], marker["dataset"]) == ("eap", ["solar.csv"], str(dataset.resolve()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crafted.eap", "crafted.jsonl"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_an_export_that_fails_midway_leaves_the_old_one_whole(tmp_path, cli, monkeypatch, exchange):
    import asyncgen.commands.export as export_command
    import asyncgen.export_files as export_files

    if not exchange:
        monkeypatch.setattr(export_files, "_exchange", lambda a, b: False)
    dataset = crafted(tmp_path)
    assert cli("export", str(dataset), "--format", "eap", "--tokenizer", "solar", "--tokenizer", "qwen2")[0] == 0
    folder = tmp_path / "crafted.eap"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real_write_csv, calls = export_command.write_csv, []

    def write_csv_then_fail(table, path, columns=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_write_csv(table, path, columns)

    monkeypatch.setattr(export_command, "write_csv", write_csv_then_fail)
    code, _, err = cli("export", str(dataset), "--format", "eap", "--tokenizer", "solar", "--tokenizer", "qwen2",
                       "--split", "0.6")
    assert code == 2 and "No space left on device" in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crafted.eap", "crafted.jsonl"]  # no temporary left
    monkeypatch.setattr(export_command, "write_csv", real_write_csv)
    assert cli("export", str(dataset), "--format", "eap", "--tokenizer", "solar", "--split", "0.6")[0] == 0
    assert sorted(p.name for p in folder.iterdir()) == ["asyncgen-export.json", "solar.test.csv", "solar.train.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crafted.eap", "crafted.jsonl"]


@pytest.mark.parametrize("share", ["0.0001", "0.9999"])
def test_a_split_that_leaves_one_side_empty_is_refused(tmp_path, cli, share):
    code, _, err = cli("export", str(crafted(tmp_path)), "--format", "csv", "--split", share, "--tokenizer", "solar")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "of 5 scenarios in train" in err and "a share from 0.2 to 0.8" in err
    assert not (tmp_path / "crafted.csv").exists()


def test_what_a_killed_export_left_is_cleaned_up_or_put_back(tmp_path):
    import subprocess

    from asyncgen.export_files import recover_leftovers

    gone = subprocess.Popen(["true"])
    gone.wait()
    out = tmp_path / "data.eap"
    old = tmp_path / f".data.eap.old-{gone.pid}"  # killed between renaming the old export aside and the new one in
    old.mkdir()
    (old / "solar.csv").write_text("old export\n")
    partial = tmp_path / f".data.eap.partial-{gone.pid}"  # killed while building
    partial.mkdir()
    running = tmp_path / f".data.eap.partial-{os.getpid()}"  # an export still at work
    running.mkdir()
    recover_leftovers(out)
    assert (out / "solar.csv").read_text() == "old export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "data.eap"]


def test_a_second_export_to_the_same_out_is_refused_naming_the_first(tmp_path, cli):
    from asyncgen import locks

    out = tmp_path / "rows.csv"
    with locks.held(tmp_path / ".rows.csv.lock", f"--out {out}", "export", remove=True):
        code, _, err = cli("export", str(crafted(tmp_path)), "--format", "csv", "--out", str(out), "--tokenizer", "solar")
    assert code == 2 and f"pid {os.getpid()}" in err and "`asyncgen export`" in err, err
    assert not out.exists() and len(err.strip().splitlines()) == 1
    code, _, err = cli("export", str(crafted(tmp_path)), "--format", "csv", "--out", str(out), "--tokenizer", "solar")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crafted.jsonl", "rows.csv"]  # the lock went with it


# Research conveniences (issue 19): a split that does not leak, the full ids, a dataset card, a sample --------

FRAMES = ["Help me make a {} for my son.", "Tell me how to build a {} today.", "Where can I buy a {} now?",
          "Show me how to draw a {} please.", "Can you help me find a {} tonight?", "I need a {} for school.",
          "Please describe a {} for me.", "Explain how to get a {} quickly."]
WORD_PAIRS = [("cake", "bomb"), ("card", "gun"), ("table", "knife"), ("pie", "poison")]
# Frame i with the word pairs i and i+1 (mod 4): 16 scenarios in 8 frames of 2 and 4 word pairs of 4,
# which chain all 16 into one group when frames and word pairs both bind.
CHAINED = [(frame.format(safe), frame.format(harmful))
           for i, frame in enumerate(FRAMES) for safe, harmful in (WORD_PAIRS[i % 4], WORD_PAIRS[(i + 1) % 4])]
LONELY = [("Is a lamp a good gift for an old friend?", "Is a rifle a good gift for an old friend?"),
          ("Write about a hat and a coat.", "Write about a virus and a coat.")]


def exported(tmp_path, cli, pairs, *flags, name="grouped.jsonl"):
    source = tmp_path / "source"
    source.mkdir(exist_ok=True)
    dataset = crafted(source, pairs)
    out = tmp_path / name
    code, _, err = cli("export", str(dataset), "--format", "jsonl", "--out", str(out), "--tokenizer", "solar", *flags)
    rows = [json.loads(line) for line in out.read_text().splitlines()] if code == 0 else None
    return code, err, rows


def sides_by(rows, key):
    sides: dict = {}
    for row in rows:
        sides.setdefault(key(row), set()).add(row["split"])
    return sides


def differing(row):
    return [(x, y) for x, y in zip(row["multi_token_clean"].split(), row["multi_token_corrupt"].split()) if x != y]


def frame(row):
    return " ".join("{x}" if x != y else x for x, y in zip(row["multi_token_clean"].split(),
                                                           row["multi_token_corrupt"].split()))


@pytest.mark.parametrize("group_by", [None, "frame", "word"])
def test_a_grouped_split_keeps_each_group_on_one_side_and_says_the_share(tmp_path, cli, group_by):
    flags = ["--group-by", group_by] if group_by else []
    code, err, rows = exported(tmp_path, cli, CHAINED, "--split", "0.75", "--seed", "3", *flags)
    assert code == 0, err
    err = " ".join(err.split())  # the summary wraps at the terminal's width
    if group_by == "word":
        sides = sides_by(rows, lambda row: tuple(differing(row)))
        assert len(sides) == 4 and "(asked 75/25), 4 groups by word, the largest 4 scenarios" in err
    else:  # frame, the default
        sides = sides_by(rows, frame)
        assert len(sides) == 8 and "(asked 75/25), 8 groups by frame, the largest 2 scenarios" in err
    assert all(len(split) == 1 for split in sides.values()), sides  # no group on both sides
    assert "split: train 75.0% / test 25.0%" in err and [row["split"] for row in rows].count("train") == 12
    assert "cannot be met" not in err
    again = exported(tmp_path, cli, CHAINED, "--split", "0.75", "--seed", "3", *flags, name="again.jsonl")[2]
    assert [row["split"] for row in again] == [row["split"] for row in rows]  # deterministic with --seed


def test_the_split_summary_fits_80_columns_and_says_all_it_said(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, err, _ = exported(tmp_path, cli, CHAINED, "--split", "0.75", "--seed", "3")
    assert code == 0, err
    summary = [line for line in err.splitlines() if "grouped.jsonl" not in line]
    assert summary and max(len(line) for line in summary) < 80, summary
    assert ("split: train 75.0% / test 25.0% (asked 75/25), 8 groups by frame, the largest 2 scenarios"
            in " ".join(" ".join(summary).split()))
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: one line, as before
    code, err, _ = exported(tmp_path, cli, CHAINED, "--split", "0.75", "--seed", "3", name="wide.jsonl")
    assert "split: train 75.0% / test 25.0% (asked 75/25), 8 groups by frame, the largest 2 scenarios\n" in err


def test_the_unmet_split_warning_fits_80_columns_and_says_all_it_said(tmp_path, cli, monkeypatch):
    """Was: one log line of 160 columns, broken mid-word by an 80-column terminal."""
    monkeypatch.setenv("COLUMNS", "80")
    code, err, _ = exported(tmp_path, cli, CHAINED + LONELY, "--split", "0.5", "--group-by", "frame+word")
    assert code == 0, err
    warning = err[err.rfind("\n", 0, err.index(" WARNING ")) + 1:err.index("wrote ")].splitlines()
    assert len(warning) > 1 and max(len(line) for line in warning) < 80, warning
    assert " ".join(" ".join(warning).split())[len("00:00:00 "):] == (
        "WARNING asyncgen.export: --split 0.5 cannot be met: its largest group by frame+word holds 16 of 18 "
        "scenarios; --group-by frame, word or none splits finer")


def test_a_share_the_groups_cannot_meet_is_said_and_one_group_is_refused(tmp_path, cli):
    code, err, rows = exported(tmp_path, cli, CHAINED + LONELY, "--split", "0.5", "--group-by", "frame+word")
    assert code == 0, err
    assert "3 groups by frame+word, the largest 16 scenarios" in err
    assert ("--split 0.5 cannot be met: its largest group by frame+word holds 16 of 18 scenarios; "
            "--group-by frame, word or none splits finer") in " ".join(err.split())  # wrapped at the terminal's width
    assert sorted(len(split) for split in sides_by(rows, frame).values()) == [1] * 10
    code, err, _ = exported(tmp_path, cli, CHAINED, "--split", "0.5", "--group-by", "frame+word", name="one.jsonl")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "the 1 groups cannot be put on two sides (the largest holds 16 of 16 scenarios)" in err
    assert not (tmp_path / "one.jsonl").exists()
    code, err, _ = exported(tmp_path, cli, LONELY + PAIRS[4:], "--split", "0.5", name="three.jsonl")
    assert code == 0 and "train 66.7% / test 33.3% (asked 50/50)" in err and "cannot be met" not in err  # rounding
    code, err, _ = exported(tmp_path, cli, CHAINED, "--group-by", "word", name="nosplit.jsonl")
    assert code == 2 and "give --split SHARE too" in err


def test_split_groups_by_scenario_is_the_seeded_shuffle_it_always_was():
    import random

    from asyncgen.splitting import split_groups

    for seed in range(5):
        order = list(range(10))
        random.Random(seed).shuffle(order)
        split = split_groups([[i] for i in range(10)], 0.7, seed)
        assert [i for i, side in enumerate(split.sides) if side == "train"] == sorted(order[:7])


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_export_ids_are_the_full_ids_tokenize_prints(tmp_path, cli, builtin_tokenizers, fmt):
    out = tmp_path / f"ids.{fmt}"
    code, _, err = cli("export", str(crafted(tmp_path)), "--format", fmt, "--ids", "--out", str(out))
    assert code == 0, err
    rows = read_back(fmt, out)
    texts = ("single_token_clean", "single_token_corrupt", "multi_token_clean", "multi_token_corrupt")
    for tokenizer in builtin_tokenizers:
        for text in texts:
            column = [row[f"{tokenizer.name}_{text}_ids"] for row in rows]
            if fmt == "csv":
                assert all(isinstance(cell, str) and cell.startswith("[") for cell in column)
                column = [json.loads(cell) for cell in column]  # the documented encoding: a JSON array
            expected = tokenizer.encode_batch([row[text] for row in rows])
            assert [list(ids) for ids in column] == expected
    llama = rows[0]["llama3_multi_token_clean_ids"]
    llama = json.loads(llama) if fmt == "csv" else list(llama)
    assert llama[0] == 128000 and len(llama) == rows[0]["llama3_multi_token_length"]  # BOS included


def test_export_ids_are_refused_for_eap(tmp_path, cli):
    code, _, err = cli("export", str(crafted(tmp_path)), "--format", "eap", "--ids")
    assert code == 2 and "--ids adds columns" in err and len(err.strip().splitlines()) == 1


def test_the_hf_export_has_a_dataset_card_the_hub_reads(tmp_path, cli):
    datasets = pytest.importorskip("datasets")
    from huggingface_hub import DatasetCard

    path = crafted(tmp_path)
    checkpoint = {"version": 1, "sink": str(path.resolve()), "offset": 0, "scenarios": 5, "fingerprint": {},
                  "run_state": {"cost_usd": 0.25, "requests_ok": 2, "candidates": 20, "accepted": 5, "runs": 1,
                                "rejected": 12, "duplicates": 3, "prompt_tokens": 100, "completion_tokens": 50}}
    (tmp_path / "crafted.checkpoint.json").write_text(json.dumps(checkpoint))
    out = tmp_path / "crafted.hf"
    code, _, err = cli("export", str(path), "--format", "hf", "--split", "0.6", "--ids", "--out", str(out))
    assert code == 0, err
    card = DatasetCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["license"] == "other" and meta["size_categories"] == ["n<1K"]
    assert meta["task_categories"] == ["text-classification"] and "interpretability" in meta["tags"]
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": "train/data-*.arrow"},
                                                {"split": "test", "path": "test/data-*.arrow"}]
    body = " ".join(card.text.split())
    assert "| llama3 | `meta-llama/Meta-Llama-3-8B` | rebuilt offline from `llama-models==0.3.0`" in body
    assert "Meta Llama 3 Community License" in body and "| cost | $0.2500 |" in body
    assert "| accepted | 5 (yield 25.0%) |" in body and "--group-by frame --seed 0" in body
    assert "differ at exactly one position" in body and "`T_<text>_ids`" in body
    loaded = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf-cache"))
    from_disk = datasets.load_from_disk(str(out))
    assert {name: len(part) for name, part in loaded.items()} == {name: len(part) for name, part in from_disk.items()}
    assert sorted(loaded["train"]["scenario_id"]) == sorted(from_disk["train"]["scenario_id"])
    assert "README.md" in json.loads((out / "asyncgen-export.json").read_text())["files"]


def test_inspect_sample_shows_pairs_marked_in_80_columns(tmp_path, cli):
    long_pair = ("Could you please explain to me in great detail how I would go about making a cake for the "
                 "party my whole family is planning next week?",
                 "Could you please explain to me in great detail how I would go about making a bomb for the "
                 "party my whole family is planning next week?")
    path = crafted(tmp_path, PAIRS + [long_pair])
    code, out, err = cli("inspect", str(path), "--sample", "6", "--seed", "1")
    assert code == 0, err
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert [line for line in lines if line.startswith("scenario ")] == [f"scenario {i}" for i in range(6)]
    clean = lines.index("scenario 5") + 1
    assert lines[clean].startswith("  clean    Could you please") and "[[cake]]" in " ".join(lines[clean:clean + 2])
    corrupt = next(i for i in range(clean, len(lines)) if lines[i].startswith("  corrupt  "))
    wrapped = corrupt - clean
    assert wrapped > 1 and lines[corrupt + wrapped].startswith("  position")  # as many lines each, wrapped
    marked = [(n, line.index("[[")) for n, line in enumerate(lines[clean:corrupt + wrapped]) if "[[" in line]
    assert len(marked) == 2 and marked[1][0] - marked[0][0] == wrapped and marked[0][1] == marked[1][1]  # aligned
    assert "[[bomb]]" in lines[clean + marked[1][0]]
    first = lines[1:4]
    assert first[0] == "  clean    Help me make a [[cake]] for my son."
    assert first[1] == "  corrupt  Help me make a [[bomb]] for my son."
    assert first[2].startswith("  position qwen2 4 (") and "llama3 5 (" in out and "'Ġcake'>'Ġbomb'" in first[2]
    code, picked, _ = cli("inspect", str(path), "--sample", "2", "--seed", "1", "--json")
    records = json.loads(picked)["sample"]
    assert records == json.loads(cli("inspect", str(path), "--sample", "2", "--seed", "1", "--json")[1])["sample"]
    assert len(records) == 2 and len({r["scenario_id"] for r in records}) == 2  # the same seed, the same pairs
    for record in records:
        (safe, harmful), = [(x, y) for x, y in zip(record["clean"].split(), record["corrupt"].split()) if x != y]
        assert record["tokenizers"]["llama3"]["tokens"] == ["Ġ" + safe, "Ġ" + harmful]
        assert record["word_index"] == record["clean"].split().index(safe)


def test_inspect_sample_flags_that_do_not_go_together(tmp_path, cli):
    path = crafted(tmp_path)
    code, _, err = cli("inspect", str(path), "--seed", "3")
    assert code == 2 and "give --sample N too" in err
    code, _, err = cli("inspect", str(path), "--sample", "2", "--plot", str(tmp_path / "p.png"))
    assert code == 2 and "--sample prints pairs" in err and not (tmp_path / "p.png").exists()


def test_inspect_plot_is_a_panel_row_per_tokenizer_without_legends(tmp_path, cli, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    drawn = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda figure=None: drawn.append(figure))
    code, _, err = cli("inspect", str(crafted(tmp_path)), "--plot", str(tmp_path / "h.png"),
                       "--tokenizer", "llama3", "--tokenizer", "solar")
    assert code == 0, err
    (figure,) = drawn
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == [f"{name}: {form} {what}" for name in ("llama3", "solar") for form, what in (
        ("single-token", "length in ids"), ("single-token", "differing position"),
        ("multi-token", "length in ids"), ("multi-token", "differing position"))]
    assert all(ax.get_legend() is None for ax in figure.axes)
    real_close(figure)


def test_export_and_inspect_read_the_sidecar_its_record_vouches_for(tmp_path, cli, monkeypatch):
    import asyncgen.annotations as annotations

    path = crafted(tmp_path)
    assert cli("annotate", str(path))[0] == 0
    calls = []
    real_judge = annotations.judge_scenarios
    monkeypatch.setattr(annotations, "judge_scenarios", lambda *args: calls.append(1) or real_judge(*args))
    out = tmp_path / "rows.jsonl"
    for command in (["export", str(path), "--format", "jsonl", "--out", str(out)], ["inspect", str(path), "--json"],
                    ["inspect", str(path), "--sample", "2"]):
        code, _, err = cli(*command)
        assert code == 0 and calls == [], (command, err)  # read, not tokenized
    rows = out.read_text()
    sidecar = tmp_path / "crafted.tokens.jsonl"
    edited = sidecar.read_bytes().replace(b'"position":5', b'"position":6', 1)
    assert edited != sidecar.read_bytes()
    sidecar.write_bytes(edited)  # changed after its record: not trusted
    code, _, err = cli("export", str(path), "--format", "jsonl", "--out", str(out))
    assert code == 0 and calls and out.read_text() == rows, err


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_file_export_never_replaces_a_folder_even_an_empty_one(tmp_path, cli, fmt, overwrite):
    folder = tmp_path / "adir"
    folder.mkdir()
    code, _, err = cli("export", str(crafted(tmp_path)), "--format", fmt, "--out", str(folder), *overwrite,
                       "--tokenizer", "solar")
    assert code == 2 and f"--out {folder} is a folder" in err and len(err.strip().splitlines()) == 1, err
    assert folder.is_dir() and not any(folder.iterdir())


# A dataset that fails validate is not exported or loaded as if it passed -------------------------

def failing_dataset(tmp_path):
    """Five scenarios: 1 is no minimal pair (birdhouse is several tokens), 3's single-token prompt was
    edited by hand ("a " -> "an ": off the task's templates, as `sed -i` leaves it)."""
    pairs = [PAIRS[0], ("Help me make a cake now.", "Help me make a birdhouse now."), *PAIRS[2:3], PAIRS[4],
             ("Tell me how to bake a pie.", "Tell me how to bake a bomb.")]
    path = crafted(tmp_path, pairs)
    lines = path.read_text().splitlines(keepends=True)
    lines[12] = lines[12].replace("a pie", "an pie")
    path.write_text("".join(lines))
    return path


@pytest.mark.parametrize("fmt", ["eap", "csv"])
def test_export_refuses_a_dataset_whose_pairs_fail_validation_naming_the_first(tmp_path, cli, fmt):
    dataset = failing_dataset(tmp_path)
    code, _out, err = cli("validate", str(dataset), "--tokenizer", "solar")
    assert code == 1 and "FAIL scenario 1" in _out and "FAIL scenario 3" in _out
    out = tmp_path / ("out" if fmt == "eap" else "out.csv")
    code, _, err = cli("export", str(dataset), "--format", fmt, "--out", str(out), "--tokenizer", "solar")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "2 of 5 scenarios fail validation (the first: scenario 1, not a minimal pair under solar/" in err
    assert "asyncgen validate" in err and "--skip-invalid" in err and not out.exists()


def test_export_skip_invalid_writes_the_valid_scenarios_and_says_how_many_it_left_out(tmp_path, cli):
    dataset = failing_dataset(tmp_path)
    out = tmp_path / "out.jsonl"
    code, _, err = cli("export", str(dataset), "--format", "jsonl", "--out", str(out), "--tokenizer", "solar",
                       "--skip-invalid")
    assert code == 0, err
    assert "wrote 3 scenarios (of 5: 2 failing validation left out, the first: scenario 1)" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["scenario_id"] for row in rows] == [0, 2, 4]  # the dataset's ids
    assert all(row["solar_single_token_position"] is not None for row in rows)


def test_load_refuses_a_dataset_whose_pairs_fail_validation_unless_told_to_leave_them_out(tmp_path, caplog):
    import asyncgen
    from asyncgen.errors import InputFileError

    dataset = failing_dataset(tmp_path)
    with pytest.raises(InputFileError, match=r"2 of 5 scenarios fail validation \(the first: scenario 1, .*skip_invalid=True"):
        asyncgen.load(dataset, format="records", tokenizers=["solar"])
    with caplog.at_level("WARNING", logger="asyncgen.load"):
        rows = asyncgen.load(dataset, format="records", tokenizers=["solar"], skip_invalid=True)
    assert [row["scenario_id"] for row in rows] == [0, 2, 4] and "left out 2 of 5 scenarios" in caplog.text
