"""The state of a batch directory: one ``manifest.json``, replaced atomically after every change.

It records the setup (task, model, tokenizers), where the batches went, every request file and
what became of it (``Entry``: submitted? which batch? downloaded? processed?), the processing
counters, the spares file, and the marker of a processing pass in progress. Whatever is killed
when, the manifest plus the API's own state (batches listed by their metadata) say what to do next.

Layout of a batch directory::

    manifest.json          this state
    requests/*.jsonl       request files written by create/topup (OpenAI batch input format)
    results/*.jsonl        output and error files downloaded
    spares-N.jsonl         valid pairs beyond the target, used first by the next process
    simulator/             the offline simulator's files and batches (offline default only)
    .lock                  flock'ed by the one command changing the directory; names its pid
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import orjson

from asyncgen import locks
from asyncgen.batch.ledger import Ledger, from_ranges, new_directory_id, to_ranges
from asyncgen.errors import UsageError
from asyncgen.sink import atomic_write

MANIFEST = "manifest.json"
LOCK = ".lock"
# The dataset's checkpoint keeps, under this key of its run_state, each batch directory's accounting
# (``Manifest.accounting``) as of the scenarios it covers: what ``batch rebuild`` restores.
ACCOUNTING = "batch_accounting"
VERSION = 1
STATUS_WAIT_S = 30.0  # the longest a command waits for `batch status` to end a refresh
TERMINAL = ("completed", "failed", "expired", "cancelled")
REAL_TIME_SOURCES = ("pilot", "finish")


@dataclass
class Entry:
    """One request file and the batch that runs it (or, ``source="results"``/``"external"``, a result
    file given to ``process --results``, at ``output_path``; or, ``source="pilot"``, the real-time
    requests that measured the yield before the first round; ``source="finish"``, the real-time
    requests that finished round ``round``'s small shortfall; both paid at real-time prices: see
    asyncgen/batch/pilot.py)."""

    name: str  # file name under requests/ (or the results path and its content's digest)
    round: int
    requests: int
    worst_cost_usd: float | None = None
    source: str = "api"  # "api", "results" (process --results), "external" (--results --external), "pilot", "finish"
    state: str = "created"  # created -> submitting -> submitted; "abandoned" when failed validation
    token: str | None = None  # written before the batch is created; sent as its metadata
    intent_at: float | None = None
    file_id: str | None = None
    batch_id: str | None = None
    status: str | None = None  # the API's status of the batch
    created_at: float | None = None  # the API's clock
    ended_at: float | None = None  # the API's clock: when it completed, failed, expired or was cancelled
    submitted_at: float | None = None  # this machine's clock (ages are shown from it)
    request_counts: dict = field(default_factory=dict)
    usage: dict = field(default_factory=dict)  # {"input": n, "output": n} as the API reports it
    errors: list = field(default_factory=list)  # validation errors: [{"line", "code", "message"}]
    output_file_id: str | None = None
    error_file_id: str | None = None
    output_path: str | None = None  # downloaded, relative to the batch dir
    error_path: str | None = None
    downloaded: bool = False
    processed: bool = False
    resubmitted: bool = False  # its unfinished requests went into a later file
    endpoint: str = "/v1/chat/completions"  # the URL of every request line in the file (its batch's endpoint)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def real_time(self) -> bool:
        """Requests sent in real time (the pilot, a finish), paid at real-time prices."""
        return self.source in REAL_TIME_SOURCES


def path_from_here(path: str | os.PathLike) -> str:
    """A dataset's path as a manifest gives it: relative to the working directory when under it,
    else absolute (resolved)."""
    with contextlib.suppress(ValueError):  # another drive (Windows): absolute
        relative = os.path.relpath(path)
        if not relative.startswith(".."):
            return relative
    return str(Path(path).resolve())


@dataclass
class Manifest:
    task: str
    model: str
    fingerprint: dict
    target: int
    output: str
    endpoint: dict | None = None  # {"mode": "simulator" | "openai" | "custom", "base_url": ...}: see ``bound``
    next_request: int = 0  # numbers custom_ids and seeds across rounds
    rounds: int = 0
    round_target: int | None = None  # the target the latest round was planned for (a finish is for it only)
    entries: list[Entry] = field(default_factory=list)
    spares_file: str | None = None
    spares: int = 0
    totals: dict = field(default_factory=dict)  # processing counters, summed over passes
    processing: dict | None = None  # {"entries": [...], "sink_before": n, "spares_file": ...}
    directory_id: str = field(default_factory=new_directory_id)  # in every custom_id (batch/ledger.py)
    legacy_below: int = 0  # a directory made before: its requests below this carry asyncgen-<number>
    answered: list = field(default_factory=list)  # request numbers with a final outcome, as ranges
    retried: list = field(default_factory=list)  # request numbers with a retryable outcome, as ranges
    external: list = field(default_factory=list)  # digests of --external result lines counted
    version: int = VERSION
    created: float = field(default_factory=time.time)

    # -- I/O -----------------------------------------------------------------------------------

    @classmethod
    def load(cls, directory: Path) -> "Manifest | None":
        path = directory / MANIFEST
        try:
            data = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError) as exc:
            raise UsageError(f"{path}: cannot read it ({exc}); restore it or use another --dir") from exc
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise UsageError(f"{path}: not a version {VERSION} batch manifest; use another --dir")
        known = {f.name for f in fields(Entry)}
        data["entries"] = [Entry(**{k: v for k, v in e.items() if k in known}) for e in data.get("entries", [])]
        if "directory_id" not in data:  # made before ids carried the directory: its old ids stay valid
            data["legacy_below"] = data.get("next_request", 0)
        if isinstance(data.get("output_from_dir"), str):  # the dataset wherever this command runs from
            data["output"] = path_from_here(os.path.join(os.path.abspath(directory), data["output_from_dir"]))
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def save(self, directory: Path) -> None:
        """The manifest, its dataset's path also as seen from ``directory`` (``output_from_dir``): a
        path as typed means the folder it was typed in, and a later command may run from another."""
        data = asdict(self)
        with contextlib.suppress(ValueError):  # another drive (Windows): the path as typed only
            data["output_from_dir"] = os.path.relpath(os.path.abspath(self.output), os.path.abspath(directory))
        atomic_write(directory / MANIFEST, orjson.dumps(data, option=orjson.OPT_INDENT_2))

    def ledger(self) -> Ledger:
        return Ledger(self.directory_id, self.next_request, self.legacy_below, from_ranges(self.answered),
                      from_ranges(self.retried), set(self.external))

    def keep(self, ledger: Ledger) -> None:
        self.answered, self.retried = to_ranges(ledger.answered), to_ranges(ledger.retried)
        self.external = sorted(ledger.external)

    def accounting(self) -> dict:
        """What processing made of the directory: the ledger, the counters, the spares, the marker
        of a pass in progress, which batches were processed (or resubmitted), and the entries that
        are no request file (pilot, ``--results`` files). The dataset's checkpoint records it with
        every sync, so it always matches the scenarios the checkpoint covers (``restore``). A copy:
        the sink keeps it until its next sync, while this manifest changes."""
        record = {"next_request": self.next_request, "rounds": self.rounds, "target": self.target,
                  "round_target": self.round_target,
                  "answered": self.answered, "retried": self.retried, "external": self.external,
                  "totals": self.totals, "processing": self.processing,
                  "spares_file": self.spares_file, "spares": self.spares,
                  "batches": {e.name: {"batch_id": e.batch_id, "processed": e.processed, "resubmitted": e.resubmitted,
                                       "worst_cost_usd": e.worst_cost_usd} for e in self.entries if e.source == "api"},
                  "entries": [asdict(e) for e in self.entries if e.source != "api"]}
        return orjson.loads(orjson.dumps(record))

    def restore(self, record: dict, directory: Path) -> None:
        """Take back ``accounting()``'s record into a manifest rebuilt from the request files and the
        API (``batch rebuild``): a batch counts as processed only if the record names the same batch
        id; the spares only if their file is there. ``ValueError`` (or ``KeyError``, ``TypeError``)
        for a record that does not fit, and then nothing is changed."""
        answered, retried = from_ranges(record["answered"]), from_ranges(record["retried"])
        next_request = max(self.next_request, int(record["next_request"]))
        if any(not 0 <= n < next_request for n in answered | retried):
            raise ValueError("it counts requests the directory never made")
        known = {f.name for f in fields(Entry)}
        rebuilt = {e.name for e in self.entries}
        restored = [Entry(**{k: v for k, v in e.items() if k in known}) for e in record["entries"] if e["name"] not in rebuilt]
        marker = record["processing"]
        if marker is not None and not set(marker["entries"]) <= rebuilt | {e.name for e in restored}:
            raise ValueError("its pass in progress reads files that are gone")
        batches = {e.name: record["batches"][e.name] for e in self.entries if e.source == "api" and e.name in record["batches"]}
        marks = {name: (None if b.get("worst_cost_usd") is None else float(b["worst_cost_usd"]),
                        bool(b["batch_id"]) and b["batch_id"] == self.entry(name).batch_id, bool(b["processed"]),
                        bool(b["resubmitted"])) for name, b in batches.items()}
        spares = record["spares_file"]
        kept = spares is not None and Path(spares).name == spares and (directory / spares).is_file()
        spares_file, spares_count = (spares, int(record["spares"])) if kept else (None, 0)
        totals, external, rounds = dict(record["totals"]), sorted(record["external"]), max(self.rounds, int(record["rounds"]))
        # All checked: now change the manifest.
        self.next_request, self.rounds = next_request, rounds
        self.round_target = record.get("round_target") if rounds == int(record["rounds"]) else None
        self.answered, self.retried = to_ranges(answered), to_ranges(retried)
        self.external, self.totals, self.processing = external, totals, marker
        self.spares_file, self.spares = spares_file, spares_count
        self.entries = restored + self.entries  # the pilot came before the rounds (a finish after: order is only shown)
        for name, (worst_cost, same_batch, processed, resubmitted) in marks.items():
            entry = self.entry(name)
            entry.worst_cost_usd = worst_cost
            if same_batch:
                entry.processed, entry.resubmitted = processed, resubmitted

    # -- questions -----------------------------------------------------------------------------

    def entry(self, name: str) -> Entry:
        return next(e for e in self.entries if e.name == name)

    def bound(self, besides: Entry | None = None) -> bool:
        """Whether a batch of the directory may exist where ``endpoint`` says, so that the directory
        is bound to it: a batch was created there, or a file uploaded there was being submitted (its
        create may have reached the API before a kill or a lost connection). A file being submitted
        whose upload did not end has no batch anywhere (a batch needs the uploaded file's id), and a
        real-time request (the pilot, a finish) leaves nothing there to account for: its answer and
        its usage are in the dataset and this manifest already. Unbound, requests go where the flags
        say (``endpoint.directory_endpoint``). ``besides``: by the other entries than this one."""
        return any(e.batch_id or (e.state == "submitting" and e.file_id) for e in self.entries
                   if e.source == "api" and e is not besides)

    def bound_endpoint(self) -> dict | None:
        """Where the directory's batches went (``endpoint``) if it is ``bound`` there; None if not (a
        stale endpoint, left by a first upload that was killed, says nothing): the one way to read it."""
        return self.endpoint if self.endpoint is not None and self.bound() else None

    def in_flight(self) -> list[Entry]:
        """Entries sent (or being sent) whose batch has not ended."""
        return [e for e in self.entries if e.source == "api" and e.state in ("submitting", "submitted") and not e.terminal]

    def unsubmitted(self) -> list[Entry]:
        return [e for e in self.entries if e.source == "api" and e.state in ("created", "submitting") and e.batch_id is None]

    def cost(self, batch_cost) -> tuple[float | None, float | None]:
        """(batch-price USD, real-time USD) of the usage recorded so far; ``batch_cost(input, output)``
        returns both. Each entry's usage is a value set from the API, never added to: no double count.
        Results from another pipeline (``--external``) were paid for there: their usage is not a cost
        of this directory (nor counted twice when the other is an asyncgen directory)."""
        total_batch, total_real = 0.0, 0.0
        for entry in self.entries:
            if not entry.usage or entry.source == "external":
                continue
            at_batch, at_real = batch_cost(entry.usage.get("input", 0), entry.usage.get("output", 0))
            if entry.real_time:  # paid at real-time prices
                at_batch = at_real
            total_batch = None if at_batch is None or total_batch is None else total_batch + at_batch
            total_real = None if at_real is None or total_real is None else total_real + at_real
        return total_batch, total_real

    def committed_worst_cost(self, batch_cost) -> float | None:
        """What the dataset may cost at most from what is already submitted: the usage of finished
        batches plus the worst case of batches not finished (or files not yet sent)."""
        spent, _ = self.cost(batch_cost)
        if spent is None:
            return None
        for entry in self.entries:
            if entry.source == "api" and not entry.terminal and entry.state != "abandoned":
                if entry.worst_cost_usd is None:
                    return None
                spent += entry.worst_cost_usd
        return spent

    def yield_per_request(self) -> float | None:
        """Valid new pairs per answered request, measured over every processing pass; None before any."""
        answered = self.totals.get("requests_ok", 0)
        return self.totals.get("useful", 0) / answered if answered else None

    def pilots(self) -> list[Entry]:
        """The pilot's entries: the real-time requests ``batch run`` sends before round 1."""
        return [e for e in self.entries if e.source == "pilot"]

    def finishes(self, round_number: int | None = None) -> list[Entry]:
        """The entries of the real-time finishes (of round ``round_number``; of every round if None)."""
        return [e for e in self.entries if e.source == "finish" and round_number in (None, e.round)]

    def tokens_per_request(self) -> tuple[float, float] | None:
        """Input and output tokens of an answered request, measured by processed rounds, else the pilot."""
        totals = self.totals
        if totals.get("requests_ok"):
            return totals["input_tokens"] / totals["requests_ok"], totals["output_tokens"] / totals["requests_ok"]
        answered = sum((e.request_counts or {}).get("completed", 0) for e in self.pilots())
        if answered:
            used = [e.usage for e in self.pilots()]
            return sum(u.get("input", 0) for u in used) / answered, sum(u.get("output", 0) for u in used) / answered
        return None


