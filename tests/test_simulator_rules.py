"""The simulator's pure rules: durations, buckets, fault parsing, config checks, the model player."""

import math
import random

import pytest

from asyncgen.config import load_task
from asyncgen.errors import UsageError
from asyncgen.simulator import SimulatorConfig, parse_faults
from asyncgen.simulator import batches, chat, composer, faults
from asyncgen.simulator.ratelimit import RateLimiter, TokenBucket, format_duration, retry_headers


@pytest.mark.parametrize(
    "seconds, text",
    [(0, "0s"), (0.0001, "1ms"), (0.009, "9ms"), (0.012, "12ms"), (1, "1s"), (33.023, "33.023s"),
     (1.5, "1.5s"), (72, "1m12s"), (360, "6m0s"), (3600, "1h0m0s"), (3725.25, "1h2m5.25s")],
)
def test_format_duration_is_go_style(seconds, text):
    assert format_duration(seconds) == text


def test_bucket_refills_continuously_up_to_its_limit():
    bucket = TokenBucket.full(60, now=0.0)
    bucket.level = 0
    bucket.refill(0.5)
    assert bucket.level == pytest.approx(0.5)
    assert bucket.wait_for(1) == pytest.approx(0.5)
    bucket.refill(1000)
    assert bucket.level == 60 and bucket.until_full() == 0
    assert math.isinf(bucket.wait_for(61))


def test_limiter_takes_both_buckets_and_rejects_without_taking():
    limiter = RateLimiter(rpm=2, tpm=1000, now=0.0)
    assert limiter.admit(400, 0.0).rejected_by is None
    second = limiter.admit(400, 0.0)
    assert second.rejected_by is None
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert second.headers["x-ratelimit-remaining-tokens"] == "200"
    # 800 tokens missing at 1000/60 per second: 48 s; 2 requests missing at 2/60 per second: 60 s.
    assert second.headers["x-ratelimit-reset-tokens"] == "48s"
    assert second.headers["x-ratelimit-reset-requests"] == "1m0s"
    third = limiter.admit(10, 0.0)
    assert third.rejected_by == "requests"
    assert third.retry_after_s == pytest.approx(30.0)
    assert (third.used, third.limit) == (2, 2)
    # 30 s later one request is back, but 400 tokens need (400 - 700) <= 0: admitted.
    assert limiter.admit(400, 30.0).rejected_by is None
    tokens = limiter.admit(900, 60.0)
    assert tokens.rejected_by == "tokens"
    assert limiter.admit(5000, 60.0).rejected_by == "too_large"
    assert retry_headers(0.0123) == {"retry-after-ms": "13", "retry-after": "1"}


def test_parse_faults_accepts_any_subset_and_rejects_bad_input():
    assert parse_faults("500=0.05, reset=0.02,bad_json=0") == {"500": 0.05, "reset": 0.02, "bad_json": 0.0}
    assert parse_faults("") == {}
    for bad in ("500", "oops=0.1", "500=x", "500=-0.1", "500=1.5", "500=0.1,500=0.2", "500=0.6,503=0.6"):
        with pytest.raises(UsageError):
            parse_faults(bad)


@pytest.mark.parametrize(
    "knobs",
    [dict(port=70000), dict(rpm=0), dict(api_key=""), dict(latency_distribution="pareto"), dict(batch_speed=0),
     dict(imperfect_rate=1.5), dict(imperfect_mix={"typo": 1.0}), dict(fail_first_status=404), dict(faults={"nope": 0.1})],
)
def test_config_rejects_bad_knobs(knobs):
    with pytest.raises(UsageError):
        SimulatorConfig(**knobs).validate()


def test_fault_draws_follow_their_rates():
    rng = random.Random(1)
    rates = {"500": 0.2, "reset": 0.1, "bad_json": 0.3}
    drawn = [faults.draw_http_fault(rates, rng) for _ in range(20_000)]
    assert drawn.count("500") / len(drawn) == pytest.approx(0.2, abs=0.015)
    assert drawn.count("reset") / len(drawn) == pytest.approx(0.1, abs=0.015)
    assert "bad_json" not in drawn
    content = [faults.draw_content_fault(rates, rng) for _ in range(20_000)]
    assert content.count("bad_json") / len(content) == pytest.approx(0.3, abs=0.015)


