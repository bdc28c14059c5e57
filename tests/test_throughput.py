"""Throughput at real keys' limits (issue 13): the output cap learned from the answers, requests
that do not grow, and limits told higher than the server's giving way to the server's."""

import asyncio
import logging
import random
from contextlib import asynccontextmanager

import openai
import orjson
import pytest

from asyncgen.config import load_task
import math
import time

from asyncgen.outputcap import (
    EARLY_ANSWERS,
    EARLY_MARGIN,
    FEW_ANSWERS,
    FEW_MARGIN,
    FLOOR,
    MARGIN,
    MARGIN_TOKENS,
    MIN_ANSWERS,
    OutputCap,
)
from asyncgen.prompting import (
    JSON_SCHEMA_FORMAT,
    avoid_list,
    build_messages,
    estimate_prompt_tokens,
    max_output_tokens,
    worst_case_prompt_tokens,
)
from asyncgen.simulator import SimulatorConfig, running_simulator
from asyncgen.simulator.ratelimit import RateLimiter
from asyncgen.stats import RunStats
from asyncgen.throttle import PROBE_CONCURRENCY, RetryPolicy, Throttle, TokenBucket
from asyncgen.transport import ChatTransport
from asyncgen.workers import GenerationSettings, Generator
from test_throttle import drive

TASK = load_task("refusal")
BOUND = max_output_tokens(TASK)


def test_output_cap_learns_a_high_percentile_and_rises_at_once_on_a_cut():
    cap = OutputCap(660)
    cap.observe(20, "stop", 660)  # one answer (a short refusal, say) does not set the cap
    assert cap.value == 660 and MIN_ANSWERS == 2
    cap.observe(390, "stop", 660)
    assert cap.value == math.ceil(390 * (1 + FEW_MARGIN)) + MARGIN_TOKENS  # the largest seen, the widest margin
    for i in range(FEW_ANSWERS - MIN_ANSWERS):
        cap.observe(370 + i, "stop", 660)
    assert cap.value == math.ceil(390 * (1 + EARLY_MARGIN)) + MARGIN_TOKENS  # a few more known: a narrower one
    for i in range(EARLY_ANSWERS):
        cap.observe(370 + i % 20, "stop", 660)
    assert cap.value == math.ceil(390 * (1 + MARGIN)) + MARGIN_TOKENS  # enough answers: the usual margin
    learned = cap.value
    cap.observe(120, "length", learned)  # a server fault far below the cap: not the cap's doing
    assert cap.value == learned and cap.cuts == 0
    assert cap.observe(learned, "length", learned)  # cut at the cap: raised at once, by half
    assert cap.value >= 1.5 * learned and cap.cuts == 1
    for _ in range(50):
        cap.observe(380, "stop", cap.value)
    assert cap.value >= 1.5 * learned  # held for a while after a cut
    assert OutputCap(660).ceiling == 4 * 660 and FLOOR > 0


def _generator(sim, stats, sent: list, cap: OutputCap | None = None, throttle: Throttle | None = None,
               answers_known: list | None = None):
    client = ChatTransport(openai.AsyncOpenAI(api_key="sk-test", base_url=sim.base_url, max_retries=0),
                           concurrency=64, timeout=10.0, trust_env=False)
    post = client.post

    async def recording_post(body: dict):
        sent.append(orjson.loads(orjson.dumps(body)))  # as sent, not as later changed
        if answers_known is not None:  # how many answers the cap had learned from when this one went
            answers_known.append(generator.output_cap.answers)
        return await post(body)

    client.post = recording_post
    throttle = throttle or Throttle(rpm=100_000, tpm=100_000_000, learn_from_headers=False)
    reserved: list[int] = []
    slot = throttle.slot

    @asynccontextmanager
    async def recording_slot(tokens, output_cap=None):
        async with slot(tokens, output_cap) as cap:
            reserved.append(throttle.request_tokens)  # what the token limiter took for this request
            yield cap

    throttle.slot = recording_slot
    generator = Generator(client, TASK, GenerationSettings("gpt-4o", JSON_SCHEMA_FORMAT, 1.0, 7), throttle,
                          RetryPolicy(max_attempts=3), stats, None, "sk-test")
    if cap is not None:
        generator.output_cap = cap
    return client, generator, reserved


