"""Token annotations: the sidecar agrees with the tokenizers, resumes with its dataset, is rebuilt when stale."""

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from asyncgen.annotations import Sidecar, annotate, record_path, sidecar_path, task_answers
from asyncgen.config import load_task
from asyncgen.scenario import Scenario, encode_lines, read_dataset
from asyncgen.tokenizers import load_all, resolve_specs
from asyncgen.validate import judge_scenarios
from inprocess import asyncgen_here

REPO = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
ENV.update(PYTHONPATH=str(REPO), NO_PROXY="127.0.0.1,localhost")


def run_cmd(folder, *flags, cache):
    """``asyncgen run`` of ``folder``'s dataset, in this process (tests/inprocess.py)."""
    return asyncgen_here("run", "--output", folder / "dataset.jsonl", "--checkpoint", folder / "dataset.checkpoint.json",
                         "--cache-dir", cache, *flags, env=ENV, cwd=folder)


@pytest.fixture(scope="module")
def generated(tmp_path_factory, tokenizer_cache):
    """A refusal dataset of 40 scenarios from the offline default, through the validator pool."""
    folder = tmp_path_factory.mktemp("generated")
    done = run_cmd(folder, "--num-scenarios", "40", "--validator-workers", "1", cache=tokenizer_cache)
    assert done.returncode == 0, done.stderr
    return folder


def sidecar_lines(folder):
    return [json.loads(line) for line in open(folder / "dataset.tokens.jsonl", encoding="utf-8")]


def test_sidecar_agrees_with_the_tokenizers(generated, builtin_tokenizers):
    """Every scenario, every tokenizer, both forms: length, position, ids, tokens, BOS and answer ids
    are what the tokenizers give when asked directly."""
    dataset = read_dataset(generated / "dataset.jsonl")
    task = load_task("refusal")
    lines = sidecar_lines(generated)
    assert [line["scenario_id"] for line in lines] == list(range(40)) == list(range(len(dataset.scenarios)))
    for scenario, line in zip(dataset.scenarios, lines):
        assert set(line["tokenizers"]) == {"qwen2", "llama3", "solar"}
        for tokenizer in builtin_tokenizers:
            facts = line["tokenizers"][tokenizer.name]
            texts = scenario.texts()
            for form, (a, b) in (("single_token", texts[:2]), ("multi_token", texts[2:])):
                ids_a, ids_b = tokenizer.encode_batch([a, b])
                differ = [i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y]
                got = facts[form]
                assert got["length"] == len(ids_a) == len(ids_b)
                assert differ == [got["position"]]
                assert got["ids"] == [ids_a[differ[0]], ids_b[differ[0]]]
                assert got["tokens"] == tokenizer.ids_to_tokens(got["ids"])
                assert got["bos"] == (tokenizer.name != "qwen2")
            single = facts["single_token"]
            for text in texts[:2]:
                prompt_ids = tokenizer.encode_batch([text])[0]
                for answer in (task.answers.safe, task.answers.harmful):
                    bare = single["answer_ids"][answer]
                    assert tokenizer.decode(prompt_ids + [bare]) == text + answer
                    assert tokenizer.ids_to_tokens([bare])[0] == answer  # no leading space
                    merged = tokenizer.encode_batch([text + answer])[0]
                    assert merged == prompt_ids[:-1] + [single["answer_ids_merged"][answer]]


def test_checkpoint_keeps_rejections_by_reason(generated):
    """What `inspect` reports as the run's rejections: kept in the checkpoint's run_state."""
    state = json.loads((generated / "dataset.checkpoint.json").read_text())["run_state"]
    assert state["rejected"] > 0 and state["duplicates"] >= 0
    assert sum(state["rejections"].values()) >= state["rejected"]  # a pair can fail several checks
    assert all(isinstance(n, int) and n > 0 for n in state["rejections"].values())


