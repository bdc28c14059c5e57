"""asyncgen.transport.ChatTransport keeps the SDK's contract: what it sends, and the exception it raises
for each failure, equal what the SDK's own ``client.post`` sends and raises for the same answer."""

from __future__ import annotations

import asyncio
import socket

import httpx
import openai
import orjson
import pytest
from aiohttp import web

from asyncgen.errors import server_words
from asyncgen.throttle import RetryPolicy, connect_error_text
from asyncgen.transport import ChatTransport
from fake_server import FakeServer

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Pairs, as json."}], "max_tokens": 5}
ANSWERS = [  # status, content type, body: what servers send when they refuse
    (400, "application/json", b'{"error": {"message": "bad \'max_tokens\'", "type": "invalid_request_error", '
                              b'"param": "max_tokens", "code": "invalid_value"}}'),
    (401, "application/json", b'{"error": {"message": "Incorrect API key provided: sk-te***", "code": "invalid_api_key"}}'),
    (401, "application/json", b'{"detail": "Invalid API key"}'),  # FastAPI (llama.cpp's server)
    (403, "application/json", b'{"error": {"message": "forbidden"}}'),
    (404, "application/json", b'{"error": {"message": "The model `gpt-9` does not exist", "code": "model_not_found"}}'),
    (409, "application/json", b'{"error": {"message": "conflict"}}'),
    (422, "application/json", b'{"detail": [{"loc": ["body", "messages"], "msg": "field required"}]}'),
    (429, "application/json", b'{"error": {"message": "Rate limit reached for gpt-4o on requests per min (RPM): '
                              b'Limit 500, Used 500, Requested 1.", "type": "requests", "code": "rate_limit_exceeded"}}'),
    (429, "application/json", b'{"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", '
                              b'"code": "insufficient_quota"}}'),
    (418, "text/plain", b"I'm a teapot"),
    (500, "application/json", b'{"error": {"message": "The server had an error", "type": "server_error"}}'),
    (502, "text/html", b"<html><body>502 Bad Gateway</body></html>"),
    (503, "text/plain", b""),
]


def server_answering(status=200, content_type="application/json", body=b'{"choices": []}', delay=0.0, headers=None):
    """A server that answers every request ``(status, content_type, body)`` with ``headers``."""
    async def answer(request_body, seen):
        if delay:
            await asyncio.sleep(delay)
        return web.Response(status=status, body=body, content_type=content_type, headers=headers or {})
    return FakeServer(answer)


def sdk_client(base_url: str, **options) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="sk-test", base_url=base_url, max_retries=0,
                              http_client=httpx.AsyncClient(trust_env=False), **options)


async def sdk_post(client: openai.AsyncOpenAI) -> httpx.Response:
    return await client.post("/chat/completions", cast_to=httpx.Response, body=BODY)


@pytest.mark.parametrize("status,content_type,body", ANSWERS)
async def test_each_refusal_raises_what_the_sdk_raises(status, content_type, body):
    with server_answering(status, content_type, body, headers={"retry-after-ms": "120"}) as server:
        client = sdk_client(server.base_url)
        with pytest.raises(openai.APIStatusError) as sdk:
            await sdk_post(client)
        async with ChatTransport(client, concurrency=2, timeout=5.0, trust_env=False) as transport:
            with pytest.raises(openai.APIStatusError) as ours:
                await transport.post(BODY)
        await client.close()
    assert type(ours.value) is type(sdk.value)
    assert ours.value.status_code == sdk.value.status_code == status
    assert ours.value.body == sdk.value.body
    assert ours.value.message == sdk.value.message
    assert getattr(ours.value, "code", None) == getattr(sdk.value, "code", None)
    assert ours.value.response.headers.get("retry-after-ms") == "120"
    assert server_words(ours.value) == server_words(sdk.value)
    ours_decided, sdk_decided = RetryPolicy().decide(ours.value, 0), RetryPolicy().decide(sdk.value, 0)
    assert (ours_decided.action, ours_decided.cause, ours_decided.message) == \
        (sdk_decided.action, sdk_decided.cause, sdk_decided.message)  # the delay may have jitter


async def test_a_2xx_returns_its_headers_and_bytes_and_sends_what_the_sdk_sends():
    answer = b'{"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}'
    with server_answering(body=answer, headers={"x-ratelimit-remaining-requests": "499"}) as server:
        client = sdk_client(server.base_url, organization="org-asyncgen", project="proj-asyncgen")
        await sdk_post(client)
        async with ChatTransport(client, concurrency=2, timeout=5.0, trust_env=False) as transport:
            headers, content = await transport.post(BODY)
        await client.close()
    assert content == answer
    assert headers.get("X-RateLimit-Remaining-Requests") == "499"  # looked up in any case, as httpx does
    (sdk_headers, sdk_body), (our_headers, our_body) = server.requests
    assert orjson.loads(our_body) == orjson.loads(sdk_body) == BODY
    for name in ("Authorization", "User-Agent", "Content-Type", "Accept", "OpenAI-Organization", "OpenAI-Project"):
        assert our_headers.get(name) == sdk_headers.get(name), name
    assert our_headers["Authorization"] == "Bearer sk-test"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_a_refused_connection_is_a_connection_error_in_the_os_words():
    client = sdk_client(f"http://127.0.0.1:{_closed_port()}/v1")
    async with ChatTransport(client, concurrency=2, timeout=5.0, trust_env=False) as transport:
        with pytest.raises(openai.APIConnectionError) as caught:
            await transport.post(BODY)
    assert not isinstance(caught.value, openai.APITimeoutError)
    assert connect_error_text(caught.value) == "connection refused"
    assert RetryPolicy().decide(caught.value, 0).cause == "connection"


async def test_no_answer_in_time_is_a_timeout():
    with server_answering(delay=2.0) as server:
        async with ChatTransport(sdk_client(server.base_url), concurrency=2, timeout=0.2, trust_env=False) as transport:
            with pytest.raises(openai.APITimeoutError):
                await transport.post(BODY)
    assert RetryPolicy().decide(openai.APITimeoutError(request=httpx.Request("POST", "http://x")), 0).cause == "timeout"


async def test_a_connection_closed_before_the_answer_is_a_connection_error():
    async def hang_up(reader, writer):
        await reader.read(100)
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with ChatTransport(sdk_client(f"http://127.0.0.1:{port}/v1"), concurrency=2, timeout=5.0,
                                 trust_env=False) as transport:
            with pytest.raises(openai.APIConnectionError) as caught:
                await transport.post(BODY)
    finally:
        server.close()
        await server.wait_closed()
    assert not isinstance(caught.value, openai.APITimeoutError)
    assert "ServerDisconnected" not in str(caught.value)  # the words, not a class name
    assert RetryPolicy().decide(caught.value, 0).action == "retry"


async def test_a_proxy_in_the_environment_is_used_unless_told_not_to(monkeypatch):
    with server_answering() as server:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_closed_port()}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with ChatTransport(sdk_client(server.base_url), concurrency=2, timeout=5.0, trust_env=False) as direct:
            await direct.post(BODY)
        async with ChatTransport(sdk_client(server.base_url), concurrency=2, timeout=5.0, trust_env=True) as proxied:
            with pytest.raises(openai.APIConnectionError):
                await proxied.post(BODY)
    assert len(server.requests) == 1