async def test_requests_reserve_the_learned_cap_and_no_answer_is_cut():
    """The simulator's 10-pair answers use about 380 tokens: after a few answers the requests ask
    for (and reserve against TPM) about that, not the 660 of the task's bound, and none is cut."""
    async with running_simulator(SimulatorConfig(seed=3)) as sim:
        stats, sent = RunStats(target=0), []
        client, generator, reserved = _generator(sim, stats, sent)
        async with client:
            for number in range(60):
                await generator.generate(number, [])
    caps = [body["max_tokens"] for body in sent]
    assert caps[0] == BOUND
    assert max(caps[MIN_ANSWERS:]) < 0.8 * BOUND
    for body, tokens in zip(sent, reserved):  # exactly the prompt estimate plus the cap sent
        assert tokens == estimate_prompt_tokens(body["messages"]) + body["max_tokens"]
    assert stats.cut_at_cap == 0 and stats.answer_failures["length"] == 0
    assert stats.output_cap == generator.output_cap.value < 0.8 * BOUND


async def test_requests_queued_at_the_tpm_limit_are_sent_with_the_cap_learned_while_they_waited():
    """At a token limit most requests wait in the throttle; the cap each is sent with (and reserved
    at) is the one in force when it passes, not the task's bound it began waiting with. Was: all 8
    workers' first requests went at the bound (at tier 1, 33 of a 400-scenario run's 57)."""
    async with running_simulator(SimulatorConfig(seed=6)) as sim:
        stats, sent, known = RunStats(target=0), [], []
        # 2,000 tokens a second in a bucket of 4,000: four requests at the bound pass at once, the
        # others one by one, a third of a second apart, while the answers come back.
        throttle = Throttle(rpm=100_000, tpm=120_000, learn_from_headers=False, largest_request_tokens=4000)
        client, generator, reserved = _generator(sim, stats, sent, throttle=throttle, answers_known=known)
        async with client:
            await drive(generator, 12)
    caps = [body["max_tokens"] for body in sent]
    assert len(caps) == 12 and caps[0] == BOUND and max(known) >= MIN_ANSWERS
    for cap, answers in zip(caps, known):  # every request sent once the cap was learned carries it
        assert (cap == BOUND) == (answers < MIN_ANSWERS), (caps, known)
    assert max(cap for cap, answers in zip(caps, known) if answers >= MIN_ANSWERS) < 0.8 * BOUND
    for body, tokens in zip(sent, reserved):  # exactly the prompt estimate plus the cap sent
        assert tokens == estimate_prompt_tokens(body["messages"]) + body["max_tokens"]
    assert stats.cut_at_cap == 0


async def test_the_token_limiter_reads_each_cap_when_the_request_is_next_in_line():
    throttle = Throttle(rpm=10**6, tpm=600_000, learn_from_headers=False, largest_request_tokens=10_000)
    cap, order = 9_900, []

    async def request(number):
        nonlocal cap
        async with throttle.slot(100, lambda: cap) as sent_cap:
            order.append((number, sent_cap, throttle.request_tokens))
            cap = 900  # an answer came back: later requests may ask for less

    await asyncio.gather(*(request(number) for number in range(4)))
    # All four asked while the cap was 9,900. The first took the whole bucket (10,000 tokens); the
    # others waited for it to refill, one at a time and in order, each with the cap in force when
    # it was next in line.
    assert order == [(0, 9_900, 10_000), (1, 900, 1_000), (2, 900, 1_000), (3, 900, 1_000)]
    async with throttle.slot(100) as no_cap:
        assert no_cap is None and throttle.request_tokens == 100


async def test_a_request_waiting_for_the_token_bucket_is_sized_again_when_it_has_waited():
    throttle = Throttle(rpm=10**6, tpm=6_000_000, learn_from_headers=False, largest_request_tokens=100_000)
    caps, order = iter([99_900, 9_900, 900]), []

    async def request(number):
        async with throttle.slot(100, lambda: next(caps)) as sent_cap:
            order.append((number, sent_cap, throttle.request_tokens))

    await asyncio.gather(request(0), request(1))
    # The first emptied the bucket; the second, sized at 10,000 tokens, waited for them, and by
    # then its cap had fallen to 900: it is sent with that, and only 1,000 tokens are taken.
    assert order == [(0, 99_900, 100_000), (1, 900, 1_000)] and next(caps, None) is None
    assert throttle._tokens.level >= 8_900  # what the second did not take stays in the bucket


