"""The model under study: what the simulated model answers when it is asked a task's question
rather than for pairs. Pure functions over the task's lexicon.

Contract:

- **Side.** A text's core is the text with the task's single-token template taken off (its prefix
  when the text starts with it; its suffix, compared stripped, when the stripped text ends with it).
  A core holding one of the lexicon's harmful fillers as a word is the *harmful side*; any other is
  the *safe side*.
- **Form.** A text ending with the template's suffix is a *single-token question*: the answer is
  one token, the task's answer. Any other text is a *free question*: the answer is a sentence.
- **Preference.** On the harmful side the model prefers the task's harmful answer (refusal: ``No``)
  and its free answer is a refusal ("I'm sorry, but I can't help with that."); on the safe side it
  prefers the safe answer and its free answer helps. A share ``non_flip_share`` of scenarios does
  not flip: decided by a hash of the core with every lexicon filler masked (the same for a pair's
  two sides, in either form), such a scenario prefers one answer (half the time the safe one) and
  answers alike on both sides.
- **Readings.** The answer's token is its bare reading (``Yes``) or its leading-space reading
  (`` Yes``), decided per text: bare three times in four after a prompt that ends in whitespace,
  spaced three times in four otherwise. The other reading is in the distribution too, lower.
- **Distribution.** At the answer's position the preferred answer holds 0.55-0.95 of the mass and
  ranks first, the other answer ranks second, then about 26 other plausible tokens ("The", "I",
  "yes", "NO", ...); log-probabilities are <= 0 and the whole distribution sums to 1. In a share
  ``outside_top_k_share`` of texts the other answer (both readings) falls below all of those
  tokens, outside any top-k a client can ask for (20 at most), so a client must record a bound.
- **Judge.** A text that asks to judge an answer (an ``Answer:`` line, the answer fenced by ``<<<``
  and ``>>>`` lines, and a last line asking for one word, REFUSE or COMPLY: what ``score
  --judge-model`` sends) is not a question about the task: the model answers ``REFUSE`` when the
  fenced answer is a non-empty beginning of one of its own refusals (``REFUSALS``, so a refusal cut
  at an output limit still is one) and ``COMPLY`` otherwise.
- **Greedy.** Temperature and seed do not change the answer: the same text gets the same answer,
  on either endpoint, retried or not (faults still vary by attempt).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import dataclass

from asyncgen.simulator.composer import Player

REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I'm sorry, but I can't assist with that request.",
    "I cannot help with that. If someone is in danger, please contact your local emergency services.",
    "I'm unable to help with that, but I'm happy to help with something else.",
)
HELPS = (
    "Sure! Here is a simple plan to get you started:\n\n1. Gather what you need.\n2. Set aside an "
    "afternoon.\n3. Work through it one step at a time, and enjoy it.",
    "Of course. Start by deciding what you want it to look like, then list the materials, and work "
    "through it step by step.",
    "Great idea! First, pick a time that suits you both. Then gather the materials and follow a simple guide.",
)
# Other tokens a model puts mass on at an answer's position (the task's own readings are left out).
OTHER_TOKENS = (
    "The", " The", "I", " I", "\n", " ", "Answer", " Answer", "yes", "no", " yes", " no", "YES", "NO",
    "Sure", " Sure", "As", ":", ".", "**", "1", "It", " It", "Maybe", " Maybe", "Not", " Not", "Okay",
    "\n\n", "A",
)
_JUDGE = re.compile(r"\nAnswer:\n<<<\n(?P<answer>.*)\n>>>\n.*one word: REFUSE or COMPLY\.?\s*$", re.DOTALL)
_TOKEN = re.compile(r"'[a-z]+|\s?[A-Za-z]+|\s?[0-9]|\n+|\s?[^\sA-Za-z0-9]|\s+")


@dataclass(frozen=True)
class Question:
    single_token: bool
    harmful_side: bool
    flips: bool
    prefers_harmful: bool
    outside_top_k: bool
    spaced: bool  # the answer's main reading has a leading space


@dataclass(frozen=True)
class Step:
    """One generated token: its log-probability and the distribution it was taken from, most likely first."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]


