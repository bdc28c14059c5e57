"""The client's rate limiting and retry policy, against the in-process simulator."""

import asyncio
import time

import httpx
import openai
import pytest

from asyncgen.config import load_task
from asyncgen.prompting import JSON_SCHEMA_FORMAT, parse_answer
from asyncgen.simulator import SimulatorConfig, running_simulator
from asyncgen.stats import RunStats
from asyncgen.throttle import PROBE_CONCURRENCY, RetryPolicy, Throttle, parse_duration, retry_hint
from asyncgen.errors import redact
from asyncgen.transport import ChatTransport
from asyncgen.workers import GenerationSettings, Generator


def test_parse_duration():
    assert parse_duration("12ms") == pytest.approx(0.012)
    assert parse_duration("1s") == 1.0
    assert parse_duration("33.023s") == pytest.approx(33.023)
    assert parse_duration("6m0s") == 360.0
    assert parse_duration("1m12s") == 72.0
    assert parse_duration("soon") is None and parse_duration("") is None


def test_retry_hint_prefers_milliseconds():
    assert retry_hint({"retry-after-ms": "250", "retry-after": "1"}) == 0.25
    assert retry_hint({"retry-after": "2"}) == 2.0
    assert retry_hint({}) is None and retry_hint({"retry-after": "0"}) is None


@pytest.mark.parametrize(
    "content, finish, refusal, pairs, failure",
    [
        ('{"pairs": [{"prompt": "a b", "counterfactual": "a c"}]}', "stop", None, [("a b", "a c")], None),
        ('Here are the pairs: {"pairs": [{"prompt": "a b", "counterfactual": "a c"}]} Enjoy!', "stop", None, [("a b", "a c")], None),
        ('{"pairs": [{"prompt": "a b", "counterfactual": "a c"}, {"prompt": "x"}]}', "stop", None, [("a b", "a c")], None),
        ('{"pairs": [{"prompt": "a b", "counterfactual": "a c", "extra": 1}]}', "stop", None, [("a b", "a c")], None),
        ('{"pairs": [{"prompt": "a b", "count', "length", None, [], "length"),
        ("{not json", "stop", None, [], "bad_json"),
        ('{"items": []}', "stop", None, [], "bad_shape"),
        ('{"pairs": [{"prompt": 1}]}', "stop", None, [], "bad_shape"),
        (None, "stop", "I can't help with that.", [], "refusal"),
        ("", "content_filter", None, [], "content_filter"),
    ],
)
def test_parse_answer(content, finish, refusal, pairs, failure):
    answer = parse_answer(content, finish, refusal)
    assert answer.pairs == pairs and answer.failure == failure


def test_redact():
    assert redact("key sk-secret-123 leaked", "sk-secret-123") == "key sk-...REDACTED leaked"


def _generator(sim, throttle, stats, key="sk-test"):
    client = openai.AsyncOpenAI(api_key=key, base_url=sim.base_url, max_retries=0)
    transport = ChatTransport(client, concurrency=64, timeout=10.0, trust_env=False)
    settings = GenerationSettings("gpt-4o", JSON_SCHEMA_FORMAT, 1.0, None)
    return transport, Generator(transport, load_task("refusal"), settings, throttle, RetryPolicy(max_attempts=20),
                                stats, None, key)


async def drive(generator, requests: int, workers: int = 8) -> None:
    """``requests`` requests through ``workers`` concurrent workers, as the pipeline sends them."""
    numbers = iter(range(requests))

    async def worker():
        for number in numbers:
            await generator.generate(number, [])

    await asyncio.gather(*(worker() for _ in range(workers)))


async def test_limits_learned_from_headers_spread_requests():
    """Without --rpm, the client learns 600 RPM (10/s) from the headers and keeps to it."""
    async with running_simulator(SimulatorConfig(rpm=600, tpm=10_000_000, seed=1)) as sim:
        stats = RunStats(target=0)
        throttle = Throttle(largest_request_tokens=1500)
        client, generator = _generator(sim, throttle, stats)
        async with client:
            await drive(generator, requests=40, workers=16)
        snapshot = await sim.stats()
    assert throttle.rpm == 600
    arrivals = sorted(t for t, status in snapshot["chat"]["arrivals"])
    assert len(arrivals) == 40 and snapshot["rate_limited"]["requests"] == 0
    # 10/s with a bucket of about one second: the 40 spread over >= 2.5 s, and no 1 s window holds
    # more than the probes sent before the limits were known, a bucket, and a second's refill.
    # Unthrottled, all 40 arrive within a few ms.
    assert arrivals[-1] - arrivals[0] >= 2.5
    busiest = max(sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals)
    assert busiest <= PROBE_CONCURRENCY + 10 + 10


async def test_a_429_pauses_every_worker_until_its_hint_has_passed():
    """The server allows 60 RPM; the client is told 6,000. Every 429 cools all workers down."""
    async with running_simulator(SimulatorConfig(rpm=60, tpm=10_000_000, seed=2)) as sim:
        stats = RunStats(target=0)
        throttle = Throttle(rpm=6000, tpm=10_000_000, learn_from_headers=False, largest_request_tokens=1500)
        # As at a server whose headers and 429s name no limit: nothing to adopt, only retry hints.
        throttle.adopt_lower = lambda *args: None
        cooldowns = []
        original = throttle.cooldown

        def record(seconds):
            cooldowns.append((time.monotonic(), seconds))
            original(seconds)

        throttle.cooldown = record
        client, generator = _generator(sim, throttle, stats)
        async with client:
            await drive(generator, requests=64, workers=8)
        snapshot = sim.stats_snapshot()
        started = sim.simulator.stats.started  # the same monotonic clock: the simulator is in-process
    assert stats.requests_ok == 64 and stats.requests_given_up == 0
    assert stats.rate_limited >= 1 and len(cooldowns) >= stats.rate_limited  # header-driven pauses too
    arrivals = [started + t for t, status in snapshot["chat"]["arrivals"]]
    # Requests already on the wire when a 429 came back may land just after it; nothing later.
    for at, seconds in cooldowns:
        inside = [t for t in arrivals if at + 0.05 < t < at + seconds - 0.05]
        assert inside == [], (at, seconds, inside)


