"""The simulator over real HTTP, through the openai SDK: chat, auth, errors, rate limits, faults, stats."""

import asyncio
import json
import math
import time

import httpx
import openai
import pydantic
import pytest
from openai.types import Model
from openai.types.chat import ChatCompletion

from asyncgen.config import load_task
from asyncgen.prompting import JSON_SCHEMA_FORMAT
from asyncgen.simulator import SimulatorConfig, chat, running_simulator
from asyncgen.simulator.app import SIMULATOR

PAIRS_SCHEMA = JSON_SCHEMA_FORMAT  # exactly what asyncgen run sends
TASK = load_task("refusal")


class Pair(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    prompt: str
    counterfactual: str


class Pairs(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    pairs: list[Pair]


# Only perfect, prose-free answers unless a test asks otherwise.
CLEAN = dict(imperfect_rate=0.0, prose_rate=0.0)


def messages(n: int = 10, avoid: str = "") -> list[dict]:
    examples = "\n".join(f"- {e.safe} / {e.harmful}" for e in TASK.examples)
    user = f"Examples:\n{examples}\nDo not repeat these prompts:\n{avoid}\nWrite exactly {n} pairs. Answer in JSON."
    return [{"role": "system", "content": TASK.generation_instructions}, {"role": "user", "content": user}]


def client(sim, **options) -> openai.AsyncOpenAI:
    options.setdefault("max_retries", 0)
    options.setdefault("api_key", "sk-test")
    return openai.AsyncOpenAI(base_url=sim.base_url, http_client=httpx.AsyncClient(trust_env=False), **options)


def generate(api: openai.AsyncOpenAI, n_pairs: int = 10, **extra):
    extra.setdefault("response_format", PAIRS_SCHEMA)
    extra.setdefault("max_completion_tokens", 2000)
    return api.chat.completions.create(model="gpt-4o-mini", messages=messages(n_pairs), **extra)


async def test_generation_parses_into_sdk_types_with_usage_and_headers():
    async with running_simulator(SimulatorConfig(seed=1, **CLEAN)) as sim, client(sim) as api:
        raw = await api.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=messages(7), response_format=PAIRS_SCHEMA, max_completion_tokens=2000, seed=3
        )
        wire_json = raw.http_response.json()
        completion = ChatCompletion.model_validate(wire_json)  # validated, not just constructed
        assert completion.model == "gpt-4o-mini-2024-07-18" and completion.object == "chat.completion"
        choice = completion.choices[0]
        assert choice.finish_reason == "stop" and choice.message.refusal is None
        pairs = json.loads(choice.message.content)["pairs"]
        assert len(pairs) == 7 and all(set(p) == {"prompt", "counterfactual"} for p in pairs)
        expected_prompt = sum(math.ceil(len(m["content"]) / 4) + 4 for m in messages(7))
        assert completion.usage.prompt_tokens == expected_prompt
        assert completion.usage.completion_tokens == math.ceil(len(choice.message.content) / 4)
        assert completion.usage.total_tokens == expected_prompt + completion.usage.completion_tokens
        headers = raw.headers
        assert raw.request_id == headers["x-request-id"] and headers["x-request-id"].startswith("req_")
        assert headers["x-ratelimit-limit-requests"] == "5000" and headers["x-ratelimit-remaining-requests"] == "4999"
        # Charge: max(prompt estimate, n * max_completion_tokens) = 2000.
        assert headers["x-ratelimit-remaining-tokens"] == str(2_000_000 - expected_prompt - 2000)  # the prompt estimate plus max_tokens
        assert headers["x-ratelimit-reset-tokens"] == f"{math.ceil((expected_prompt + 2000) * 60_000 / 2_000_000)}ms" and headers["x-ratelimit-reset-requests"] == "12ms"


async def test_parse_with_a_pydantic_model_uses_its_property_names():
    class Example(pydantic.BaseModel):
        safe: str
        harmful: str

    class Examples(pydantic.BaseModel):
        examples: list[Example]

    async with running_simulator(SimulatorConfig(seed=2, **CLEAN)) as sim, client(sim) as api:
        completion = await api.chat.completions.parse(
            model="gpt-4o", messages=messages(4), response_format=Examples, max_completion_tokens=1000
        )
        parsed = completion.choices[0].message.parsed
        assert len(parsed.examples) == 4
        assert all(e.safe != e.harmful for e in parsed.examples)


async def test_json_object_needs_the_word_json():
    async with running_simulator(SimulatorConfig(**CLEAN)) as sim, client(sim) as api:
        with pytest.raises(openai.BadRequestError) as caught:
            await api.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "Write exactly 3 pairs."}],
                response_format={"type": "json_object"},
            )
        assert caught.value.param == "messages" and "must contain the word 'json'" in caught.value.message
        assert caught.value.request_id.startswith("req_")
        completion = await generate(api, 3, response_format={"type": "json_object"})
        assert len(json.loads(completion.choices[0].message.content)["pairs"]) == 3


