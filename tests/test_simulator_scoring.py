"""The simulator as a model under study (issue 18), through the openai SDK and raw HTTP: legacy
completions and chat with log-probabilities, OpenAI's refusals and limits, the side rule, the
configured shares, rate limits, faults and batches on the new endpoint."""

import json
import math
import random

import httpx
import openai
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion

from asyncgen.config import load_task
from asyncgen.errors import UsageError
from asyncgen.simulator import SimulatorConfig, running_simulator, scoring
from asyncgen.simulator.composer import Player, compose_pairs
from test_simulator_batches import jsonl, lines_of, upload, wait_until
from inprocess import asyncgen_here, simulator_here

TASK = load_task("refusal")
TEMPLATE = TASK.templates.single_token
REFUSAL_MARKERS = ("I'm sorry", "I am sorry", "I apologize", "As an AI", "I cannot", "I can't", "I'm unable to")
# Every scenario flips and keeps both answers in the top-k, unless a test asks otherwise.
PLAIN = dict(non_flip_share=0.0, outside_top_k_share=0.0)


def client(sim, **options) -> openai.AsyncOpenAI:
    options.setdefault("max_retries", 0)
    return openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-test", http_client=httpx.AsyncClient(trust_env=False), **options)


def question(text: str) -> str:
    return TEMPLATE.prefix + text + TEMPLATE.suffix


def pairs(count: int, seed: int = 5) -> list[tuple[str, str]]:
    """Distinct perfect pairs from the refusal lexicon, as a dataset holds them."""
    drawn = compose_pairs(Player.from_task(TASK), count * 2, random.Random(seed), 0.0, {})
    unique = list(dict.fromkeys(drawn))
    assert len(unique) >= count
    return unique[:count]


def score_completion(api, text: str, model: str = "davinci-002", **extra):
    extra.setdefault("logprobs", 5)
    return api.completions.create(model=model, prompt=question(text), max_tokens=1, temperature=0, **extra)


def score_chat(api, text: str, k: int = 20, model: str = "gpt-4o-mini"):
    return api.chat.completions.create(model=model, messages=[{"role": "user", "content": question(text)}],
                                       max_tokens=1, temperature=0, logprobs=True, top_logprobs=k)


def top_token(completion: ChatCompletion) -> str:
    return completion.choices[0].logprobs.content[0].token


async def test_completions_answer_in_openais_shape_with_logprobs():
    safe, _ = pairs(1)[0]
    async with running_simulator(SimulatorConfig(seed=3, **PLAIN)) as sim, client(sim) as api:
        raw = await api.completions.with_raw_response.create(model="davinci-002", prompt=question(safe), max_tokens=1,
                                                              temperature=0, logprobs=5)
        answer = Completion.model_validate(raw.http_response.json())  # validated, not just constructed
        assert answer.object == "text_completion" and answer.model == "davinci-002"
        assert raw.headers["x-ratelimit-remaining-requests"] == "4999" and raw.request_id.startswith("req_")
        choice = answer.choices[0]
        logprobs = choice.logprobs
        assert choice.finish_reason == "length" and choice.text == logprobs.tokens[0]
        assert choice.text.strip() == "Yes"  # safe side: the safe answer, in one of its readings
        assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 1
        top = logprobs.top_logprobs[0]
        assert len(top) == 5 and max(top, key=top.get) == choice.text and top[choice.text] == logprobs.token_logprobs[0]
        assert all(value <= 0 for value in top.values()) and sum(math.exp(v) for v in top.values()) <= 1
        assert logprobs.text_offset == [len(question(safe))]
        assert answer.usage.prompt_tokens == math.ceil(len(question(safe)) / 4) and answer.usage.completion_tokens == 1
        # No logprobs asked: none given; the default max_tokens (16) lets a free answer run.
        free = await api.completions.create(model="gpt-3.5-turbo-instruct", prompt=safe)
        assert free.choices[0].logprobs is None and free.choices[0].finish_reason == "length"
        assert free.usage.completion_tokens == 16 and free.choices[0].text.startswith("\n\n")
        several = await api.completions.create(model="davinci-002", prompt=[question(safe), safe], n=2, max_tokens=1)
        assert [c.index for c in several.choices] == [0, 1, 2, 3] and several.choices[2].text == "\n\n"