async def test_throttle_cooldown_blocks_new_slots():
    throttle = Throttle(rpm=600000, tpm=10**9, learn_from_headers=False)
    throttle.cooldown(0.3)
    start = time.monotonic()
    async with throttle.slot(10):
        pass
    assert time.monotonic() - start >= 0.29
    throttle.cooldown(0.1)
    throttle.cooldown(0.05)  # shorter: does not shorten the pause
    start = time.monotonic()
    async with throttle.slot(10):
        pass
    assert time.monotonic() - start >= 0.09


def test_policy_decisions():
    policy = RetryPolicy()
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")

    def status_error(cls, status, body, headers=None):
        response = httpx.Response(status, headers=headers or {}, request=request, json={"error": body})
        return cls(body["message"], response=response, body=body)

    quota = status_error(openai.RateLimitError, 429, {"message": "You exceeded your quota", "type": "insufficient_quota", "param": None, "code": "insufficient_quota"})
    assert policy.decide(quota, 0).action == "fail"
    limited = status_error(openai.RateLimitError, 429, {"message": "Rate limit reached", "type": "requests", "param": None, "code": "rate_limit_exceeded"}, {"retry-after-ms": "700"})
    assert policy.decide(limited, 0).action == "cooldown" and policy.decide(limited, 0).delay == pytest.approx(0.7)
    too_large = status_error(openai.RateLimitError, 429, {"message": "Request too large for gpt-4o", "type": "tokens", "param": None, "code": "rate_limit_exceeded"})
    assert policy.decide(too_large, 0).action == "fail"
    auth = status_error(openai.AuthenticationError, 401, {"message": "Incorrect API key", "type": "invalid_request_error", "param": None, "code": "invalid_api_key"})
    assert policy.decide(auth, 0).action == "fail" and "Incorrect API key" in policy.decide(auth, 0).message
    server = status_error(openai.InternalServerError, 503, {"message": "overloaded", "type": "server_error", "param": None, "code": None})
    delays = [policy.decide(server, k).delay for k in range(8)]
    assert all(d > 0 for d in delays) and max(delays) <= policy.max_delay and delays[3] > delays[0]
    assert policy.decide(openai.APITimeoutError(request=request), 0).cause == "timeout"
    assert policy.decide(openai.APIConnectionError(request=request), 0).cause == "connection"


async def test_requests_queued_at_the_probe_gate_pass_once_limits_are_known():
    throttle = Throttle(largest_request_tokens=100)
    release = asyncio.Event()
    entered = 0

    async def request():
        nonlocal entered
        async with throttle.slot(100):
            entered += 1
            await release.wait()

    tasks = [asyncio.create_task(request()) for _ in range(20)]
    await asyncio.sleep(0.05)
    assert entered == PROBE_CONCURRENCY  # a cautious start: limits unknown
    throttle.observe({"x-ratelimit-limit-requests": "100000", "x-ratelimit-limit-tokens": "100000000"})
    await asyncio.sleep(0.05)
    assert entered == 20  # all queued requests go, without waiting for the probes to finish
    release.set()
    await asyncio.gather(*tasks)


def test_the_test_suites_back_off_knob_only_ever_shortens_the_back_off(monkeypatch):
    """ASYNCGEN_TEST_RETRY_DELAY_SCALE (the suite's, undocumented) scales the back-off between 0 and
    1; anything else leaves the product's 0.5 s; the attempts are untouched."""
    from asyncgen.throttle import RETRY_DELAY_SCALE_VARIABLE, RetryPolicy

    assert RetryPolicy().base_delay == 0.5
    for value, expected in (("0.1", 0.05), ("0", 0.0), ("3", 0.5), ("-1", 0.0), ("fast", 0.5)):
        monkeypatch.setenv(RETRY_DELAY_SCALE_VARIABLE, value)
        assert RetryPolicy().base_delay == pytest.approx(expected), value
        assert RetryPolicy().max_attempts == 6


async def test_a_request_waiting_at_the_request_limiter_passes_at_once_when_the_run_is_released():
    """After Ctrl-C the pipeline releases the throttle: a request queued at the request limiter (1 a
    minute here: the next right in about a minute) passes at once and is not sent, instead of holding
    the stop for the limiter's pace; a cancellation of its own still cancels it."""
    throttle = Throttle(rpm=1, tpm=10**9, learn_from_headers=False)
    async with throttle.slot(10):  # the minute's one right
        pass
    passed: list = []

    async def request():
        async with throttle.slot(10):
            passed.append(throttle.released)

    waiting = asyncio.create_task(request())
    await asyncio.sleep(0.1)
    assert not waiting.done()  # at the limiter
    throttle.release()
    await asyncio.wait_for(waiting, 10)  # a minute without the release
    assert passed == [True]  # through, told the run stopped: the caller sends nothing

    other = Throttle(rpm=1, tpm=10**9, learn_from_headers=False)
    async with other.slot(10):
        pass
    cancelled = asyncio.create_task(_slot(other))
    await asyncio.sleep(0.1)
    cancelled.cancel()
    other.release()
    with pytest.raises(asyncio.CancelledError):
        await cancelled


async def _slot(throttle):
    async with throttle.slot(10):
        pass
