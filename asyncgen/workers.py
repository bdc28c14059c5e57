"""One generation request, start to finish: throttle, send, retry per the policy, read the answer.

``Generator.generate`` returns the candidate pairs of one request (possibly none) and keeps the run's
counters; a permanent error raises ``ApiError`` with a one-line, key-redacted message.

The request body is built by ``prompting.request_body``, sent by ``transport.ChatTransport`` (one
POST, failures raised as the SDK's typed exceptions) and its answer read here with orjson.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable, Sequence

import openai
import orjson

from asyncgen.config import Task
from asyncgen.errors import ApiError, redact
from asyncgen.outputcap import OutputCap
from asyncgen.prices import Price, cost_usd
from asyncgen.prompting import (
    JSON_OBJECT_FORMAT,
    PROMPT_ESTIMATE_MARGIN,
    GenerationSettings,
    build_messages,
    estimate_prompt_tokens,
    max_output_tokens,
    output_cap_field,
    parse_answer,
    request_body,
)
from asyncgen.stats import RunStats
from asyncgen.throttle import Decision, RetryPolicy, Throttle
from asyncgen.transport import ChatTransport

log = logging.getLogger("asyncgen.workers")
CONNECT_FAILURES_BEFORE_STOPPING = 3
NO_KEY_SET = "sk-no-key-set"  # sent to a --base-url server when the user set no key (the SDK needs one)


class Sender:
    """One request, start to finish, under the one retry policy: wait for the rate limits, send,
    retry, count every attempt in ``stats``. Shared by generation (``Generator``) and scoring.

    ``send`` returns ``(content, cap)`` of the answer, or None when the request was given up (its
    retries exhausted) or the run stopped before it was sent. A permanent error raises ``ApiError``
    in one line; ``recover(decision, body)`` is asked first and may make it a retry at once (True:
    the request was not at fault, e.g. a format or endpoint the server refuses) or raise its own.
    """

    def __init__(self, transport: ChatTransport, throttle: Throttle, policy: RetryPolicy, stats: RunStats,
                 api_key: str | None) -> None:
        self.transport, self.throttle, self.policy, self.stats, self.api_key = transport, throttle, policy, stats, api_key
        self.stopped = False  # set when the run stops: requests not yet sent are not sent
        self.queued = 0  # requests waiting for the rate limits (the throttle's slot): not sent yet
        self.reached_server = False  # any HTTP answer at all, error or not
        self.connect_failures = 0  # before the first answer: a server that is not there fails the run fast

    def stop(self) -> None:
        self.stopped = True
        self.throttle.release()

    def stop_words(self, grace_period: float) -> str:
        """The first Ctrl-C's line: the requests sent (``stats.in_flight``) get ``grace_period``
        seconds; those still waiting for the rate limits are not sent (said apart, when there are any)."""
        queued = f", and the {self.queued} waiting for the rate limits are not sent" if self.queued else ""
        return (f"interrupted: no new requests{queued}; waiting up to {grace_period:.0f} s for "
                f"{self.stats.in_flight} in flight (Ctrl-C again to stop now)")

    @asynccontextmanager
    async def _slot(self, prompt_tokens: int, cap: Callable[[], int] | None) -> AsyncIterator[int | None]:
        """The throttle's slot, the request counted in ``queued`` until the slot lets it through."""
        self.queued += 1
        waiting = True
        try:
            async with self.throttle.slot(prompt_tokens, cap) as sent_cap:
                self.queued -= 1
                waiting = False
                yield sent_cap
        finally:
            if waiting:
                self.queued -= 1

    async def send(
        self,
        request_number: int,
        body: Callable[[int, int], dict],
        prompt_tokens: int,
        cap: Callable[[], int] | None,
        *,
        abandoned_bound: Callable[[int], float | None] = lambda cap: None,
        recover: Callable[[Decision, dict], bool] = lambda decision, body: False,
        url: Callable[[], str | None] = lambda: None,
    ) -> tuple[bytes, int] | None:
        """``body(cap, timeouts)`` builds each attempt's body; ``url()`` its URL (None: chat completions)."""
        stats = self.stats
        attempt = timeouts = 0
        while True:
            async with self._slot(prompt_tokens, cap) as sent_cap:
                if self.stopped:  # the run stopped while this request waited for the rate limits
                    return None
                params = body(sent_cap, timeouts)
                stats.requests_sent += 1
                stats.in_flight += 1
                sent_at = time.monotonic()
                try:
                    where = url()
                    headers, content = await (self.transport.post(params) if where is None
                                              else self.transport.post(params, where))
                except openai.APIError as exc:
                    if isinstance(exc, openai.APIStatusError):
                        self.reached_server = True
                        # A proxy's 5xx page says nothing about the API's limits.
                        self.throttle.observe(exc.response.headers, learn=exc.status_code < 500, sent_at=sent_at)
                    decision = self.policy.decide(exc, attempt)
                except asyncio.CancelledError:  # the run stopped with this attempt in flight
                    stats.requests_cancelled += 1
                    stats.add_abandoned(abandoned_bound(sent_cap))
                    raise
                else:
                    self.reached_server = True
                    self.throttle.observe(headers, sent_at=sent_at)
                    self.throttle.on_answer()
                    return content, sent_cap
                finally:
                    stats.in_flight -= 1
            stats.last_error = redact(decision.message or decision.cause, self.api_key)
            log.debug("request %d attempt %d failed: %s", request_number, attempt + 1, stats.last_error)
            if decision.cause == "connection" and decision.message and not self.reached_server:
                self.connect_failures += 1
                if self.connect_failures >= CONNECT_FAILURES_BEFORE_STOPPING:
                    raise ApiError(redact(
                        f"cannot connect to {self.transport.base_url}: {decision.message} "
                        f"({self.connect_failures} attempts, no answer yet); is the server running there? "
                        "check --base-url", self.api_key))
            if decision.action in ("format", "fail") and recover(decision, params):
                stats.resent_another_way[decision.cause] += 1
                continue  # at once, and not counted as an attempt: the request was not at fault
            if decision.action in ("format", "fail"):
                stats.requests_failed += 1
                if decision.cause == "auth" and self.api_key == NO_KEY_SET:
                    words = decision.message.removesuffix("; check the API key")
                    raise ApiError(f"the API refused the request permanently: {words}; no API key was set "
                                   "(OPENAI_API_KEY is empty): export OPENAI_API_KEY=<the key the server expects>")
                raise ApiError(redact(f"the API refused the request permanently: {decision.message}", self.api_key))
            if decision.action == "cooldown":
                stats.rate_limited += 1
                self.throttle.turned_away(prompt_tokens + (sent_cap or 0))
                self.throttle.observe_rate_limit_text(decision.message)
                self.throttle.cooldown(decision.delay)
            if decision.cause == "timeout":
                timeouts += 1
                stats.add_abandoned(abandoned_bound(sent_cap))
                self.throttle.on_timeout()
            attempt += 1
            if attempt >= self.policy.max_attempts:
                break
            stats.retries[decision.cause] += 1
            if decision.action == "retry":
                await asyncio.sleep(decision.delay)
        stats.requests_given_up += 1
        log.debug("request %d given up after %d attempts; last error: %s", request_number, attempt, stats.last_error)
        return None


