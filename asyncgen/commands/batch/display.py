"""The progress of ``batch process`` and ``batch run``: one line through ``progress.LiveLine``."""

from __future__ import annotations

import logging
import time

from asyncgen.batch.manifest import Manifest
from asyncgen.commands.batch.directory import Setup
from asyncgen.progress import _duration, _money

log = logging.getLogger("asyncgen.batch")


class Display:
    """``batch run``'s and ``process``'s progress, through the one progress display
    (``progress.LiveLine``): the dataset's count, the round's batches or the validation in hand,
    the cost, the time. Off a terminal, a log line when it changes (at most every 5 s)."""

    LOG_EVERY_S = 5.0

    def __init__(self, setup: Setup, manifest: Manifest, started: float) -> None:
        from asyncgen.progress import LiveLine

        self.setup, self.manifest, self.started = setup, manifest, started
        self.count, self.validating = 0, None
        self.activity: str | None = None  # what is under way besides the batches (a finish in real time)
        self.line = LiveLine(self.render, logger=log)
        self._logged = (0.0, "")

    def __enter__(self) -> "Display":
        self.line.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self.line.__exit__(*exc_info)

    def render(self, width: int | None) -> str:
        from asyncgen.progress import fit_fields

        fields = batch_progress_fields(self.setup, self.manifest, self.count, time.monotonic() - self.started,
                                       self.validating, self.activity)
        return fit_fields(fields, width) if width else " | ".join(text for _, text in fields)

    def show(self, count: int | None = None) -> None:
        self.count = self.count if count is None else count
        if self.line.live:
            self.line.refresh()
            return
        now, key = time.monotonic(), self.render(None).split(" | elapsed")[0]
        if key != self._logged[1] and now - self._logged[0] >= self.LOG_EVERY_S:
            self._logged = (now, key)
            self.line.refresh()

    def validated(self, done: int, total: int) -> None:
        self.validating = (done, total)
        if self.line.live:
            self.line.refresh()


def batch_progress_fields(setup: Setup, manifest: Manifest, count: int, elapsed: float,
                          validating: tuple[int, int] | None = None, activity: str | None = None) -> list[tuple[int, str]]:
    """The fields of ``batch run``'s progress line, each with its priority (0 = always shown; higher
    numbers are dropped first when the terminal is narrow: see ``progress.fit_fields``). Pure."""
    width = 20
    filled = int(width * min(1.0, count / manifest.target)) if manifest.target else width
    running = manifest.in_flight()
    done = sum((e.request_counts or {}).get("completed", 0) for e in running)
    total = sum((e.request_counts or {}).get("total") or e.requests for e in running)
    at_batch, _ = manifest.cost(setup.costs)
    if validating is not None:
        doing = f"validating {validating[0]}/{validating[1]} pairs"
    elif activity is not None:
        doing = activity
    elif running:
        doing = f"round {manifest.rounds}: {len(running)} batch(es), {done}/{total} requests done"
    elif manifest.rounds == 0:
        doing = "planning round 1"
    else:
        doing = f"round {manifest.rounds}: no batch running"
    return [(5, f"[{'#' * filled}{'-' * (width - filled)}]"), (0, f"{count}/{manifest.target} scenarios"), (1, doing),
            (2, f"cost {_money(at_batch)}"), (3, f"elapsed {_duration(elapsed)}")]