def test_latency_distributions():
    rng = random.Random(2)
    assert faults.latency_s(100, 0, "uniform", rng) == 0.1
    uniform = [faults.latency_s(100, 50, "uniform", rng) for _ in range(2000)]
    assert 0.05 <= min(uniform) and max(uniform) <= 0.15
    exponential = [faults.latency_s(100, 50, "exponential", rng) for _ in range(2000)]
    assert min(exponential) >= 0.1 and sum(exponential) / 2000 == pytest.approx(0.15, rel=0.1)
    assert min(faults.latency_s(10, 100, "normal", rng) for _ in range(500)) == 0.0


@pytest.fixture(scope="module")
def player():
    return composer.Player.from_task(load_task("refusal"))


def one_word_apart(prompt: str, counterfactual: str) -> bool:
    a, b = prompt.split(), counterfactual.split()
    return len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1


def test_requested_pairs_reads_exactly_n_pairs():
    assert composer.requested_pairs(["system", "Avoid these. Write exactly 7 pairs as JSON."], 10, 200) == 7
    assert composer.requested_pairs(["no count here"], 10, 200) == 10
    assert composer.requested_pairs(["Write exactly 100000 pairs."], 10, 200) == 200


def test_answer_shape_follows_the_schema_including_refs():
    schema = {
        "type": "object",
        "$defs": {"Item": {"type": "object", "properties": {"safe": {"type": "string"}, "harmful": {"type": "string"},
                                                             "score": {"type": "integer"}}}},
        "properties": {"note": {"type": "string"}, "examples": {"type": "array", "items": {"$ref": "#/$defs/Item"}}},
    }
    shape = composer.answer_shape(schema)
    assert (shape.array_key, shape.prompt_key, shape.counterfactual_key) == ("examples", "safe", "harmful")
    assert shape.item_extra == {"score": 0} and shape.top_extra == {"note": ""}
    assert composer.answer_shape(None) == composer.DEFAULT_SHAPE
    assert composer.answer_shape({"type": "object", "properties": {"x": {"type": "string"}}}) == composer.DEFAULT_SHAPE


def test_perfect_pairs_differ_in_one_short_word_and_are_distinct(player):
    pairs = composer.compose_pairs(player, 60, random.Random(5), 0.0, {"repeat": 1.0})
    assert all(one_word_apart(p, c) for p, c in pairs)
    assert len({p for p, _ in pairs}) == 60 and len({c for _, c in pairs}) == 60
    fillers = {w for p, c in pairs for w in set(p.split()) ^ set(c.split())}
    assert all(len(w.strip(".,?")) <= 7 for w in fillers)


def test_composition_is_deterministic_per_rng_seed(player):
    mix = {"long_filler": 1.0, "second_word": 1.0, "repeat": 1.0}
    first = composer.compose_pairs(player, 20, random.Random("k"), 0.3, mix)
    assert first == composer.compose_pairs(player, 20, random.Random("k"), 0.3, mix)
    assert first != composer.compose_pairs(player, 20, random.Random("other"), 0.3, mix)


def test_imperfect_share_and_kinds(player):
    rng = random.Random(9)
    pairs = []
    for _ in range(300):
        pairs.extend(composer.compose_pairs(player, 10, rng, 0.3, {"long_filler": 1, "second_word": 1, "repeat": 1}))
    seen, imperfect = set(), {"second_word": 0, "long": 0, "repeat": 0}
    examples = set(player.examples)
    long_words = set(player.long_safe) | set(player.long_harmful)
    batch_seen = set()
    for index, pair in enumerate(pairs):
        if index % 10 == 0:
            batch_seen = set()
        if pair in batch_seen or pair in examples:
            imperfect["repeat"] += 1
        elif not one_word_apart(*pair):
            imperfect["second_word"] += 1
        elif {w.strip(".,?") for w in pair[0].split() + pair[1].split()} & long_words:
            imperfect["long"] += 1
        batch_seen.add(pair)
        seen.add(pair)
    share = sum(imperfect.values()) / len(pairs)
    assert share == pytest.approx(0.3, abs=0.04)
    assert all(count > 0.06 * len(pairs) for count in imperfect.values())


