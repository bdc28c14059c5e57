"""asyncgen against servers that are not OpenAI: the protocol defects issue 10 found on llama.cpp,
pinned against a small fake of its behaviour (tests/fake_server.py), fast and deterministic.
The real server is in tests/test_llamacpp.py."""

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from asyncgen.config import load_task
from asyncgen.errors import ApiError, server_words
from asyncgen.progress import summary
from asyncgen.prompting import JSON_OBJECT_FORMAT, JSON_SCHEMA_FORMAT, max_output_tokens, output_cap_field, parse_answer
from asyncgen.stats import RunStats
from asyncgen.throttle import RetryPolicy, Throttle
from asyncgen.transport import ChatTransport
from asyncgen.workers import GenerationSettings, Generator
from fake_server import PAIR, FakeServer, completion, schema_error
from test_run import ENV, run_here

TASK = load_task("refusal")
CAP = max_output_tokens(TASK)


def generator(server, stats, *, model="gpt-4o", response_format=JSON_SCHEMA_FORMAT, timeout=10.0, attempts=3,
              seed=None, **settings):
    client = openai.AsyncOpenAI(api_key="sk-test", base_url=server.base_url, max_retries=0)
    transport = ChatTransport(client, concurrency=8, timeout=timeout, trust_env=False)
    throttle = Throttle(rpm=60_000, tpm=10**9, learn_from_headers=False)
    policy = RetryPolicy(max_attempts=attempts, base_delay=0.05, max_delay=0.1)
    generation = GenerationSettings(model, response_format, 1.0, seed, **settings)
    return transport, Generator(transport, TASK, generation, throttle, policy, stats, None, "sk-test")


# --- 1. the output cap --------------------------------------------------------------------------


def test_cap_field_by_model():
    assert output_cap_field("gpt-4o") == output_cap_field("gpt-4.1-mini") == "max_tokens"
    assert output_cap_field("my-local-llama") == "max_tokens"
    for reasoning in ("o1", "o3-mini", "o4-mini", "gpt-5", "gpt-5-mini"):
        assert output_cap_field(reasoning) == "max_completion_tokens"


async def test_the_cap_is_sent_as_max_tokens_which_llama_cpp_honours():
    stats = RunStats(target=0)
    with FakeServer() as server:
        client, gen = generator(server, stats, response_format=JSON_OBJECT_FORMAT)
        async with client:
            await gen.generate(1, [])
    assert server.bodies[0]["max_tokens"] == CAP and "max_completion_tokens" not in server.bodies[0]
    assert stats.completion_tokens <= CAP and stats.over_cap_answers == 0


async def test_a_reasoning_model_gets_max_completion_tokens():
    stats = RunStats(target=0)
    with FakeServer() as server:
        client, gen = generator(server, stats, model="o3-mini", response_format=JSON_OBJECT_FORMAT)
        async with client:
            await gen.generate(1, [])
    assert server.bodies[0]["max_completion_tokens"] == CAP and "max_tokens" not in server.bodies[0]


async def ignores_every_cap(body, seen):
    return 200, completion(body, completion_tokens=1773)


async def test_an_answer_over_the_cap_stops_a_run_with_a_budget(caplog):
    stats = RunStats(target=0)
    with FakeServer(ignores_every_cap) as server:
        client, gen = generator(server, stats, response_format=JSON_OBJECT_FORMAT, stop_if_cap_ignored=True)
        async with client:
            with pytest.raises(ApiError, match="ignored the output cap.*1773.*--max-cost"):
                await gen.generate(1, [])
        # Without a budget: the answers are used, counted, and one warning says why they are slow.
        stats = RunStats(target=0)
        client, gen = generator(server, stats, response_format=JSON_OBJECT_FORMAT)
        async with client:
            for number in range(3):
                assert await gen.generate(number, [])
    # Each answer longer than the cap its request was sent with is counted (once the cap has been
    # learned from two such answers it is above them).
    over = [body for body in server.bodies[1:] if body["max_tokens"] < 1773]
    assert len(over) >= 2 and stats.over_cap_answers == len(over)
    assert len([r for r in caplog.records if "ignored the output cap" in r.getMessage()]) == 1


# --- 2. timeouts: another seed, back-off, abandoned attempts counted ----------------------------


