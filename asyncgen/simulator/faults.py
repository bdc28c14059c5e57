"""Fault draws and the damage they do to an answer. Pure functions over a seeded ``random.Random``.

HTTP faults (500, 502, 503, timeout, reset) are drawn once per request; content faults
(bad_json, length, content_filter, refusal, bad_shape) once per choice. At most one of each group
fires: a uniform draw walks the cumulative rates, so the rates of a group must add up to <= 1.
"""

from __future__ import annotations

import random

from asyncgen.simulator.composer import AnswerShape
from asyncgen.simulator.settings import CONTENT_FAULTS, HTTP_FAULTS

REFUSAL_TEXT = "I'm sorry, but I can't help with that request."
BAD_GATEWAY_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
)


def draw(rates: dict[str, float], kinds: tuple[str, ...], rng: random.Random) -> str | None:
    """One kind of ``kinds`` with probability its rate, or None."""
    if not rates:
        return None
    point = rng.random()
    for kind in kinds:
        rate = rates.get(kind, 0.0)
        if point < rate:
            return kind
        point -= rate
    return None


def draw_http_fault(rates: dict[str, float], rng: random.Random) -> str | None:
    return draw(rates, HTTP_FAULTS, rng)


def draw_content_fault(rates: dict[str, float], rng: random.Random) -> str | None:
    return draw(rates, CONTENT_FAULTS, rng)


def latency_s(mean_ms: float, jitter_ms: float, distribution: str, rng: random.Random) -> float:
    """A delay in seconds: ``fixed`` mean; ``uniform`` mean +- jitter; ``normal`` sd jitter;
    ``exponential`` mean plus an exponential tail whose mean is jitter. Never negative."""
    if distribution == "fixed" or jitter_ms == 0:
        delay = mean_ms
    elif distribution == "uniform":
        delay = mean_ms + rng.uniform(-jitter_ms, jitter_ms)
    elif distribution == "normal":
        delay = rng.gauss(mean_ms, jitter_ms)
    elif distribution == "exponential":
        delay = mean_ms + rng.expovariate(1.0 / jitter_ms)
    else:
        raise ValueError(f"unknown latency distribution {distribution!r}")
    return max(0.0, delay) / 1000.0


def corrupt_json(text: str, rng: random.Random) -> str:
    """Malformed JSON of the kinds models write: a missing closing brace, a trailing comma, single
    quotes, an unquoted key."""
    how = rng.randrange(4)
    if how == 0 or '"' not in text:
        return text.rstrip().removesuffix("}")
    if how == 1:
        cut = text.rfind("]")
        return text[:cut] + "," + text[cut:] if cut > 0 else text + ","
    if how == 2:
        return text.replace('"', "'")
    key_start = text.find('"', 1)
    key_end = text.find('"', key_start + 1)
    return text[:key_start] + text[key_start + 1 : key_end] + text[key_end + 1 :]


def break_shape(answer: dict, shape: AnswerShape, rng: random.Random) -> dict:
    """Valid JSON that does not fit the schema: a renamed, missing or extra field."""
    items = answer.get(shape.array_key, [])
    how = rng.randrange(4)
    if how == 0:
        return {"data": items}
    if how == 1:
        renamed = [{("harmful" if k == shape.counterfactual_key else k): v for k, v in item.items()} for item in items]
        return {**answer, shape.array_key: renamed}
    if how == 2:
        dropped = [{k: v for k, v in item.items() if k != shape.counterfactual_key} for item in items]
        return {**answer, shape.array_key: dropped}
    extra = [{**item, "explanation": "The second request asks for something dangerous."} for item in items]
    return {**answer, shape.array_key: extra}


def truncate(text: str, rng: random.Random) -> str:
    """The answer cut off part way (30-90 %), as when the output limit is hit."""
    return text[: max(1, int(len(text) * rng.uniform(0.3, 0.9)))]
