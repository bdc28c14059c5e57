"""What happens to request files once written: submit, refresh, download, cancel, resubmit.

Kill-safety of submit: an entry's intent (a fresh token, the time) is saved in the manifest before
anything is sent; the batch is created with the token in its metadata. Started again after a kill,
submit first looks for a batch carrying the token (listing the batches created since the intent):
found, it is adopted; not found, the file (uploaded once, its id saved) is submitted then. So a
file is never submitted twice, whenever the kill came.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from asyncgen.batch.manifest import Entry, Manifest
from asyncgen.sink import atomic_write

if TYPE_CHECKING:  # the SDK takes seconds to import: only the commands that call the API load it
    from asyncgen.batch.api import BatchApi

REQUESTS, RESULTS = "requests", "results"
UNFINISHED = ("batch_expired", "batch_cancelled")


def request_path(directory: Path, entry: Entry) -> Path:
    return directory / REQUESTS / entry.name


def update(entry: Entry, batch: dict) -> None:
    """Copy what the API says about a batch into its entry (values set, never added)."""
    entry.batch_id = batch["id"]
    entry.state = "submitted"
    entry.submitted_at = entry.submitted_at or time.time()
    entry.status = batch["status"]
    entry.created_at = batch.get("created_at")
    entry.request_counts = dict(batch.get("request_counts") or {})
    usage = batch.get("usage") or {}
    if usage:
        entry.usage = {"input": usage.get("input_tokens", 0), "output": usage.get("output_tokens", 0)}
    errors = (batch.get("errors") or {}).get("data") or []
    entry.errors = [{"line": e.get("line"), "code": e.get("code"), "message": e.get("message")} for e in errors]
    entry.output_file_id, entry.error_file_id = batch.get("output_file_id"), batch.get("error_file_id")
    if entry.status == "failed":  # nothing to download or process; never resubmitted as is
        entry.downloaded = entry.processed = True


async def submit(directory: Path, manifest: Manifest, api: BatchApi, say=print) -> list[Entry]:
    """Send every entry not yet sent; return them."""
    sent = []
    for entry in manifest.unsubmitted():
        if entry.state == "submitting" and entry.token:
            found = await api.find(entry.token, entry.intent_at or 0)
            if found is not None:
                update(entry, found)
                manifest.save(directory)
                say(f"{entry.name}: found batch {entry.batch_id}, created before the last run stopped")
                sent.append(entry)
                continue
        else:
            entry.state, entry.token, entry.intent_at = "submitting", uuid.uuid4().hex, time.time()
            manifest.save(directory)
        if entry.file_id is None:
            entry.file_id = await api.upload(request_path(directory, entry))
            manifest.save(directory)
        batch = await api.create(entry.file_id, {"asyncgen_token": entry.token, "asyncgen_file": entry.name,
                                                 "asyncgen_task": manifest.task})
        update(entry, batch)
        manifest.save(directory)
        say(f"{entry.name}: {entry.requests} requests submitted as batch {entry.batch_id}")
        sent.append(entry)
    return sent


async def refresh(directory: Path, manifest: Manifest, api: BatchApi) -> None:
    """Ask the API about every batch that has not ended."""
    changed = False
    for entry in manifest.in_flight():
        if entry.batch_id is not None:
            update(entry, await api.retrieve(entry.batch_id))
            changed = True
    if changed:
        manifest.save(directory)


async def download(directory: Path, manifest: Manifest, api: BatchApi) -> list[Entry]:
    """Fetch the output and error files of every ended batch not yet downloaded; return those entries."""
    done = []
    for entry in manifest.entries:
        if entry.source != "api" or not entry.terminal or entry.downloaded:
            continue
        (directory / RESULTS).mkdir(exist_ok=True)
        for file_id, kind in ((entry.output_file_id, "output"), (entry.error_file_id, "error")):
            if file_id is None:
                continue
            relative = f"{RESULTS}/{entry.batch_id}_{kind}.jsonl"
            atomic_write(directory / relative, await api.content(file_id))
            setattr(entry, f"{kind}_path", relative)
        entry.downloaded = True
        manifest.save(directory)
        done.append(entry)
    return done


async def cancel(directory: Path, manifest: Manifest, api: BatchApi, batch_ids: list[str] | None = None) -> list[Entry]:
    cancelled = []
    for entry in manifest.in_flight():
        if entry.batch_id is None or (batch_ids and entry.batch_id not in batch_ids):
            continue
        update(entry, await api.cancel(entry.batch_id))
        manifest.save(directory)
        cancelled.append(entry)
    return cancelled


def result_files(directory: Path, entry: Entry) -> list[Path]:
    if entry.source == "results":
        return [Path(entry.name)]
    return [directory / p for p in (entry.output_path, entry.error_path) if p]


def unfinished_lines(directory: Path, entry: Entry) -> list[bytes]:
    """The input lines of an expired or cancelled batch that did not run (or failed with 429/5xx):
    what a later round resubmits, byte for byte. Answered requests and 4xx failures are not in it."""
    settled: set[str] = set()
    for path in result_files(directory, entry):
        for raw in path.read_bytes().splitlines():
            if not raw.strip():
                continue
            line = orjson.loads(raw)
            response, error = line.get("response"), line.get("error")
            status = response.get("status_code") if isinstance(response, dict) else None
            retry = (isinstance(error, dict) and error.get("code") in UNFINISHED) or (status is not None and (status >= 500 or status == 429))
            if not retry:
                settled.add(line.get("custom_id"))
    lines = request_path(directory, entry).read_bytes().splitlines(keepends=True)
    return [raw for raw in lines if raw.strip() and orjson.loads(raw)["custom_id"] not in settled]
