"""Planning a round of batch requests: how many, in which files, at what cost. Pure functions.

A round asks for ``deficit`` more scenarios: ``ceil(deficit x MARGIN / yield)`` requests, the yield
being the valid new pairs per request measured by earlier rounds in the same directory, else the
task's prior (half of ``batch_size``, as ``run`` assumes before its first answer). Requests are
split into ``num_batches`` files, more if a file would pass the Batch API's limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import orjson

from asyncgen.batch.ledger import custom_id
from asyncgen.config import Task
from asyncgen.prices import Price
from asyncgen.prompting import (
    AVOID_CHARS,
    GenerationSettings,
    estimate_prompt_tokens,
    max_output_tokens,
    request_avoid_list,
    request_body,
    request_cost_bound as one_request_cost_bound,
)

MAX_REQUESTS_PER_FILE = 50_000  # the Batch API's limits per input file
MAX_BYTES_PER_FILE = 200 * 1024 * 1024
PRIOR_YIELD_SHARE = 0.5  # as run's pipeline: before anything is measured, half of a request's pairs
MARGIN = 1.1  # 10 % more requests than the expected yield needs: a top-up round costs a day
ENDPOINT = "/v1/chat/completions"


@dataclass(frozen=True)
class Plan:
    files: list[list[bytes]]  # JSONL lines per file
    requests: int  # lines in all files
    new_requests: int  # of which new (the rest resubmitted)
    expected_tokens: tuple[float, float]  # input, output over all requests
    worst_cost_usd: float | None
    capped_by_budget: bool


def prior_yield(task: Task) -> float:
    return PRIOR_YIELD_SHARE * task.batch_size


def requests_needed(deficit: int, yield_per_request: float) -> int:
    if deficit <= 0:
        return 0
    return max(1, math.ceil(deficit * MARGIN / max(yield_per_request, 0.01) - 1e-9))


def request_cost_bound(task: Task, price: Price | None, avoid_chars: int = AVOID_CHARS) -> float | None:
    """Worst-case batch USD of one request: run's bound at batch prices, at the task's output bound
    (the cap every batch request is sent with; see ``request_line``)."""
    return one_request_cost_bound(task, price, avoid_chars, batch=True)


def request_line(task: Task, settings: GenerationSettings, directory_id: str, number: int, avoid_pool: Sequence[str],
                 avoid_chars: int = AVOID_CHARS) -> bytes:
    """One batch input line, with run's request body and avoid list (``avoid_chars`` characters of
    ``avoid_pool``, drawn by the request's number); its custom_id names the directory and the number.

    Its output cap is the task's bound, not a cap learned from earlier rounds' answers: a batch is
    billed for the tokens its answers use, not for the cap, so a lower cap would save nothing and
    risk answers cut short, found only when the batch ends (up to 24 h later) and paid for again."""
    body = request_body(task, settings, request_avoid_list(avoid_pool, avoid_chars, number), number)
    return orjson.dumps({"custom_id": custom_id(directory_id, number), "method": "POST", "url": ENDPOINT, "body": body}) + b"\n"


def split(lines: list[bytes], num_batches: int) -> list[list[bytes]]:
    """``lines`` in ``num_batches`` files of near-equal size, more if one would pass the limits."""
    if not lines:
        return []
    files = max(1, min(num_batches, len(lines)), math.ceil(len(lines) / MAX_REQUESTS_PER_FILE),
                math.ceil(sum(map(len, lines)) / MAX_BYTES_PER_FILE))
    while True:
        size = math.ceil(len(lines) / files)
        chunks = [lines[i : i + size] for i in range(0, len(lines), size)]
        if all(sum(map(len, c)) <= MAX_BYTES_PER_FILE for c in chunks):
            return chunks
        files += 1


def affordable(needed: int, bound: float | None, budget_left: float | None) -> tuple[int, bool]:
    """How many of ``needed`` requests fit ``budget_left`` USD at worst ``bound`` each; and whether capped."""
    if budget_left is None or not bound:
        return needed, False
    fits = max(0, int(budget_left / bound + 1e-9))
    return min(needed, fits), fits < needed


def plan_round(
    task: Task,
    settings: GenerationSettings,
    price: Price | None,
    *,
    count: int,
    directory_id: str,
    first_number: int,
    num_batches: int,
    avoid_pool: Sequence[str] = (),
    avoid_chars: int = AVOID_CHARS,
    resubmit: Sequence[bytes] = (),
    measured_tokens: tuple[float, float] | None = None,
    capped_by_budget: bool = False,
) -> Plan:
    """A round of ``resubmit`` lines (first, as they are) and ``count`` new requests numbered from
    ``first_number``, in files. Expected tokens: ``measured_tokens`` per request (means of earlier
    rounds) when given, else the prompt estimate and the output cap."""
    new = [request_line(task, settings, directory_id, first_number + i, avoid_pool, avoid_chars) for i in range(count)]
    lines = list(resubmit) + new
    if measured_tokens:
        expected = (len(lines) * measured_tokens[0], len(lines) * measured_tokens[1])
    else:
        prompt = sum(estimate_prompt_tokens(orjson.loads(line)["body"]["messages"]) for line in lines)
        expected = (prompt, len(lines) * max_output_tokens(task))
    bound = request_cost_bound(task, price, avoid_chars)
    return Plan(split(lines, num_batches), len(lines), count, expected,
                None if bound is None else bound * len(lines), capped_by_budget)
