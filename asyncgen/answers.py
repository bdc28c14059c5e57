"""Single-token answers: which token a model reads off after the prompt, under two readings.

The single-token template ends in whitespace (``"\\n Answer: "``), and every tokenizer encodes that
trailing space as a token of its own at the end of the prompt's ids (``Ġ`` for qwen2 and llama3,
``▁`` for solar). So there are two honest ways to name an answer's token:

- ``answer_ids``: the token that follows the prompt's ids *as encoded*, i.e. what a model fed those
  ids emits next. The trailing space is already in the prompt, so this is the answer without a
  leading space (``Yes``, not `` Yes``): the single token ``t`` with
  ``decode(prompt_ids + [t]) == decode(prompt_ids) + answer``.
- ``answer_ids_merged``: the answer with the trailing whitespace moved into it, as a researcher who
  strips the prompt's trailing whitespace reads it: ``": "`` + ``"Yes"`` -> ``":"``, ``" Yes"``. These
  are the ids of ``encode(prompt + answer)`` after their common prefix with the prompt's ids; the
  prompt's ids beyond that prefix (the trailing-space token) are its ``tail``.

A task's answers must be one token under both readings and every tokenizer (``task_tokens``).
Which ids a scenario's answers have depends only on the end of its prompt, the template's suffix:
``TaskTokens.for_prompt`` reuses the task's when the prompt's ids end in the same tail, and works
them out for that prompt otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from asyncgen.config import Task
from asyncgen.errors import ConfigError
from asyncgen.tokenizers import Tokenizer


@dataclass(frozen=True, slots=True)
class Reading:
    """One answer under one tokenizer, after one prompt: the ids of both readings (any length)."""

    answer: str
    next_ids: tuple[int, ...] | None  # None: no ids after the prompt's decode to exactly the answer
    merged_ids: tuple[int, ...]
    tail: tuple[int, ...]  # the prompt's last ids that the merged reading replaces


def next_token_ids(tokenizer: Tokenizer, prompt_ids: Sequence[int], answer: str) -> tuple[int, ...] | None:
    """The fewest ids that, appended to ``prompt_ids``, decode to the prompt's text plus ``answer``.

    Candidates are the answer encoded alone and after a newline (SentencePiece prepends ``▁`` to a
    text's start, a newline keeps the answer bare); each is checked by decoding, so a candidate
    that does not continue the prompt exactly is never returned.
    """
    plain, after_newline, newline = tokenizer.encode_plain([answer, "\n" + answer, "\n"])
    candidates = [plain]
    if after_newline[: len(newline)] == newline:
        candidates.append(after_newline[len(newline) :])
    prompt_ids = list(prompt_ids)
    base = tokenizer.decode(prompt_ids)
    verified = [tuple(c) for c in candidates if c and tokenizer.decode(prompt_ids + list(c)) == base + answer]
    return min(verified, key=len) if verified else None


def readings(tokenizer: Tokenizer, prompt: str, answers: Sequence[str], prompt_ids: Sequence[int] | None = None) -> list[Reading]:
    """Both readings of each answer after ``prompt`` (encoded here unless ``prompt_ids`` is given)."""
    encoded = tokenizer.encode_batch([prompt] * (prompt_ids is None) + [prompt + answer for answer in answers])
    if prompt_ids is None:
        prompt_ids, encoded = encoded[0], encoded[1:]
    out = []
    for answer, extended in zip(answers, encoded):
        common = 0
        while common < min(len(prompt_ids), len(extended)) and prompt_ids[common] == extended[common]:
            common += 1
        out.append(Reading(answer, next_token_ids(tokenizer, prompt_ids, answer), tuple(extended[common:]),
                           tuple(prompt_ids[common:])))
    return out


@dataclass(frozen=True, slots=True)
class TaskTokens:
    """A task's fixed token facts under one tokenizer: its answers' ids under both readings, the
    prompt's ids the merged reading replaces (``tail``), and the ids ``encode`` puts first (BOS)."""

    tokenizer: str
    answer_ids: dict[str, int]
    answer_ids_merged: dict[str, int]
    tail: tuple[int, ...]
    bos: tuple[int, ...]

    def for_prompt(self, tokenizer: Tokenizer, prompt: str, prompt_ids: Sequence[int]) -> "TaskTokens":
        """These facts if ``prompt_ids`` end in the task's tail (the usual case), else worked out for
        this prompt; an answer that is not one token after it maps to None."""
        if not self.tail or tuple(prompt_ids[-len(self.tail) :]) == self.tail:
            return self
        found = readings(tokenizer, prompt, list(self.answer_ids), prompt_ids)
        return TaskTokens(
            self.tokenizer,
            {r.answer: r.next_ids[0] if r.next_ids and len(r.next_ids) == 1 else None for r in found},
            {r.answer: r.merged_ids[0] if len(r.merged_ids) == 1 else None for r in found},
            found[0].tail if found else (),
            self.bos,
        )


def task_tokens(task: Task, tokenizer: Tokenizer) -> TaskTokens:
    """The task's answer ids under ``tokenizer``; a ConfigError, in one line naming the tokenizer and
    the tokens, when an answer is not one token under either reading."""
    prompt = task.templates.single_token.render(task.examples[0].safe)
    labelled = (("safe", task.answers.safe), ("harmful", task.answers.harmful))
    found = readings(tokenizer, prompt, [answer for _, answer in labelled])
    for (label, answer), reading in zip(labelled, found):
        tail = " ".join(tokenizer.ids_to_tokens(reading.tail)) or "nothing"
        if len(reading.merged_ids) != 1:
            raise ConfigError(
                f"task {task.task_name}: answer {label}={answer!r} is {len(reading.merged_ids)} tokens under "
                f"tokenizer {tokenizer.name} ({' '.join(tokenizer.ids_to_tokens(reading.merged_ids))}) merged with "
                f"the prompt's trailing {tail}; choose an answer that is a single token under every tokenizer"
            )
        if reading.next_ids is None or len(reading.next_ids) != 1:
            shown = " ".join(tokenizer.ids_to_tokens(reading.next_ids)) if reading.next_ids else "no ids decode to it"
            count = len(reading.next_ids) if reading.next_ids else 0
            raise ConfigError(
                f"task {task.task_name}: answer {label}={answer!r} is {count} tokens under tokenizer "
                f"{tokenizer.name} ({shown}) after the prompt's ids, which end in the trailing-space token "
                f"{tail} (one token only merged: {' '.join(tokenizer.ids_to_tokens(reading.merged_ids))}); "
                "choose an answer that is a single token both after that token and merged with it"
            )
    bos = tuple(tokenizer.encode_batch([""])[0])
    return TaskTokens(
        tokenizer.name,
        {r.answer: r.next_ids[0] for r in found},
        {r.answer: r.merged_ids[0] for r in found},
        found[0].tail,
        bos,
    )


def trailing_space_positions(tokenizer: Tokenizer, text: str, ids: Sequence[int]) -> list[int]:
    """Positions in ``ids`` of the tokens at the end that hold only ``text``'s trailing whitespace
    (for a single-token prompt: the trailing-space token the answer follows); [] if there are none."""
    stripped = text.rstrip()
    if stripped == text:
        return []
    ids = list(ids)
    for start in range(len(ids) - 1, -1, -1):
        decoded = tokenizer.decode(ids[:start])
        if decoded == stripped:
            return list(range(start, len(ids)))
        if len(decoded) < len(stripped):
            break
    return []