def check_setup(manifest: Manifest, task: str, model: str | None, fingerprint: dict | None, force: bool, directory: Path) -> None:
    """Refuse a batch dir made for another task, model or tokenizer set, unless ``force``."""
    differences = []
    if task != manifest.task:
        differences.append(f"task {manifest.task!r} there, {task!r} now")
    if model is not None and model != manifest.model:
        differences.append(f"model {manifest.model!r} there, {model!r} now")
    if fingerprint is not None and fingerprint != manifest.fingerprint and task == manifest.task:
        differences.append("templates or tokenizers differ")
    if differences and not force:
        raise UsageError(
            f"--dir {directory} holds batches of another setup ({'; '.join(differences)}); "
            "use another --dir, or pass --force to use it anyway"
        )


def writer(directory: Path, command: str):
    """Hold ``directory`` as its one writer for ``batch COMMAND`` (an exclusive flock on its ``.lock``,
    which the OS releases however the process ends, and which names the holder: asyncgen/locks.py);
    a second is ``locks.Busy``. ``batch status`` holds it only while it refreshes and saves: the
    others wait that moment out (up to ``STATUS_WAIT_S``, a slow API's refresh), status waits for none."""
    return locks.held(directory / LOCK, f"--dir {directory}", f"batch {command}",
                      remedy="wait for it to end, or use another --dir",
                      waits_for=() if command == "status" else ("batch status",), wait_s=STATUS_WAIT_S)


def spares_origin(stem: str) -> tuple[str, int] | None:
    """What wrote a spares file, by its name: ``spares-N`` (processing pass N), ``spares-pilot-N`` or
    ``spares-finish-N`` (real-time requests, N the next request number then); None for another name."""
    kind, _, number = stem.removeprefix("spares-").rpartition("-")
    if not number.isdigit() or kind not in ("", "pilot", "finish") or not stem.startswith("spares-"):
        return None
    return kind or "pass", int(number)


def leftovers(directory: Path) -> str:
    """What a batch directory without a manifest holds of earlier work ('' if nothing)."""
    found = [(len(list((directory / sub).glob("*.jsonl"))) if (directory / sub).is_dir() else 0, what)
             for sub, what in (("requests", "request file(s)"), ("results", "result file(s)"))]
    return " and ".join(f"{count} {what}" for count, what in found if count)
