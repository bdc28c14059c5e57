"""What the user sees during and after a run: a progress line (a log line when not on a terminal)
and the closing summary."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Callable, TextIO

from asyncgen.stats import RunStats

log = logging.getLogger("asyncgen.progress")


def _money(usd: float | None) -> str:
    return "unknown" if usd is None else f"${usd:.4f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def progress_line(stats: RunStats, yield_estimate: float) -> str:
    rate = stats.accepted_this_run / stats.elapsed if stats.elapsed > 0 else 0.0
    remaining = stats.target - stats.accepted
    eta = remaining / rate if rate > 0 else None
    width = 24
    filled = int(width * min(1.0, stats.accepted / stats.target)) if stats.target else width
    bar = "#" * filled + "-" * (width - filled)
    retries = sum(stats.retries.values())
    return (
        f"[{bar}] {stats.accepted}/{stats.target} {rate:.1f}/s yield {yield_estimate:.1f}/req "
        f"in flight {stats.in_flight} 429s {stats.rate_limited} retries {retries} "
        f"cost {_money(stats.total_cost_usd)} ETA {_duration(eta)}"
    )


async def report_progress(
    stats: RunStats, yield_estimate: Callable[[], float], *, stream: TextIO = sys.stderr,
    tty: bool | None = None, interval: float | None = None,
) -> None:
    """Redraw a progress line on a terminal (4 times a second); otherwise log one every 5 s."""
    tty = stream.isatty() if tty is None else tty
    interval = interval or (0.25 if tty else 5.0)
    try:
        while True:
            await asyncio.sleep(interval)
            line = progress_line(stats, yield_estimate())
            if tty:
                stream.write("\r\x1b[2K" + line)
                stream.flush()
            else:
                log.info("%s", line)
    finally:
        if tty:
            stream.write("\r\x1b[2K")
            stream.flush()


def summary(stats: RunStats, *, stop_reason: str | None, output: str, resume_command: str | None) -> str:
    finished = stats.accepted >= stats.target
    status = "finished" if finished else f"stopped ({stop_reason or 'incomplete'})"
    lines = [
        f"asyncgen run {status}: {stats.accepted}/{stats.target} scenarios in {output} "
        f"({stats.accepted_this_run} new this run)",
        f"  candidates      {stats.candidates} ({stats.rejected} rejected, {stats.duplicates} duplicates)",
    ]
    if stats.rejections:
        top = ", ".join(f"{kind}: {n}" for kind, n in stats.rejections.most_common(8))
        lines.append(f"  rejections      {top}")
    if stats.answer_failures:
        lines.append("  bad answers     " + ", ".join(f"{k}: {n}" for k, n in sorted(stats.answer_failures.items())))
    retries = ", ".join(f"{k}: {n}" for k, n in sorted(stats.retries.items())) or "none"
    lines += [
        f"  requests        {stats.requests_ok} answered, {stats.requests_sent} sent, "
        f"{stats.requests_given_up} given up; retries {retries}",
        f"  tokens          {stats.prompt_tokens} prompt ({stats.cached_tokens} cached), "
        f"{stats.completion_tokens} completion",
        f"  cost            {_money(stats.cost_usd)} this run, {_money(stats.total_cost_usd)} in all",
        f"  wall time       {stats.elapsed:.1f} s"
        + (f", first scenario after {stats.first_accepted_s:.2f} s" if stats.first_accepted_s is not None else ""),
    ]
    if not finished and resume_command:
        lines.append(f"  resume with     {resume_command}")
    return "\n".join(lines)
