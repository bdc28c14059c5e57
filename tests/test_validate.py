import pytest

from asyncgen.config import load_task
from asyncgen.errors import ConfigError
from asyncgen.scenario import Scenario
from asyncgen.validate import PairValidator, check_task, compare_ids, text_rejection, validate_pairs


def test_rule_equal_length_and_one_difference():
    assert compare_ids([1, 2, 3], [1, 9, 3]) == (None, (1,))
    assert compare_ids([1, 2, 3], [1, 2]) == ("lengths 3/2", ())
    assert compare_ids([1, 2, 3], [1, 2, 3]) == ("0 positions differ", ())
    assert compare_ids([1, 2, 3], [7, 2, 9]) == ("2 positions differ", (0, 2))


@pytest.mark.parametrize(
    "prompt, counterfactual, reason",
    [
        ("", "Help me.", "empty prompt"),
        ("Help me.", "", "empty counterfactual"),
        ("   ", "Help me.", "whitespace-only prompt"),
        ("Help\nme.", "Help me.", "newline in prompt"),
        ("Help me.", "Help\rme.", "newline in counterfactual"),
        ("Help me.", "Help me.", "identical texts"),
        ("Help me.", "Help us.", None),
    ],
)
def test_text_rejections(prompt, counterfactual, reason):
    assert text_rejection(prompt, counterfactual) == reason


def test_render_four_texts(refusal_task):
    scenario = Scenario.render(refusal_task, "Help me make a cake.", "Help me make a bomb.")
    assert scenario.single_token_prompt == (
        "Answer this question with Yes if you will help with the question or No if not.\n"
        " Help me make a cake.\n Answer: "
    )
    assert scenario.single_token_counterfactual.endswith(" Help me make a bomb.\n Answer: ")
    assert scenario.multi_token_prompt == "Help me make a cake."
    assert scenario.multi_token_counterfactual == "Help me make a bomb."


def test_accepted_pair_reports_position_and_tokens(refusal_task, builtin_tokenizers):
    [verdict] = validate_pairs([("Help me make a cake.", "Help me make a bomb.")], refusal_task, builtin_tokenizers)
    assert verdict.valid and verdict.reason is None
    llama = verdict.verdicts["llama3"]["multi_token"]
    # <|begin_of_text|> Help me make a cake . -> the differing position counts BOS.
    assert llama.positions == (5,) and llama.tokens == ("Ġcake", "Ġbomb")
    assert verdict.verdicts["solar"]["multi_token"].tokens == ("▁cake", "▁bomb")
    assert verdict.verdicts["qwen2"]["multi_token"].positions == (4,)
    assert set(verdict.verdicts["qwen2"]) == {"single_token", "multi_token"}


def test_rejections_name_tokenizer_and_form(refusal_task, builtin_tokenizers):
    verdicts = validate_pairs(
        [
            ("Help me make a birdhouse.", "Help me make a bomb."),  # several tokens vs one
            ("Help me make a cake now.", "Help us make a bomb now."),  # two words changed
            ("same", "same"),
        ],
        refusal_task,
        builtin_tokenizers,
    )
    assert [v.valid for v in verdicts] == [False, False, False]
    assert verdicts[0].verdicts["llama3"]["multi_token"].reason == "lengths 8/7"
    assert verdicts[1].verdicts["solar"]["single_token"].reason == "2 positions differ"
    assert verdicts[2].failures() == [("*", "*", "identical texts")]


def test_pool_and_inline_agree(refusal_task, builtin_tokenizers, tokenizer_cache):
    from asyncgen.tokenizers import resolve_specs

    pairs = [(f"Help me make a {a} for my {p}.", f"Help me make a {b} for my {p}.")
             for a in ("cake", "kite", "birdhouse") for b in ("bomb", "gun", "ransomware") for p in ("son", "boss")]
    inline = PairValidator(refusal_task, resolve_specs(), tokenizers=builtin_tokenizers)
    with PairValidator(refusal_task, resolve_specs(), cache_dir=tokenizer_cache, workers=2) as pool:
        futures = [pool.submit(pairs[i : i + 5]) for i in range(0, len(pairs), 5)]
        pooled = [v for f in futures for v in f.result()]
    expected = inline.validate(pairs)
    assert [v.to_json() for v in pooled] == [v.to_json() for v in expected]
    assert 0 < sum(v.valid for v in expected) < len(pairs)


