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


_STOP_REASONS = {"interrupted": "interrupted", "max_cost": "max_cost", "failed": "failed: see the error below"}


def summary(stats: RunStats, *, stop_reason: str | None, output: str, resume_command: str | None) -> str:
    finished = stats.accepted >= stats.target
    reason = _STOP_REASONS.get(stop_reason or "", stop_reason or "incomplete")
    status = "finished" if finished else f"stopped ({reason})"
    lines = [
        f"asyncgen run {status}: {stats.accepted}/{stats.target} scenarios in {output} "
        f"({stats.accepted_this_run} new this run)",
        f"  candidates      {stats.candidates} ({stats.rejected} rejected, {stats.duplicates} duplicates)",
    ]
    if stats.rejections:
        top = ", ".join(f"{kind}: {n}" for kind, n in stats.rejections.most_common(8))
        lines.append(f"  rejections      {top}")
    if stats.answer_failures:
        lines.append("  bad answers     " + _counts(stats.answer_failures))
    if stats.dropped_items:
        lines.append("  dropped items   " + _counts(stats.dropped_items))
    lines.append("  requests        " + _requests(stats))
    if stats.last_error and (stats.requests_given_up or stats.requests_failed or not stats.requests_ok):
        lines.append(f"  last error      {stats.last_error}")
    over_cap = f", {stats.over_cap_answers} answers over the output cap" if stats.over_cap_answers else ""
    lines += [
        f"  tokens          {stats.prompt_tokens} prompt ({stats.cached_tokens} cached), "
        f"{stats.completion_tokens} completion{over_cap}",
        f"  cost            {_money(stats.cost_usd)} this run, {_money(stats.total_cost_usd)} in all"
        + (f"; {stats.abandoned_attempts} abandoned attempts cost unknown" if stats.abandoned_attempts else ""),
        f"  wall time       {stats.elapsed:.1f} s"
        + (f", first scenario after {stats.first_accepted_s:.2f} s" if stats.first_accepted_s is not None else ""),
    ]
    if not finished and resume_command:
        lines.append(f"  resume with     {resume_command}")
    return "\n".join(lines)


def _counts(counter) -> str:
    return ", ".join(f"{kind}: {n}" for kind, n in sorted(counter.items()))


def _requests(stats: RunStats) -> str:
    """Every attempt sent, accounted for: answered, retried, given up, failed, cancelled at stop."""
    retried = sum(stats.retries.values())
    parts = [f"{stats.requests_ok} answered", f"{retried} retries" + (f" ({_counts(stats.retries)})" if retried else ""),
             f"{stats.requests_given_up} given up"]
    if stats.requests_failed:
        parts.append(f"{stats.requests_failed} refused")
    if stats.requests_cancelled:
        parts.append(f"{stats.requests_cancelled} cancelled at stop")
    if stats.in_flight:
        parts.append(f"{stats.in_flight} in flight")
    return f"{stats.requests_sent} sent: " + ", ".join(parts)
