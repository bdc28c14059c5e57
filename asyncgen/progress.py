"""What the user sees during and after a run: a progress line (a log line when not on a terminal)
and the closing summary."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shlex
import sys
from typing import Callable, TextIO

from asyncgen.errors import printable
from asyncgen.stats import RunStats
from asyncgen.terminal import fit_columns, is_terminal, print_fitted, terminal_width

log = logging.getLogger("asyncgen.progress")


def _money(usd: float | None, simulated: bool = False) -> str:
    if usd is None:
        return "unknown"
    return f"${usd:.4f}" + (" (simulated)" if simulated else "")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _kinds(counter) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in counter.most_common(3))


def progress_fields(stats: RunStats, yield_estimate: float | None) -> list[tuple[int, str]]:
    """The progress line's fields in display order, each with its priority (0 = always shown;
    higher numbers are dropped first when the terminal is narrow). ``yield_estimate`` (scenarios
    per request) only for generation: None shows none (score). Pure."""
    rate = stats.accepted_this_run / stats.elapsed if stats.elapsed > 0 else 0.0
    remaining = stats.target - stats.accepted
    eta = remaining / rate if rate > 0 else None
    percent = 100 * stats.accepted / stats.target if stats.target else 100.0
    width = 20
    filled = int(width * min(1.0, percent / 100))
    fields = [
        (6, "[" + "#" * filled + "-" * (width - filled) + "]"),
        (0, f"{stats.accepted}/{stats.target} scenarios"),
    ]
    if stats.stopping:  # no rate or ETA: nothing new is asked
        fields.append((1, f"stopping ({stats.stopping})"))
    elif stats.accepted_this_run == 0:
        phase = "waiting for the first answers" if stats.requests_ok == 0 else "validating the first answers"
        fields.append((1, phase))
    else:
        fields += [(2, f"{rate:.1f} scen/s"), (1, f"ETA {_duration(eta)}")]
    fields += [
        (3, f"cost {_money(stats.total_cost_usd)}{' sim' if stats.cost_simulated else ''}"),
        (4, f"in flight {stats.in_flight}"),
        (5, f"answered {stats.requests_ok}"),
    ]
    if yield_estimate is not None:
        fields.append((8, f"yield {yield_estimate:.1f} scen/req"))
    fields.append((7, f"429s: {stats.rate_limited}"))
    if stats.retries:
        fields.append((7, f"retries: {_kinds(stats.retries)}"))
    if stats.requests_given_up:
        fields.append((5, f"given up {stats.requests_given_up}"))
    if stats.answer_failures:
        fields.append((9, f"bad answers: {_kinds(stats.answer_failures)}"))
    return fields


def fit_fields(fields: list[tuple[int, str]], width: int, separator: str = " | ") -> str:
    """The fields joined on one line no wider than ``width``: the lowest-priority fields go first;
    what still does not fit is cut. Pure."""
    kept = list(fields)
    while len(kept) > 1 and len(separator.join(text for _, text in kept)) > width:
        drop = max(range(len(kept)), key=lambda i: (kept[i][0], i))
        del kept[drop]
    line = separator.join(text for _, text in kept)
    return line if len(line) <= width else line[: max(0, width - 1)] + "…"


def progress_line(stats: RunStats, yield_estimate: float | None, width: int | None = None) -> str:
    """One progress line; ``width`` None for a log line (every field)."""
    fields = progress_fields(stats, yield_estimate)
    if width is None:
        return " | ".join(text for _, text in fields)
    return fit_fields(fields, width)


def _cursor_keeping_console():
    from rich.console import Console

    class CursorKeepingConsole(Console):
        """Never hides the cursor (rich's Live does, to stop it flickering): a run killed with SIGKILL
        cannot show it again, and would leave the user's terminal without one."""

        def show_cursor(self, show: bool = True) -> bool:
            return super().show_cursor(True) if show else False

    return CursorKeepingConsole


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (IPython's ZMQ shell), without importing IPython."""
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)() if ipython is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"


class LiveLine:
    """The one progress display: on a terminal, a live line that fits its width (rich redraws it in
    place and keeps log lines above it); in a Jupyter notebook, a live display output that each
    ``refresh`` updates in place (rich renders it); otherwise a log line per ``refresh``.
    ``render(width)`` gives the line, ``width`` None for a log line (every field). ``run`` and
    ``batch run`` show their progress through it; ``refresh`` may be called from synchronous code
    too (a batch processing pass reports each validated chunk)."""

    def __init__(self, render: Callable[[int | None], str], *, stream: TextIO | None = None, tty: bool | None = None,
                 logger: logging.Logger = log, notebook: bool | None = None) -> None:
        self.render, self.stream, self.logger = render, stream or sys.stderr, logger
        self.notebook = (stream is None and tty is None and in_notebook()) if notebook is None else notebook
        self.tty = self.stream.isatty() if tty is None else tty
        self.live = self.tty or self.notebook  # redrawn in place, so it may be refreshed often
        self._live = None
        self._display = None

    def _notebook_text(self):
        from rich import get_console
        from rich.text import Text

        # rich's Text renders itself in Jupyter (HTML and plain text), at the notebook console's width.
        return Text(self.render(get_console().width), no_wrap=True, overflow="crop")

    def __enter__(self) -> "LiveLine":
        if self.notebook:
            from IPython.display import display

            self._display = display(self._notebook_text(), display_id=True)
        elif self.tty:
            from rich.live import Live

            self._console = _cursor_keeping_console()(file=self.stream, force_terminal=True)
            self._live = Live(self._text(), console=self._console, auto_refresh=False, transient=True,
                              redirect_stdout=False, redirect_stderr=self.stream is sys.stderr)
            self._live.__enter__()
        return self

    def _text(self):
        from rich.text import Text

        # One column short of the width: some terminals wrap a line that fills the last column.
        return Text(self.render(max(20, self._console.width - 1)), no_wrap=True, overflow="crop")

    def refresh(self) -> None:
        if self._display is not None:
            self._display.update(self._notebook_text())
        elif self._live is not None:
            self._live.update(self._text(), refresh=True)
        else:
            self.logger.info("%s", self.render(None))

    def __exit__(self, *exc_info) -> None:
        if self._display is not None:  # the last figures stay in the notebook, above the summary
            self._display.update(self._notebook_text())
            self._display = None
        if self._live is not None:
            self._live.__exit__(*exc_info)
            self._live = None


async def report_progress(
    stats: RunStats, yield_estimate: Callable[[], float] | None, *, stream: TextIO | None = None,
    tty: bool | None = None, interval: float | None = None,
) -> None:
    """``run``'s progress (``score``'s with ``yield_estimate`` None): a ``LiveLine`` refreshed every
    0.25 s on a terminal or in a notebook, else every 5 s."""
    with LiveLine(lambda width: progress_line(stats, yield_estimate() if yield_estimate else None, width),
                  stream=stream, tty=tty) as line:
        interval = interval or (0.25 if line.live else 5.0)
        while True:
            await asyncio.sleep(interval)
            line.refresh()


_STOP_REASONS = {"interrupted": "interrupted", "max_cost": "max_cost", "failed": "failed: see the error below"}


def fit_summary(text: str, width: int) -> str:
    """The summary (a head line, then "  label   value" lines: run's, score's, batch's) with each
    long line wrapped at ``width`` under its value column, words whole and each count with its
    kind ("length: 10"), where a terminal would break it mid-word. The resume command stays whole,
    to be copied. Pure."""
    return fit_columns(text, width, keep_whole=("resume with",))


def run_status(stats: RunStats, stop_reason: str | None) -> str:
    """"finished", or "stopped (why)": the head of a summary (run's, score's)."""
    if stats.accepted >= stats.target:
        return "finished"
    return f"stopped ({_STOP_REASONS.get(stop_reason or '', stop_reason or 'incomplete')})"


async def stop_progress(progress: asyncio.Task | None) -> None:
    """Cancel ``report_progress``'s task (if it was started) and wait until its line is gone."""
    if progress is not None:
        progress.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await progress


def summary(stats: RunStats, *, stop_reason: str | None, output: str, resume_command: str | None) -> str:
    status = run_status(stats, stop_reason)
    lines = [
        f"asyncgen run {status}: {stats.accepted}/{stats.target} scenarios in {output} "
        f"({stats.accepted_this_run} new this run)",
        f"  candidates      {stats.candidates} ({stats.rejected} rejected, {stats.duplicates} duplicates"
        + (f", {stats.beyond_target} beyond the target" if stats.beyond_target else "")
        + (f", {stats.unchecked} not validated: the run ended first" if stats.unchecked else "") + ")",
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
    ]
    if stats.output_cap is not None:
        lines.append(f"  output cap      {stats.output_cap} tokens at the end (learned); "
                     f"{stats.cut_at_cap} answers cut at it")
    lines += [
        f"  cost            {_money(stats.cost_usd)} this run, {_money(stats.total_cost_usd)} in all"
        + (" (simulated: the offline simulator's usage at real prices)" if stats.cost_simulated else "")
        + (f"; {stats.abandoned_attempts} abandoned attempts cost unknown"
           + (f" (at most ${stats.abandoned_cost_bound_usd:.4f})" if stats.abandoned_cost_bound_usd else "")
           if stats.abandoned_attempts else ""),
        f"  wall time       {stats.elapsed:.1f} s"
        + (f", first scenario after {stats.first_accepted_s:.2f} s" if stats.first_accepted_s is not None else ""),
    ]
    if stats.accepted < stats.target and resume_command:
        lines.append(f"  resume with     {resume_command}")
    return "\n".join(lines)


def resume_command(args, stats: RunStats | None = None, stop_reason: str | None = None) -> str:
    """The command that resumes a stopped command (run, score, batch run): the one that ran, as the
    user gave it (``args.argv``; else ``args.command_line()`` for a run started from Python; else
    this process's arguments), less what would refuse or discard what it wrote (--overwrite,
    --no-checkpoint). After a run's stop at --max-cost (``stats`` and ``stop_reason``), with a budget
    that leaves room for the rest, at this run's cost per scenario. Cheap to import: batch run's
    Ctrl-C path prints it."""
    argv = getattr(args, "argv", None)
    if not argv:
        argv = args.command_line() if hasattr(args, "command_line") else sys.argv[1:]
    argv = [a for a in argv if a not in ("--overwrite", "--no-checkpoint")]
    if stop_reason == "max_cost" and stats is not None:
        argv = _without_flag(argv, "--max-cost")
        spent = stats.budget_spent_usd or 0.0
        per_scenario = (stats.cost_usd or 0.0) / stats.accepted_this_run if stats.accepted_this_run else None
        if per_scenario:
            needed = spent + 1.2 * per_scenario * max(0, stats.target - stats.accepted)
            argv += ["--max-cost", f"{math.ceil(needed * 100) / 100:.2f}"]
        else:
            argv += ["--max-cost", f"{max(2 * (args.max_cost or 0.0), 0.01):.2f}"]
    return "python -m asyncgen " + shlex.join(argv)


def _without_flag(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag VALUE`` and ``flag=VALUE``."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == flag:
            skip = True
        elif not item.startswith(flag + "="):
            kept.append(item)
    return kept


def print_summary(text: str, stream: TextIO | None = None) -> None:
    """A closing summary on ``stream`` (stderr by default), fitted to the terminal's width when it
    is one (``fit_summary``); elsewhere as it is, a line per figure (see asyncgen/terminal.py)."""
    stream = stream or sys.stderr
    text = printable(text)  # a summary quotes the server's words
    if is_terminal(stream):
        text = fit_summary(text, terminal_width(stream))
    print(text, file=stream)


def exit_code(command: str, failure: BaseException | None, finished: bool, stop_reason: str | None,
              max_cost: float | None, budget_hint: str = "") -> int:
    """How a run or a scoring ends: 130 interrupted, the failure re-raised, 0 finished, 1 stopped
    at --max-cost (said in one line) or otherwise."""
    if isinstance(failure, (asyncio.CancelledError, KeyboardInterrupt)):
        return 130
    if failure is not None:
        raise failure
    if finished:
        return 0
    if stop_reason == "max_cost":
        print_fitted(f"asyncgen {command}: stopped at --max-cost ${max_cost:g}: the next request could cross it; "
                     f"raise --max-cost and run again to resume{budget_hint}", sys.stderr)
        return 1
    return 130 if stop_reason == "interrupted" else 1


def _counts(counter) -> str:
    return ", ".join(f"{kind}: {n}" for kind, n in sorted(counter.items()))


def _requests(stats: RunStats) -> str:
    """Every attempt sent, accounted for: answered, retried, sent again another way, given up, failed,
    cancelled at stop."""
    retried, resent = sum(stats.retries.values()), sum(stats.resent_another_way.values())
    parts = [f"{stats.requests_ok} answered", f"{retried} retries" + (f" ({_counts(stats.retries)})" if retried else "")]
    if resent:
        parts.append(f"{resent} sent again another way ({_counts(stats.resent_another_way)})")
    parts.append(f"{stats.requests_given_up} given up")
    if stats.requests_failed:
        parts.append(f"{stats.requests_failed} refused")
    if stats.requests_cancelled:
        parts.append(f"{stats.requests_cancelled} cancelled at stop")
    if stats.in_flight:
        parts.append(f"{stats.in_flight} in flight")
    return f"{stats.requests_sent} sent: " + ", ".join(parts)