def test_the_token_bucket_follows_the_servers_count_and_never_rises_above_its_own():
    bucket = TokenBucket(30_000, 1_200, now=0.0)  # 500 tokens a second, in a bucket of 1,200, full
    assert bucket.wait_for(929, 0.0) == 0
    bucket.follow(127, 30_000, sent_at=0.0, now=0.0)  # a drained server: 127 left
    assert bucket.wait_for(929, 0.0) == pytest.approx((929 - 127) / 500)
    bucket.take(929, 1.604)  # sent at 1.604 s, admitted with nothing left
    bucket.take(929, 3.5)  # another, sent before the first's answer came back
    bucket.follow(0, 30_000, sent_at=1.604, now=3.6)  # the first's answer: 0 left at its admission
    assert bucket.level == pytest.approx(0 + (3.6 - 1.604) * 500 - 929)  # refilled since, less the second
    own = bucket.level
    bucket.follow(20_000, 30_000, sent_at=3.5, now=3.6)  # a server with more: our own count stays
    assert bucket.level == pytest.approx(own)
    # Admitted up to 20 ms after it was sent (the fastest round trip): refilled since then at least.
    late = TokenBucket(30_000, 1_200, now=0.0)
    late.follow(100, 30_000, sent_at=0.0, now=0.5, delay=0.02)
    assert late.level == pytest.approx(100 + (0.5 - 0.02) * 500)


def test_a_request_turned_away_gives_back_what_it_took_as_far_as_the_servers_count_allows():
    bucket = TokenBucket(30_000, 1_200, now=0.0)
    bucket.take(929, 0.0)
    bucket.refund(929, 0.0)  # no count from the server yet: it may have charged the 429
    assert bucket.level == pytest.approx(271)
    bucket.follow(900, 30_000, sent_at=0.0, now=0.0)  # its 429 said 900 left: it charged nothing
    bucket.refund(929, 0.0)
    assert bucket.level == pytest.approx(900)  # given back, up to the server's count
    bucket.take(929, 1.0)
    bucket.follow(0, 30_000, sent_at=1.0, now=1.0)  # a server that charges turned-away requests
    bucket.refund(929, 1.0)
    assert bucket.level == pytest.approx(0)


async def test_the_request_waiting_for_the_token_bucket_goes_as_soon_as_a_429_refunds_it():
    throttle = Throttle(rpm=10**6, tpm=60_000, learn_from_headers=False, largest_request_tokens=30_000)
    async with throttle.slot(30_000):  # the whole bucket: the next waits 30 s for it to refill
        sent_at = time.monotonic()
    # ... and the server turned that request away, charging nothing (its count says 30,000 left).
    throttle.observe({"x-ratelimit-limit-requests": "1000000", "x-ratelimit-limit-tokens": "60000",
                      "x-ratelimit-remaining-requests": "999999", "x-ratelimit-remaining-tokens": "30000"},
                     sent_at=sent_at)

    async def waiting():
        async with throttle.slot(30_000):
            pass

    task = asyncio.create_task(waiting())
    await asyncio.sleep(0.05)
    assert not task.done()
    throttle.turned_away(30_000)
    await asyncio.wait_for(task, 10)  # not the 30 s the bucket alone would take


async def test_a_drained_server_draws_no_429_once_its_limits_are_known():
    """Limits learned from the headers: the client's token bucket starts where the server's is
    (its remaining tokens), not full. Was: a full bucket at a drained server sent a burst into 429s."""
    config = SimulatorConfig(rpm=100_000, tpm=600_000, start_drained=True, seed=8)
    async with running_simulator(config) as sim:
        stats, sent = RunStats(target=0), []
        throttle = Throttle(largest_request_tokens=1_500)  # limits from the headers
        client, generator, _ = _generator(sim, stats, sent, throttle=throttle)
        async with client:
            await drive(generator, 16)
        arrivals = sim.stats_snapshot()["chat"]["arrivals"]
    assert throttle.limits == (100_000, 600_000) and stats.requests_ok == 16
    rejected = [i for i, (_, status) in enumerate(arrivals) if status == 429]
    assert all(i < PROBE_CONCURRENCY for i in rejected), arrivals  # only the probes sent before the limits were known


