"""Bad values refused before any work starts: one line, exit 2 (a UsageError from the Python API),
not a run that starts and fails on the API's 400 or a report followed by an error."""

import pytest
from inprocess import asyncgen_here

import asyncgen
from asyncgen.errors import UsageError


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
