"""One chat-completion POST over aiohttp; failures raised as the SDK's typed exceptions.

Contract:

- ``await transport.post(body)`` sends ``body`` (a dict, serialised with orjson) to
  ``{base_url}chat/completions`` once, with no retry, and returns ``(headers, content)`` of a 2xx
  answer: the response headers (case-insensitive) and the raw body bytes, unparsed.
- Any other status raises the ``openai`` exception the SDK raises for it (``RateLimitError`` for
  429, ``AuthenticationError`` for 401, ``InternalServerError`` for 5xx, ... ``APIStatusError``
  otherwise), carrying an ``httpx.Response`` with the status, headers and body and the SDK's
  ``body`` (the ``error`` object of an OpenAI error, else the parsed JSON or text). So the one retry
  policy (``asyncgen.throttle.RetryPolicy``) and ``asyncgen.errors.server_words`` read them as they
  read the SDK's own.
- No answer within ``timeout`` seconds (connecting: within ``CONNECT_TIMEOUT``) raises
  ``openai.APITimeoutError``; a connection that fails or breaks raises
  ``openai.APIConnectionError``; both are chained (``raise ... from``) to the OS's error, where
  ``connect_error_text`` finds its words.
- At most ``concurrency`` connections are open; they are kept alive between requests.
  ``trust_env=False`` ignores proxy settings in the environment (for loopback servers).
- The configuration (base URL, API key, organization, project, default headers) is the SDK
  client's, read once: the key resolves as the SDK resolves it, from ``OPENAI_API_KEY`` and
  ``OPENAI_BASE_URL`` too.

Why not the SDK's own ``client.post``: its per-request work (building an ``httpx.Request``, header
merging, option models, stdlib JSON) cost about 1.0 ms of client CPU per request against 0.22 ms for
a bare aiohttp client (bench/raw_floor.py; issue 13). The SDK is kept for what it is good at:
resolving the configuration, the exception tree, and the Batch API (asyncgen.batch).
"""

from __future__ import annotations

import asyncio
from typing import Mapping

import aiohttp
import httpx
import openai
import orjson

CONNECT_TIMEOUT = 5.0
_STATUS_ERRORS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    409: openai.ConflictError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


def status_error(status: int, headers: Mapping[str, str], content: bytes, url: str) -> openai.APIStatusError:
    """The SDK's exception for a non-2xx answer, built as the SDK builds it."""
    response = httpx.Response(status, headers=list(headers.items()), content=content,
                              request=httpx.Request("POST", url))
    text = response.text.strip()
    try:
        body: object = orjson.loads(text)
        message = f"Error code: {status} - {body}"
    except orjson.JSONDecodeError:
        body = text
        message = text or f"Error code: {status}"
    data = body.get("error", body) if isinstance(body, dict) else body
    kind = _STATUS_ERRORS.get(status, openai.InternalServerError if status >= 500 else openai.APIStatusError)
    return kind(message, response=response, body=data)


class ChatTransport:
    def __init__(self, client: openai.AsyncOpenAI, *, concurrency: int, timeout: float,
                 trust_env: bool = True) -> None:
        self.base_url = str(client.base_url)
        self.url = self.base_url.rstrip("/") + "/chat/completions"
        # The SDK's headers but its platform telemetry (X-Stainless-*): each header costs client CPU
        # on every request, and those say nothing the server needs.
        self.headers = {name: value for name, value in {**client.default_headers, **client.auth_headers}.items()
                        if isinstance(value, str) and not name.lower().startswith("x-stainless-")}
        self.concurrency, self.trust_env = concurrency, trust_env
        self.timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=CONNECT_TIMEOUT)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Created on first use: a session belongs to the running event loop.
        connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=0)
        self._session = aiohttp.ClientSession(connector=connector, headers=self.headers, timeout=self.timeout,
                                              trust_env=self.trust_env)
        return self._session

    def url_of(self, path: str) -> str:
        """The URL of another endpoint of the same API (``completions`` for scoring)."""
        return self.base_url.rstrip("/") + "/" + path

    async def post(self, body: dict, url: str | None = None) -> tuple[Mapping[str, str], bytes]:
        """POST ``body`` to ``url`` (default: chat completions); see the module's contract."""
        url = url or self.url
        session = self._session or self._open()
        try:
            async with session.post(url, data=orjson.dumps(body)) as response:
                content = await response.read()
                status, headers = response.status, response.headers
        except asyncio.TimeoutError as exc:  # aiohttp's ServerTimeoutError and ConnectionTimeoutError too
            raise openai.APITimeoutError(request=httpx.Request("POST", url)) from exc
        except aiohttp.ClientError as exc:  # refused, reset, "Server disconnected", a broken body
            raise openai.APIConnectionError(message=str(exc) or "the connection broke",
                                            request=httpx.Request("POST", url)) from exc
        if 200 <= status < 300:
            return headers, content
        raise status_error(status, headers, content, url)

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __aenter__(self) -> "ChatTransport":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
