"""A pilot: a few real-time requests that measure the yield before a first batch round is sized
(and, the same way, a finish: the real-time requests that fill a round's small shortfall).

A round of the Batch API takes up to a day, so it is sized from a measured yield (see
``plan.requests_to_reach``), not a prior. Before the first round, ``batch run`` sends a few
requests through ``run``'s stages: ``workers.Generator`` (the request builder, transport, retries
and cost accounting of ``asyncgen run``), then the one acceptance path into the dataset, one
request at a time, so that each request's yield (the valid new pairs it added) is known. The
pilot is paid at real-time prices; its answers are not thrown away: their pairs go into the
dataset (a surplus, if a model answers with more pairs than asked, into the spares). What it
measured and cost is recorded in the manifest as an entry of source ``pilot``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable, Sequence

from asyncgen.acceptance import Acceptance
from asyncgen.annotations import Sidecar
from asyncgen.config import Task
from asyncgen.prices import Price
from asyncgen.prompting import GenerationSettings, largest_request_tokens, request_avoid_list
from asyncgen.sink import ScenarioSink
from asyncgen.stats import RunStats
from asyncgen.validate import PairValidator, Verdict

REQUEST_TIMEOUT_S = 120.0
CONCURRENCY = 32  # most requests in flight at once, as run's default --concurrency


@dataclass
class PilotResult:
    yields: list[int] = field(default_factory=list)  # valid new pairs per request answered (0: given up), as they came
    accepted: int = 0
    surplus: list[Verdict] = field(default_factory=list)  # valid pairs beyond the target


async def run_pilot(client, api_key: str | None, task: Task, settings: GenerationSettings, price: Price | None,
                    numbers: Sequence[int], avoid_pool: Sequence[str], avoid_chars: int, *, trust_env: bool,
                    sink: ScenarioSink, validator: PairValidator, annotations: Sidecar | None,
                    stats: RunStats, result: PilotResult, on_answer: Callable[[], None] | None = None) -> None:
    """Send the requests ``numbers`` (at most ``CONCURRENCY`` at once) to ``client``'s server;
    accept each answer's pairs into ``sink`` as it comes, so that a stop (a cancellation) keeps
    every pair answered before it; ``result`` holds each request's yield so far, whatever happens.
    ``stats`` counts the requests, their tokens and real-time cost as run's do (the caller records
    them); ``on_answer()`` is called once each answer's pairs are taken and its yield is in ``result``
    (the caller records it with the answer's usage: a kill loses no measurement paid for)."""
    from asyncgen.throttle import RetryPolicy, Throttle
    from asyncgen.transport import ChatTransport
    from asyncgen.workers import Generator

    stats.cost_usd = None if price is None else 0.0
    transport = ChatTransport(client, concurrency=max(1, min(len(numbers), CONCURRENCY)), timeout=REQUEST_TIMEOUT_S, trust_env=trust_env)
    throttle = Throttle(largest_request_tokens=largest_request_tokens(task, avoid_chars))
    generator = Generator(transport, task, settings, throttle, RetryPolicy(), stats, price, api_key)
    acceptance = Acceptance(task, sink, stats, annotations)
    requests = [asyncio.ensure_future(generator.generate(n, request_avoid_list(avoid_pool, avoid_chars, n))) for n in numbers]
    try:
        for answer in asyncio.as_completed(requests):
            pairs = await answer
            taken = acceptance.take(validator.validate(acceptance.fresh(pairs)) if pairs else [])
            result.yields.append(len(taken.accepted) + len(taken.surplus))
            result.accepted += len(taken.accepted)
            result.surplus += taken.surplus
            if on_answer is not None:
                on_answer()
    finally:
        for request in requests:
            request.cancel()
        await asyncio.gather(*requests, return_exceptions=True)
        await transport.close()
