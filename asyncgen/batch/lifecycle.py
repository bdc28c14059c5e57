"""What happens to request files once written: submit, refresh, download, cancel, resubmit.

Kill-safety of submit: an entry's intent (a fresh token, the time) is saved in the manifest before
anything is sent; the batch is created with the token in its metadata. Started again after a kill,
submit first looks for a batch carrying the token (listing the batches created since the intent):
found, it is adopted; not found, the file (uploaded once, its id saved) is submitted then. So a
file is never submitted twice, whenever the kill came.

Where batches go: the first intent records the endpoint with it; the directory is bound to it once
a batch may exist there (``Manifest.bound``: a batch created, or a create sent). If the upload fails
(unreachable, refused: no batch can exist without the file's id) or the API refuses the create (4xx:
nothing was created) while no batch of the directory exists, the intent and the endpoint are
forgotten: the directory is bound to where its first batch actually went, not to where a failed
attempt was sent; and one killed during its first upload is not bound either. A create whose
connection failed may have been created: the directory stays bound, and the next submit looks there.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from asyncgen.batch.ledger import parse, retryable
from asyncgen.batch.manifest import Entry, Manifest
from asyncgen.errors import RunError, UsageError
from asyncgen.sink import atomic_write

if TYPE_CHECKING:  # the SDK takes seconds to import: only the commands that call the API load it
    from asyncgen.batch.api import BatchApi

REQUESTS, RESULTS = "requests", "results"
DATASET_TAG_CHARS = 16  # hex digits of ``dataset_tag``: 64 bits, no two paths of one machine alike


def request_path(directory: Path, entry: Entry) -> Path:
    return directory / REQUESTS / entry.name


# A batch id names the directory's result files (results/ID_output.jsonl): a server's id is taken
# only as a plain name, never as a path ("../x") or with a terminal escape in it.
BATCH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


def update(entry: Entry, batch: dict) -> None:
    """Copy what the API says about a batch into its entry (values set, never added). A batch id
    that is not a plain name (``BATCH_ID``) is refused: the server is not trusted with a path."""
    batch_id = batch.get("id")
    if not isinstance(batch_id, str) or not BATCH_ID.fullmatch(batch_id) or ".." in batch_id:
        raise RunError(f"{entry.name}: the server answered a batch id that is not a plain name ({batch_id!r:.80}); "
                       "nothing of it is kept: check --base-url (it must be an OpenAI-compatible Batch API)")
    entry.batch_id = batch_id
    entry.state = "submitted"
    entry.submitted_at = entry.submitted_at or time.time()
    entry.status = batch["status"]
    entry.created_at = batch.get("created_at")
    entry.ended_at = next((batch[key] for key in ("completed_at", "failed_at", "expired_at", "cancelled_at") if batch.get(key)), None)
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
        resumed = entry.state == "submitting" and bool(entry.token and entry.file_id)
        if resumed:  # its create may have been sent
            found = await api.find(entry.token, entry.intent_at or 0)
            if found is not None:
                update(entry, found)
                manifest.save(directory)
                say(f"{entry.name}: found batch {entry.batch_id}, created before the last run stopped")
                sent.append(entry)
                continue
        else:
            entry.state, entry.token, entry.intent_at = "submitting", uuid.uuid4().hex, time.time()
            if not manifest.bound():
                manifest.endpoint = api.endpoint
            manifest.save(directory)
        with _unbound_if_nothing_created(directory, manifest, entry, resumed):
            if entry.file_id is None:
                entry.file_id = await api.upload(request_path(directory, entry))
                manifest.save(directory)
            batch = await api.create(entry.file_id, batch_metadata(manifest, entry), entry.endpoint)
        update(entry, batch)
        manifest.save(directory)
        say(f"{entry.name}: {entry.requests} requests submitted as batch {entry.batch_id}")
        sent.append(entry)
    return sent


def batch_metadata(manifest: Manifest, entry: Entry) -> dict:
    """What a batch carries of the directory (strings, as the API takes them; 7 keys of the 16 it
    allows): the intent's token (a killed submit finds its batch by it), the file, task and directory
    (``recover_batches`` adopts batches by them), and the dataset and target its round was planned
    for (``batch rebuild`` takes them back when the manifest is lost). No path leaves the machine:
    of the dataset, its file name and ``dataset_tag`` (a rebuild takes a dataset of that name only if
    its path has that tag); of a task file, its name. A name the API would not take back
    (``api.trusted_metadata``) or longer than it allows is left out."""
    metadata = {"asyncgen_token": entry.token, "asyncgen_file": entry.name, "asyncgen_task": task_label(manifest.task),
                "asyncgen_dir": manifest.directory_id, "asyncgen_target": str(manifest.round_target or manifest.target),
                "asyncgen_output": Path(manifest.output).name, "asyncgen_output_tag": dataset_tag(manifest.output)}
    from asyncgen.batch.api import trusted_metadata

    return trusted_metadata(metadata)


def task_label(task: str) -> str:
    """What a batch's metadata says of the task: its name, or a task file's name (not its path)."""
    return Path(task).name


def dataset_tag(path: str | Path) -> str:
    """A short hash of the dataset's absolute path, resolved: what a batch's metadata carries of where
    the dataset is, without saying it (``batch rebuild`` checks a candidate dataset against it)."""
    return hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:DATASET_TAG_CHARS]


@contextlib.contextmanager
def _unbound_if_nothing_created(directory: Path, manifest: Manifest, entry: Entry, resumed: bool):
    """A failed upload or a refused create (nothing created) of the directory's first batch unbinds
    it, and the error says so; a create whose connection failed leaves it bound (it may exist).
    ``resumed``: the entry came in "submitting" with its file's id, so an earlier create of it may
    have been sent (its answer lost) and made a batch that ``api.find`` did not list (yet): a refusal
    of this create says nothing of that one, and the token, the file and the endpoint are kept, for
    the next submit to look for it again (forgotten, that batch would be an orphan, paid twice)."""
    from asyncgen.batch.api import Refused

    try:
        yield
    except RunError as exc:
        if resumed or not (isinstance(exc, Refused) or entry.file_id is None) or manifest.bound(besides=entry):
            raise
        entry.state, entry.token, entry.intent_at, entry.file_id = "created", None, None, None
        manifest.endpoint = None
        manifest.save(directory)
        raise type(exc)(f"{exc}; no batch was created there, so {directory} is not bound to it (another --base-url "
                        "may be given)") from exc.__cause__


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
    if entry.source == "results" and not entry.output_path:  # recorded before results had output_path
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
            if not retryable(line):
                settled.add(line.get("custom_id"))
    lines = request_path(directory, entry).read_bytes().splitlines(keepends=True)
    return [raw for raw in lines if raw.strip() and orjson.loads(raw)["custom_id"] not in settled]


# -- a lost manifest ----------------------------------------------------------------------------

_REQUEST_FILE = re.compile(r"round-(\d+)-part-(\d+)\.jsonl")


def recover_requests(directory: Path, manifest: Manifest) -> list[str]:
    """Entries for the request files in ``directory`` (none sent yet), and the directory's id and
    request numbering from their custom_ids; returns the models the requests name."""
    files = sorted(((int(m[1]), int(m[2]), path) for path in (directory / REQUESTS).glob("*.jsonl")
                    if (m := _REQUEST_FILE.fullmatch(path.name))), key=lambda found: found[:2])
    directory_ids, numbers, old_numbers, models = set(), [0], [0], []
    for round_number, _, path in files:
        lines = [orjson.loads(raw) for raw in path.read_bytes().splitlines() if raw.strip()]
        for line in lines:
            directory_id, number = parse(line.get("custom_id")) or (None, -1)
            (numbers if directory_id else old_numbers).append(number + 1)
            directory_ids.add(directory_id)
            models.append((line.get("body") or {}).get("model"))
        manifest.entries.append(Entry(path.name, round_number, len(lines)))
        manifest.rounds = max(manifest.rounds, round_number)
    known = directory_ids - {None}
    if len(known) > 1:
        raise UsageError(f"{directory / REQUESTS} holds the requests of {len(known)} batch directories "
                         f"({', '.join(sorted(known))}); put each directory's files in its own --dir")
    if known:
        manifest.directory_id = known.pop()
    manifest.legacy_below = max(old_numbers)
    manifest.next_request = max(max(numbers), max(old_numbers))
    return sorted({m for m in models if m})


async def recover_batches(directory: Path, manifest: Manifest, api: BatchApi) -> tuple[list[Entry], dict]:
    """Adopt the batches the API lists for the directory's request files (by the directory's id in
    their metadata; a directory made before ids carried it: by the input file's bytes), with the
    result files already downloaded; return the entries adopted, and the metadata of the newest
    batch adopted (``batch_metadata``: the dataset and target its round was for; {} if none)."""
    entries = {e.name: e for e in manifest.entries}
    newest: dict = {}
    if not entries:
        return [], newest
    since = min(request_path(directory, e).stat().st_mtime for e in entries.values())
    adopted = []
    for batch in reversed(await api.listed(since)):  # oldest first: a file submitted twice keeps its last batch
        metadata = batch["metadata"]
        entry = entries.get(metadata.get("asyncgen_file"))
        if entry is None:
            continue
        if "asyncgen_dir" in metadata:
            if metadata["asyncgen_dir"] != manifest.directory_id:
                continue
        elif await api.content(batch["input_file_id"]) != request_path(directory, entry).read_bytes():
            continue
        label = task_label(manifest.task)
        if metadata.get("asyncgen_task", label) != label:
            raise UsageError(f"{entry.name} went to batch {batch['id']} for task {metadata['asyncgen_task']!r}, "
                             f"not {label!r}: pass --task {metadata['asyncgen_task']} (or that task file)")
        update(entry, batch)
        entry.file_id = batch.get("input_file_id")
        adopted.append(entry)
        newest = metadata
        for kind in ("output", "error"):
            relative = f"{RESULTS}/{entry.batch_id}_{kind}.jsonl"
            if getattr(entry, f"{kind}_file_id") and (directory / relative).is_file():
                setattr(entry, f"{kind}_path", relative)
        entry.downloaded = entry.terminal and all(
            getattr(entry, f"{kind}_path") or not getattr(entry, f"{kind}_file_id") for kind in ("output", "error"))
    return adopted, newest


def recover_resubmitted(directory: Path, manifest: Manifest) -> None:
    """Mark the expired or cancelled entries whose unfinished requests a later round's file carries
    (a top-up resubmitted them), so that a rebuilt manifest does not resubmit them a second time."""
    later_ids: dict[int, set] = {}
    for entry in manifest.entries:
        if entry.source == "api":
            ids = {orjson.loads(raw).get("custom_id") for raw in request_path(directory, entry).read_bytes().splitlines() if raw.strip()}
            later_ids.setdefault(entry.round, set()).update(ids)
    for entry in manifest.entries:
        if entry.source == "api" and entry.status in ("expired", "cancelled") and entry.downloaded:
            later = set().union(*(ids for number, ids in later_ids.items() if number > entry.round))
            if any(orjson.loads(raw)["custom_id"] in later for raw in unfinished_lines(directory, entry)):
                entry.resubmitted = True
