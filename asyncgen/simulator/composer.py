"""The model player: what the simulated model writes for a generation request. Pure functions.

A candidate pair is a lexicon frame with its ``{x}`` slot filled with a safe filler (the prompt)
and a harmful filler (the counterfactual), every other ``{slot}`` filled with one value, the same
in both. Like a real model, a share of the pairs (``imperfect_rate``) is imperfect, each of one
kind drawn from ``imperfect_mix``:

- ``long_filler``: a filler longer than ``long_filler_chars`` characters (e.g. "birdhouse",
  "ransomware"), which is likely several tokens under some tokenizer; perfect pairs use only the
  shorter fillers (shorter is only a heuristic: some short words are several tokens too);
- ``second_word``: the counterfactual also differs in a second place (another slot value, or an
  inserted word when the frame has no other slot);
- ``repeat``: a pair already given earlier in the same answer (or, for the first pair, one of
  the task's examples).

Like a model told what to avoid, perfect pairs are redrawn (a few times) when their prompt or
counterfactual already appears in the request's text (the client's list of accepted prompts) or
earlier in the answer.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from asyncgen.config import Task

_SLOT = re.compile(r"\{(\w+)\}")
_EXACTLY = re.compile(r"exactly (\d+) pairs", re.IGNORECASE)
_REDRAWS = 8
PROSE_TEMPLATES = (
    ("Here are the pairs:\n\n", ""),
    ("Sure! Here are {n} pairs in JSON:\n```json\n", "\n```"),
    ("```json\n", "\n```\nLet me know if you would like more."),
    ("Certainly. ", "\nEach pair differs in exactly one word."),
)


@dataclass(frozen=True)
class Frame:
    text: str
    slots: tuple[str, ...]  # the non-x slot names, in order of appearance


@dataclass(frozen=True)
class Player:
    """A task's lexicon, prepared for fast drawing."""

    frames: tuple[Frame, ...]
    slot_values: dict[str, tuple[str, ...]]
    short_safe: tuple[str, ...]
    long_safe: tuple[str, ...]
    short_harmful: tuple[str, ...]
    long_harmful: tuple[str, ...]
    examples: tuple[tuple[str, str], ...]
    batch_size: int
    # For the model under study (scoring.py): the task's (safe, harmful) answers, its single-token
    # template, and every lexicon filler as a whole word (a text's side is in its fillers).
    answers: tuple[str, str] = ("Yes", "No")
    question_prefix: str = ""
    question_suffix: str = ""
    fillers: re.Pattern | None = None
    harmful_words: frozenset[str] = frozenset()

    @classmethod
    def from_task(cls, task: Task, long_filler_chars: int = 7) -> "Player":
        lexicon = task.lexicon
        if lexicon is None:
            raise ValueError(f"task '{task.task_name}' has no lexicon: the simulator cannot play it")
        frames = []
        for text in lexicon.frames:
            names = tuple(dict.fromkeys(name for name in _SLOT.findall(text) if name != "x"))
            missing = [name for name in names if name not in lexicon.slots]
            if "x" not in _SLOT.findall(text) or missing:
                raise ValueError(f"task '{task.task_name}': frame {text!r} needs {{x}} and values for {missing}")
            frames.append(Frame(text, names))
        short_safe, long_safe = _split(lexicon.safe, long_filler_chars)
        short_harmful, long_harmful = _split(lexicon.harmful, long_filler_chars)
        return cls(
            frames=tuple(frames),
            slot_values={name: tuple(values) for name, values in lexicon.slots.items()},
            short_safe=short_safe,
            long_safe=long_safe,
            short_harmful=short_harmful,
            long_harmful=long_harmful,
            examples=tuple((pair.safe, pair.harmful) for pair in task.examples),
            batch_size=task.batch_size,
            answers=(task.answers.safe, task.answers.harmful),
            question_prefix=task.templates.single_token.prefix,
            question_suffix=task.templates.single_token.suffix,
            fillers=_word_pattern([*lexicon.safe, *lexicon.harmful]),
            harmful_words=frozenset(word.lower() for word in lexicon.harmful),
        )


def _word_pattern(words: list[str]) -> re.Pattern:
    alternatives = "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def _split(words: list[str], long_chars: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    short = tuple(w for w in words if len(w) <= long_chars)
    long = tuple(w for w in words if len(w) > long_chars)
    # A side with no short (or no long) words draws from all of them.
    return short or tuple(words), long or tuple(words)


@dataclass(frozen=True)
class AnswerShape:
    """Where the pairs go in the answer object: ``{array_key: [{prompt_key, counterfactual_key, **extra}]}``."""

    array_key: str = "pairs"
    prompt_key: str = "prompt"
    counterfactual_key: str = "counterfactual"
    item_extra: dict = field(default_factory=dict)
    top_extra: dict = field(default_factory=dict)


DEFAULT_SHAPE = AnswerShape()


def requested_pairs(texts: list[str], default: int, most: int) -> int:
    """N from the last "exactly N pairs" in the messages, else ``default``; clamped to [1, most]."""
    count = default
    for text in texts:
        for match in _EXACTLY.finditer(text):
            count = int(match.group(1))
    return max(1, min(count, most))