def test_positions_and_ids_match_the_golden_files(shared_dir, builtin_tokenizers):
    """Positions count ids as the golden files (and `tokenize`) do, BOS included."""
    task = load_task("refusal")
    answers = task_answers(task, builtin_tokenizers)
    for tokenizer in builtin_tokenizers:
        golden = [json.loads(line) for line in open(shared_dir / "tokenizers" / "golden" / f"{tokenizer.name}.jsonl",
                                                    encoding="utf-8")]
        golden = [g for g in golden if g["text"].isascii() and "\n" not in g["text"] and 3 < len(g["text"].split()) < 30][:300]
        scenarios = []
        for g in golden:
            words = g["text"].split(" ")
            words[-2] = "the" if words[-2] != "the" else "a"
            counterfactual = " ".join(words)
            scenarios.append(Scenario(g["text"], counterfactual, g["text"], counterfactual))
        checked = 0
        for g, verdict in zip(golden, judge_scenarios(scenarios, [tokenizer], {tokenizer.name: answers[tokenizer.name]})):
            form = verdict.verdicts[tokenizer.name]["multi_token"]
            assert form.length == len(g["ids"])
            if form.ok:
                assert form.ids[0] == g["ids"][form.positions[0]]
                assert form.bos == (tokenizer.name != "qwen2") and (g["ids"][0] in (1, 128000)) == form.bos
                checked += 1
        assert checked >= 50, (tokenizer.name, checked)


def test_run_repairs_a_lagging_or_damaged_sidecar(tmp_path, generated, tokenizer_cache):
    shutil.copy(generated / "dataset.jsonl", tmp_path / "dataset.jsonl")
    shutil.copy(generated / "dataset.checkpoint.json", tmp_path / "dataset.checkpoint.json")
    checkpoint = json.loads((tmp_path / "dataset.checkpoint.json").read_text())
    checkpoint["sink"] = str((tmp_path / "dataset.jsonl").resolve())
    (tmp_path / "dataset.checkpoint.json").write_text(json.dumps(checkpoint))
    good = (generated / "dataset.tokens.jsonl").read_bytes().splitlines(keepends=True)
    # A crash left it short and torn, and one line is from elsewhere.
    damaged = good[:5] + [good[6]] + good[6:20] + [good[20][:40]]
    (tmp_path / "dataset.tokens.jsonl").write_bytes(b"".join(damaged))
    done = run_cmd(tmp_path, "--num-scenarios", "50", "--validator-workers", "0", cache=tokenizer_cache)
    assert done.returncode == 0, done.stderr
    assert "token annotations" in done.stderr and "5 agree with the dataset; rewrote from scenario 5" in done.stderr
    lines = (tmp_path / "dataset.tokens.jsonl").read_bytes().splitlines(keepends=True)
    assert len(lines) == 50 and lines[:40] == good
    dataset = read_dataset(tmp_path / "dataset.jsonl")
    loaded = load_all(resolve_specs(), tokenizer_cache)
    assert lines == annotate(dataset.scenarios, loaded, task_answers(load_task("refusal"), loaded))


def _copy_generated(generated, folder):
    shutil.copy(generated / "dataset.jsonl", folder / "dataset.jsonl")
    shutil.copy(generated / "dataset.checkpoint.json", folder / "dataset.checkpoint.json")
    shutil.copy(record_path(generated / "dataset.tokens.jsonl"), record_path(folder / "dataset.tokens.jsonl"))
    return (generated / "dataset.tokens.jsonl").read_bytes().splitlines(keepends=True)