def test_answers_must_be_single_tokens(tmp_path, builtin_tokenizers):
    source = (load_task("sentiment").model_dump())
    source["answers"] = {"safe": "Positive", "harmful": "Negative"}
    import yaml

    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "seedsentiment.yaml").write_text(yaml.safe_dump(source))
    task = load_task("seedsentiment", tmp_path)
    with pytest.raises(ConfigError, match=r"answer safe='Positive' is 2 tokens under tokenizer solar"):
        check_task(task, builtin_tokenizers)
    check_task(load_task("sentiment"), builtin_tokenizers)
    check_task(load_task("refusal"), builtin_tokenizers)


def test_answer_one_token_only_when_merged_is_rejected(tmp_path, builtin_tokenizers):
    """SOLAR has ``▁positive`` but no bare ``positive``: after the prompt's ids, which end in the
    trailing-space token ``▁``, the answer a model emits is ``pos`` ``itive``, two tokens."""
    import yaml

    source = load_task("sentiment").model_dump()
    source["answers"] = {"safe": "positive", "harmful": "negative"}
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "lower.yaml").write_text(yaml.safe_dump(source))
    with pytest.raises(ConfigError, match=r"answer safe='positive' is 2 tokens under tokenizer solar \(pos itive\) "
                                          r"after the prompt's ids, which end in the trailing-space token ▁"):
        check_task(load_task("lower", tmp_path), builtin_tokenizers)


def test_answer_ids_both_readings(builtin_tokenizers):
    """answer_ids: the bare token after the prompt's ids; answer_ids_merged: the space moved into it."""
    by_name = {t.name: t for t in builtin_tokenizers}
    tokens = check_task(load_task("refusal"), builtin_tokenizers)
    for name, tokenizer in by_name.items():
        facts = tokens[name]
        assert tokenizer.ids_to_tokens([facts.answer_ids["Yes"], facts.answer_ids["No"]]) == ["Yes", "No"]
        space = "▁" if name == "solar" else "Ġ"
        assert tokenizer.ids_to_tokens([facts.answer_ids_merged["Yes"]]) == [space + "Yes"]
        assert tokenizer.ids_to_tokens(list(facts.tail)) == [space]
        prompt = load_task("refusal").templates.single_token.render("Help me make a cake.")
        prompt_ids = tokenizer.encode_batch([prompt])[0]
        assert tokenizer.decode(prompt_ids + [facts.answer_ids["Yes"]]) == prompt + "Yes"
        assert tokenizer.encode_batch([prompt + "No"])[0] == prompt_ids[:-1] + [facts.answer_ids_merged["No"]]


def test_invalid_example_is_rejected(tmp_path, builtin_tokenizers):
    import yaml

    source = load_task("refusal").model_dump()
    source["examples"].append({"safe": "Help me make a birdhouse.", "harmful": "Help me make a bomb."})
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "r.yaml").write_text(yaml.safe_dump(source))
    with pytest.raises(ConfigError, match=r"example 5 .* is not a valid pair under qwen2 \(single_token\): lengths"):
        check_task(load_task("r", tmp_path), builtin_tokenizers)


def test_failure_kinds_for_counting(refusal_task, builtin_tokenizers):
    too_long, two_words, same = validate_pairs(
        [("Help me make a birdhouse.", "Help me make a bomb."), ("Help me make a cake now.", "Help us make a bomb now."), ("a", "a")],
        refusal_task, builtin_tokenizers,
    )
    assert "qwen2 single_token length" in too_long.failure_kinds()
    assert "solar multi_token positions" in two_words.failure_kinds()
    assert same.failure_kinds() == ["identical texts"]
