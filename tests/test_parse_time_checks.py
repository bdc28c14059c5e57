"""Bad values refused before any work starts: one line, exit 2 (a UsageError from the Python API),
not a run that starts and fails on the API's 400 or a report followed by an error."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from inprocess import asyncgen_here

import asyncgen
from asyncgen.commands.argtypes import SEED_MAX, SEED_MIN
from asyncgen.errors import UsageError
from asyncgen.prompting import RETRY_SEED_STRIDE, GenerationSettings, request_body, request_seed, response_format_for


@pytest.mark.parametrize("command, flag, value, expected", [
    (["run"], "--temperature", "-1", "a sampling temperature from 0 to 2"),
    (["run"], "--temperature", "2.5", "a sampling temperature from 0 to 2"),
    (["run"], "--seed", str(2**63), "a whole number from -9223372036854775808 to 9223372036854775807"),
    (["batch", "run"], "--temperature", "-0.1", "a sampling temperature from 0 to 2"),
    (["batch", "create"], "--seed", str(-(2**63) - 1), "a whole number from -9223372036854775808"),
])
def test_generation_flags_outside_the_apis_ranges_are_refused_at_parse_time(tmp_path, command, flag, value, expected):
    """`run --temperature -1` started, then failed on the API's 400 decimal_below_min_value and
    suggested resuming with the same bad flag."""
    out = asyncgen_here(*command, flag, value, "--output", tmp_path / "d.jsonl", "--num-scenarios", "5", cwd=tmp_path)
    err = out.stderr
    assert out.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"asyncgen {' '.join(command)}: error: argument {flag}: expected "
                                                   f"{expected}"), err
    assert f"got {value} " in lines[0]
    assert not (tmp_path / "d.jsonl").exists()


def test_the_edges_of_the_apis_ranges_are_accepted():
    from asyncgen.commands.argtypes import seed, temperature

    assert [temperature(t) for t in ("0", "2", "0.7")] == [0.0, 2.0, 0.7]
    assert seed(str(2**63 - 1)) == 2**63 - 1 and seed("-5") == -5


_ACCEPTED_SEEDS = st.one_of(st.sampled_from([SEED_MIN, SEED_MIN + 1, -1, 0, SEED_MAX - 1, SEED_MAX]),
                            st.integers(SEED_MIN, SEED_MAX))


@given(seed=_ACCEPTED_SEEDS, request=st.integers(0, 10**9), timeouts=st.integers(0, 1000))
def test_every_seed_a_request_sends_is_in_the_apis_range_for_every_accepted_flag(seed, request, timeouts):
    """`--seed 9223372036854775807` was accepted, then the second request sent seed + 1 and the API
    refused it with a 400: the derived seed wraps into the 64-bit range, deterministically."""
    sent = request_seed(seed, request, timeouts)
    assert SEED_MIN <= sent <= SEED_MAX
    assert sent == request_seed(seed, request, timeouts)
    total = seed + request + timeouts * RETRY_SEED_STRIDE
    if SEED_MIN <= total <= SEED_MAX:
        assert sent == total  # a seed that fits is sent as it always was
    assert request_seed(seed, request + 1, timeouts) != sent  # the next request gets another seed


def test_the_request_body_of_the_extreme_seeds_stays_in_range(refusal_task):
    for flag in (SEED_MIN, SEED_MAX):
        settings = GenerationSettings("gpt-4o-mini", response_format_for("gpt-4o-mini"), None, flag)
        seeds = [request_body(refusal_task, settings, (), number, timeouts=k)["seed"] for number in (0, 1, 7) for k in (0, 3)]
        assert all(SEED_MIN <= s <= SEED_MAX for s in seeds) and len(set(seeds)) == len(seeds), seeds


@pytest.mark.parametrize("options, expected", [
    ({"temperature": -1}, r"generate\(\): argument --temperature: expected a sampling temperature from 0 to 2"),
    ({"temperature": 3.0}, r"generate\(\): argument --temperature: expected a sampling temperature from 0 to 2"),
    ({"seed": 2**64}, r"generate\(\): argument --seed: expected a whole number from"),
])
def test_the_python_api_refuses_them_as_usage_errors(tmp_path, options, expected):
    with pytest.raises(UsageError, match=expected):
        asyncgen.generate("refusal", 5, tmp_path / "d.jsonl", show=False, validator_workers=0, **options)
    assert not (tmp_path / "d.jsonl").exists()


def test_score_refuses_an_answer_cap_above_the_models_documented_limit_before_any_request(tmp_path):
    """`score --model gpt-4o --max-answer-tokens 20000` sent requests, failed on the API's 400
    invalid_value and suggested resuming with the same flag."""
    from test_inspect_export import crafted

    dataset = crafted(tmp_path)
    out = asyncgen_here("score", dataset, "--model", "gpt-4o", "--max-answer-tokens", "16385", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == ("asyncgen score: error: --max-answer-tokens 16385: gpt-4o writes at most 16384 "
                                  "tokens an answer (OpenAI's limit, which refuses more); give at most 16384")
    assert not (tmp_path / f"{dataset.stem}.scores").exists()


def test_the_output_limits_are_openais_and_only_at_openais_api():
    from asyncgen.prices import output_token_limit

    assert output_token_limit("gpt-4o-mini-2024-07-18", None) == 16_384
    assert output_token_limit("gpt-4.1-nano", "https://api.openai.com/v1") == 32_768
    assert output_token_limit("gpt-4o", "http://localhost:8000/v1") is None  # a local server's limits are its own
    assert output_token_limit("gpt-4oo", None) is None and output_token_limit("o3", None) is None