async def test_a_retry_after_a_timeout_gets_another_seed_and_the_abandoned_cost_is_unknown():
    async def runaway_on_first_seed(body, seen):
        if seen == 1:
            await asyncio.sleep(3)  # the answer that runs away: the client gives up on it
        return 200, completion(body)

    stats = RunStats(target=0)
    with FakeServer(runaway_on_first_seed) as server:
        client, gen = generator(server, stats, response_format=JSON_OBJECT_FORMAT, timeout=0.3, seed=7)
        async with client:
            pairs = await gen.generate(5, [])
    assert pairs and [b["seed"] for b in server.bodies][0] == 12
    assert server.bodies[1]["seed"] != 12  # the same seed would replay the runaway answer
    assert stats.retries["timeout"] == 1 and stats.abandoned_attempts == 1
    assert stats.to_run_state()["abandoned_attempts"] == 1
    text = summary(stats, stop_reason=None, output="d.jsonl", resume_command=None)
    assert "1 abandoned attempts cost unknown" in text


async def test_timeouts_shrink_the_requests_in_flight_until_a_one_slot_server_keeps_up():
    """A one-slot server that goes on generating what the client abandoned, as llama.cpp does:
    with 8 in flight, the 4th in its queue times out and its retry queues behind the abandoned work."""
    slot = asyncio.Lock()

    async def one_slot(body, seen):
        async with slot:
            await asyncio.sleep(0.1)
        return 200, completion(body)

    stats = RunStats(target=0)
    with FakeServer(one_slot) as server:
        client, gen = generator(server, stats, response_format=JSON_OBJECT_FORMAT, timeout=0.35, attempts=4)
        async with client:
            numbers = iter(range(24))

            async def worker():
                for number in numbers:
                    await gen.generate(number, [])

            await asyncio.gather(*(worker() for _ in range(8)))
    # Measured: 3 of 24 answered, 21 given up, 84 attempts abandoned when every retry joined the
    # queue; 24 answered, 19 abandoned with the ceiling. Wide margins: the machine may be busy.
    assert stats.retries["timeout"] >= 1 and gen.throttle.ceiling is not None
    assert stats.requests_ok >= 22 and stats.abandoned_attempts <= 42, stats


async def test_attempts_in_flight_at_stop_are_counted_as_cancelled():
    async def slow(body, seen):
        await asyncio.sleep(5)
        return 200, completion(body)

    stats = RunStats(target=0)
    with FakeServer(slow) as server:
        client, gen = generator(server, stats, response_format=JSON_OBJECT_FORMAT)
        async with client:
            tasks = [asyncio.create_task(gen.generate(n, [])) for n in range(3)]
            while len(server.bodies) < 3:
                await asyncio.sleep(0.01)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert stats.requests_sent == 3 and stats.requests_cancelled == 3 and stats.abandoned_attempts == 3
    assert "3 sent: 0 answered, 0 retries, 0 given up, 3 cancelled at stop" in summary(
        stats, stop_reason="interrupted", output="d", resume_command=None)


# --- 3. json_schema refused: fall back once, or fail with the server's words ---------------------


async def test_a_refused_json_schema_falls_back_to_json_object_once(caplog):
    stats = RunStats(target=0)
    caplog.set_level(logging.DEBUG, logger="asyncgen")
    with FakeServer() as server:
        client, gen = generator(server, stats)
        async with client:
            results = await asyncio.gather(*(gen.generate(n, []) for n in range(8)))
    assert all(results) and stats.requests_ok == 8 and stats.requests_given_up == 0
    refused = [b for b in server.bodies if b["response_format"]["type"] == "json_schema"]
    assert 1 <= len(refused) <= 8 and len(server.bodies) == 8 + len(refused)
    assert server.bodies[-1]["response_format"] == JSON_OBJECT_FORMAT
    assert stats.retries == {"response_format": len(refused)}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "json_object" in warnings[0] and "Input should be 'text' or 'json_object'" in warnings[0]
    # The server's own words are at DEBUG, without the traceback tail llama.cpp appends.
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and "failed" in r.getMessage()]
    assert debug and all("Input should be 'text' or 'json_object'" in m and "File " not in m for m in debug)


async def test_an_explicit_json_schema_refused_fails_at_once_with_the_servers_words():
    stats = RunStats(target=0)
    with FakeServer() as server:
        client, gen = generator(server, stats, fallback_to_json_object=False)
        async with client:
            with pytest.raises(ApiError) as caught:
                await gen.generate(1, [])
    message = str(caught.value)
    assert "Input should be 'text' or 'json_object'" in message and "--response-format json_object" in message
    assert "\n" not in message and len(server.bodies) == 1 and stats.requests_failed == 1


