"""One generation request, start to finish: throttle, send, retry per the policy, read the answer.

``Generator.generate`` returns the candidate pairs of one request (possibly none) and keeps the run's
counters; a permanent error raises ``ApiError`` with a one-line, key-redacted message.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Sequence

import openai

from asyncgen.config import Task
from asyncgen.errors import ApiError, redact
from asyncgen.prices import PriceTable, cost_usd, price_for
from asyncgen.prompting import build_messages, estimate_prompt_tokens, max_output_tokens, parse_answer
from asyncgen.stats import RunStats
from asyncgen.throttle import RetryPolicy, Throttle

log = logging.getLogger("asyncgen.workers")


@dataclass(frozen=True)
class GenerationSettings:
    model: str
    response_format: dict
    temperature: float | None
    seed: int | None


class Generator:
    def __init__(
        self,
        client: openai.AsyncOpenAI,
        task: Task,
        settings: GenerationSettings,
        throttle: Throttle,
        policy: RetryPolicy,
        stats: RunStats,
        prices: PriceTable,
        api_key: str | None,
    ) -> None:
        self.client, self.task, self.settings = client, task, settings
        self.throttle, self.policy, self.stats = throttle, policy, stats
        self.prices, self.api_key = prices, api_key
        self.max_output_tokens = max_output_tokens(task)

    def estimate_tokens(self, messages: Sequence[dict]) -> int:
        """What one request counts against the TPM limit: prompt estimate + maximum output."""
        return estimate_prompt_tokens(messages) + self.max_output_tokens

    async def generate(self, request_number: int, avoid: Sequence[str]) -> list[tuple[str, str]]:
        messages = build_messages(self.task, avoid)
        tokens = self.estimate_tokens(messages)
        params = {
            "model": self.settings.model,
            "messages": messages,
            "response_format": self.settings.response_format,
            "max_completion_tokens": self.max_output_tokens,
        }
        if self.settings.temperature is not None:
            params["temperature"] = self.settings.temperature
        if self.settings.seed is not None:
            params["seed"] = self.settings.seed + request_number
        stats = self.stats
        for attempt in range(self.policy.max_attempts):
            async with self.throttle.slot(tokens):
                stats.requests_sent += 1
                stats.in_flight += 1
                try:
                    raw = await self.client.chat.completions.with_raw_response.create(**params)
                except openai.APIError as exc:
                    if isinstance(exc, openai.APIStatusError):
                        # A proxy's 5xx page says nothing about the API's limits.
                        self.throttle.observe(exc.response.headers, learn=exc.status_code < 500)
                    decision = self.policy.decide(exc, attempt)
                else:
                    self.throttle.observe(raw.headers)
                    return self._read(raw.parse())
                finally:
                    stats.in_flight -= 1
            if decision.action == "fail":
                raise ApiError(redact(f"the API refused the request permanently: {decision.message}", self.api_key))
            if decision.action == "cooldown":
                stats.rate_limited += 1
                self.throttle.cooldown(decision.delay)
            if attempt == self.policy.max_attempts - 1:
                break
            stats.retries[decision.cause] += 1
            if decision.action == "retry":
                await asyncio.sleep(decision.delay)
        stats.requests_given_up += 1
        log.debug("request %d given up after %d attempts", request_number, self.policy.max_attempts)
        return []

    def _read(self, completion) -> list[tuple[str, str]]:
        stats = self.stats
        stats.requests_ok += 1
        if isinstance(completion, str) or not hasattr(completion, "choices"):
            # A 200 whose body is not a chat completion (an HTML page, "{}"): an answer we cannot use.
            stats.answer_failures["bad_shape"] += 1
            return []
        usage = completion.usage
        if usage is not None:
            cached = getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", 0) or 0
            stats.prompt_tokens += usage.prompt_tokens
            stats.completion_tokens += usage.completion_tokens
            stats.cached_tokens += cached
            price = price_for(self.prices, completion.model) or price_for(self.prices, self.settings.model)
            stats.add_cost(cost_usd(price, usage.prompt_tokens, usage.completion_tokens, cached))
        pairs: list[tuple[str, str]] = []
        for choice in completion.choices or []:
            message = choice.message
            answer = parse_answer(message.content, choice.finish_reason, getattr(message, "refusal", None))
            if answer.failure:
                stats.answer_failures[answer.failure] += 1
            pairs.extend(answer.pairs)
        stats.candidates += len(pairs)
        return pairs