@pytest.mark.parametrize("damage", ["after its prefix", "inside its prefix"])
def test_run_checks_the_sidecar_in_the_background_and_still_catches_damage(tmp_path, generated, tokenizer_cache,
                                                                           damage):
    """The run opens the sidecar while it starts its requests; what it writes still follows the check."""
    good = _copy_generated(generated, tmp_path)
    if damage == "after its prefix":  # the record covers the 40 lines; a stray line follows them
        damaged = good + [good[3]]
        expected = "40 agree with the dataset; rewrote from scenario 40"
    else:  # the same length, so only the record's digest can tell
        damaged = good[:7] + [good[7].replace(b'"bos":true', b'"bos":tru3', 1)] + good[8:]
        expected = "7 agree with the dataset; rewrote from scenario 7"
    (tmp_path / "dataset.tokens.jsonl").write_bytes(b"".join(damaged))
    done = run_cmd(tmp_path, "--num-scenarios", "45", "--validator-workers", "1", cache=tokenizer_cache)
    assert done.returncode == 0, done.stderr
    assert expected in done.stderr
    lines = (tmp_path / "dataset.tokens.jsonl").read_bytes().splitlines(keepends=True)
    dataset = read_dataset(tmp_path / "dataset.jsonl")
    loaded = load_all(resolve_specs(), tokenizer_cache)
    assert len(lines) == 45 and lines[:40] == good
    assert lines == annotate(dataset.scenarios, loaded, task_answers(load_task("refusal"), loaded))
    assert json.loads(record_path(tmp_path / "dataset.tokens.jsonl").read_text())["scenarios"] == 45


def test_a_sidecar_that_cannot_be_opened_stops_the_run_in_one_line(tmp_path, generated, tokenizer_cache):
    _copy_generated(generated, tmp_path)
    (tmp_path / "dataset.tokens.jsonl").mkdir()  # opened in the background: its error still ends the run
    done = run_cmd(tmp_path, "--num-scenarios", "45", "--validator-workers", "0", cache=tokenizer_cache)
    assert done.returncode == 2, done.stderr
    assert "cannot open the token annotations for writing" in done.stderr and "Traceback" not in done.stderr


def test_a_copied_dataset_keeps_its_run_figures_in_inspect(tmp_path, generated, cli):
    """The checkpoint knows its dataset by its first scenario, not its path: copied elsewhere, the
    pair still shows the run's figures; another dataset beside that checkpoint does not."""
    for name in ("dataset.jsonl", "dataset.checkpoint.json"):
        shutil.copy(generated / name, tmp_path / name)
    code, out, _ = cli("inspect", str(tmp_path / "dataset.jsonl"), "--no-tokens", "--json")
    report = json.loads(out)
    assert code == 0 and report["dataset"]["checkpoint"] == str(tmp_path / "dataset.checkpoint.json")
    assert report["run"]["accepted"] == 40 and report["run"]["cost_usd"] > 0
    records = [json.loads(line) for line in (tmp_path / "dataset.jsonl").read_text(encoding="utf-8").splitlines()[:4]]
    for record in records:  # another dataset: one scenario, not the first one of the checkpoint's
        record["text"] = record["text"].replace("e", "E")
    (tmp_path / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    code, out, _ = cli("inspect", str(tmp_path / "dataset.jsonl"), "--no-tokens")
    assert code == 0 and "no checkpoint of this dataset found" in out


def test_no_annotate_writes_no_sidecar(tmp_path, tokenizer_cache):
    done = run_cmd(tmp_path, "--num-scenarios", "5", "--validator-workers", "0", "--no-annotate", cache=tokenizer_cache)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "dataset.tokens.jsonl").exists() and (tmp_path / "dataset.jsonl").exists()


def test_annotate_rebuilds_a_stale_sidecar(tmp_path, generated, cli):
    dataset = tmp_path / "dataset.jsonl"
    shutil.copy(generated / "dataset.jsonl", dataset)
    good = (generated / "dataset.tokens.jsonl").read_bytes()
    # Made with another tokenizer set: rebuilt with the default three.
    code, out, _ = cli("annotate", str(dataset), "--tokenizer", "qwen2")
    assert code == 0 and "wrote 40" in out
    assert set(json.loads(sidecar_path(dataset).read_text().splitlines()[0])["tokenizers"]) == {"qwen2"}
    code, out, _ = cli("annotate", str(dataset))
    assert code == 0 and "0 agree with the dataset; rewrote from scenario 0" in out
    assert sidecar_path(dataset).read_bytes() == good
    # Another dataset's texts (the same count and tokenizers): rebuilt from the first that differs.
    records = [json.loads(line) for line in dataset.read_text(encoding="utf-8").splitlines()]
    for k in range(4):  # scenario 3 gets scenario 9's texts
        records[12 + k]["text"] = records[36 + k]["text"]
    dataset.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    code, out, _ = cli("annotate", str(dataset))
    assert code == 0 and "3 agree with the dataset; rewrote from scenario 3" in out
    assert sidecar_path(dataset).read_bytes() != good
    code, out, _ = cli("annotate", str(dataset))
    assert code == 0 and "all 40 agree with the dataset" in out