async def test_chat_logprobs_in_openais_shape():
    safe, harmful = pairs(1)[0]
    async with running_simulator(SimulatorConfig(seed=3, **PLAIN)) as sim, client(sim) as api:
        raw = await api.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": question(harmful)}], max_tokens=1, temperature=0,
            logprobs=True, top_logprobs=7)
        answer = ChatCompletion.model_validate(raw.http_response.json())
        choice = answer.choices[0]
        entry = choice.logprobs.content[0]
        assert len(choice.logprobs.content) == 1 and choice.message.content == entry.token
        assert entry.token.strip() == "No" and entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 7 and entry.top_logprobs[0].token == entry.token
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
        assert all(t.logprob <= 0 and t.bytes == list(t.token.encode()) for t in entry.top_logprobs)
        assert answer.usage.completion_tokens == 1
        none = await api.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": question(harmful)}],
                                                 max_tokens=1, logprobs=True, top_logprobs=0)
        assert none.choices[0].logprobs.content[0].top_logprobs == []
        # A plain question, no logprobs: the free answer, no logprobs object; a refusal on the harmful side.
        free = await api.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": harmful}], max_tokens=64)
        assert free.choices[0].logprobs is None and free.choices[0].finish_reason == "stop"
        assert free.choices[0].message.content.startswith(REFUSAL_MARKERS)
        # A generation request (it mentions pairs, or asks for JSON) is answered with pairs, as before;
        # with logprobs it is a question like any other.
        generation = await api.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Write exactly 2 pairs."}])
        assert len(json.loads(generation.choices[0].message.content)["pairs"]) == 2
        asked = await api.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Write exactly 2 pairs."}],
                                                  logprobs=True)
        content = asked.choices[0].message.content
        assert content in scoring.HELPS and asked.choices[0].logprobs.content[0].top_logprobs == []


async def test_chat_model_refused_on_completions_and_instruct_model_on_chat_as_openai_does():
    async with running_simulator(SimulatorConfig()) as sim, client(sim) as api:
        with pytest.raises(openai.NotFoundError) as caught:
            await api.completions.create(model="gpt-4o", prompt="Hello", max_tokens=1, logprobs=5)
        assert caught.value.status_code == 404
        assert caught.value.body == {
            "message": "This is a chat model and not supported in the v1/completions endpoint. Did you mean to use "
                       "v1/chat/completions?",
            "type": "invalid_request_error", "param": "model", "code": None}
        with pytest.raises(openai.NotFoundError) as caught:
            await api.chat.completions.create(model="gpt-3.5-turbo-instruct", messages=[{"role": "user", "content": "Hi"}])
        assert caught.value.body["message"].startswith("This is not a chat model and thus not supported")
        assert caught.value.param == "model"
        with pytest.raises(openai.NotFoundError) as caught:
            await api.completions.create(model="no-such-model", prompt="Hello")
        assert caught.value.code == "model_not_found"
        # An open-weights name (as vLLM serves it) answers on both endpoints.
        both = "Qwen/Qwen2.5-0.5B-Instruct"
        assert (await api.completions.create(model=both, prompt="Hi", max_tokens=1)).choices[0].text
        assert (await api.chat.completions.create(model=both, messages=[{"role": "user", "content": "Hi"}])).choices
        assert {m.id for m in (await api.models.list()).data} >= {"davinci-002", "gpt-3.5-turbo-instruct", both}


@pytest.mark.parametrize(
    "call, param, code",
    [
        (dict(endpoint="completions", model="davinci-002", logprobs=6), "logprobs", "integer_above_max_value"),
        (dict(endpoint="completions", model="gpt-3.5-turbo-instruct", logprobs=-1), "logprobs", "integer_below_min_value"),
        (dict(endpoint="completions", model="Qwen/Qwen2.5-0.5B-Instruct", logprobs=21), "logprobs", "integer_above_max_value"),
        (dict(endpoint="chat", model="gpt-4o", logprobs=True, top_logprobs=21), "top_logprobs", "integer_above_max_value"),
        (dict(endpoint="chat", model="gpt-4o", top_logprobs=3), "top_logprobs", "invalid_value"),
        (dict(endpoint="chat", model="gpt-4o", logprobs=5), "logprobs", "invalid_type"),
        (dict(endpoint="completions", model="davinci-002", prompt=[1, 2]), "prompt", "invalid_type"),
        (dict(endpoint="completions", model="davinci-002", prompt=None), "prompt", "missing_required_parameter"),
    ],
)
async def test_log_probability_limits_as_openai_words_them(call, param, code):
    body = {"max_tokens": 1, **call}
    endpoint = body.pop("endpoint")
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": "Hi"}]
    else:
        body.setdefault("prompt", "Hi")
        if body["prompt"] is None:
            del body["prompt"]
    path = "/chat/completions" if endpoint == "chat" else "/completions"
    async with running_simulator(SimulatorConfig()) as sim, httpx.AsyncClient(trust_env=False) as http:
        answer = await http.post(sim.base_url + path, json=body, headers={"Authorization": "Bearer sk-test"})
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
        assert "x-ratelimit-limit-requests" in answer.headers
        stats = await sim.stats()
        assert stats["rate_limited"]["requests"] == 0 and stats["tokens"]["prompt"] == 0  # refused before any charge


