"""Chat completions: request validation, the usage estimate, the TPM charge and the answer object.

Usage estimate (no tokenizer): ``prompt_tokens`` = sum over messages of ``ceil(chars / 4) + 4``
(chars of the message's text: its string content, or the ``text`` of its parts);
``completion_tokens`` = sum over choices of ``ceil(len(content or refusal) / 4)``, capped at the
output limit of the request.

TPM charge of a request, as OpenAI's limiter counts it (and its cookbook's parallel processor):
the estimate from the request's characters plus the output limit, ``prompt_tokens + n *
max_output``, where ``max_output`` is ``max_completion_tokens`` (or ``max_tokens``), 0 when the
request sets neither. (OpenAI's guide words it as "the larger of" the two; counting both is the
stricter reading, and the one that makes a client's ``max_tokens`` matter.)
It is taken on admission and never refunded; requests that then fail by a fault are charged too.

Generation or question. A request is a generation request (answered with pairs, as ``run``
expects) when it asks for no log-probabilities and either asks for JSON (``response_format``
json_object or json_schema) or mentions "pairs" in a message. Any other request is a question to
the model under study (scoring.py), asked in its last message: its answer is greedy, with
``logprobs: {"content": [...]}`` in OpenAI's shape when ``logprobs`` is true.

Everything here is pure but ``new_id``; the HTTP handler (app.py) and the batch runner
(batches.py) share it.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from itertools import count
from typing import Callable

import orjson

from asyncgen.simulator import composer, faults, scoring, wire
from asyncgen.simulator.composer import AnswerShape, Player
from asyncgen.simulator.settings import MAX_TOP_LOGPROBS, MODELS, SimulatorConfig, serves_chat

_SCHEMA_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_ROLES = frozenset(("system", "developer", "user", "assistant", "tool"))
_FORMATS = ("text", "json_object", "json_schema")
_PAIRS = re.compile(r"\bpairs\b", re.IGNORECASE)
_ids = count(1)


@dataclass(frozen=True)
class ChatRequest:
    model: str  # as asked
    resolved_model: str  # the snapshot it runs on
    texts: tuple[str, ...]  # each message's text
    n: int
    max_output: int | None
    format: str  # text, json_object or json_schema
    shape: AnswerShape
    strict: bool
    prompt_tokens: int
    generation: bool = True  # False: a question to the model under study
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def charge(self) -> int:
        return self.prompt_tokens + self.n * (self.max_output or 0)


def new_id(prefix: str, salt: str) -> str:
    return f"{prefix}{salt}{next(_ids):016x}"


def estimate_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def served_model(body: object, serves: Callable[[str], bool], refusal: Callable[[], wire.ApiFailure]) -> str:
    """The request's model, once the body is an object naming a known model this endpoint ``serves``
    (``refusal()`` otherwise, as OpenAI refuses a model on the wrong endpoint)."""
    if not isinstance(body, dict):
        raise wire.unparseable_body()
    model = body.get("model")
    if model is None:
        raise wire.missing_parameter("model")
    if not isinstance(model, str) or model not in MODELS:
        raise wire.model_not_found(str(model))
    if not serves(model):
        raise refusal()
    return model


def parse_chat_request(body: object) -> ChatRequest:
    """The fields asyncgen uses, checked as the API checks them; ApiFailure (400/404) otherwise."""
    model = served_model(body, serves_chat, wire.not_a_chat_model)
    resolved, context_window, output_limit = MODELS[model]
    texts = _message_texts(body.get("messages"))
    n = integer_field(body, "n", 1, 1, 128)
    number_field(body, "temperature", 0.0, 2.0)
    if body.get("seed") is not None and (not isinstance(body["seed"], int) or isinstance(body["seed"], bool)):
        raise wire.bad_request(f"Invalid type for 'seed': expected an integer, but got {json_kind(body['seed'])} instead.", "seed", "invalid_type")
    limit_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_output = integer_field(body, limit_name, None, 1, None)
    if max_output is not None and max_output > output_limit:
        raise wire.bad_request(
            f"{limit_name} is too large: {max_output}. This model supports at most {output_limit} completion "
            f"tokens, whereas you provided {max_output}.",
            limit_name,
            "invalid_value",
        )
    prompt_tokens = sum(estimate_tokens(text) + 4 for text in texts)
    if prompt_tokens + (max_output or 0) > context_window:
        raise wire.bad_request(
            f"This model's maximum context length is {context_window} tokens. However, you requested "
            f"{prompt_tokens + (max_output or 0)} tokens ({prompt_tokens} in the messages, {max_output or 0} in the "
            "completion). Please reduce the length of the messages or completion.",
            "messages",
            "context_length_exceeded",
        )
    format_, shape, strict = _response_format(body.get("response_format"), texts)
    logprobs, top_logprobs = _logprobs(body)
    generation = not logprobs and (format_ != "text" or any(_PAIRS.search(text) for text in texts))
    return ChatRequest(model, resolved, texts, n, max_output, format_, shape, strict, prompt_tokens, generation,
                       logprobs, top_logprobs or 0)


def _logprobs(body: dict) -> tuple[bool, int | None]:
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise wire.bad_request(f"Invalid type for 'logprobs': expected a boolean, but got {json_kind(logprobs)} instead.",
                               "logprobs", "invalid_type")
    top_logprobs = integer_field(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS)
    if top_logprobs is not None and not logprobs:
        # [U]: OpenAI's wording is not on record; its rule (top_logprobs needs logprobs) is documented.
        raise wire.bad_request("Invalid value for 'top_logprobs': 'logprobs' must be set to true when "
                               "'top_logprobs' is specified.", "top_logprobs", "invalid_value")
    return bool(logprobs), top_logprobs


def _message_texts(messages: object) -> tuple[str, ...]:
    if messages is None:
        raise wire.missing_parameter("messages")
    if not isinstance(messages, list):
        raise wire.bad_request(f"Invalid type for 'messages': expected an array, but got {json_kind(messages)} instead.", "messages", "invalid_type")
    if not messages:
        raise wire.bad_request("Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.", "messages", "empty_array")
    texts = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise wire.bad_request(f"Invalid type for '{where}': expected an object, but got {json_kind(message)} instead.", where, "invalid_type")
        role = message.get("role")
        if role is None:
            raise wire.missing_parameter(f"{where}.role")
        if role not in _ROLES:
            raise wire.bad_request(
                f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'tool', and 'developer'.",
                f"{where}.role",
                "invalid_value",
            )
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in content):
            texts.append("".join(part["text"] for part in content))
        elif content is None and role == "assistant":
            texts.append("")
        else:
            raise wire.bad_request(
                f"Invalid type for '{where}.content': expected one of a string or array of objects, but got {json_kind(content)} instead.",
                f"{where}.content",
                "invalid_type",
            )
    return tuple(texts)


def _response_format(value: object, texts: tuple[str, ...]) -> tuple[str, AnswerShape, bool]:
    if value is None:
        return "text", composer.DEFAULT_SHAPE, False
    if not isinstance(value, dict) or value.get("type") not in _FORMATS:
        kind = value.get("type") if isinstance(value, dict) else value
        raise wire.bad_request(
            f"Invalid value: '{kind}'. Supported values are: 'json_object', 'json_schema', and 'text'.",
            "response_format.type",
            "invalid_value",
        )
    kind = value["type"]
    if kind == "json_object":
        if not any("json" in text.lower() for text in texts):
            raise wire.bad_request(
                "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.",
                "messages",
            )
        return kind, composer.DEFAULT_SHAPE, False
    if kind == "text":
        return kind, composer.DEFAULT_SHAPE, False
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise wire.missing_parameter("response_format.json_schema")
    name = spec.get("name")
    if not isinstance(name, str) or not _SCHEMA_NAME.match(name):
        raise wire.bad_request(
            f"Invalid 'response_format.json_schema.name': string does not match pattern. Expected a string that "
            f"matches the pattern '^[a-zA-Z0-9_-]+$' (1 to 64 characters), got {name!r}.",
            "response_format.json_schema.name",
            "invalid_value",
        )
    schema = spec.get("schema")
    strict = spec.get("strict") is True
    if strict:
        problem = strict_schema_problem(schema)
        if problem:
            raise wire.bad_request(
                f"Invalid schema for response_format '{name}': {problem}", "response_format", "invalid_json_schema"
            )
    return kind, composer.answer_shape(schema), strict


def strict_schema_problem(schema: object, context: tuple = ()) -> str | None:
    """What breaks the strict-mode rules (every object: additionalProperties false, every property
    required), or None."""
    if not isinstance(schema, dict):
        return f"In context={context}, schema must be a JSON Schema of 'type: \"object\"'." if not context else None
    if schema.get("type") == "object" or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return f"In context={context}, 'additionalProperties' is required to be supplied and to be false."
        properties = schema.get("properties") or {}
        missing = [key for key in properties if key not in (schema.get("required") or [])]
        if missing:
            return (
                f"In context={context}, 'required' is required to be supplied and to be an array including every "
                f"key in properties. Missing '{missing[0]}'."
            )
        for key, sub in properties.items():
            found = strict_schema_problem(sub, context + ("properties", key))
            if found:
                return found
    if "items" in schema:
        found = strict_schema_problem(schema["items"], context + ("items",))
        if found:
            return found
    for key in ("$defs", "definitions"):
        for def_name, sub in (schema.get(key) or {}).items():
            found = strict_schema_problem(sub, context + (key, def_name))
            if found:
                return found
    for key in ("anyOf", "allOf"):
        for index, sub in enumerate(schema.get(key) or []):
            found = strict_schema_problem(sub, context + (key, str(index)))
            if found:
                return found
    return None


def integer_field(body: dict, name: str, default: int | None, least: int, most: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise wire.bad_request(f"Invalid type for '{name}': expected an integer, but got {json_kind(value)} instead.", name, "invalid_type")
    if value < least:
        raise wire.bad_request(f"Invalid '{name}': integer below minimum value. Expected a value >= {least}, but got {value} instead.", name, "integer_below_min_value")
    if most is not None and value > most:
        raise wire.bad_request(f"Invalid '{name}': integer above maximum value. Expected a value <= {most}, but got {value} instead.", name, "integer_above_max_value")
    return value


def number_field(body: dict, name: str, least: float, most: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise wire.bad_request(f"Invalid type for '{name}': expected a decimal, but got {json_kind(value)} instead.", name, "invalid_type")
    if value < least:
        raise wire.bad_request(f"Invalid '{name}': decimal below minimum value. Expected a value >= {least:g}, but got {value} instead.", name, "decimal_below_min_value")
    if value > most:
        raise wire.bad_request(f"Invalid '{name}': decimal above maximum value. Expected a value <= {most:g}, but got {value} instead.", name, "decimal_above_max_value")


def json_kind(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer", float: "a decimal"}.get(
        type(value), "null"
    )


@dataclass(frozen=True)
class Choice:
    content: str | None
    refusal: str | None
    finish_reason: str
    fault: str | None
    steps: tuple[scoring.Step, ...] | None = None  # a question's answer, token by token


def compose_choice(request: ChatRequest, player: Player, config: SimulatorConfig, rng: random.Random) -> Choice:
    """One answer: pairs composed from the lexicon, a content fault if one is drawn, cut at the output limit."""
    fault = faults.draw_content_fault(config.faults, rng)
    if fault == "refusal":
        if request.format == "json_schema":
            return Choice(None, faults.REFUSAL_TEXT, "stop", fault)
        return Choice(faults.REFUSAL_TEXT, None, "stop", fault)
    count_ = composer.requested_pairs(request.texts, player.batch_size, config.max_pairs)
    avoid = request.texts[-1] if request.texts else ""
    pairs = composer.compose_pairs(player, count_, rng, config.imperfect_rate, config.imperfect_mix, avoid)
    answer = composer.answer_object(pairs, request.shape)
    if fault == "bad_shape":
        answer = faults.break_shape(answer, request.shape, rng)
    text = orjson.dumps(answer).decode()
    if config.prose_rate and rng.random() < config.prose_rate:
        text = composer.wrap_in_prose(text, count_, rng)
    finish_reason = "stop"
    if fault == "bad_json":
        text = faults.corrupt_json(text, rng)
    elif fault == "length":
        text, finish_reason = faults.truncate(text, rng), "length"
    elif fault == "content_filter":
        text, finish_reason = faults.truncate(text, rng) if rng.random() < 0.5 else "", "content_filter"
    if request.max_output is not None and estimate_tokens(text) > request.max_output:
        text, finish_reason = text[: request.max_output * 4], "length"
    return Choice(text, None, finish_reason, fault)


def question_steps(text: str, player: Player, config: SimulatorConfig) -> list[scoring.Step]:
    """The model under study's whole answer to ``text`` (shared by chat and completions): a verdict
    when it asks to judge an answer, else the answer to the task's question."""
    verdict = scoring.judge_steps(text, config.seed)
    if verdict is not None:
        return verdict
    question = scoring.read_question(player, text, config.seed, config.non_flip_share, config.outside_top_k_share)
    return scoring.answer_steps(player, question, text, config.seed)


