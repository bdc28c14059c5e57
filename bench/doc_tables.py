"""Where the benchmarks put their tables: between two marker lines in a page of the docs site.

``python bench/run.py --readme`` writes its table into docs/performance.md, ``python bench/soak.py
--readme`` into docs/reliability.md; everything outside the markers is left as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

DOCS = Path(__file__).resolve().parents[1] / "docs"


class TablePlace(NamedTuple):
    page: Path
    start: str
    end: str


RUN_TABLE = TablePlace(DOCS / "performance.md", "<!-- bench/run.py table -->", "<!-- /bench/run.py table -->")
SOAK_TABLE = TablePlace(DOCS / "reliability.md", "<!-- bench/soak.py table -->", "<!-- /bench/soak.py table -->")


def write_table(place: TablePlace, table: str) -> bool:
    """Put ``table`` between ``place``'s markers, replacing what was there; False, and the page left
    unchanged, when a marker is missing or they are out of order."""
    text = place.page.read_text()
    start, end = text.find(place.start), text.find(place.end)
    if start < 0 or end < start:
        return False
    place.page.write_text(text[: start + len(place.start)] + "\n" + table + "\n" + text[end:])
    return True