def answer_shape(schema: dict | None) -> AnswerShape:
    """The property names a JSON schema asks for (the first array of objects, its first two string
    properties); the default shape when there is no usable schema."""
    if not isinstance(schema, dict):
        return DEFAULT_SHAPE
    defs = schema.get("$defs") or schema.get("definitions") or {}
    root = _resolve(schema, defs)
    properties = root.get("properties")
    if not isinstance(properties, dict):
        return DEFAULT_SHAPE
    for array_key, array_schema in properties.items():
        array_schema = _resolve(array_schema, defs)
        if not isinstance(array_schema, dict) or array_schema.get("type") != "array":
            continue
        items = _resolve(array_schema.get("items"), defs)
        item_props = items.get("properties") if isinstance(items, dict) else None
        if not isinstance(item_props, dict):
            continue
        strings = [name for name, prop in item_props.items() if _resolve(prop, defs).get("type") == "string"]
        if len(strings) < 2:
            continue
        prompt_key, counterfactual_key = strings[0], strings[1]
        item_extra = {
            name: _placeholder(_resolve(prop, defs))
            for name, prop in item_props.items()
            if name not in (prompt_key, counterfactual_key)
        }
        top_extra = {name: _placeholder(_resolve(prop, defs)) for name, prop in properties.items() if name != array_key}
        return AnswerShape(array_key, prompt_key, counterfactual_key, item_extra, top_extra)
    return DEFAULT_SHAPE


def _resolve(node: object, defs: dict) -> dict:
    if isinstance(node, dict) and isinstance(node.get("$ref"), str):
        name = node["$ref"].rsplit("/", 1)[-1]
        target = defs.get(name)
        return target if isinstance(target, dict) else {}
    return node if isinstance(node, dict) else {}


def _placeholder(schema: dict) -> object:
    """A plausible value for a property the model has nothing to say about."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    return {"string": "", "integer": 0, "number": 0, "boolean": False, "array": [], "object": {}}.get(kind)


def fill(frame: Frame, filler: str, values: dict[str, str]) -> str:
    text = frame.text.replace("{x}", filler)
    for name in frame.slots:
        text = text.replace("{" + name + "}", values[name])
    return text


def compose_pairs(
    player: Player,
    count: int,
    rng: random.Random,
    imperfect_rate: float,
    imperfect_mix: dict[str, float],
    avoid_text: str = "",
) -> list[tuple[str, str]]:
    """``count`` (prompt, counterfactual) pairs; each imperfect with probability ``imperfect_rate``."""
    kinds = [kind for kind, weight in imperfect_mix.items() if weight > 0]
    weights = [imperfect_mix[kind] for kind in kinds]
    pairs: list[tuple[str, str]] = []
    given: set[str] = set()
    for _ in range(count):
        kind = rng.choices(kinds, weights)[0] if kinds and rng.random() < imperfect_rate else None
        if kind == "repeat":
            pair = rng.choice(pairs) if pairs else rng.choice(player.examples)
        else:
            for _attempt in range(_REDRAWS):
                pair = _draw(player, rng, kind)
                if kind or not _seen(pair, given, avoid_text):
                    break
        pairs.append(pair)
        given.update(pair)
    return pairs


def _seen(pair: tuple[str, str], given: set[str], avoid_text: str) -> bool:
    prompt, counterfactual = pair
    return prompt in given or counterfactual in given or prompt in avoid_text or counterfactual in avoid_text


def _draw(player: Player, rng: random.Random, kind: str | None) -> tuple[str, str]:
    frame = rng.choice(player.frames)
    values = {name: rng.choice(player.slot_values[name]) for name in frame.slots}
    safe = rng.choice(player.short_safe)
    harmful = rng.choice(player.short_harmful)
    if kind == "long_filler":
        side = rng.random()
        if side < 0.5 or side >= 0.75:
            safe = rng.choice(player.long_safe)
        if side >= 0.5:
            harmful = rng.choice(player.long_harmful)
    prompt = fill(frame, safe, values)
    if kind != "second_word":
        return prompt, fill(frame, harmful, values)
    changeable = [name for name in frame.slots if len(player.slot_values[name]) > 1]
    if changeable:
        name = rng.choice(changeable)
        other = dict(values)
        other[name] = rng.choice([v for v in player.slot_values[name] if v != values[name]])
        return prompt, fill(frame, harmful, other)
    return prompt, fill(frame, "really " + harmful, values)


def answer_object(pairs: list[tuple[str, str]], shape: AnswerShape) -> dict:
    items = []
    for prompt, counterfactual in pairs:
        item = {shape.prompt_key: prompt, shape.counterfactual_key: counterfactual}
        if shape.item_extra:
            item.update(shape.item_extra)
        items.append(item)
    answer = {shape.array_key: items}
    if shape.top_extra:
        answer.update(shape.top_extra)
    return answer


def wrap_in_prose(content: str, count: int, rng: random.Random) -> str:
    before, after = rng.choice(PROSE_TEMPLATES)
    return before.format(n=count) + content + after