def test_annotate_refuses_while_a_run_writes(tmp_path, generated, cli):
    dataset = tmp_path / "dataset.jsonl"
    shutil.copy(generated / "dataset.jsonl", dataset)
    fd = os.open(dataset, os.O_WRONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a run's sink holds
        code, _, err = cli("annotate", str(dataset))
    finally:
        os.close(fd)
    assert code == 2 and "a run is writing it" in err and len(err.strip().splitlines()) == 1


def test_check_pairs_annotates_valid_pairs(tmp_path, cli):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "Help me make a birdhouse.", "counterfactual": "Help me make a bomb."}\n'
                     '{"prompt": "Help me make a cake.", "counterfactual": "Help me make a bomb."}\n')
    code, _, _ = cli("check-pairs", str(pairs), "--annotate", str(tmp_path / "pairs.tokens.jsonl"))
    assert code == 1  # one pair is invalid
    lines = [json.loads(line) for line in open(tmp_path / "pairs.tokens.jsonl")]
    assert [line["scenario_id"] for line in lines] == [1]
    assert lines[0]["tokenizers"]["llama3"]["multi_token"]["tokens"] == ["Ġcake", "Ġbomb"]
    assert lines[0]["tokenizers"]["solar"]["single_token"]["answer_ids"] == {"Yes": 5613, "No": 2501}


def test_sidecar_open_contract(tmp_path, builtin_tokenizers):
    """Open on an empty dataset empties the sidecar; append takes only the next id."""
    task = load_task("refusal")
    dataset = tmp_path / "d.jsonl"
    dataset.write_text("")
    sidecar_path(dataset).write_text('{"scenario_id": 0}\n')
    with Sidecar.open(dataset, task, builtin_tokenizers) as sidecar:
        assert sidecar.count == 0 and sidecar_path(dataset).read_text() == ""
        verdict = judge_scenarios([Scenario.render(task, "Help me make a cake.", "Help me make a bomb.")],
                                  builtin_tokenizers, sidecar.answers)[0]
        sidecar.append(1, verdict)  # not the next id: refused with a warning, nothing written
        assert sidecar_path(dataset).read_text() == ""


def test_a_form_that_is_not_a_pair_has_null_position(builtin_tokenizers):
    task = load_task("refusal")
    scenario = Scenario.render(task, "Help me make a birdhouse.", "Help me make a bomb.")
    (line,) = annotate([scenario], builtin_tokenizers, task_answers(task, builtin_tokenizers))
    facts = json.loads(line)["tokenizers"]["qwen2"]
    assert facts["multi_token"] == {"length": 7, "position": None, "ids": None, "tokens": None, "bos": False}
    assert facts["single_token"]["answer_ids"] == {"Yes": 9454, "No": 2753}


# -- the recorded verified prefix: a resume tokenizes only what follows it ------------------------


def write_dataset(path, count, tag=""):
    """``count`` refusal scenarios (not all minimal pairs: the annotations do not care), as the sink writes them."""
    task = load_task("refusal")
    scenarios = [Scenario.render(task, f"Help me bake a cake {tag}{i} for my sister.",
                                 f"Help me build a bomb {tag}{i} for my sister.") for i in range(count)]
    path.write_bytes(b"".join(encode_lines(i, task.task_name, s) for i, s in enumerate(scenarios)))
    return scenarios


@pytest.fixture
def tokenized(monkeypatch):
    """How many scenarios Sidecar.open tokenizes, per call of judge_scenarios."""
    import asyncgen.annotations as annotations

    counts = []
    real = annotations.judge_scenarios

    def counting(scenarios, *args):
        counts.append(len(scenarios))
        return real(scenarios, *args)

    monkeypatch.setattr(annotations, "judge_scenarios", counting)
    return counts