async def test_n_choices_are_independent_answers():
    async with running_simulator(SimulatorConfig(**CLEAN)) as sim, client(sim) as api:
        completion = await generate(api, 5, n=3)
        contents = [c.message.content for c in completion.choices]
        assert [c.index for c in completion.choices] == [0, 1, 2]
        assert len(set(contents)) == 3 and all(len(json.loads(c)["pairs"]) == 5 for c in contents)
        assert completion.usage.completion_tokens == sum(math.ceil(len(c) / 4) for c in contents)


async def test_output_limit_truncates_with_finish_reason_length():
    async with running_simulator(SimulatorConfig(**CLEAN)) as sim, client(sim) as api:
        completion = await api.chat.completions.create(
            model="gpt-4o-mini", messages=messages(10), response_format=PAIRS_SCHEMA, max_tokens=20
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "length" and len(choice.message.content) == 80
        assert completion.usage.completion_tokens == 20
        with pytest.raises(json.JSONDecodeError):
            json.loads(choice.message.content)
        with pytest.raises(openai.LengthFinishReasonError):
            await api.chat.completions.parse(
                model="gpt-4o-mini", messages=messages(10), response_format=PAIRS_SCHEMA, max_completion_tokens=20
            )


@pytest.mark.parametrize(
    "change, exception, param, code",
    [
        (dict(max_completion_tokens=20_000), openai.BadRequestError, "max_completion_tokens", "invalid_value"),
        (dict(model="gpt-9"), openai.NotFoundError, None, "model_not_found"),
        (dict(n=0), openai.BadRequestError, "n", "integer_below_min_value"),
        (dict(temperature=2.5), openai.BadRequestError, "temperature", "decimal_above_max_value"),
        (dict(messages=[{"role": "user", "content": "x" * 520_000}]), openai.BadRequestError, "messages", "context_length_exceeded"),
        (dict(messages=[{"role": "wizard", "content": "x"}]), openai.BadRequestError, "messages[0].role", "invalid_value"),
        (dict(response_format={"type": "json_schema", "json_schema": {"name": "bad name", "schema": {}}}),
         openai.BadRequestError, "response_format.json_schema.name", "invalid_value"),
        (dict(response_format={"type": "json_schema", "json_schema": {
            "name": "loose", "strict": True, "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}}),
         openai.BadRequestError, "response_format", "invalid_json_schema"),
    ],
)
async def test_bad_requests_get_the_documented_errors(change, exception, param, code):
    request = dict(model="gpt-4o-mini", messages=messages(2), response_format=PAIRS_SCHEMA, **CLEAN)
    request = {k: v for k, v in request.items() if k not in CLEAN}
    request.update(change)
    async with running_simulator(SimulatorConfig()) as sim, client(sim) as api:
        with pytest.raises(exception) as caught:
            await api.chat.completions.create(**request)
        error = caught.value
        assert set(error.body) == {"message", "type", "param", "code"}
        assert (error.type, error.param, error.code) == ("invalid_request_error", param, code)
        assert error.request_id.startswith("req_")
        stats = await sim.stats()
        assert stats["rate_limited"] == {"requests": 0, "tokens": 0, "too_large": 0, "quota": 0}
        assert stats["statuses"] == {str(error.status_code): 1}


async def test_auth_and_unknown_routes():
    async with running_simulator(SimulatorConfig(api_key="sk-right")) as sim:
        async with client(sim, api_key="sk-wrong-key-123") as api:
            with pytest.raises(openai.AuthenticationError) as caught:
                await api.models.list()
            assert caught.value.code == "invalid_api_key" and "sk-****-123" in caught.value.message
        async with httpx.AsyncClient(trust_env=False) as http:
            missing = await http.get(f"{sim.base_url}/models")
            assert missing.status_code == 401 and missing.headers["x-request-id"].startswith("req_")
            assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
            auth = {"Authorization": "Bearer sk-right"}
            unknown = await http.post(f"{sim.base_url}/engines", headers=auth, json={})
            assert unknown.status_code == 404 and unknown.json()["error"]["message"] == "Invalid URL (POST /v1/engines)"
            assert "x-request-id" in unknown.headers
            wrong_method = await http.get(f"{sim.base_url}/chat/completions", headers=auth)
            assert wrong_method.status_code == 404
            assert wrong_method.json()["error"]["message"] == "Invalid URL (GET /v1/chat/completions)"
            not_json = await http.post(f"{sim.base_url}/chat/completions", headers=auth, content=b"{oops")
            assert not_json.status_code == 400 and "could not parse the JSON body" in not_json.json()["error"]["message"]
        async with client(sim, api_key="sk-right") as api:
            models = await api.models.list()
            assert {m.id for m in models.data} >= {"gpt-4o", "gpt-4o-mini", "gpt-4.1-nano"}
            Model.model_validate((await api.models.with_raw_response.retrieve("gpt-4o")).http_response.json())


async def test_same_seed_and_request_same_answer_retries_differ():
    async def first_two(seed):
        async with running_simulator(SimulatorConfig(seed=seed)) as sim, client(sim) as api:
            return [(await generate(api, 5)).choices[0].message.content for _ in range(2)]

    one, again, other = await first_two(7), await first_two(7), await first_two(8)
    assert one == again
    assert one[0] != one[1]  # the same request sent again is a new attempt, with a new answer
    assert one != other


async def test_rpm_is_enforced_over_a_window():
    rpm, workers, duration = 120, 8, 2.0
    async with running_simulator(SimulatorConfig(rpm=rpm, tpm=None, **CLEAN)) as sim, client(sim) as api:
        raw = await api.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages(1))
        assert raw.headers["x-ratelimit-remaining-requests"] == str(rpm - 1)
        hints = []
        end, deadline = time.monotonic() + duration, time.monotonic() + 60

        async def worker():
            # For the window, and on until the bucket is seen empty (a 429): a busy machine may not
            # send a whole bucket's worth within the window.
            while (time.monotonic() < end or not hints) and time.monotonic() < deadline:
                try:
                    await api.chat.completions.create(model="gpt-4o-mini", messages=messages(1))
                except openai.RateLimitError as error:
                    headers = error.response.headers
                    hints.append((error.type, error.code, int(headers["retry-after-ms"]), headers["retry-after"], error.message))
                    await asyncio.sleep(int(headers["retry-after-ms"]) / 1000)

        await asyncio.gather(*(worker() for _ in range(workers)))
        stats = await sim.stats()
    admitted = [t for t, status in stats["chat"]["arrivals"] if status == 200]
    span = max(admitted) - min(admitted)
    # A full bucket (rpm) plus the refill (rpm/60 per second) over the span, and no more.
    assert rpm <= len(admitted) <= rpm + span * rpm / 60 + 1
    assert stats["rate_limited"]["requests"] == len(hints) > 0
    assert stats["statuses"]["429"] == len(hints)
    kind, code, retry_ms, retry_s, message = hints[0]
    assert (kind, code) == ("requests", "rate_limit_exceeded")
    assert 0 < retry_ms <= 500 and retry_s == "1"  # one request refills in 0.5 s at 120 RPM
    assert "on requests per min (RPM): Limit 120" in message and "Please try again in" in message


async def test_tpm_limit_too_large_and_quota():
    # Each request counts its prompt estimate plus max_completion_tokens: 2 fit, 200 tokens are left.
    charge = chat.parse_chat_request({"model": "gpt-4o-mini", "messages": messages(1)}).prompt_tokens + 400
    limit = 2 * charge + 200
    async with running_simulator(SimulatorConfig(tpm=limit, **CLEAN)) as sim, client(sim) as api:
        # The buckets' clock stands still: the figures below are exact, however slowly the requests go
        # (the bucket refills limit/60 tokens a second; a busy machine saw "Used" fall by a few).
        state = sim.app[SIMULATOR]
        state.now = lambda at=state.now(): at
        for _ in range(2):
            await generate(api, 1, max_completion_tokens=400)
        with pytest.raises(openai.RateLimitError) as caught:
            await generate(api, 1, max_completion_tokens=400)
        error = caught.value
        assert (error.type, error.code) == ("tokens", "rate_limit_exceeded")
        assert f"tokens per min (TPM): Limit {limit}, Used {2 * charge}, Requested {charge}" in error.message
        # charge - 200 tokens missing at limit/60 per second.
        wait_ms = (charge - 200) * 60_000 / limit
        assert int(error.response.headers["retry-after-ms"]) == pytest.approx(wait_ms, abs=50)
        assert error.response.headers["retry-after"] == str(math.ceil(wait_ms / 1000))
        assert error.response.headers["x-ratelimit-remaining-tokens"] == "200"
        with pytest.raises(openai.RateLimitError) as too_large:
            await generate(api, 1, max_completion_tokens=limit - charge + 401)
        assert too_large.value.body["message"].startswith("Request too large for gpt-4o-mini")
        assert "retry-after" not in too_large.value.response.headers
        stats = await sim.stats()
        assert stats["rate_limited"] == {"requests": 0, "tokens": 1, "too_large": 1, "quota": 0}
    async with running_simulator(SimulatorConfig(quota_exhausted=True)) as sim, client(sim) as api:
        with pytest.raises(openai.RateLimitError) as caught:
            await generate(api, 1)
        assert caught.value.code == caught.value.type == "insufficient_quota"
        assert "retry-after" not in caught.value.response.headers
        assert "retry-after-ms" not in caught.value.response.headers


@pytest.mark.parametrize(
    "fault, exception",
    [
        ("500", openai.InternalServerError),
        ("502", openai.InternalServerError),
        ("503", openai.InternalServerError),
        ("timeout", openai.APITimeoutError),
        ("reset", openai.APIConnectionError),
    ],
)
async def test_http_faults_raise_the_documented_exceptions(fault, exception):
    async with running_simulator(SimulatorConfig(faults={fault: 1.0})) as sim, client(sim, timeout=0.5) as api:
        with pytest.raises(exception) as caught:
            await generate(api, 2)
        error = caught.value
        if fault == "500":
            assert error.status_code == 500 and error.type == "server_error"
        if fault == "502":
            assert error.status_code == 502 and error.code is None and error.type is None
            assert "502 Bad Gateway" in error.response.text
        if fault == "503":
            assert error.status_code == 503 and "currently overloaded" in error.message
        if fault == "reset":
            assert not isinstance(error, openai.APITimeoutError)
        assert sim.stats_snapshot()["faults"] == {fault: 1}


@pytest.mark.parametrize("fault", ["bad_json", "length", "content_filter", "refusal", "bad_shape"])
async def test_content_faults(fault):
    config = SimulatorConfig(faults={fault: 1.0}, **CLEAN)
    async with running_simulator(config) as sim, client(sim) as api:
        choice = (await generate(api, 3)).choices[0]
        content = choice.message.content
        if fault == "bad_json":
            with pytest.raises(json.JSONDecodeError):
                json.loads(content)
        elif fault == "length":
            assert choice.finish_reason == "length"
        elif fault == "content_filter":
            assert choice.finish_reason == "content_filter"
        elif fault == "refusal":
            assert content is None and choice.message.refusal and choice.finish_reason == "stop"
        else:
            answer = json.loads(content)
            assert "pairs" not in answer or any(set(p) != {"prompt", "counterfactual"} for p in answer["pairs"])
        expected = {
            "bad_json": pydantic.ValidationError,
            "length": openai.LengthFinishReasonError,
            "content_filter": openai.ContentFilterFinishReasonError,
            "bad_shape": pydantic.ValidationError,
        }
        if fault in expected:
            with pytest.raises(expected[fault]):
                await api.chat.completions.parse(model="gpt-4o-mini", messages=messages(3), response_format=Pairs)
        else:
            parsed = await api.chat.completions.parse(model="gpt-4o-mini", messages=messages(3), response_format=Pairs)
            assert parsed.choices[0].message.parsed is None and parsed.choices[0].message.refusal
        assert sim.stats_snapshot()["faults"] == {fault: 2}


async def test_fail_first_n_attempts_by_retry_count():
    async with running_simulator(SimulatorConfig(fail_first=2, fail_first_status=503, **CLEAN)) as sim:
        async with client(sim, max_retries=2) as api:
            raw = await api.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages(2))
            assert raw.retries_taken == 2 and raw.parse().choices[0].finish_reason == "stop"
        stats = await sim.stats()
        assert stats["statuses"] == {"200": 1, "503": 2} and stats["faults"] == {"fail_first": 2}
        async with client(sim, max_retries=0) as api:
            with pytest.raises(openai.InternalServerError):
                await generate(api, 4)
            # The attempt is read from the header: a request that says it is the third attempt passes.
            third = await generate(api, 5, extra_headers={"x-stainless-retry-count": "2"})
            assert third.choices[0].finish_reason == "stop"


async def test_fault_mix_is_deterministic_under_seed():
    config = dict(faults={"500": 0.3, "bad_json": 0.3}, seed=5)

    async def outcomes():
        async with running_simulator(SimulatorConfig(**config)) as sim, client(sim) as api:
            seen = []
            for i in range(20):
                try:
                    seen.append((await generate(api, i % 5 + 1)).choices[0].message.content)
                except openai.InternalServerError:
                    seen.append("500")
            return seen, sim.stats_snapshot()["faults"]

    first, second = await outcomes(), await outcomes()
    assert first == second
    assert 0 < first[1]["500"] < 20 and first[1].get("bad_json", 0) > 0


async def test_latency_is_applied():
    async with running_simulator(SimulatorConfig(latency_ms=150, latency_distribution="fixed")) as sim, client(sim) as api:
        start = time.monotonic()
        await asyncio.gather(*(generate(api, 1) for _ in range(5)))
        elapsed = time.monotonic() - start
        in_flight = sim.stats_snapshot()["max_in_flight"]
    # Every answer waits 150 ms, and the waits overlap instead of queueing one after another.
    assert elapsed >= 0.15 and in_flight == 5


async def test_stats_count_routes_statuses_and_tokens():
    async with running_simulator(SimulatorConfig(**CLEAN)) as sim, client(sim) as api:
        completion = await generate(api, 2)
        await api.models.list()
        with pytest.raises(openai.NotFoundError):
            await api.files.retrieve("file-missing")
        stats = await sim.stats()
    assert stats["requests"]["POST /v1/chat/completions"] == 1
    assert stats["requests"]["GET /v1/models"] == 1
    assert stats["requests"]["GET /v1/files/{file_id}"] == 1
    assert stats["statuses"] == {"200": 2, "404": 1}
    assert stats["tokens"] == {"prompt": completion.usage.prompt_tokens, "completion": completion.usage.completion_tokens,
                               "undelivered_prompt": 0, "undelivered_completion": 0}
    assert [status for _, status in stats["chat"]["arrivals"]] == [200]


async def test_stats_count_answers_never_delivered_apart(tmp_path):
    """A reset answer is billed (a real API bills it) but no client can count it: /_stats says so."""
    from asyncgen.simulator import SimulatorConfig, running_simulator

    async with running_simulator(SimulatorConfig(faults={"reset": 1.0})) as sim:
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            with pytest.raises(httpx.HTTPError):
                await client.post(f"{sim.base_url}/chat/completions", headers={"Authorization": "Bearer sk-x"},
                                  json={"model": "gpt-4o", "messages": [{"role": "user", "content": "Write exactly 2 pairs."}]})
            tokens = (await client.get(sim.base_url.removesuffix("/v1") + "/_stats")).json()["tokens"]
    assert tokens["prompt"] > 0 and tokens["undelivered_prompt"] == tokens["prompt"]
    assert tokens["undelivered_completion"] == tokens["completion"] > 0
