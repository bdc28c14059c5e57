"""The output cap each request is sent with (``max_tokens``), learned from the answers. Pure rules.

OpenAI counts a request against its TPM limit as its prompt estimate plus its output cap, so a cap
far above what answers use wastes the limit: the task's bound (``max_output_tokens``, 60 tokens a
pair) reserves 660 tokens for a 10-pair answer of about 380. The cap starts at that bound; once
``MIN_ANSWERS`` answers are known (two: one odd short answer, a refusal, must not set it) it is the
``PERCENTILE`` of the last ``WINDOW`` answers' completion tokens plus a margin that narrows as
answers are known: ``FEW_MARGIN`` while fewer than ``FEW_ANSWERS``, ``EARLY_MARGIN`` while fewer
than ``EARLY_ANSWERS``, then ``MARGIN``; plus ``MARGIN_TOKENS``. (At a tier-1 limit each request
sent at the task's bound costs about a request and a half of the limit: waiting for four answers
sent the first six of a short run there.) An answer cut at its cap
(``finish_reason`` ``length`` at ``CUT_SHARE`` of the cap it was sent with or more) raises the cap
at once by ``RAISE``, and the cap stays at least there for the next ``WINDOW`` answers. The cap
never exceeds ``CEILING_FACTOR`` times the task's bound, nor falls under ``FLOOR`` tokens.
"""

from __future__ import annotations

import bisect
import math
from collections import deque

MIN_ANSWERS = 2  # answers known before the cap is learned
FEW_ANSWERS = 4
FEW_MARGIN = 0.30  # two answers of at most 380 tokens: a cap of 502
EARLY_ANSWERS = 20
EARLY_MARGIN = 0.15
WINDOW = 200
PERCENTILE = 0.99
MARGIN = 0.05  # a share of the percentile ...
MARGIN_TOKENS = 8  # ... plus a few tokens
CUT_SHARE = 0.9  # a "length" finish this close to the cap was cut by it (not a server fault)
RAISE = 1.5
CEILING_FACTOR = 4
FLOOR = 16


class OutputCap:
    def __init__(self, start: int) -> None:
        self.start = start
        self.ceiling = CEILING_FACTOR * start
        self.value = start  # the cap in force: what the next request is sent with
        self.answers = 0  # answers observed
        self.cuts = 0  # answers cut at their cap
        self._recent: deque[int] = deque()  # the last WINDOW answers' lengths, oldest first ...
        self._ordered: list[int] = []  # ... and the same, sorted (kept so, not sorted per answer)
        self._held = 0  # after a cut: the cap stays at least this ...
        self._held_until = 0  # ... until this many answers have been observed

    def observe(self, completion_tokens: int, finish_reason: str | None, sent_cap: int) -> bool:
        """One answer (one choice) of a request sent with ``sent_cap``. True: it was cut at the cap."""
        self.answers += 1
        cut = finish_reason == "length" and completion_tokens >= CUT_SHARE * sent_cap
        if cut:
            self.cuts += 1
            self._held = min(self.ceiling, max(self.value, math.ceil(RAISE * sent_cap)))
            self._held_until = self.answers + WINDOW
            self._remember(self._held)  # the answer it would have been is longer than we saw
        else:
            self._remember(completion_tokens)
        self.value = self._learned()
        return cut

    def _remember(self, tokens: int) -> None:
        self._recent.append(tokens)
        bisect.insort(self._ordered, tokens)
        if len(self._recent) > WINDOW:
            del self._ordered[bisect.bisect_left(self._ordered, self._recent.popleft())]

    def _learned(self) -> int:
        held = self._held if self.answers < self._held_until else 0
        if len(self._recent) < MIN_ANSWERS:
            return max(self.value, held)
        ordered = self._ordered
        high = ordered[min(len(ordered) - 1, math.ceil(PERCENTILE * len(ordered)) - 1)]
        known = len(self._recent)
        margin = FEW_MARGIN if known < FEW_ANSWERS else EARLY_MARGIN if known < EARLY_ANSWERS else MARGIN
        learned = math.ceil(high * (1 + margin)) + MARGIN_TOKENS
        return max(FLOOR, min(self.ceiling, max(learned, held)))
