"""How fast workers may send, and what to do when a request fails: asyncgen's one retry policy.

``Throttle`` is shared by all workers. Before each request a worker waits, in order, for any
cooldown, the request limiter (``aiolimiter.AsyncLimiter``) and the token limiter (``TokenBucket``;
a request costs its prompt estimate plus its output cap). Requests pass the token limiter one at a
time, in order, and a request's output cap is read when it is next in line and again after each
wait there, not when it began to wait: at a token limit most requests wait for many seconds while
answers keep teaching the cap, and each request is sent and reserved at the cap in force as it goes.
Limits come from ``--rpm/--tpm`` or, without them, from the ``x-ratelimit-*`` headers of the first
responses. Until the first answer arrives only a few requests go out at once, limits told or not:
its ``remaining`` counts may say the buckets are empty (a drained start, another client on the same
key), and a first burst at told limits would be turned away whole. Afterwards the
``remaining``/``reset`` headers keep steering: when the server says a bucket is empty, every worker
pauses until it has refilled enough. A 429 with a retry hint pauses all workers, not just the one
that got it. Limits told by ``--rpm/--tpm`` that are higher than the server's (its
``x-ratelimit-limit-*`` headers, or the "Limit N" of a 429's text) give way to the server's figure:
honouring each retry hint alone would draw 429s for the whole run. Timeouts mean a server slower
than the requests sent to it (a local server with one slot, which goes on generating what the client
abandoned): each one halves how many requests may be in flight at once, and each answer lets that
number grow again by about one per round of answers (additive increase, multiplicative decrease).

``decide(exc, attempt)`` is the retry policy: permanent errors fail the run, rate limits cool
everyone down, 5xx/timeouts/connection errors back off exponentially with jitter, and no request
is tried more than ``max_attempts`` times. An error (4xx or 5xx) whose text names
``response_format`` or ``json_schema`` is the server refusing the structured-output format: the
worker decides what to do with it ("format").
"""

from __future__ import annotations

import asyncio
import bisect
import os
import random
import re
import time
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Mapping

import logging

import openai
from aiolimiter import AsyncLimiter

from asyncgen.errors import server_words

log = logging.getLogger("asyncgen.throttle")
PROBE_CONCURRENCY = 4  # requests in flight before the server has told us its limits
TAKES_KEPT = 1024  # requests the token bucket remembers, to follow the server's count (see follow)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# OpenAI's 429 text: "... on requests per min (RPM): Limit 1200, Used 1200, Requested 1. ..."
_LIMIT_IN_TEXT = re.compile(r"per min \((RPM|TPM)\): Limit (\d+)")