class Generator:
    def __init__(
        self,
        transport: ChatTransport,
        task: Task,
        settings: GenerationSettings,
        throttle: Throttle,
        policy: RetryPolicy,
        stats: RunStats,
        price: Price | None,
        api_key: str | None,
    ) -> None:
        self.transport, self.task, self.settings = transport, task, settings
        self.stats, self.price, self.api_key = stats, price, api_key
        self.output_cap = OutputCap(max_output_tokens(task))  # learned from the answers
        self.sender = Sender(transport, throttle, policy, stats, api_key)
        self.response_format = settings.response_format  # json_object after a fallback
        self._warned_over_cap = False

    def stop(self) -> None:
        """The run stopped: requests not yet sent are not sent, and those waiting for the rate limits
        stop waiting."""
        self.sender.stop()

    @property
    def stopped(self) -> bool:
        return self.sender.stopped

    # The sender's limits and policy, replaceable on the generator (the tests and benchmarks do).
    throttle = property(lambda self: self.sender.throttle, lambda self, value: setattr(self.sender, "throttle", value))
    policy = property(lambda self: self.sender.policy, lambda self, value: setattr(self.sender, "policy", value))

    def cap_to_send(self, reserved: int) -> int:
        """The output cap of a request about to pass the TPM limiter: the one in force then, learned
        from the answers that came back while the request waited. Under --max-cost not above
        ``reserved``, the cap the pipeline reserved its cost at."""
        return min(reserved, self.output_cap.value) if self.settings.stop_if_cap_ignored else self.output_cap.value

    async def generate(self, request_number: int, avoid: Sequence[str]) -> list[tuple[str, str]]:
        # What counts against the TPM limit: the prompt estimate plus the cap, read when the request
        # is next in line (Throttle.slot) and reserved exactly. The pipeline reserved this request's
        # cost at the cap in force now (read before any await).
        reserved = self.output_cap.value
        messages = build_messages(self.task, avoid)  # the same for every attempt
        prompt_tokens = estimate_prompt_tokens(messages)

        def body(cap: int, timeouts: int) -> dict:
            return request_body(self.task, self.settings, avoid, request_number, messages=messages,
                                response_format=self.response_format, timeouts=timeouts, output_cap=cap)

        answer = await self.sender.send(
            request_number, body, prompt_tokens, lambda: self.cap_to_send(reserved),
            abandoned_bound=lambda cap: self._attempt_cost_bound(prompt_tokens, cap), recover=self._recover)
        if answer is None:
            return []
        content, cap = answer
        return self._read(content, request_number, cap)

    def _recover(self, decision: Decision, params: dict) -> bool:
        """A refused response_format: fall back to json_object (True: send again at once) or fail."""
        if decision.action != "format":
            return False
        if self._fall_back(params["response_format"], decision.message):
            return True
        self.stats.requests_failed += 1
        kind = params["response_format"].get("type")
        hint = "; use --response-format json_object" if kind == "json_schema" else ""
        raise ApiError(redact(f"the server refused response_format {kind}: {decision.message}{hint}", self.api_key))

    def _attempt_cost_bound(self, prompt_tokens: int, cap: int) -> float | None:
        """The most an attempt can cost (as ``prompting.request_cost_bound``, for this request's own
        prompt): a server bills what it generated for an attempt abandoned before its answer came."""
        return cost_usd(self.price, PROMPT_ESTIMATE_MARGIN * prompt_tokens, cap)

    def _fall_back(self, refused: dict, message: str) -> bool:
        """Switch every later request to json_object after a json_schema refusal. False: cannot."""
        if refused.get("type") != "json_schema" or not self.settings.fallback_to_json_object:
            return False
        if self.response_format is not JSON_OBJECT_FORMAT:
            self.response_format = JSON_OBJECT_FORMAT
            log.warning("the server refused response_format json_schema (%s); asking for json_object instead",
                        redact(message, self.api_key))
        return True

    def _read(self, body: bytes, request_number: int, cap: int) -> list[tuple[str, str]]:
        """Count one answered request's usage and cost; return its candidate pairs."""
        stats = self.stats
        stats.requests_ok += 1
        try:
            completion = orjson.loads(body)
            choices = completion["choices"]
            usage = completion.get("usage") or {}
            prompt_tokens, completion_tokens = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
            cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
            answers = [
                (choice["message"].get("content"), choice.get("finish_reason"), choice["message"].get("refusal"))
                for choice in choices
            ]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            # A 200 whose body is not a chat completion (a proxy's HTML page, "{}").
            stats.answer_failures["bad_shape"] += 1
            return []
        stats.prompt_tokens += prompt_tokens
        stats.completion_tokens += completion_tokens
        stats.cached_tokens += cached
        stats.add_cost(cost_usd(self.price, prompt_tokens, completion_tokens, cached))
        pairs: list[tuple[str, str]] = []
        failures: list[str] = []
        per_choice = completion_tokens // max(1, len(answers))
        for content, finish_reason, refusal in answers:
            if self.output_cap.observe(per_choice, finish_reason, cap):
                stats.cut_at_cap += 1
            answer = parse_answer(content, finish_reason, refusal)
            if answer.failure:
                stats.answer_failures[answer.failure] += 1
                failures.append(answer.failure)
            if answer.dropped:
                stats.dropped_items.update(answer.dropped)
            pairs.extend(answer.pairs)
        stats.candidates += len(pairs)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request %d answered: %d prompt + %d completion tokens (cap %d), %d pairs, bad answer %s",
                      request_number, prompt_tokens, completion_tokens, cap, len(pairs),
                      ", ".join(failures) or "none")
        stats.output_cap = self.output_cap.value
        self._check_cap(completion_tokens, len(answers), cap)
        return pairs

    def _check_cap(self, completion_tokens: int, choices: int, sent_cap: int) -> None:
        """An answer over the cap it was sent with: the server ignored it. Warn once; under --max-cost, stop."""
        cap = sent_cap * max(1, choices)
        if completion_tokens <= cap:
            return
        self.stats.over_cap_answers += 1
        message = (f"the server ignored the output cap: an answer had {completion_tokens} completion tokens, "
                   f"more than the {cap} asked for with {output_cap_field(self.settings.model)}")
        if self.settings.stop_if_cap_ignored:
            raise ApiError(message + "; --max-cost cannot be kept on this server: run without --max-cost")
        if not self._warned_over_cap:
            self._warned_over_cap = True
            log.warning("%s; answers may be slow and cost more than planned", message)