def answer_question(steps: list[scoring.Step], max_output: int | None, config: SimulatorConfig,
                    rng: random.Random) -> tuple[list[scoring.Step], str, str | None]:
    """A question's answer as delivered: the output limit and the content faults that apply to a
    plain answer (``length`` cuts it short, ``content_filter`` withholds it); the others fire only
    on generation answers."""
    fault = faults.draw_content_fault(config.faults, rng)
    steps, finish_reason = scoring.cut(steps, max_output)
    if fault == "length" and steps:
        steps, finish_reason = steps[: max(1, len(steps) // 2)], "length"
    elif fault == "content_filter":
        steps, finish_reason = [], "content_filter"
    else:
        fault = None
    return steps, finish_reason, fault


def compose_answer(request: ChatRequest, player: Player, config: SimulatorConfig, rng: random.Random) -> Choice:
    """The model under study's answer to the request's last message."""
    text = request.texts[-1] if request.texts else ""
    steps, finish_reason, fault = answer_question(question_steps(text, player, config), request.max_output, config, rng)
    return Choice("".join(step.token for step in steps), None, finish_reason, fault, tuple(steps))


def _choice_logprobs(choice: Choice, top_logprobs: int) -> dict:
    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {
        "content": [
            {**entry(step.token, step.logprob), "top_logprobs": [entry(t, lp) for t, lp in step.top[:top_logprobs]]}
            for step in choice.steps or ()
        ],
        "refusal": None,
    }


def completion(request: ChatRequest, choices: list[Choice], completion_id: str, fingerprint: str) -> dict:
    completion_tokens = sum(
        len(c.steps) if c.steps is not None else estimate_tokens(c.content if c.content is not None else c.refusal or "")
        for c in choices
    )
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.resolved_model,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": c.content, "refusal": c.refusal, "annotations": []},
                "logprobs": _choice_logprobs(c, request.top_logprobs) if request.logprobs else None,
                "finish_reason": c.finish_reason,
            }
            for index, c in enumerate(choices)
        ],
        "usage": {
            "prompt_tokens": request.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": request.prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": fingerprint,
    }


def respond(request: ChatRequest, player: Player, config: SimulatorConfig, key: str, completion_id: str,
            fingerprint: str) -> tuple[dict, list[str]]:
    """The whole completion for a request and the content faults that fired; ``key`` seeds every
    draw (one stream per choice)."""
    compose = compose_choice if request.generation else compose_answer
    choices = [compose(request, player, config, random.Random(f"{key}:choice{i}")) for i in range(request.n)]
    return completion(request, choices, completion_id, fingerprint), [c.fault for c in choices if c.fault]