async def test_a_transient_error_shows_the_servers_words_at_debug_and_in_the_summary(caplog):
    async def loading(body, seen):
        return 503, {"error": {"message": "Loading model, please wait", "type": "server_error"}}

    caplog.set_level(logging.DEBUG, logger="asyncgen")
    stats = RunStats(target=0)
    with FakeServer(loading) as server:
        client, gen = generator(server, stats, response_format=JSON_OBJECT_FORMAT, attempts=2)
        async with client:
            assert await gen.generate(1, []) == []
    assert stats.requests_given_up == 1 and "Loading model, please wait" in (stats.last_error or "")
    assert any("Loading model, please wait" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
    text = summary(stats, stop_reason="failed", output="d", resume_command=None)
    assert "last error      503: Loading model, please wait" in text


# --- 4. salvage --------------------------------------------------------------------------------


@pytest.mark.parametrize("content, pairs, failure, dropped", [
    ('{"prompt": "a b", "counterfactual": "a c"}', [("a b", "a c")], None, {}),
    ('Sure! {"prompt": "a b", "counterfactual": "a c"}', [("a b", "a c")], None, {}),
    ('{"pairs": {"prompt": "a b", "counterfactual": "a c"}}', [("a b", "a c")], None, {}),
    ('{"pairs": [{"prompt": "a b", "counterfactual": "a c"}, {"prompt": "x"}, "text", {"prompt": 1, "counterfactual": 2},'
     ' {"prompt": " ", "counterfactual": "y"}]}', [("a b", "a c")], None,
     {"missing_field": 1, "not_object": 1, "not_text": 1, "blank": 1}),
    ('[{"prompt": "a b", "counterfactual": "a c"}, {"counterfactual": "x"}]', [("a b", "a c")], None, {"missing_field": 1}),
    ('{"pairs": []}', [], "no_pairs", {}),
    ('[]', [], "no_pairs", {}),
    ('{"pairs": [{"prompt": "x"}]}', [], "bad_shape", {"missing_field": 1}),
])
def test_every_well_formed_pair_is_salvaged_and_every_dropped_item_counted(content, pairs, failure, dropped):
    answer = parse_answer(content, "stop", None)
    assert answer.pairs == pairs and answer.failure == failure and dict(answer.dropped) == dropped


async def test_dropped_items_and_empty_answers_reach_the_run_counters():
    answers = iter(['{"prompt": "a b", "counterfactual": "a c"}', '{"pairs": []}',
                    '{"pairs": [{"prompt": "a b", "counterfactual": "a c"}, {"prompt": "x"}]}'])

    async def varied(body, seen):
        return 200, completion(body, next(answers))

    stats = RunStats(target=0)
    with FakeServer(varied) as server:
        client, gen = generator(server, stats, response_format=JSON_OBJECT_FORMAT)
        async with client:
            counts = [len(await gen.generate(n, [])) for n in range(3)]
    assert counts == [1, 0, 1] and stats.answer_failures == {"no_pairs": 1} and stats.dropped_items == {"missing_field": 1}
    assert "dropped items   missing_field: 1" in summary(stats, stop_reason=None, output="d", resume_command=None)


# --- 6. messages ---------------------------------------------------------------------------------


def test_fastapi_errors_read_as_the_servers_words():
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx.Response(401, request=request, json={"detail": "Invalid API key"})
    error = openai.AuthenticationError("Error code: 401 - {'detail': 'Invalid API key'}", response=response,
                                       body={"detail": "Invalid API key"})
    assert server_words(error) == "Invalid API key"
    assert RetryPolicy().decide(error, 0).message == "401: Invalid API key; check the API key"
    response = httpx.Response(422, request=request, json={})
    error = openai.UnprocessableEntityError("Error code: 422", response=response,
                                            body={"detail": [{"loc": ["body", "messages"], "msg": "Field required"}]})
    assert RetryPolicy().decide(error, 0).message == "422: Field required"
    error = openai.InternalServerError("Error code: 502 - <html>...", response=httpx.Response(502, request=request), body=None)
    assert server_words(error) == "<html>..."
    # llama.cpp's 500 for json_schema: pydantic's repr and a traceback tail, read as one plain line.
    error = openai.InternalServerError("Error code: 500", response=httpx.Response(500, request=request),
                                       body=schema_error()[1]["error"])
    assert server_words(error) == "body.response_format.type: Input should be 'text' or 'json_object'"


def test_summary_names_no_python_class_and_accounts_for_every_request():
    stats = RunStats(target=10, requests_sent=9, requests_ok=5, requests_given_up=1, requests_cancelled=2)
    stats.retries["500"] = 1
    text = summary(stats, stop_reason="failed", output="d.jsonl", resume_command=None)
    assert "stopped (failed: see the error below)" in text
    assert "9 sent: 5 answered, 1 retries (500: 1), 1 given up, 2 cancelled at stop" in text


def _echoing(status=200, payload=None):
    async def behaviour(body, seen):
        if status != 200:
            return status, payload
        return 200, completion(body, PAIR, completion_tokens=40)
    return behaviour


def test_a_failed_run_says_failed_not_a_class_name_and_an_unpriced_cost_is_unknown(tmp_path):
    with FakeServer(_echoing(401, {"detail": "Invalid API key"})) as server:
        result = run_here(tmp_path, "--base-url", server.base_url, "--num-scenarios", "5", "--concurrency", "1",
                          "--model", "my-local-llama")
    assert result.returncode == 1
    assert "RunError" not in result.stderr and "ApiError" not in result.stderr
    assert "stopped (failed: see the error below)" in result.stderr
    assert "unknown this run" in result.stderr and "$0.0000" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("asyncgen run: error:")]
    assert error == ["asyncgen run: error: the API refused the request permanently: 401: Invalid API key; no API key "
                     "was set (OPENAI_API_KEY is empty): export OPENAI_API_KEY=<the key the server expects>"]


