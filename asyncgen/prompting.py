"""The generation request a worker sends and how its answer is read. Pure functions.

The request asks for ``batch_size`` pairs as ``{"pairs": [{"prompt", "counterfactual"}, ...]}``,
with a strict JSON schema where the model supports structured outputs and ``json_object``
otherwise. The output cap goes as ``max_tokens``, which OpenAI's chat models and every
OpenAI-compatible server we know honour (llama.cpp, vLLM, Ollama); reasoning models (o1, o3, o4,
gpt-5) refuse it and get ``max_completion_tokens``. The answer is parsed defensively: every
well-formed pair is kept, and each way an answer or an item in it can fail has a name, counted by
the run.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import orjson

from asyncgen.config import Task
from asyncgen.prices import Price, batch_cost_usd, cost_usd

PAIR_SCHEMA = {
    "type": "object",
    "properties": {
        "pairs": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"prompt": {"type": "string"}, "counterfactual": {"type": "string"}},
                "required": ["prompt", "counterfactual"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["pairs"],
    "additionalProperties": False,
}
JSON_SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "minimal_pairs", "strict": True, "schema": PAIR_SCHEMA}}
JSON_OBJECT_FORMAT = {"type": "json_object"}

# Models known to support strict structured outputs; others get json_object under "auto".
_STRUCTURED_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4")
# Reasoning models: OpenAI rejects ``max_tokens`` for them ("use 'max_completion_tokens' instead").
_REASONING_PREFIXES = ("gpt-5", "o1", "o3", "o4")
OUTPUT_TOKENS_PER_PAIR = 60  # a pair of ~12-word sentences as JSON is ~40-50 tokens
OUTPUT_TOKENS_OVERHEAD = 60
# Each request names already-accepted prompts to avoid, as many as fit in a fixed budget of
# characters: the request's size stays steady through a run instead of growing as the pool fills.
AVOID_CHARS = 800  # the default budget (--avoid-chars), about 200 tokens
AVOID_POOL = 200  # the most recent accepted prompts the names are drawn from
AVOID_DRAWS = 64  # prompts drawn from the pool to fill the budget
AVOID_MAX_CHARS = 200  # longer prompts are not named
# The chars/4 prompt estimate gets this margin in a request's worst-case cost, for text that
# tokenizes worse than English.
PROMPT_ESTIMATE_MARGIN = 1.5


@dataclass(frozen=True)
class GenerationSettings:
    model: str
    response_format: dict
    temperature: float | None
    seed: int | None  # base seed: request i is sent seed + i, wrapped to 64 bits (request_seed)
    # On a server that refuses json_schema, fall back to json_object (under --response-format auto).
    fallback_to_json_object: bool = True
    # Under --max-cost: an answer longer than the output cap means the budget cannot be kept.
    stop_if_cap_ignored: bool = False


RETRY_SEED_STRIDE = 1_000_003  # a retry after a timeout gets seed + request + k * stride
_SEED_SPAN = 2**64  # the API's seed is a signed 64-bit integer: -2**63 .. 2**63 - 1


def request_seed(seed: int, request_number: int = 0, timeouts: int = 0) -> int:
    """The seed a request sends: ``seed + request_number + timeouts * RETRY_SEED_STRIDE`` wrapped
    into the API's signed 64-bit range (as a 64-bit integer would wrap), so a ``--seed`` near either
    end of its range still gives seeds the API accepts. Unchanged when the sum is in range; distinct
    requests keep distinct seeds (the wrap is one-to-one on any 2**64 consecutive sums)."""
    total = seed + request_number + timeouts * RETRY_SEED_STRIDE
    return (total + _SEED_SPAN // 2) % _SEED_SPAN - _SEED_SPAN // 2


def request_body(task: Task, settings: GenerationSettings, avoid: Sequence[str] = (), request_number: int = 0, *,
                 response_format: dict | None = None, timeouts: int = 0, output_cap: int | None = None,
                 messages: list[dict] | None = None) -> dict:
    """The chat request body that asks for one batch of pairs: what ``run`` posts and what a
    ``batch`` request file line carries as its ``body``. ``response_format`` overrides the
    settings' (after a fallback); ``timeouts`` moves the seed on, since the same seed would replay
    the answer that ran too long; ``output_cap`` is the cap in force (default: the task's bound);
    ``messages``: ``build_messages(task, avoid)`` when the caller has built them already."""
    body = {
        "model": settings.model,
        "messages": messages if messages is not None else build_messages(task, avoid),
        "response_format": response_format or settings.response_format,
        output_cap_field(settings.model): output_cap or max_output_tokens(task),
    }
    if settings.temperature is not None:
        body["temperature"] = settings.temperature
    if settings.seed is not None:
        body["seed"] = request_seed(settings.seed, request_number, timeouts)
    return body


def response_format_for(model: str, choice: str = "auto") -> dict:
    if choice == "json_schema" or (choice == "auto" and model.startswith(_STRUCTURED_PREFIXES)):
        return JSON_SCHEMA_FORMAT
    return JSON_OBJECT_FORMAT


def max_output_tokens(task: Task) -> int:
    return task.batch_size * OUTPUT_TOKENS_PER_PAIR + OUTPUT_TOKENS_OVERHEAD


def output_cap_field(model: str) -> str:
    """The request field that caps the answer's length for ``model``.

    ``max_completion_tokens`` only for OpenAI's reasoning models; ``max_tokens`` otherwise, because
    servers such as llama.cpp ignore ``max_completion_tokens`` and would write to the context limit.
    """
    return "max_completion_tokens" if model.startswith(_REASONING_PREFIXES) else "max_tokens"


def build_messages(task: Task, avoid: Sequence[str] = ()) -> list[dict]:
    examples = "\n".join(
        orjson.dumps({"prompt": e.safe, "counterfactual": e.harmful}).decode() for e in task.examples
    )
    parts = [
        f"Examples of good pairs:\n{examples}",
    ]
    if avoid:
        parts.append("Already collected; do not repeat these or close variants:\n" + "\n".join(f"- {p}" for p in avoid))
    parts.append(
        f"Write exactly {task.batch_size} pairs. Answer with JSON only: "
        '{"pairs": [{"prompt": "...", "counterfactual": "..."}, ...]}.'
    )
    return [
        {"role": "system", "content": task.generation_instructions.strip()},
        {"role": "user", "content": "\n\n".join(parts)},
    ]


def avoid_pool(task: Task, texts: Iterable[str]) -> list[str]:
    """The prompts avoid lists are drawn from, given a dataset's multi-token texts in order (or the
    last of them): each text's prompt (the template taken off), those of at most
    ``AVOID_MAX_CHARS`` characters, the last ``AVOID_POOL``. ``run`` then adds each prompt it
    accepts; a batch round draws from the dataset as it stands."""
    template = task.templates.multi_token
    prompts = (template.unrender(text) or text for text in texts)
    return [p for p in prompts if len(p) <= AVOID_MAX_CHARS][-AVOID_POOL:]


def request_avoid_list(pool: Sequence[str], budget: int, request_number: int) -> list[str]:
    """What request ``request_number`` names as already collected: ``avoid_list`` drawn by the
    request's number, so that ``run`` and a batch request file name the same prompts for the same
    pool, and a request sent again names what it named before."""
    return avoid_list(pool, budget, random.Random(request_number)) if pool and budget > 0 else []


def avoid_list(pool: Sequence[str], budget: int, rng: random.Random) -> list[str]:
    """Prompts drawn at random from ``pool`` whose lines ("- prompt") fill at most ``budget`` characters."""
    chosen: list[str] = []
    left = budget
    for prompt in rng.sample(pool, min(AVOID_DRAWS, len(pool))):
        if len(prompt) + 3 <= left:  # "- " and the newline
            chosen.append(prompt)
            left -= len(prompt) + 3
            if left < 8:
                break
    return chosen


def worst_case_prompt_tokens(task: Task, avoid_chars: int = AVOID_CHARS) -> int:
    """The prompt estimate of the largest request: its avoid list filling the whole budget."""
    return estimate_prompt_tokens(build_messages(task, ["x" * (avoid_chars - 2)] if avoid_chars > 2 else []))


def largest_request_tokens(task: Task, avoid_chars: int = AVOID_CHARS, output_cap: int | None = None) -> int:
    """What the largest request counts against a TPM limit: its prompt estimate plus the output cap."""
    return worst_case_prompt_tokens(task, avoid_chars) + (output_cap or max_output_tokens(task))


def request_cost_bound(task: Task, price: Price | None, avoid_chars: int = AVOID_CHARS, output_cap: int | None = None,
                       *, batch: bool = False) -> float | None:
    """Worst-case USD of one request sent with ``output_cap`` (default: the task's bound), in real
    time or at ``batch`` prices: the cap is exact (a server that honours it never bills more); the
    chars/4 prompt estimate of the largest request gets ``PROMPT_ESTIMATE_MARGIN``."""
    prompt = PROMPT_ESTIMATE_MARGIN * worst_case_prompt_tokens(task, avoid_chars)
    return (batch_cost_usd if batch else cost_usd)(price, prompt, output_cap or max_output_tokens(task))


def estimate_prompt_tokens(messages: Sequence[dict]) -> int:
    """ceil(chars / 4) + 4 per message: the protocol doc's fair estimate (tiktoken cannot load offline)."""
    return sum(math.ceil(len(m["content"]) / 4) + 4 for m in messages)


@dataclass(frozen=True)
class ParsedAnswer:
    pairs: list[tuple[str, str]]
    failure: str | None = None  # bad_json, bad_shape, no_pairs, refusal, length, content_filter, empty
    dropped: Counter = field(default_factory=Counter)  # items left out, by kind (see _item_problem)


def parse_answer(content: str | None, finish_reason: str | None, refusal: str | None) -> ParsedAnswer:
    """Candidate pairs from one choice. Salvages every well-formed pair; names what it drops.

    Accepted shapes: ``{"pairs": [...]}``, a bare list of pair objects, ``{"pairs": {one pair}}``
    and one bare ``{"prompt", "counterfactual"}`` object (small models often write that). An answer
    that gives no pair has a ``failure``; each item dropped from a list is counted in ``dropped``.
    """
    if refusal:
        return ParsedAnswer([], "refusal")
    if finish_reason == "content_filter":
        return ParsedAnswer([], "content_filter")
    if not content or not content.strip():
        return ParsedAnswer([], "length" if finish_reason == "length" else "empty")
    data = _loads_lenient(content)
    if data is None:
        return ParsedAnswer([], "length" if finish_reason == "length" else "bad_json")
    if isinstance(data, dict) and "pairs" in data:
        items = data["pairs"]
        items = [items] if isinstance(items, dict) else items
    elif isinstance(data, dict) and ("prompt" in data or "counterfactual" in data):
        items = [data]
    else:
        items = data
    if not isinstance(items, list):
        return ParsedAnswer([], "bad_shape")
    pairs: list[tuple[str, str]] = []
    dropped: Counter = Counter()
    for item in items:
        problem = _item_problem(item)
        if problem:
            dropped[problem] += 1
        else:
            pairs.append((item["prompt"].strip(), item["counterfactual"].strip()))
    if finish_reason == "length":
        failure = "length"
    elif pairs:
        failure = None
    else:
        failure = "bad_shape" if dropped else "no_pairs"
    return ParsedAnswer(pairs, failure, dropped)


def _item_problem(item) -> str | None:
    """Why one item of the pairs list is not a pair: not_object, missing_field, not_text, blank."""
    if not isinstance(item, dict):
        return "not_object"
    prompt, counterfactual = item.get("prompt"), item.get("counterfactual")
    if prompt is None or counterfactual is None:
        return "missing_field"
    if not isinstance(prompt, str) or not isinstance(counterfactual, str):
        return "not_text"
    if not prompt.strip() or not counterfactual.strip():
        return "blank"
    return None


def _loads_lenient(content: str):
    """JSON, or the outermost {...} inside prose ("Here are the pairs: {...}")."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        pass
    start, end = content.find("{"), content.rfind("}")
    if 0 <= start < end:
        try:
            return orjson.loads(content[start : end + 1])
        except orjson.JSONDecodeError:
            return None
    return None