def parse_duration(text: str | None) -> float | None:
    """Go-style durations as OpenAI sends them: ``12ms``, ``1s``, ``33.023s``, ``6m0s``."""
    if not text:
        return None
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def retry_hint(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (first) or ``retry-after`` (seconds)."""
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                seconds = float(value) * scale
            except ValueError:
                continue
            if seconds > 0:
                return seconds
    return None


RELEASED = "the run stopped: released from the request limiter"


def _request_limiter(per_minute: float) -> AsyncLimiter:
    # A bucket of about one second's worth (at least one request): smooth, few bursts.
    period = max(1.0, 60.0 / per_minute)
    return AsyncLimiter(per_minute * period / 60.0, period)


class TokenBucket:
    """The TPM limiter: ``per_minute`` tokens refilled continuously into a bucket of about one
    second's worth (at least ``largest_request``), full at first. Unlike aiolimiter's, it says how
    long until it holds an amount without taking it, so that a request waiting for it can be sized
    again when it has waited: its output cap may have fallen meanwhile. ``follow`` keeps it at or
    under the server's own count (its ``remaining`` header); ``refund`` gives back what a request
    the server turned away took, as far as the server's count allows."""

    def __init__(self, per_minute: float, largest_request: float = 1.0, now: float | None = None) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(self.rate, largest_request)
        self.level = self.capacity
        self.updated = time.monotonic() if now is None else now
        self._taken_at: list[float] = []  # when each recent request was taken (ascending) ...
        self._taken_total: list[float] = []  # ... and the tokens taken by then, all requests included
        self._server: tuple[float, float, float] | None = None  # its count at a time, refilling at a rate

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + max(0.0, now - self.updated) * self.rate)
        self.updated = max(self.updated, now)

    def _taken_since(self, moment: float) -> float:
        if not self._taken_total:
            return 0.0
        before = bisect.bisect_right(self._taken_at, moment) - 1
        return self._taken_total[-1] - (self._taken_total[before] if before >= 0 else 0.0)

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until the bucket holds ``amount`` (at most its capacity); 0: it does now."""
        self._refill(now)
        return max(0.0, (min(amount, self.capacity) - self.level) / self.rate)

    def take(self, amount: float, now: float) -> None:
        self._refill(now)
        amount = min(amount, self.capacity)
        self.level -= amount
        if len(self._taken_at) >= 2 * TAKES_KEPT:
            del self._taken_at[:TAKES_KEPT], self._taken_total[:TAKES_KEPT]
        self._taken_at.append(now)
        self._taken_total.append((self._taken_total[-1] if self._taken_total else 0.0) + amount)

    def server_count(self, now: float) -> float | None:
        """What the server holds now, from its last count (None: it has given none)."""
        if self._server is None:
            return None
        count, at, per_minute = self._server
        return count + (now - at) * per_minute / 60.0 - self._taken_since(at)

    def follow(self, remaining: float, per_minute: float, sent_at: float, now: float, delay: float = 0.0) -> None:
        """The server held ``remaining`` tokens (refilling at ``per_minute``) just after admitting (or
        turning away) a request sent at ``sent_at``, ``delay`` seconds after it was sent at most;
        since then it has refilled and taken the requests sent after that one. Hold no more than
        that: never more than the server will admit (after a drained start, a 429's pause or
        another client's requests on the same key). This only ever lowers the bucket."""
        self._refill(now)
        self._server = (remaining - delay * per_minute / 60.0, sent_at, per_minute)
        self.level = min(self.level, self.server_count(now))

    def refund(self, amount: float, now: float) -> None:
        """A request the server turned away (429) took ``amount`` here: give it back, but hold no more
        than the server's count (a server that charges turned-away requests says so in it). Without
        a count from the server, nothing is given back."""
        self._refill(now)
        server = self.server_count(now)
        if server is not None:
            self.level = min(self.capacity, max(self.level, min(self.level + min(amount, self.capacity), server)))


class Throttle:
    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        largest_request_tokens: int = 1,
        learn_from_headers: bool = True,
    ) -> None:
        self.rpm, self.tpm = rpm, tpm
        self.largest_request_tokens = largest_request_tokens
        self._requests = _request_limiter(rpm) if rpm else None
        self._tokens = TokenBucket(tpm, largest_request_tokens) if tpm else None
        self._learning = learn_from_headers  # until the first answer: a few probes only
        self._probe = asyncio.Semaphore(PROBE_CONCURRENCY)
        self._cooldown_until = 0.0
        self.cooldowns = 0
        self.cooldown_seconds = 0.0
        self.ceiling: float | None = None  # most requests in flight after timeouts; None: no such limit
        self.request_tokens = largest_request_tokens  # the latest request's estimate
        self._sending = 0
        self._in_line = 0  # requests queued for the token bucket (or holding its turn)
        self._below_ceiling = asyncio.Condition()
        self._next_in_line = asyncio.Lock()  # FIFO: one request at a time waits in the token limiter
        self._wake = asyncio.Event()  # wakes the request waiting for the token bucket
        self.released = False  # the run stopped: waiting requests pass at once, and are not sent
        self._at_request_limiter: set[asyncio.Task] = set()  # waiting in aiolimiter's acquire: release() wakes them
        self._fastest = float("inf")  # the fastest round trip seen: bounds how long admission takes
        # (when, tokens) of the probes sent before the token limit was known: the bucket made when it
        # is learned counts them as taken (see _set_tpm)
        self._unmetered: list[tuple[float, int]] = []

    @property
    def limits(self) -> tuple[float | None, float | None]:
        return self.rpm, self.tpm

    def cooldown(self, seconds: float) -> None:
        """Pause every worker for ``seconds`` from now (extends, never shortens, a pause)."""
        until = time.monotonic() + seconds
        if until > self._cooldown_until:
            self.cooldown_seconds += until - max(self._cooldown_until, time.monotonic())
            self._cooldown_until = until
            self.cooldowns += 1

    def on_timeout(self) -> None:
        """A request timed out: halve the requests in flight (at least one)."""
        self.ceiling = max(1.0, (self.ceiling or self._sending + 1) / 2)

    def on_answer(self) -> None:
        """A request was answered: after timeouts, allow about one more in flight per round."""
        if self.ceiling is not None:
            self.ceiling += 1.0 / self.ceiling
            self._wake_below_ceiling()

    def _wake_below_ceiling(self) -> None:
        async def wake() -> None:
            async with self._below_ceiling:
                self._below_ceiling.notify_all()

        self._waking = asyncio.get_running_loop().create_task(wake())  # referenced: tasks are held weakly

    async def _wait_below_ceiling(self) -> None:
        if self.ceiling is not None and self._sending >= self.ceiling:
            async with self._below_ceiling:
                await self._below_ceiling.wait_for(lambda: self.ceiling is None or self._sending < self.ceiling)

    async def _wait_cooldown(self) -> None:
        while (remaining := self._cooldown_until - time.monotonic()) > 0 and not self.released:
            await asyncio.sleep(remaining)

    def release(self) -> None:
        """The run stopped: the requests waiting here pass at once, taking nothing from the limits;
        the caller does not send them. (They used to pass the token bucket one by one, at the
        limit's pace, and hold the stop for its whole grace period.)"""
        self.released = True
        self._wake.set()
        for task in self._at_request_limiter:  # aiolimiter has no way to wake its waiters but to cancel them
            task.cancel(RELEASED)

    async def _acquire_request(self) -> None:
        """A right from the request limiter, or none once the run is released (then the caller does not
        send). A cancellation other than release()'s goes on."""
        task = asyncio.current_task()
        self._at_request_limiter.add(task)
        try:
            await self._requests.acquire()
        except asyncio.CancelledError:
            if not self.released or task.uncancel() > 0:
                raise
        finally:
            self._at_request_limiter.discard(task)

    def _take_tokens(self, tokens: int, output_cap: Callable[[], int] | None) -> tuple[int | None, float]:
        """Size the request with the cap in force now (a lower limit may have been adopted too) and
        take it from the token bucket if it holds that much: ``(cap, 0)``; else ``(cap, seconds to
        wait)`` and nothing taken."""
        cap = output_cap() if output_cap is not None else None
        bucket = None if self.released else self._tokens
        size, now = tokens + (cap or 0), time.monotonic()
        if bucket is None:
            if self._learning and not self.released and len(self._unmetered) < TAKES_KEPT:
                self._unmetered.append((now, size))
            return cap, 0.0
        wait = bucket.wait_for(size, now)
        if wait <= 0:
            bucket.take(size, now)
        return cap, wait

    @asynccontextmanager
    async def slot(self, tokens: int, output_cap: Callable[[], int] | None = None) -> AsyncIterator[int | None]:
        """Hold a right to send one request of ``tokens`` estimated tokens plus ``output_cap()``.

        ``output_cap`` is called when the request is next in line for the token limiter and again
        after each wait there; the slot yields what it returned last: the cap to send, reserved.
        """
        probing = self._learning
        if probing:
            await self._probe.acquire()
            if not self._learning:  # the limits arrived while this request queued at the gate
                self._probe.release()  # and the next waiter does the same: the queue drains at once
                probing = False
        try:
            if self._cooldown_until > time.monotonic():
                await self._wait_cooldown()
            if self._requests is not None and not self.released:
                await self._acquire_request()
            # Nobody in line and room in the bucket: pass at once (no await between the look and the
            # take, so the order holds); else queue, and be sized again after each wait there.
            cap, wait = self._take_tokens(tokens, output_cap) if not self._in_line else (None, None)
            if wait is None or wait > 0:
                self._in_line += 1
                try:
                    async with self._next_in_line:
                        if wait is None:  # others were in line: this request is next now
                            cap, wait = self._take_tokens(tokens, output_cap)
                        while wait > 0:
                            self._wake.clear()  # a 429's refund may fill the bucket sooner, or the run stop
                            with suppress(asyncio.TimeoutError):
                                await asyncio.wait_for(self._wake.wait(), wait)
                            cap, wait = self._take_tokens(tokens, output_cap)
                finally:
                    self._in_line -= 1
            tokens += cap or 0
            if self._cooldown_until > time.monotonic():  # a 429 may have arrived while we queued
                await self._wait_cooldown()
            if self.ceiling is not None:
                await self._wait_below_ceiling()
            self.request_tokens = tokens
            self._sending += 1
            try:
                yield cap
            finally:
                self._sending -= 1
                if self.ceiling is not None:
                    self._wake_below_ceiling()
        finally:
            if probing:
                self._probe.release()

    def observe(self, headers: Mapping[str, str], *, learn: bool = True, sent_at: float | None = None) -> None:
        """Learn limits from the first answer's headers; follow ``remaining``/``reset`` after.

        ``remaining`` describes the bucket when the server admitted the request, up to a whole
        latency ago (``sent_at``, monotonic): the bucket has refilled since, so a pause for it is
        counted from then, not from now. The token bucket follows the server's count from it.

        ``learn=False`` for answers that may not come from the API itself (a proxy's 5xx page): they
        neither set the limits nor end the cautious start. An API answer without limit headers
        (a local server) ends it: there are no limits to keep to.
        """
        limit_requests = _number(headers.get("x-ratelimit-limit-requests"))
        limit_tokens = _number(headers.get("x-ratelimit-limit-tokens"))
        if self._learning and (learn or limit_requests or limit_tokens):
            # New requests skip the probe gate now; one release starts the queued ones passing it in
            # a chain (see slot), without waiting for the probes in flight to finish.
            self._learning = False
            self._probe.release()
            if limit_requests and not self.rpm:
                self._set_rpm(limit_requests)
            if limit_tokens and not self.tpm:
                self._set_tpm(limit_tokens)
            self._unmetered.clear()
        if learn:
            self.adopt_lower(limit_requests, limit_tokens, "its x-ratelimit headers")
        # An empty bucket pauses everyone until one request (or one request's tokens) has refilled,
        # or until the server's reset time if that comes sooner.
        elapsed = time.monotonic() - sent_at if sent_at is not None else 0.0
        remaining_requests = _number(headers.get("x-ratelimit-remaining-requests"))
        if remaining_requests is not None and remaining_requests < 1 and limit_requests:
            pause = _sooner(60.0 / limit_requests, parse_duration(headers.get("x-ratelimit-reset-requests")))
            if pause > elapsed:
                self.cooldown(pause - elapsed)
        remaining_tokens = _number(headers.get("x-ratelimit-remaining-tokens"))
        if learn and sent_at is not None:
            self._fastest = min(self._fastest, elapsed)  # admission comes no later after sending
            if remaining_tokens is not None and limit_tokens and self._tokens is not None:
                self._tokens.follow(remaining_tokens, limit_tokens, sent_at, time.monotonic(), self._fastest)
        if remaining_tokens is not None and limit_tokens and remaining_tokens < self.request_tokens:
            refill = (self.request_tokens - remaining_tokens) * 60.0 / limit_tokens
            pause = _sooner(refill, parse_duration(headers.get("x-ratelimit-reset-tokens")))
            if pause > elapsed:
                self.cooldown(pause - elapsed)

    def turned_away(self, tokens: int) -> None:
        """The server answered a request of ``tokens`` with a 429: it admitted nothing (see refund)."""
        if self._tokens is not None:
            self._tokens.refund(tokens, time.monotonic())
            self._wake.set()

    def observe_rate_limit_text(self, text: str) -> None:
        """A 429's words: OpenAI names the limit it hit ("on tokens per min (TPM): Limit 30000")."""
        found = _LIMIT_IN_TEXT.search(text)
        if found:
            limit = float(found.group(2))
            self.adopt_lower(limit if found.group(1) == "RPM" else None, limit if found.group(1) == "TPM" else None,
                             "a 429")

    def adopt_lower(self, rpm: float | None, tpm: float | None, source: str) -> None:
        """Limits the server names that are lower than those kept: keep the server's (one log line)."""
        if rpm and self.rpm and rpm < self.rpm:
            log.warning("the server allows %g requests per minute (%s), not %g: keeping to %g", rpm, source,
                        self.rpm, rpm)
            self._set_rpm(rpm)
        if tpm and self.tpm and tpm < self.tpm:
            log.warning("the server allows %g tokens per minute (%s), not %g: keeping to %g", tpm, source,
                        self.tpm, tpm)
            self._set_tpm(tpm)

    def _set_rpm(self, rpm: float) -> None:
        self.rpm, self._requests = rpm, _request_limiter(rpm)

    def _set_tpm(self, tpm: float) -> None:
        self.tpm, self._tokens = tpm, TokenBucket(tpm, min(self.largest_request_tokens, tpm))
        # The probes already sent count: the first answer's ``remaining`` may predate their admission,
        # and follow() subtracts only what the bucket took after that answer's request was sent.
        for taken_at, size in self._unmetered:
            self._tokens.take(size, taken_at)


