"""Bad input, fuzzed (hypothesis): the answer parser, the task loader and the sink's resume never
crash or hang; they count a rejection or raise one clear error, and never lose a valid scenario."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncgen.config import load_task
from asyncgen.errors import AsyncgenError, SinkError, UsageError
from asyncgen.prompting import parse_answer
from asyncgen.scenario import Scenario, encode_lines
from asyncgen.sink import ScenarioSink

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FAILURE_KINDS = {None, "bad_json", "bad_shape", "no_pairs", "refusal", "length", "content_filter", "empty"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=40,
)
pair_items = st.fixed_dictionaries({"prompt": st.text(), "counterfactual": st.text()})
answers_with_pairs = st.one_of(
    st.fixed_dictionaries({"pairs": st.lists(pair_items | json_values, max_size=6)}),
    st.lists(pair_items | json_values, max_size=6),
    pair_items,
)


def check_parsed(parsed) -> None:
    assert parsed.failure in FAILURE_KINDS
    for pair in parsed.pairs:
        assert isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(text, str) for text in pair)


@FUZZ
@given(content=st.text(alphabet=st.characters(codec="utf-8")), finish=st.sampled_from([None, "stop", "length", "content_filter"]))
def test_any_text_is_parsed_or_counted(content, finish):
    check_parsed(parse_answer(content, finish, None))


@FUZZ
@given(answer=st.one_of(json_values, answers_with_pairs), prose=st.sampled_from(["", "Here you go: ", "```json\n"]))
def test_any_json_is_parsed_or_counted(answer, prose):
    parsed = parse_answer(prose + json.dumps(answer), "stop", None)
    check_parsed(parsed)
    if isinstance(answer, dict) and isinstance(answer.get("pairs"), list):
        # Every item is kept as a pair or counted as dropped, by kind: none vanishes uncounted.
        assert len(parsed.pairs) + sum(parsed.dropped.values()) == len(answer["pairs"])
        well_formed = [item for item in answer["pairs"]
                       if isinstance(item, dict) and isinstance(item.get("prompt"), str) and item["prompt"].strip()
                       and isinstance(item.get("counterfactual"), str) and item["counterfactual"].strip()]
        assert len(parsed.pairs) == len(well_formed)  # every well-formed pair is kept


@pytest.mark.parametrize("depth", [10, 1000, 100_000])
def test_deeply_nested_and_huge_answers_are_rejected_not_crashed(depth):
    check_parsed(parse_answer("[" * depth + "]" * depth, "stop", None))
    check_parsed(parse_answer('{"pairs": ' + "[" * depth, "length", None))
    huge = json.dumps({"pairs": [{"prompt": "a\x00b\nc" * 1000, "counterfactual": "x" * 100_000}] * 50})
    parsed = parse_answer(huge, "stop", None)
    assert len(parsed.pairs) == 50  # kept; the validator rejects newlines and NULs, counted there


# -- the task loader -------------------------------------------------------------------------------

yaml_documents = st.one_of(
    st.text(max_size=300),
    json_values.map(lambda value: yaml.safe_dump(value)),
    st.dictionaries(st.sampled_from(["task_name", "templates", "answers", "examples", "batch_size",
                                     "generation_instructions", "lexicon", "tokenizers", "description", "extra"]),
                    json_values, max_size=9).map(lambda value: yaml.safe_dump(value)),
)


@FUZZ
@given(document=yaml_documents)
def test_any_yaml_loads_or_is_one_clear_error(tmp_path_factory, document):
    folder = tmp_path_factory.mktemp("cfg")
    (folder / "tasks").mkdir()
    (folder / "tasks" / "fuzzed.yaml").write_text(document, encoding="utf-8")
    try:
        load_task("fuzzed", str(folder))
    except UsageError as exc:
        assert "\n" not in str(exc).strip() and "fuzzed" in str(exc)


# -- the sink's resume -----------------------------------------------------------------------------

FINGERPRINT = {"task": "refusal", "templates": {}, "tokenizers": ["qwen2"]}
SCENARIOS = 6


def _dataset(folder: Path) -> bytes:
    with ScenarioSink.open(folder / "out.jsonl", folder / "out.checkpoint.json", task_name="refusal",
                           fingerprint=FINGERPRINT) as sink:
        for i in range(SCENARIOS):
            sink.append(Scenario(f"A{i}", f"B{i}", f"Help me {i}.", f"Harm me {i}."))
    return (folder / "out.jsonl").read_bytes()


damage = st.one_of(
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=200)),
    st.tuples(st.just("cut"), st.integers(min_value=0, max_value=10_000)),
    st.tuples(st.just("flip"), st.integers(min_value=0, max_value=10_000), st.integers(min_value=1, max_value=255)),
)


@FUZZ
@given(data_damage=damage, checkpoint_damage=st.one_of(st.none(), damage))
def test_damaged_dataset_or_checkpoint_resumes_or_refuses_and_loses_nothing(tmp_path_factory, data_damage, checkpoint_damage):
    folder = tmp_path_factory.mktemp("sink")
    original = _dataset(folder)
    boundaries = [0]
    for i in range(SCENARIOS):
        boundaries.append(boundaries[-1] + len(encode_lines(i, "refusal", Scenario(f"A{i}", f"B{i}", f"Help me {i}.", f"Harm me {i}."))))
    damaged, first_changed = _apply(original, data_damage)
    (folder / "out.jsonl").write_bytes(damaged)
    if checkpoint_damage is not None:
        checkpoint = (folder / "out.checkpoint.json").read_bytes()
        (folder / "out.checkpoint.json").write_bytes(_apply(checkpoint, checkpoint_damage)[0])
    intact_before_damage = sum(1 for end in boundaries[1:] if end <= first_changed)
    try:
        sink = ScenarioSink.open(folder / "out.jsonl", folder / "out.checkpoint.json", task_name="refusal",
                                 fingerprint=FINGERPRINT)
    except AsyncgenError as exc:
        assert isinstance(exc, (UsageError, SinkError)) and "\n" not in str(exc)
        assert (folder / "out.jsonl").read_bytes() == damaged  # a refusal changes nothing
        return
    with sink:
        assert sink.count >= intact_before_damage  # never a valid scenario lost
        kept = (folder / "out.jsonl").read_bytes()
        assert kept == damaged[: len(kept)]  # only a tail is ever cut
        cut = damaged[len(kept):]
        if cut:
            backups = sorted(folder.glob("out.jsonl.torn-*"))
            assert backups and backups[-1].read_bytes() == cut  # and it is kept aside


def _apply(data: bytes, how: tuple) -> tuple[bytes, int]:
    """The damaged bytes and the offset of the first changed byte."""
    if how[0] == "append":
        return data + how[1], len(data)
    if how[0] == "cut":
        at = how[1] % (len(data) + 1)
        return data[:at], at
    at = how[1] % max(1, len(data))
    if not data:
        return data, 0
    return data[:at] + bytes([data[at] ^ how[2]]) + data[at + 1 :], at
