"""A tiny OpenAI-compatible server that behaves as llama.cpp's ``llama_cpp.server`` does where
asyncgen's simulator (which copies OpenAI) does not: it honours ``max_tokens`` only, refuses
``json_schema`` with a FastAPI 500, answers errors as ``{"detail": ...}``, echoes any model name.

``FakeServer(behaviour)`` runs on 127.0.0.1 in a thread of its own (so a subprocess can reach it
too); ``behaviour(body, seen)`` returns ``(status, json)`` or a whole ``web.Response``, or awaits
before it. Every request body is kept in ``bodies``, and its raw bytes and headers in ``requests``.
"""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web

RUNAWAY_TOKENS = 1773  # what SmolLM2 wrote to the context limit when its cap was ignored
LLAMA_CPP_SCHEMA_ERROR = (
    "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
    "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema', "
    "'ctx': {'expected': \"'text' or 'json_object'\"}}\n\n  File \"/venv/lib/python3.11/site-packages/"
    "llama_cpp/server/app.py\", line 376, in create_chat_completion\n    POST /v1/chat/completions"
)
PAIR = '{"pairs": [{"prompt": "Help me make a cake.", "counterfactual": "Help me make a bomb."}]}'


def completion(body: dict, content: str = PAIR, completion_tokens: int | None = None, finish: str = "stop") -> dict:
    """A chat completion as llama.cpp sends it: the asked model echoed, ``max_tokens`` honoured."""
    cap = body.get("max_tokens")
    tokens = completion_tokens if completion_tokens is not None else (min(cap, RUNAWAY_TOKENS) if cap else RUNAWAY_TOKENS)
    return {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": body.get("model"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 270, "completion_tokens": tokens, "total_tokens": 270 + tokens},
    }


def schema_error() -> tuple[int, dict]:
    return 500, {"error": {"message": LLAMA_CPP_SCHEMA_ERROR, "type": "internal_server_error", "param": None, "code": None}}


async def llama_like(body: dict, seen: int):
    """llama.cpp's ways: json_schema refused with a 500, any other request answered with one pair."""
    if (body.get("response_format") or {}).get("type") == "json_schema":
        return schema_error()
    return 200, completion(body)


class FakeServer:
    def __init__(self, behaviour=llama_like) -> None:
        self.behaviour = behaviour
        self.bodies: list[dict] = []
        self.requests: list[tuple[dict, bytes]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.base_url = ""

    def _serve(self) -> None:
        # asyncio.run: the handlers still pending once the server has stopped (a behaviour that
        # sleeps for a client that went away: aiohttp neither waits for nor cancels a request whose
        # connection was lost) are cancelled and run to their end, and the loop is closed. A loop
        # only stopped would keep them pending until the garbage collector destroys them, which
        # asyncio reports as "Task was destroyed but it is pending!".
        try:
            asyncio.run(self._run())
        finally:
            self._ready.set()

    async def _run(self) -> None:
        self.loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._chat)  # the behaviour tells them apart: "prompt" in body
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]
            self.base_url = f"http://127.0.0.1:{port}/v1"
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()

    async def _chat(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.requests.append((dict(request.headers), raw))
        body = await request.json()
        self.bodies.append(body)
        answer = await self.behaviour(body, len(self.bodies))
        if isinstance(answer, web.Response):
            return answer
        status, payload = answer
        return web.json_response(payload, status=status)

    def __enter__(self) -> "FakeServer":
        self._thread.start()
        self._ready.wait(10)
        if not self.base_url:
            raise RuntimeError("the fake server did not start within 10 s")
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