def test_a_local_server_that_echoes_the_model_name_is_priced_only_with_prices(tmp_path):
    with FakeServer(_echoing()) as server:
        # asked for gpt-4o, answered "gpt-4o": a local server, so not OpenAI's price ...
        result = run_here(tmp_path, "--base-url", server.base_url, "--num-scenarios", "1", "--concurrency", "1",
                     "--response-format", "json_object")
        assert result.returncode == 0, result.stderr[-2000:]
        assert "cost            unknown this run" in result.stderr
        assert json.loads((tmp_path / "checkpoint.json").read_text())["run_state"]["cost_usd"] is None
        budget = run_here(tmp_path, "--base-url", server.base_url, "--num-scenarios", "1", "--max-cost", "1")
        assert budget.returncode == 2 and "--prices" in budget.stderr
        # ... unless the user's own table prices the name they asked for.
        (tmp_path / "prices.yaml").write_text(
            "models:\n  my-llama: {input: 1, cached_input: 1, output: 2, batch_input: 1, batch_output: 1}\n")
        (tmp_path / "priced").mkdir()
        priced = run_here(tmp_path / "priced", "--base-url", server.base_url, "--num-scenarios", "1", "--concurrency", "1",
                     "--response-format", "json_object", "--model", "my-llama", "--prices", str(tmp_path / "prices.yaml"))
    assert priced.returncode == 0, priced.stderr[-2000:]
    assert f"${(270 * 1 + 40 * 2) / 1e6:.4f} this run" in priced.stderr


def test_ctrl_c_accounts_for_the_requests_cancelled_at_stop(tmp_path):
    async def slow(body, seen):
        await asyncio.sleep(0.3 if seen == 1 else 30)
        return 200, completion(body, '{"pairs": []}', completion_tokens=5)

    with FakeServer(slow) as server:
        process = subprocess.Popen(
            [sys.executable, "-m", "asyncgen", "run", "--base-url", server.base_url, "--output", str(tmp_path / "d.jsonl"),
             "--checkpoint", str(tmp_path / "c.json"), "--validator-workers", "0", "--num-scenarios", "50",
             "--concurrency", "3", "--grace-period", "0.5", "--response-format", "json_object"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(server.bodies) < 4:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    line = next(line for line in stderr.splitlines() if line.startswith("  requests"))
    assert "3 cancelled at stop" in line and f"{len(server.bodies)} sent: 1 answered" in line
    assert "abandoned attempts cost unknown" in stderr
    assert json.loads((tmp_path / "c.json").read_text())["run_state"]["abandoned_attempts"] == 3


# --- the fake server itself -------------------------------------------------------------------------


def test_the_fake_server_leaves_no_pending_handler_when_a_client_went_away_before_its_answer(caplog):
    """A client that hangs up while its request is still being answered (a run stopped, a process
    killed) leaves the handler running: aiohttp neither waits for nor cancels it at shutdown. Left
    pending on a loop that is only stopped, the garbage collector destroyed it later, and asyncio
    said "Task was destroyed but it is pending!" at the end of the suite."""
    import gc
    import socket
    import warnings

    async def answers_late(body, seen):
        await asyncio.sleep(30)
        return 200, completion(body)

    body = b'{"model": "m", "messages": []}'
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always", ResourceWarning)
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            with FakeServer(answers_late) as server:
                port = int(server.base_url.split(":")[2].split("/")[0])
                with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                    client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                   b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                    deadline = time.monotonic() + 10
                    while not server.bodies and time.monotonic() < deadline:
                        time.sleep(0.01)
                assert server.bodies  # the handler was answering when the client went away
            closed = server.loop.is_closed()
            del server
            gc.collect()  # what it left behind is destroyed now
    assert not [r.getMessage() for r in caplog.records if "destroyed" in r.getMessage()]
    assert not [str(w.message) for w in warned if issubclass(w.category, ResourceWarning)]
    assert closed