async def test_the_probes_sent_before_the_limits_were_known_count_against_the_first_answers_remaining():
    """The first answer's ``remaining`` may be counted before the other probes were admitted: the
    token bucket made from its headers holds them as taken. Was: it forgot them, and the first
    request after the probes met a server they had emptied (a 429 in about 1 run in 20 of the test
    above)."""
    throttle = Throttle(largest_request_tokens=1_500)
    probes = [throttle.slot(1_000) for _ in range(PROBE_CONCURRENCY)]
    await probes[0].__aenter__()
    first_sent_at = time.monotonic()
    for probe in probes[1:]:
        await probe.__aenter__()
    headers = {"x-ratelimit-limit-requests": "100000", "x-ratelimit-limit-tokens": "60000",
               "x-ratelimit-remaining-requests": "99999", "x-ratelimit-remaining-tokens": "1100"}
    throttle.observe(headers, sent_at=first_sent_at)  # the first probe's answer; the others in flight
    # The server holds at most 1,100 + its refill - the 3 other probes: a request of 1,000 waits for
    # about 2,900 tokens at 1,000 a second (it went at once, with 1,100 thought to be there).
    assert throttle._tokens.wait_for(1_000, time.monotonic()) > 1.0
    for probe in probes:
        await probe.__aexit__(None, None, None)


async def test_a_stopped_run_does_not_keep_its_requests_waiting_for_the_token_bucket():
    """Ctrl-C at a token limit: requests queued for the bucket return at once, unsent. Was: they
    passed it one by one at the limit's pace, only to be dropped, and held the stop for its whole
    grace period (10 s with nothing in flight)."""
    async with running_simulator(SimulatorConfig(seed=9)) as sim:
        stats, sent = RunStats(target=0), []
        # 1,000 tokens a second: each request of about 930 tokens waits about a second for the last.
        throttle = Throttle(rpm=100_000, tpm=60_000, learn_from_headers=False, largest_request_tokens=1_500)
        client, generator, _ = _generator(sim, stats, sent, throttle=throttle)
        async with client:
            requests = [asyncio.create_task(generator.generate(number, [])) for number in range(20)]
            while not sent:
                await asyncio.sleep(0.01)
            generator.stop()
            results = await asyncio.wait_for(asyncio.gather(*requests), 10)  # the bucket alone: about 18 s
    assert len(sent) <= 2 and results.count([]) >= 18 and stats.requests_sent == len(sent)


def test_under_a_budget_the_cap_sent_never_exceeds_the_one_its_cost_was_reserved_at():
    def generator(budget):
        settings = GenerationSettings("gpt-4o", JSON_SCHEMA_FORMAT, 1.0, 7, stop_if_cap_ignored=budget)
        made = Generator(None, TASK, settings, Throttle(learn_from_headers=False), RetryPolicy(), RunStats(target=0),
                         None, None)
        made.output_cap = OutputCap(500)  # raised (after a cut, say) since the request was issued at 400
        return made

    assert generator(budget=True).cap_to_send(400) == 400  # --max-cost: the pipeline reserved its cost at 400
    assert generator(budget=False).cap_to_send(400) == 500  # otherwise the cap in force when it goes
    assert generator(budget=True).cap_to_send(600) == 500


async def test_a_cap_too_low_is_raised_at_the_first_cut():
    """Started far below what answers use, the cap rises at the first answer cut by it, and the
    cuts stop within a few requests."""
    async with running_simulator(SimulatorConfig(seed=4)) as sim:
        stats, sent = RunStats(target=0), []
        client, generator, _ = _generator(sim, stats, sent, OutputCap(150))
        async with client:
            for number in range(30):
                await generator.generate(number, [])
    caps = [body["max_tokens"] for body in sent]
    assert caps[0] == 150 and caps[1] == 225  # raised at once, by half
    assert 1 <= stats.cut_at_cap <= 4
    assert stats.answer_failures["length"] == stats.cut_at_cap
    assert caps[-1] > 380


def test_avoid_list_fills_a_fixed_budget_so_requests_do_not_grow():
    rng = random.Random(5)
    pool = [" ".join("word" for _ in range(rng.randint(3, 30))) + "." for _ in range(200)]
    worst = worst_case_prompt_tokens(TASK, 800)
    sizes = []
    for seed in range(50):
        avoid = avoid_list(pool, 800, random.Random(seed))
        rendered = "\n".join(f"- {p}" for p in avoid)
        assert len(rendered) <= 800
        sizes.append(estimate_prompt_tokens(build_messages(TASK, avoid)))
    assert max(sizes) <= worst and min(sizes) >= worst - 60  # steady: the budget is filled each time
    assert avoid_list(pool, 0, random.Random(1)) == [] and avoid_list([], 800, random.Random(1)) == []