def _sooner(seconds: float, reset: float | None) -> float:
    return seconds if reset is None else min(seconds, reset)


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


# --- The retry policy ------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    action: str  # "retry" (after delay), "cooldown" (everyone waits delay), "fail" (stop the run),
    # "format" (the server refuses the response_format: the worker falls back or fails)
    delay: float
    cause: str  # what is counted: "429", "5xx", "timeout", "connection", "auth", "quota", ...
    message: str = ""


# For the test suite only, undocumented: a factor on the back-off before a retry (not on the waits a
# server asks for), so that tests of giving up do not wait seconds of back-off. The policy is the same.
RETRY_DELAY_SCALE_VARIABLE = "ASYNCGEN_TEST_RETRY_DELAY_SCALE"


def retry_base_delay() -> float:
    """0.5 s, times $ASYNCGEN_TEST_RETRY_DELAY_SCALE when that is set to a number from 0 to 1."""
    try:
        scale = float(os.environ.get(RETRY_DELAY_SCALE_VARIABLE, "1"))
    except ValueError:
        scale = 1.0
    return 0.5 * min(max(scale, 0.0), 1.0)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_delay: float = field(default_factory=retry_base_delay)
    max_delay: float = 8.0
    default_cooldown: float = 1.0  # a 429 without a retry hint

    def backoff(self, attempt: int) -> float:
        """Exponential with jitter, as the SDK does: min(base * 2**k, max) * (1 - 0.25 * random)."""
        return min(self.base_delay * 2**attempt, self.max_delay) * (1 - 0.25 * random.random())

    def decide(self, exc: BaseException, attempt: int) -> Decision:
        message = server_words(exc)
        if isinstance(exc, openai.RateLimitError):
            if exc.code == "insufficient_quota" or getattr(exc, "type", None) == "insufficient_quota":
                return Decision("fail", 0, "quota", "insufficient_quota: the account has no quota left; check billing")
            hint = retry_hint(exc.response.headers)
            if hint is None and "too large" in message.lower():
                return Decision("fail", 0, "too_large", f"request too large for the token limit: {message}")
            return Decision("cooldown", hint if hint is not None else self.default_cooldown, "429", message)
        if isinstance(exc, openai.APIStatusError) and names_response_format(message):
            return Decision("format", 0, "response_format", f"{_status(exc)}: {message}")
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return Decision("fail", 0, "auth", f"{_status(exc)}: {message}; check the API key")
        if isinstance(exc, openai.NotFoundError):
            return Decision("fail", 0, "not_found", f"{_status(exc)}: {message}; check --model and --base-url")
        if isinstance(exc, (openai.BadRequestError, openai.UnprocessableEntityError)):
            return Decision("fail", 0, "bad_request", f"{_status(exc)}: {message}")
        refused = connect_error_text(exc)
        if refused is not None:
            return Decision("retry", self.backoff(attempt), "connection", refused)
        if isinstance(exc, openai.APITimeoutError):
            return Decision("retry", self.backoff(attempt), "timeout", "timeout: no answer within --request-timeout")
        if isinstance(exc, openai.APIConnectionError):
            return Decision("retry", self.backoff(attempt), "connection", f"connection error: {message}")
        if isinstance(exc, openai.APIStatusError):
            if exc.status_code >= 500 or exc.status_code in (408, 409):
                return Decision("retry", self.backoff(attempt), f"{exc.status_code}", f"{exc.status_code}: {message}")
            return Decision("fail", 0, f"{exc.status_code}", f"{exc.status_code}: {message}")
        raise exc


def connect_error_text(exc: BaseException) -> str | None:
    """The OS's words when a request never reached the server ("Connection refused", "Name or
    service not known"), else None. The SDK's aiohttp transport reports these as timeouts, so the
    cause is looked for in the exception's chain."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and not isinstance(exc, TimeoutError) and exc.errno is not None:
            words = os.strerror(exc.errno) if exc.errno > 0 else (exc.strerror or str(exc))
            return words[:1].lower() + words[1:]
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def names_response_format(text: str) -> bool:
    """Whether an error's text is about the structured-output format (``response_format``)."""
    lowered = text.lower()
    return "response_format" in lowered or "json_schema" in lowered


def _status(exc: openai.APIStatusError) -> str:
    """``401`` or ``401 invalid_api_key``: the status and the error code when the server sent one."""
    code = exc.code if isinstance(getattr(exc, "code", None), str) and exc.code else None
    return f"{exc.status_code} {code}" if code else f"{exc.status_code}"
