"""The generation request a worker sends and how its answer is read. Pure functions.

The request asks for ``batch_size`` pairs as ``{"pairs": [{"prompt", "counterfactual"}, ...]}``,
with a strict JSON schema where the model supports structured outputs and ``json_object``
otherwise. The answer is parsed defensively: each way it can fail has a name, counted by the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import orjson

from asyncgen.config import Task

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
OUTPUT_TOKENS_PER_PAIR = 60  # a pair of ~12-word sentences as JSON is ~40-50 tokens
OUTPUT_TOKENS_OVERHEAD = 60
AVOID_SAMPLE = 20  # already-accepted prompts named in each request
AVOID_POOL = 200  # the most recent accepted prompts that sample is drawn from
AVOID_MAX_CHARS = 200  # longer prompts are not named, which bounds a request's size and cost


@dataclass(frozen=True)
class GenerationSettings:
    model: str
    response_format: dict
    temperature: float | None
    seed: int | None  # base seed: request i is sent seed + i


def request_body(task: Task, settings: GenerationSettings, avoid: Sequence[str] = (), request_number: int = 0) -> dict:
    """The chat request body that asks for one batch of pairs: what ``run`` posts and what a
    ``batch`` request file line carries as its ``body``."""
    body = {
        "model": settings.model,
        "messages": build_messages(task, avoid),
        "response_format": settings.response_format,
        "max_completion_tokens": max_output_tokens(task),
    }
    if settings.temperature is not None:
        body["temperature"] = settings.temperature
    if settings.seed is not None:
        body["seed"] = settings.seed + request_number
    return body


def response_format_for(model: str, choice: str = "auto") -> dict:
    if choice == "json_schema" or (choice == "auto" and model.startswith(_STRUCTURED_PREFIXES)):
        return JSON_SCHEMA_FORMAT
    return JSON_OBJECT_FORMAT


def max_output_tokens(task: Task) -> int:
    return task.batch_size * OUTPUT_TOKENS_PER_PAIR + OUTPUT_TOKENS_OVERHEAD


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


def worst_case_prompt_tokens(task: Task) -> int:
    """The prompt estimate of the largest request: every avoid slot filled with the longest prompt."""
    return estimate_prompt_tokens(build_messages(task, ["x" * AVOID_MAX_CHARS] * AVOID_SAMPLE))


def largest_request_tokens(task: Task) -> int:
    """What the largest request counts against a TPM limit: its prompt estimate plus the output cap."""
    return worst_case_prompt_tokens(task) + max_output_tokens(task)


def estimate_prompt_tokens(messages: Sequence[dict]) -> int:
    """ceil(chars / 4) + 4 per message: the protocol doc's fair estimate (tiktoken cannot load offline)."""
    return sum(math.ceil(len(m["content"]) / 4) + 4 for m in messages)


@dataclass(frozen=True)
class ParsedAnswer:
    pairs: list[tuple[str, str]]
    failure: str | None = None  # bad_json, bad_shape, refusal, length, content_filter, empty


def parse_answer(content: str | None, finish_reason: str | None, refusal: str | None) -> ParsedAnswer:
    """Candidate pairs from one choice. Salvages what it can; names the first failure."""
    if refusal:
        return ParsedAnswer([], "refusal")
    if finish_reason == "content_filter":
        return ParsedAnswer([], "content_filter")
    if not content or not content.strip():
        return ParsedAnswer([], "length" if finish_reason == "length" else "empty")
    data = _loads_lenient(content)
    if data is None:
        return ParsedAnswer([], "length" if finish_reason == "length" else "bad_json")
    items = data.get("pairs") if isinstance(data, dict) else data if isinstance(data, list) else None
    if not isinstance(items, list):
        return ParsedAnswer([], "bad_shape")
    pairs, bad = [], 0
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("prompt"), str) and isinstance(item.get("counterfactual"), str):
            pairs.append((item["prompt"].strip(), item["counterfactual"].strip()))
        else:
            bad += 1
    failure = "bad_shape" if bad and not pairs else ("length" if finish_reason == "length" else None)
    return ParsedAnswer(pairs, failure)


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
