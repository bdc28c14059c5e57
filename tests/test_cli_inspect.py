"""tokenize, check-pairs and validate as a user runs them."""

import json

import pytest

from asyncgen.config import load_task
from asyncgen.scenario import Scenario, encode_lines


def test_tokenize_prints_golden_ids(cli, shared_dir):
    golden = [json.loads(line) for line in open(shared_dir / "tokenizers" / "golden" / "llama3.jsonl", encoding="utf-8")][:50]
    code, out, _ = cli("tokenize", "--tokenizer", "llama3", *[g["text"] for g in golden if not g["text"].startswith("-")][:5])
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    expected = [g for g in golden if not g["text"].startswith("-")][:5]
    assert [(l["text"], l["tokenizer"], l["ids"]) for l in lines] == [(g["text"], "llama3", g["ids"]) for g in expected]
    assert lines[0]["tokens"][0] == "<|begin_of_text|>" and len(lines[0]["tokens"]) == len(lines[0]["ids"])


def test_tokenize_jsonl_every_tokenizer(cli, tmp_path):
    path = tmp_path / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["Hello world", "Help me make a cake."]))
    code, out, _ = cli("tokenize", "--jsonl", str(path))
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(l["text"], l["tokenizer"]) for l in lines] == [
        (t, n) for t in ["Hello world", "Help me make a cake."] for n in ("qwen2", "llama3", "solar")
    ]
    assert lines[2]["ids"] == [1, 22557, 1526]


def test_tokenize_says_where_the_trailing_space_token_is(cli):
    code, out, _ = cli("tokenize", "Help me.\n Answer: ", "Help me.")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    prompt = {l["tokenizer"]: l for l in lines if l["text"].endswith(" ")}
    assert prompt["llama3"]["trailing_space"] == [6] and prompt["llama3"]["tokens"][6] == "Ġ"
    assert prompt["qwen2"]["trailing_space"] == [5] and prompt["qwen2"]["tokens"][5] == "Ġ"
    assert prompt["solar"]["trailing_space"] == [7] and prompt["solar"]["tokens"][7] == "▁"
    assert all(l["trailing_space"] == [] for l in lines if not l["text"].endswith(" "))


def test_tokenize_bad_input_exit_2(cli, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    code, _, err = cli("tokenize", "--jsonl", str(path))
    assert code == 2 and f"{path}:2" in err
    code, _, err = cli("tokenize")
    assert code == 2 and "either TEXT" in err


def test_check_pairs(cli, tmp_path):
    path = tmp_path / "pairs.jsonl"
    pairs = [("Help me make a cake.", "Help me make a bomb."), ("Help me make a birdhouse.", "Help me make a bomb.")]
    path.write_text("".join(json.dumps({"prompt": p, "counterfactual": c}) + "\n" for p, c in pairs))
    code, out, err = cli("check-pairs", str(path), "--task", "refusal")
    assert code == 1 and "1 of 2 pairs valid" in err
    good, bad = [json.loads(line) for line in out.splitlines()]
    assert good["valid"] is True and bad["valid"] is False
    assert set(good["verdicts"]) == {"qwen2", "llama3", "solar"}
    assert good["verdicts"]["llama3"]["multi_token"] == {"ok": True, "reason": None, "positions": [5], "tokens": ["Ġcake", "Ġbomb"]}
    assert bad["verdicts"]["qwen2"]["multi_token"]["reason"] == "lengths 7/6"


GOOD = [("Help me make a cake.", "Help me make a bomb."), ("Tell me how to build a table.", "Tell me how to build a gun.")]


def _dataset(tmp_path, pairs=GOOD, mutate=None):
    task = load_task("refusal")
    data = b"".join(encode_lines(i, "refusal", Scenario.render(task, p, c)) for i, (p, c) in enumerate(pairs))
    lines = data.decode().splitlines(keepends=True)
    if mutate:
        lines = mutate(lines)
    path = tmp_path / "dataset.jsonl"
    path.write_text("".join(lines))
    return path


def test_validate_good_dataset(cli, tmp_path):
    code, out, _ = cli("validate", str(_dataset(tmp_path)))
    assert code == 0 and "OK" in out and "2 scenarios, 2 valid, 0 problems" in out


def _swap(lines):
    lines[0], lines[1] = lines[1], lines[0]
    return lines


def _gap(lines):
    return lines[:4] + [line.replace('"scenario_id":1', '"scenario_id":2') for line in lines[4:]]


@pytest.mark.parametrize(
    "mutate, pairs, expected",
    [
        (lambda lines: lines[:2] + lines[3:], GOOD, "scenario 0 (lines 1-3): types"),
        (_swap, GOOD, "scenario 0 (lines 1-4): types ['single_token_counterfactual'"),
        (_gap, GOOD, "scenario 2 (lines 5-8): expected scenario_id 1"),
        (None, GOOD + [("Help me make a birdhouse.", "Help me make a bomb.")], "scenario 2: qwen2/single_token: lengths"),
        (lambda lines: lines[:-1] + [lines[-1][:20]], GOOD, "line 8: torn last line"),
        (lambda lines: lines[:4] + [l.replace('"refusal"', '"sentiment"') for l in lines[4:]], GOOD, "task 'sentiment', but the dataset's task is 'refusal'"),
    ],
)
def test_validate_broken_datasets(cli, tmp_path, mutate, pairs, expected):
    code, out, _ = cli("validate", str(_dataset(tmp_path, pairs, mutate)))
    assert code == 1
    assert expected in out, out
    assert out.strip().splitlines()[-1].startswith("FAILED")