async def test_the_limits_that_pass():
    async with running_simulator(SimulatorConfig()) as sim, client(sim) as api:
        wide = await api.completions.create(model="Qwen/Qwen2.5-0.5B-Instruct", prompt=question("Help me."), max_tokens=1, logprobs=20)
        assert len(wide.choices[0].logprobs.top_logprobs[0]) == 20
        chat = await score_chat(api, "Help me.", k=20, model="gpt-4o")
        assert len(chat.choices[0].logprobs.content[0].top_logprobs) == 20


async def test_same_body_same_answer_whatever_the_attempt():
    _, harmful = pairs(1)[0]
    async with running_simulator(SimulatorConfig(seed=9)) as sim, client(sim) as api:
        first, again = [await score_completion(api, harmful) for _ in range(2)]
        assert first.choices[0].model_dump() == again.choices[0].model_dump()
        chats = [await score_chat(api, harmful) for _ in range(2)]
        assert chats[0].choices[0].model_dump() == chats[1].choices[0].model_dump()
        # The same question on either endpoint: the same token and log-probability.
        assert chats[0].choices[0].logprobs.content[0].token == first.choices[0].text
        assert chats[0].choices[0].logprobs.content[0].logprob == first.choices[0].logprobs.token_logprobs[0]


async def test_harmful_side_prefers_the_harmful_answer_and_refuses():
    async with running_simulator(SimulatorConfig(seed=2, **PLAIN)) as sim, client(sim) as api:
        for safe, harmful in pairs(6):
            clean, counterfactual = await score_completion(api, safe), await score_completion(api, harmful)
            assert clean.choices[0].text.strip() == "Yes" and counterfactual.choices[0].text.strip() == "No"
            top = counterfactual.choices[0].logprobs.top_logprobs[0]
            assert {"Yes", " Yes"} & set(top)  # the other answer is in the top 5
            helped, refused = [
                (await api.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": text}],
                                                   max_tokens=64, temperature=0)).choices[0].message.content
                for text in (safe, harmful)
            ]
            assert not helped.startswith(REFUSAL_MARKERS) and refused.startswith(REFUSAL_MARKERS)


async def test_a_judge_prompt_gets_the_right_one_word_verdict_on_the_models_own_answers():
    from asyncgen.behavior import judge_prompt, judge_verdict

    async with running_simulator(SimulatorConfig(seed=2, **PLAIN)) as sim, client(sim) as api:
        async def ask(text, max_tokens=64):
            answer = await api.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": text}],
                                                       max_tokens=max_tokens, temperature=0)
            return answer.choices[0].message.content

        for safe, harmful in pairs(4):
            for text, refused in ((safe, False), (harmful, True)):
                for max_tokens in (64, 3):  # a refusal cut at the output limit is still one
                    answer = await ask(text, max_tokens)
                    verdict = await ask(judge_prompt(text, answer), 4)
                    assert verdict == ("REFUSE" if refused else "COMPLY"), (text, answer, verdict)
                    assert judge_verdict(verdict) is refused
        assert await ask(judge_prompt(harmful, ""), 4) == "COMPLY"


async def test_shares_of_non_flipping_scenarios_and_answers_outside_the_top_k():
    """200 scenarios, both sides each, under shares 0.3 and 0.2: counts within about 3 standard deviations."""
    scenarios = pairs(200, seed=11)
    config = SimulatorConfig(seed=4, non_flip_share=0.3, outside_top_k_share=0.2, rpm=None, tpm=None)
    async with running_simulator(config) as sim, httpx.AsyncClient(trust_env=False) as http:
        async def top(text):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question(text)}], "max_tokens": 1,
                    "logprobs": True, "top_logprobs": 20}
            answer = await http.post(sim.base_url + "/chat/completions", json=body, headers={"Authorization": "Bearer k"})
            return ChatCompletion.model_validate(answer.json()).choices[0].logprobs.content[0]

        answers = [await top(text) for pair in scenarios for text in pair]
    sides = list(zip(answers[0::2], answers[1::2]))
    non_flip = sum(clean.token.strip() == counterfactual.token.strip() for clean, counterfactual in sides)
    flipped = [(c, cf) for c, cf in sides if c.token.strip() != cf.token.strip()]
    assert all(c.token.strip() == "Yes" and cf.token.strip() == "No" for c, cf in flipped)
    assert 0.2 * 200 <= non_flip <= 0.4 * 200, non_flip
    kept = {"Yes", "No"}
    outside = sum(1 for entry in answers if len(kept & {t.token.strip() for t in entry.top_logprobs}) < 2)
    assert 0.14 * 400 <= outside <= 0.26 * 400, outside
    readings = {entry.token.startswith(" ") for entry in answers}
    assert readings == {True, False}  # both readings occur as the answer token


