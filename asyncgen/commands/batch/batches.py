"""The subcommands that act on the batches themselves: ``batch submit``, ``batch status`` (its
table, and ``--watch``), ``batch download`` and ``batch cancel``; the API calls and their
bookkeeping are ``asyncgen/batch/lifecycle.py``'s."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from asyncgen import locks
from asyncgen.batch import lifecycle
from asyncgen.batch.endpoint import POLL_SECONDS, directory_endpoint, open_batch_api
from asyncgen.batch.manifest import LOCK, Entry, Manifest, writer
from asyncgen.commands.batch.directory import Setup, batch_directory, manifest_or_fail, price_only
from asyncgen.errors import UsageError
from asyncgen.eventloop import run_event_loop
from asyncgen.progress import _duration, _money

SHOWN_ERRORS = 10  # a batch's validation errors listed, the rest counted


def cmd_submit(args) -> int:
    directory = batch_directory(args)
    manifest = manifest_or_fail(directory)

    async def go() -> None:
        async with open_batch_api(args, directory, manifest) as (api, _):
            sent = await lifecycle.submit(directory, manifest, api)
            if not sent:
                print(f"nothing to submit in {directory}")
    run_event_loop(go())
    print(f"next: python -m asyncgen batch status --dir {directory} --watch")
    return 0


def cmd_status(args) -> int:
    """The table, refreshed from the API while holding --dir for that moment only (``_refreshed``);
    while another command holds --dir, the state it last saved."""
    directory = batch_directory(args)
    working = locks.holder_of(directory / LOCK) if directory.is_dir() and Manifest.load(directory) is None else None
    if working:
        print(f"{working} is working on {directory} and has saved no manifest yet; try again in a moment")
        return 0
    manifest = manifest_or_fail(directory)
    setup = price_only(args, manifest)
    noted = set()

    async def refresh() -> None:
        holder = await _refreshed(args, directory, manifest)
        if holder and "batch status" not in holder and holder not in noted:  # another status refreshes it too
            noted.add(holder)
            print(f"{holder} is working on {directory}: its last saved state, not refreshed here", flush=True)

    async def go() -> None:
        await refresh()
        if not args.watch:
            print(status_table(setup, manifest))
            return
        mode = directory_endpoint(args, manifest)["mode"]
        await _watch(setup, manifest, refresh, args.poll_seconds or POLL_SECONDS[mode])
    try:
        run_event_loop(go())
    except KeyboardInterrupt:
        print("stopped watching; the batches go on")
        return 130
    return 0


async def _refreshed(args, directory: Path, shown: Manifest) -> str | None:
    """Update ``shown`` to the manifest saved now, with the batches not ended asked about (holding
    --dir as its writer for the refresh and save only: a command started meanwhile waits for it,
    see ``manifest.writer``); when another command holds --dir, to the state that one last saved.
    Re-read each time: a newer manifest is never written over with an older copy. Returns the
    other command, else None."""
    holder = None
    try:
        with writer(directory, "status"):
            current = manifest_or_fail(directory)
            if any(e.batch_id for e in current.in_flight()):
                async with open_batch_api(args, directory, current, quiet=True) as (api, _):
                    await lifecycle.refresh(directory, current, api)
    except locks.Busy as busy:
        current, holder = manifest_or_fail(directory), busy.holder
    vars(shown).update(vars(current))
    return holder


async def _watch(setup: Setup, manifest: Manifest, refresh, poll: float) -> None:
    """``status --watch``: on a terminal, the table redrawn in place (rich, as run's progress);
    otherwise the table again whenever it changes (age aside), each flushed at once."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        with Live(Text(status_table(setup, manifest)), console=Console(file=sys.stdout), auto_refresh=False) as live:
            while manifest.in_flight():
                await asyncio.sleep(poll)
                await refresh()
                live.update(Text(status_table(setup, manifest)), refresh=True)
        return
    shown = None
    while True:
        now = [(e.status, e.request_counts, e.usage) for e in manifest.entries]
        if now != shown:
            print(status_table(setup, manifest), flush=True)
            shown = now
        if not manifest.in_flight():
            return
        await asyncio.sleep(poll)
        await refresh()


def took(entry: Entry, now: float) -> str:
    """How long a batch took, by the API's clock (created to ended); one not ended: for how long it
    has run so far, marked ``+`` (since it was submitted, by this machine's clock); "-" unknown."""
    if entry.terminal:
        return _duration(entry.ended_at - entry.created_at) if entry.ended_at and entry.created_at else "-"
    return _duration(now - entry.submitted_at) + "+" if entry.submitted_at else "-"


def status_table(setup: Setup, manifest: Manifest) -> str:
    """The batches, one a line, and the cost so far: every line within 80 columns (a batch id of
    up to 32 characters)."""
    now = time.time()
    rows = [f"{'batch':<32} {'status':<11} {'done':>11} {'failed':>6} {'took':>6} {'cost':>9}"]
    for entry in manifest.entries:
        if entry.real_time:  # the pilot's or a finish's requests: answered at once, at real-time prices
            counts = entry.request_counts or {}
            cost = setup.usage_cost([entry])[1] if entry.usage else 0.0
            done = f"{counts.get('completed', 0)}/{entry.requests}"
            rows.append(f"{'(' + entry.name + ', real time)':<32} {'answered':<11} {done:>11} "
                        f"{entry.requests - counts.get('completed', 0):>6} {'-':>6} {_money(cost):>9}")
            continue
        if entry.source != "api":
            continue
        counts = entry.request_counts or {}
        total = counts.get("total") or entry.requests
        done = f"{counts.get('completed', 0)}/{total}"
        age = took(entry, now)
        cost = setup.usage_cost([entry])[0] if entry.usage else 0.0
        name = entry.batch_id or f"({entry.name})"
        rows.append(f"{name:<32} {entry.status or entry.state:<11} {done:>11} {counts.get('failed', 0):>6} {age:>6} {_money(cost):>9}")
        for error in entry.errors[:SHOWN_ERRORS]:
            rows.append(f"    line {error['line']}: {error['code']}: {error['message']}")
        if len(entry.errors) > SHOWN_ERRORS:
            rows.append(f"    ... {len(entry.errors) - SHOWN_ERRORS} more validation errors")
    at_batch, at_real = manifest.cost(setup.costs)
    rows.append(f"cost so far {_money(at_batch)} at batch prices (real time: {_money(at_real)})")
    rows.append(f"target {manifest.target}, spares {manifest.spares}; took: created to ended (+: running, so far)")
    return "\n".join(rows)


def cmd_download(args) -> int:
    directory = batch_directory(args)
    manifest = manifest_or_fail(directory)

    async def go() -> list[Entry]:
        async with open_batch_api(args, directory, manifest) as (api, _):
            await lifecycle.refresh(directory, manifest, api)
            return await lifecycle.download(directory, manifest, api)
    done = run_event_loop(go())
    for entry in done:
        files = ", ".join(p for p in (entry.output_path, entry.error_path) if p) or "no files"
        print(f"{entry.batch_id} ({entry.status}): {files}")
    waiting = len(manifest.in_flight())
    print(f"downloaded {len(done)} batch(es)" + (f"; {waiting} not ended yet" if waiting else "")
          + (f"\nnext: python -m asyncgen batch process --dir {directory}" if done else ""))
    return 0


def cmd_cancel(args) -> int:
    directory = batch_directory(args)
    manifest = manifest_or_fail(directory)
    unknown = set(args.batch_ids) - {e.batch_id for e in manifest.entries}
    if unknown:
        raise UsageError(f"no batch {sorted(unknown)[0]} in {directory}; `batch status` lists them")

    async def go() -> list[Entry]:
        async with open_batch_api(args, directory, manifest) as (api, _):
            return await lifecycle.cancel(directory, manifest, api, args.batch_ids or None)
    cancelled = run_event_loop(go())
    for entry in cancelled:
        print(f"{entry.batch_id}: {entry.status}")
    print(f"cancelled {len(cancelled)} batch(es); what finished is kept: `batch download` then `batch process`; "
          "`batch topup` resubmits only what did not run")
    return 0