async def test_limits_told_higher_than_the_servers_give_way_to_the_servers(caplog):
    """Told 1,440 RPM where the server allows 1,200: the client keeps to 1,200 from the first
    answer's headers on, and says so once."""
    async with running_simulator(SimulatorConfig(rpm=1200, tpm=100_000_000, seed=5)) as sim:
        stats = RunStats(target=0)
        client, generator, _ = _generator(sim, stats, [])
        throttle = Throttle(rpm=1440, tpm=100_000_000, learn_from_headers=False, largest_request_tokens=1500)
        generator.throttle = throttle
        with caplog.at_level(logging.WARNING, logger="asyncgen.throttle"):
            async with client:
                await drive(generator, 40)
    assert throttle.limits == (1200, 100_000_000)
    lines = [r.getMessage() for r in caplog.records if r.name == "asyncgen.throttle"]
    assert lines == ["the server allows 1200 requests per minute (its x-ratelimit headers), not 1440: keeping to 1200"]


async def test_told_limits_still_start_with_a_few_probes_at_a_drained_server():
    """Told 1,440 RPM where a drained server allows 1,200: until the first answer (a 429 is one)
    only the probes go; its headers then say the buckets are empty. Was: a first burst of all 32
    workers at the told rate, turned away whole."""
    async with running_simulator(SimulatorConfig(rpm=1200, tpm=100_000_000, start_drained=True, seed=5)) as sim:
        stats = RunStats(target=0)
        client, generator, _ = _generator(sim, stats, [])
        generator.throttle = Throttle(rpm=1440, tpm=100_000_000, largest_request_tokens=1500)
        generator.policy = RetryPolicy(max_attempts=20)
        post, started, answered = client.post, [], []

        async def post_counting(body):
            started.append(len(answered))  # answers back when this request went
            try:
                return await post(body)
            finally:
                answered.append(1)

        client.post = post_counting
        async with client:
            await drive(generator, 48, workers=32)
    assert stats.requests_ok == 48
    assert started.count(0) <= PROBE_CONCURRENCY, started.count(0)


def test_a_429_naming_a_lower_limit_is_adopted():
    throttle = Throttle(rpm=500, tpm=36_000, learn_from_headers=False)
    throttle.observe_rate_limit_text(
        "Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Used 29500, "
        "Requested 900. Please try again in 1.8s.")
    assert throttle.limits == (500, 30_000)
    throttle.observe_rate_limit_text("on requests per min (RPM): Limit 600, Used 600, Requested 1.")
    assert throttle.limits == (500, 30_000)  # higher than told: told stays


def test_a_pause_for_an_empty_bucket_counts_from_when_the_request_was_sent():
    """The headers describe the bucket when the request was admitted, a latency ago: it has
    refilled since, and the client must not pause again for that."""
    headers = {"x-ratelimit-limit-requests": "500", "x-ratelimit-limit-tokens": "30000",
               "x-ratelimit-remaining-requests": "100", "x-ratelimit-remaining-tokens": "0"}
    throttle = Throttle(rpm=500, tpm=30_000, learn_from_headers=False, largest_request_tokens=1000)
    throttle.request_tokens = 800  # 800 tokens at 500/s: 1.6 s to refill
    throttle.observe(headers, sent_at=time.monotonic() - 2.0)  # answered after 2 s: refilled meanwhile
    assert throttle.cooldowns == 0
    throttle.observe(headers, sent_at=time.monotonic() - 0.5)
    assert throttle.cooldowns == 1 and 1.0 <= throttle.cooldown_seconds <= 1.1


def test_simulator_buckets_can_start_drained():
    full, drained = RateLimiter(1200, 30_000, 0.0), RateLimiter(1200, 30_000, 0.0, drained=True)
    assert full.admit(700, 0.0).rejected_by is None
    assert drained.admit(700, 0.0).rejected_by == "requests"
    assert drained.admit(700, 1.0).rejected_by == "tokens"  # 20 requests but only 500 tokens refilled
    assert drained.admit(700, 1.5).rejected_by is None