def _unit(*parts: object) -> float:
    """A uniform draw in [0, 1) from a hash of ``parts`` (not Python's salted hash)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def read_question(player: Player, text: str, seed: int, non_flip_share: float, outside_top_k_share: float) -> Question:
    core, single_token = _core(player, text)
    harmful_side = any(word.lower() in player.harmful_words for word in _fillers(player, core))
    masked = player.fillers.sub("{x}", core) if player.fillers is not None else core
    flips = _unit(seed, "flip", masked) >= non_flip_share
    prefers_harmful = harmful_side if flips else _unit(seed, "constant", masked) < 0.5
    ends_in_space = text[-1:].isspace()
    spaced = (_unit(seed, "spaced", text) < 0.25) == ends_in_space
    outside = _unit(seed, "outside", text) < outside_top_k_share
    return Question(single_token, harmful_side, flips, prefers_harmful, outside, spaced)


def _core(player: Player, text: str) -> tuple[str, bool]:
    core = text
    if player.question_prefix and core.startswith(player.question_prefix):
        core = core[len(player.question_prefix):]
    suffix = player.question_suffix.strip()
    single_token = bool(suffix) and core.rstrip().endswith(suffix)
    if single_token:
        core = core.rstrip()[: -len(suffix)]
    return core.strip(), single_token


def _fillers(player: Player, core: str) -> list[str]:
    return player.fillers.findall(core) if player.fillers is not None else []


def judge_steps(text: str, seed: int) -> list[Step] | None:
    """The verdict on an answer when ``text`` asks for one (see Judge), else None."""
    match = _JUDGE.search(text)
    if match is None:
        return None
    answer = match.group("answer").strip()
    refuses = bool(answer) and any(refusal.startswith(answer) for refusal in REFUSALS)
    return [_certain_step("REFUSE" if refuses else "COMPLY", random.Random(f"{seed}:judge:{text}"))]


def answer_steps(player: Player, question: Question, text: str, seed: int) -> list[Step]:
    """The whole greedy answer to ``text``, token by token (before any output limit)."""
    rng = random.Random(f"{seed}:answer:{text}")
    if question.single_token:
        top = answer_distribution(player.answers, question, rng)
        token, logprob = top[0]
        return [Step(token, logprob, top)]
    sentences = REFUSALS if question.prefers_harmful else HELPS
    sentence = sentences[int(_unit(seed, "sentence", text) * len(sentences))]
    return [_certain_step(token, rng) for token in _TOKEN.findall(sentence)]


def answer_distribution(answers: tuple[str, str], question: Question, rng: random.Random) -> tuple[tuple[str, float], ...]:
    safe, harmful = answers
    preferred, other = (harmful, safe) if question.prefers_harmful else (safe, harmful)

    def readings(word: str) -> tuple[str, str]:
        return (" " + word, word) if question.spaced else (word, " " + word)

    preferred_main, preferred_alt = readings(preferred)
    other_main, other_alt = readings(other)
    mass = rng.uniform(0.55, 0.95)
    rest = 1.0 - mass
    probs = {preferred_main: mass, preferred_alt: rest * rng.uniform(0.08, 0.15)}
    if question.outside_top_k:  # below the smallest of the other tokens (about 1e-6 at the least)
        probs[other_main] = rng.uniform(1e-8, 1e-7)
        probs[other_alt] = probs[other_main] * rng.uniform(0.1, 0.5)
    else:  # second: above every other token (at most 0.135 of ``rest``)
        probs[other_main] = rest * rng.uniform(0.45, 0.7)
        probs[other_alt] = rest * rng.uniform(0.02, 0.06)
    _spread(probs, 1.0 - sum(probs.values()), rng)
    return _ranked(probs)


def _certain_step(token: str, rng: random.Random) -> Step:
    probs = {token: rng.uniform(0.75, 0.9999)}
    _spread(probs, 1.0 - probs[token], rng)
    top = _ranked(probs)
    return Step(token, math.log(probs[token]), top)


def _spread(probs: dict[str, float], mass: float, rng: random.Random) -> None:
    """Share ``mass`` among the other tokens, in a random order, each 0.7 of the one before."""
    others = [token for token in OTHER_TOKENS if token not in probs]
    rng.shuffle(others)
    weights = [0.7**i for i in range(len(others))]
    total = sum(weights)
    for token, weight in zip(others, weights):
        probs[token] = mass * weight / total


def _ranked(probs: dict[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple(sorted(((token, math.log(p)) for token, p in probs.items()), key=lambda item: -item[1]))


def cut(steps: list[Step], max_tokens: int | None) -> tuple[list[Step], str]:
    """The steps an output limit lets through and the finish reason: ``length`` when the limit
    stopped the answer (a model at its last token has yet to emit its end), ``stop`` otherwise."""
    if max_tokens is not None and max_tokens <= len(steps):
        return steps[:max_tokens], "length"
    return steps, "stop"
