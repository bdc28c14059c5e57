"""Which requests a batch directory made, and which of them have been answered. Pure functions.

Contract:

* A directory's identity is a random id made with its manifest. Every request it writes carries it
  in its custom_id, ``asyncgen-<id>-<number>``, the number being unique across its rounds. A result
  line counts for the directory only when its custom_id is one of these (``Ledger.admit``):
  results made for another directory or task are counted apart and left out, whatever the file is
  called, and a file with none of the directory's ids is refused. Another engine (vLLM's
  ``run-batch``) echoes the custom_ids, so its output counts as the directory's own.
* Directories made before ids carried the directory (``asyncgen-<number>``): their old requests keep
  their numbers, below ``legacy_below``. Such ids cannot tell one directory from another, so they
  are trusted only in files the directory downloaded from its own batches; a ``--results`` file of
  them is refused like another directory's (``--external`` takes it, knowingly).
* Each request counts once, whatever file (or copy of a file) its answer comes in: the ledger keeps
  the numbers with a final outcome (an answer, or an error that is not retried) and those with a
  retryable one (expired, cancelled, 429, 5xx: a later round resubmits the same custom_id, so its
  answer still counts). A line whose request already has that outcome is a duplicate.
* Lines of another pipeline's results (``--external``, ids asyncgen did not make) are known by a
  digest of their bytes: the same file given twice, or a copy, counts once.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, field

PREFIX = "asyncgen"
RETRIED_ERRORS = ("batch_expired", "batch_cancelled")
_OURS = re.compile(r"^asyncgen-(?:([0-9a-f]{12})-)?(\d{7,})$")

NEW, DUPLICATE, FOREIGN = "new", "duplicate", "foreign"


def new_directory_id() -> str:
    return uuid.uuid4().hex[:12]


def custom_id(directory_id: str, number: int) -> str:
    return f"{PREFIX}-{directory_id}-{number:07d}"


def parse(value: object) -> tuple[str | None, int] | None:
    """(directory id, or None for an old-style id; request number) of an asyncgen custom_id, else None."""
    match = _OURS.match(value) if isinstance(value, str) else None
    return (match.group(1), int(match.group(2))) if match else None


def retryable(line: dict) -> bool:
    """Whether a result line leaves its request to run again: expired, cancelled, 429 or 5xx."""
    response, error = line.get("response"), line.get("error")
    status = response.get("status_code") if isinstance(response, dict) else None
    return (isinstance(error, dict) and error.get("code") in RETRIED_ERRORS) or (
        isinstance(status, int) and (status >= 500 or status == 429))


def to_ranges(numbers: set[int]) -> list[list[int]]:
    """``{0, 1, 2, 5}`` -> ``[[0, 3], [5, 6]]`` (half-open): answered requests are mostly runs."""
    ranges: list[list[int]] = []
    for number in sorted(numbers):
        if ranges and ranges[-1][1] == number:
            ranges[-1][1] += 1
        else:
            ranges.append([number, number + 1])
    return ranges


def from_ranges(ranges: list) -> set[int]:
    return {number for start, end in ranges for number in range(start, end)}


def line_digest(raw: bytes) -> str:
    return hashlib.blake2b(raw.strip(), digest_size=10).hexdigest()


@dataclass
class Ledger:
    directory_id: str
    next_request: int  # requests numbered below it were written by the directory
    legacy_below: int = 0  # old-style ids (asyncgen-<number>) below it are the directory's own
    answered: set[int] = field(default_factory=set)
    retried: set[int] = field(default_factory=set)
    external: set[str] = field(default_factory=set)

    def number(self, value: object, trust_old_ids: bool) -> int | None:
        """The request number of ``value`` if this directory requested it, else None."""
        parsed = parse(value)
        if parsed is None:
            return None
        directory_id, number = parsed
        if directory_id is None:
            return number if trust_old_ids and number < self.legacy_below else None
        return number if directory_id == self.directory_id and number < self.next_request else None

    def admit(self, line: dict, raw: bytes, *, trust_old_ids: bool = False, external: bool = False) -> str:
        """NEW (and recorded), DUPLICATE or FOREIGN: whether a result line counts, see the module."""
        number = self.number(line.get("custom_id"), trust_old_ids)
        if number is None:
            if not external:
                return FOREIGN
            digest = line_digest(raw)
            if digest in self.external:
                return DUPLICATE
            self.external.add(digest)
            return NEW
        if number in self.answered:
            return DUPLICATE
        if retryable(line):
            if number in self.retried:
                return DUPLICATE
            self.retried.add(number)
        else:
            self.answered.add(number)
        return NEW