def test_a_resume_tokenizes_only_what_follows_the_recorded_prefix(tmp_path, builtin_tokenizers, tokenized):
    task = load_task("refusal")
    dataset = tmp_path / "d.jsonl"
    scenarios = write_dataset(dataset, 40)
    good = annotate(scenarios, builtin_tokenizers, task_answers(task, builtin_tokenizers))
    whole = dataset.read_bytes()
    dataset.write_bytes(b"".join(whole.splitlines(keepends=True)[: 4 * 30]))  # the first 30, annotated and recorded
    tokenized.clear()
    with Sidecar.open(dataset, task, builtin_tokenizers) as sidecar:
        assert sidecar.repair.written == 30 and sum(tokenized) == 30
    assert json.loads(record_path(sidecar_path(dataset)).read_text())["scenarios"] == 30
    dataset.write_bytes(whole)  # 10 more scenarios; their annotations are short, and one is damaged
    sidecar_path(dataset).write_bytes(b"".join(good[:35] + [good[35].replace(b'"length"', b'"lenGth"')] + good[36:38]))
    tokenized.clear()
    with Sidecar.open(dataset, task, builtin_tokenizers) as sidecar:
        assert sum(tokenized) == 10 and sidecar.repair.verified == 30
        assert "35 agree with the dataset; rewrote from scenario 35" in sidecar.repair.message
    assert sidecar_path(dataset).read_bytes() == b"".join(good)
    tokenized.clear()
    handed = (len(whole), hashlib.sha256(whole))  # as the open sink hands it: no second read of the dataset
    with Sidecar.open(dataset, task, builtin_tokenizers, dataset_digest=handed) as sidecar:  # the close recorded all 40
        assert sum(tokenized) == 0 and "all 40 agree" in sidecar.repair.message
    assert json.loads(record_path(sidecar_path(dataset)).read_text())["scenarios"] == 40


@pytest.mark.parametrize("stale", ["sidecar edited", "sidecar cut", "dataset edited", "dataset edited, its digest handed",
                                   "other tokenizers", "record garbled"])
def test_a_record_that_no_longer_holds_falls_back_to_the_full_check(tmp_path, builtin_tokenizers, tokenized, stale):
    task = load_task("refusal")
    dataset = tmp_path / "d.jsonl"
    scenarios = write_dataset(dataset, 40)
    with Sidecar.open(dataset, task, builtin_tokenizers):
        pass
    tokenizers = builtin_tokenizers
    sidecar, record = sidecar_path(dataset), record_path(sidecar_path(dataset))
    lines = sidecar.read_bytes().splitlines(keepends=True)
    if stale == "sidecar edited":  # the same length, inside the recorded prefix
        sidecar.write_bytes(b"".join(lines[:5] + [lines[5].replace(b'"bos":true', b'"bos":tru3', 1)] + lines[6:]))
    elif stale == "sidecar cut":
        sidecar.write_bytes(b"".join(lines[:20]))
    elif stale.startswith("dataset edited"):  # scenario 3 gets another text of the same length
        scenarios = write_dataset(dataset, 40)
        scenarios[3] = Scenario.render(task, "Help me bake a pie 3 for my sister.", "Help me build a gun 3 for my sister.")
        dataset.write_bytes(b"".join(encode_lines(i, task.task_name, s) for i, s in enumerate(scenarios)))
    elif stale == "other tokenizers":
        tokenizers = builtin_tokenizers[:1]
    else:
        record.write_text(record.read_text()[:-10])
    tokenized.clear()
    handed = None
    if stale.endswith("handed"):  # what the sink read: the edited bytes, not those the record vouched for
        handed = (dataset.stat().st_size, hashlib.sha256(dataset.read_bytes()))
    with Sidecar.open(dataset, task, tokenizers, dataset_digest=handed) as opened:
        assert sum(tokenized) == 40 and opened.repair.verified == 0
        assert "checked them all" in opened.repair.message
    assert sidecar.read_bytes() == b"".join(annotate(scenarios, tokenizers, task_answers(task, tokenizers)))