def test_the_lexicon_gives_enough_distinct_valid_pairs(player):
    rng = random.Random(11)
    accepted: list[str] = []
    distinct = set()
    for _ in range(250):
        # Like the client: the accepted prompts are listed in the request, and the model avoids them.
        avoid = "\n".join(accepted[-2000:])
        for pair in composer.compose_pairs(player, 10, rng, 0.0, {"repeat": 1.0}, avoid):
            if pair[0] not in distinct and one_word_apart(*pair):
                distinct.add(pair[0])
                accepted.append(pair[0])
    assert len(distinct) >= 1500


def test_corruptions_break_json_or_the_shape():
    import orjson

    text = orjson.dumps({"pairs": [{"prompt": "a", "counterfactual": "b"}]}).decode()
    for seed in range(12):
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(faults.corrupt_json(text, random.Random(seed)))
        broken = faults.break_shape(orjson.loads(text), composer.DEFAULT_SHAPE, random.Random(seed))
        items = broken.get("pairs")
        assert items is None or any(set(item) != {"prompt", "counterfactual"} for item in items)


def test_usage_estimate_and_charge():
    request = chat.parse_chat_request(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 10}, {"role": "system", "content": "abcd"}],
         "max_completion_tokens": 50, "n": 2}
    )
    assert request.prompt_tokens == (3 + 4) + (1 + 4)
    assert request.charge == request.prompt_tokens + 100  # the prompt estimate plus n x the output cap
    small = chat.parse_chat_request({"model": "gpt-4o", "messages": [{"role": "user", "content": "y" * 4000}], "max_tokens": 10})
    assert small.charge == small.prompt_tokens + 10 == 1014


def test_strict_schema_rules():
    good = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": False}
    assert chat.strict_schema_problem(good) is None
    assert "additionalProperties" in chat.strict_schema_problem({**good, "additionalProperties": True})
    assert "Missing 'a'" in chat.strict_schema_problem({**good, "required": []})
    nested = {**good, "properties": {"a": {"type": "array", "items": {"type": "object", "properties": {"b": {"type": "string"}}}}}}
    assert "('properties', 'a', 'items')" in chat.strict_schema_problem(nested)


def test_batch_timeline_paths():
    config = SimulatorConfig(batch_validate_s=10, batch_seconds_per_request=100, batch_finalize_s=5, batch_cancel_s=7)
    done = batches.timeline(0, 3, True, None, config)
    assert [batches.status_at(done, t) for t in (0, 10, 309, 310, 315)] == [
        "validating", "in_progress", "in_progress", "finalizing", "completed"]
    assert [batches.finished_requests(done, 3, t, 100) for t in (0, 109, 110, 250, 9999)] == [0, 0, 1, 2, 3]
    failed = batches.timeline(0, 3, False, None, config)
    assert (batches.status_at(failed, 9), batches.status_at(failed, 10)) == ("validating", "failed")
    long = batches.timeline(0, 1000, True, None, config)
    assert batches.status_at(long, 86_400) == "expired"
    assert batches.finished_requests(long, 1000, 10**6, 100) == (86_400 - 10) // 100
    cancelled = batches.timeline(0, 3, True, 150, config)
    assert [batches.status_at(cancelled, t) for t in (149, 150, 157)] == ["in_progress", "cancelling", "cancelled"]
    assert batches.finished_requests(cancelled, 3, 10**6, 100) == 1
    early = batches.timeline(0, 3, True, 5, config)
    assert batches.status_at(early, 12) == "cancelled" and early.in_progress_at is None


def test_batch_input_validation_lists_errors_by_line():
    good = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini", "messages": []}}'
    data = b"\n".join([
        good,
        b"{not json",
        good,  # duplicate custom_id
        good.replace(b'"a"', b'"b"').replace(b"/v1/chat/completions", b"/v1/embeddings"),
        good.replace(b'"a"', b'"c"').replace(b"gpt-4o-mini", b"gpt-4o"),
        b'{"custom_id": "d"}',
    ])
    lines, errors, model = batches.parse_input(data, "/v1/chat/completions", None)
    assert [line.custom_id for line in lines] == ["a"] and model == "gpt-4o-mini"
    assert [(e["code"], e["line"]) for e in errors] == [
        ("invalid_json_line", 2), ("duplicate_custom_id", 3), ("invalid_url", 4), ("mismatched_model", 5),
        ("missing_required_parameter", 6)]
    assert batches.parse_input(b"", "/v1/chat/completions", None)[1][0]["code"] == "empty_file"