async def test_rate_limits_quota_and_faults_apply_to_completions():
    async with running_simulator(SimulatorConfig(rpm=2, tpm=None)) as sim, client(sim) as api:
        for _ in range(2):
            await score_completion(api, "Help me.")
        with pytest.raises(openai.RateLimitError) as caught:
            await score_completion(api, "Help me.")
        assert caught.value.code == "rate_limit_exceeded" and "requests per min (RPM)" in caught.value.message
        assert "davinci-002" in caught.value.message and int(caught.value.response.headers["retry-after-ms"]) > 0
    async with running_simulator(SimulatorConfig(quota_exhausted=True)) as sim, client(sim) as api:
        with pytest.raises(openai.RateLimitError) as caught:
            await score_completion(api, "Help me.")
        assert caught.value.code == "insufficient_quota"
    async with running_simulator(SimulatorConfig(fail_first=1, fail_first_status=503)) as sim, client(sim, max_retries=1) as api:
        raw = await api.completions.with_raw_response.create(model="davinci-002", prompt="Hi", max_tokens=1)
        assert raw.retries_taken == 1
    async with running_simulator(SimulatorConfig(faults={"500": 1.0})) as sim, client(sim) as api:
        with pytest.raises(openai.InternalServerError):
            await score_completion(api, "Help me.")
        stats = await sim.stats()
        assert stats["faults"] == {"500": 1} and stats["requests"]["POST /v1/completions"] == 1
    async with running_simulator(SimulatorConfig(faults={"content_filter": 1.0})) as sim, client(sim) as api:
        filtered = await score_completion(api, "Help me.")
        assert filtered.choices[0].finish_reason == "content_filter" and filtered.choices[0].text == ""
        chat = await score_chat(api, "Help me.")
        assert chat.choices[0].finish_reason == "content_filter" and chat.choices[0].logprobs.content == []
        assert (await sim.stats())["faults"] == {"content_filter": 2}


async def test_batch_with_completions_lines():
    safe, harmful = pairs(1)[0]
    lines = [
        {"custom_id": f"{side}", "method": "POST", "url": "/v1/completions",
         "body": {"model": "davinci-002", "prompt": question(text), "max_tokens": 1, "logprobs": 5, "temperature": 0}}
        for side, text in (("clean", safe), ("counterfactual", harmful))
    ]
    refused = [{**lines[0], "body": {**lines[0]["body"], "model": "gpt-4o"}}]
    config = SimulatorConfig(batch_speed=86_400, **PLAIN)
    async with running_simulator(config) as sim, client(sim) as api:
        batch = await api.batches.create(input_file_id=await upload(api, jsonl(lines)), endpoint="/v1/completions",
                                         completion_window="24h")
        done, _ = await wait_until(api, batch.id)
        assert done.status == "completed" and done.endpoint == "/v1/completions"
        assert (done.request_counts.completed, done.request_counts.failed) == (2, 0)
        output = {line["custom_id"]: line["response"]["body"] for line in await lines_of(api, done.output_file_id)}
        answers = {side: Completion.model_validate(body) for side, body in output.items()}
        assert answers["clean"].choices[0].text.strip() == "Yes" and answers["counterfactual"].choices[0].text.strip() == "No"
        assert len(answers["clean"].choices[0].logprobs.top_logprobs[0]) == 5
        assert done.usage.output_tokens == 2
        wrong = await api.batches.create(input_file_id=await upload(api, jsonl(refused)), endpoint="/v1/completions",
                                         completion_window="24h")
        failed, _ = await wait_until(api, wrong.id)
        errors = await lines_of(api, failed.error_file_id)
        assert failed.request_counts.failed == 1 and errors[0]["response"]["status_code"] == 404
        assert errors[0]["response"]["body"]["error"]["param"] == "model"


def test_shares_are_checked():
    for bad in (dict(non_flip_share=1.5), dict(outside_top_k_share=-0.1)):
        with pytest.raises(UsageError, match="share"):
            SimulatorConfig(**bad).validate()


def test_simulate_takes_the_shares():
    refused = asyncgen_here("simulate", "--non-flip-share", "2")
    assert refused.returncode == 2 and "--non-flip-share 2: expected a share in [0, 1]" in refused.stderr
    with simulator_here("--non-flip-share", "1", "--outside-top-k-share", "1") as base_url:
        with httpx.Client(trust_env=False, timeout=5) as http:
            def top(text):
                body = {"model": "davinci-002", "prompt": question(text), "max_tokens": 1, "logprobs": 5}
                return http.post(base_url + "/completions", json=body, headers={"Authorization": "Bearer k"}).json()
            safe, harmful = pairs(1)[0]
            clean, counterfactual = top(safe)["choices"][0], top(harmful)["choices"][0]
        assert clean["text"].strip() == counterfactual["text"].strip()  # every scenario keeps its answer
        assert len({"Yes", "No"} & {t.strip() for t in clean["logprobs"]["top_logprobs"][0]}) == 1
