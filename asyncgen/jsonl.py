"""Reading a JSONL input file (``tokenize --jsonl``, ``check-pairs``, ``score --results``, a batch
scoring job's output files): one decoded object per non-blank line, and a file that cannot be read
or a line that is not JSON as one ``InputFileError`` naming the file and the line."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import orjson

from asyncgen.errors import InputFileError


def read_jsonl(path: str | Path, name: str | None = None,
               expected: str = "one JSON value a line") -> Iterator[tuple[int, object]]:
    """(line number, decoded object) for each non-blank line of ``path``; ``name``: what errors call
    the file (default: its path); ``expected``: what a line should be, for the error of one that is
    not JSON."""
    name = str(path) if name is None else name
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise InputFileError(f"{name}: cannot read it ({exc.strerror})") from exc
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise InputFileError(f"{name}:{number}: not valid JSON ({exc}); expected {expected}") from exc
