"""The summary ``batch process`` and ``batch run`` end with, and what the directory's requests cost
(``run_cost``, also the Python API's ``BatchResult.cost_usd``)."""

from __future__ import annotations

from pathlib import Path

from asyncgen.batch.manifest import Manifest
from asyncgen.commands.batch.directory import Setup
from asyncgen.progress import _money


def run_cost(setup: Setup, manifest: Manifest, mode: str | None = None) -> tuple[float | None, float | None, bool]:
    """What the directory's requests cost so far: USD at batch prices (the pilot's and a finish's
    at real-time prices), USD at real-time prices, and whether it is simulated (the offline
    simulator's usage; ``mode``: where requests go before the first submit records it,
    ``directory_endpoint``).
    The one source of the summary's cost line and of the Python API's ``BatchResult``."""
    at_batch, at_real = manifest.cost(setup.costs)
    return at_batch, at_real, (manifest.bound_endpoint() or {}).get("mode", mode) == "simulator"


def summary_text(setup: Setup, manifest: Manifest, count: int, report=None, *, title: str = "batch process",
                 wall_s: float | None = None, stop: str | None = None, unvalidated: int = 0,
                 mode: str | None = None, stopped_pass=None) -> str:
    """``stopped_pass``: the report of a processing pass stopped by Ctrl-C. Its figures are not in
    the totals (the next pass replays its inputs and counts them once), so they get a line."""
    t = manifest.totals
    completed = " in the passes completed" if unvalidated or manifest.processing else ""
    state = "finished" if count >= manifest.target else ("interrupted" if stop == "interrupted" else "short")
    lines = [f"asyncgen {title} {state}: {count}/{manifest.target} scenarios in {manifest.output}"
             + (f" ({report.accepted} new this pass)" if report else "")]
    lines.append(f"  requests        {t.get('requests_ok', 0)} answered{completed}; failed: "
                 + (", ".join(f"{k}: {n}" for k, n in sorted(t.get('errors', {}).items())) or "none"))
    lines.append(f"  candidates      {t.get('candidates', 0)} ({t.get('rejected', 0)} rejected, {t.get('duplicates', 0)} duplicates)"
                 + completed)
    if stopped_pass is not None:
        lines.append(f"  stopped pass    {stopped_pass.read.requests_ok} answers read, {stopped_pass.validated} candidate pairs "
                     f"validated, {stopped_pass.accepted} scenarios written; counted above when the pass completes")
    if unvalidated:
        lines.append(f"  not validated   {unvalidated} candidate pairs of answers paid for, left when the pass was "
                     f"stopped: they stay in {setup.directory}, and the same command validates them first")
    if t.get("rejections"):
        top = sorted(t["rejections"].items(), key=lambda kv: -kv[1])[:6]
        lines.append("  rejections      " + ", ".join(f"{k}: {n}" for k, n in top))
    if t.get("answer_failures"):
        lines.append("  bad answers     " + ", ".join(f"{k}: {n}" for k, n in sorted(t["answer_failures"].items())))
    for label, entries, did in (("pilot", manifest.pilots(), "measured the yield first"),
                                ("finish", manifest.finishes(), "asked for the last round's shortfall")):
        if entries:
            cost = setup.usage_cost(entries)[1]
            sent = sum(e.requests for e in entries)
            unanswered = sent - sum((e.request_counts or {}).get("completed", 0) for e in entries)
            waves = f" in {len(entries)} waves" if len(entries) > 1 else ""
            lines.append(f"  {label:<15} {sent} real-time requests{waves} {did}"
                         + (f", {unanswered} of them not answered" if unanswered else "")
                         + f" ({_money(cost)}, in the cost below)")
    if t.get("foreign") or t.get("repeated"):
        lines.append(f"  left out        {t.get('foreign', 0)} results of requests {setup.directory} did not make, "
                     f"{t.get('repeated', 0)} of requests counted before")
    if t.get("external_requests"):
        external = [e for e in manifest.entries if e.source == "external"]
        files = ", ".join(Path(e.output_path).name for e in external)
        paid_there = setup.usage_cost([e for e in external if e.usage])[0]
        lines.append(f"  external        {t['external_requests']} answered requests from another pipeline (--external): {files}; "
                     f"their usage ({_money(paid_there)} at batch prices) was paid there, not in the cost below")
    lines.append(f"  spares          {manifest.spares} valid pairs kept in {setup.directory} for later "
                 "(none repeats the dataset or another)")
    at_batch, at_real, simulated = run_cost(setup, manifest, mode)
    saved = f", {1 - at_batch / at_real:.0%} saved" if at_batch is not None and at_real else ""
    pilot = " (real-time requests at real-time prices)" if any(e.real_time for e in manifest.entries) else ""
    lines.append(f"  cost            {_money(at_batch)} at batch prices{pilot}; real time would have cost {_money(at_real)}{saved}"
                 + (" (simulated: the offline simulator's usage at real prices)" if simulated else ""))
    if wall_s is not None:
        lines.append(f"  wall time       {wall_s:.1f} s")
    return "\n".join(lines)
