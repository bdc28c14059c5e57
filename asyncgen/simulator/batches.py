"""Files and the Batch API on a clock whose speed is configurable.

Nothing runs in the background: a batch's state is a pure function of the simulated time
(``timeline``), worked out whenever it is looked at. Validation takes ``batch_validate_s``
simulated seconds; then each request takes ``batch_seconds_per_request`` in turn; finalizing takes
``batch_finalize_s``; cancelling takes ``batch_cancel_s``. A batch that would run past
``expires_at`` (created + 24 h) expires then. Expired and cancelled batches keep what finished
(in the output and error files) and put every unfinished request in the error file with
``batch_expired`` / ``batch_cancelled``; those count as failed in ``request_counts``.

With ``batch_state_dir`` the files and batches persist there (``BatchStore``), and the clock goes on
from where it was, at wall-clock speed times ``batch_speed``, so a restarted simulator is the
same server: a client killed mid-batch finds its batches again.

Request results are computed lazily, in input order, the first time a view needs them; they are
deterministic (seeded by --seed and the input line), so they do not depend on when they are looked at.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from asyncgen.simulator import chat, faults, wire
from asyncgen.sink import atomic_write
from asyncgen.simulator.composer import Player
from asyncgen.simulator.endpoints import ENDPOINTS as MODEL_ENDPOINTS
from asyncgen.simulator.settings import SimulatorConfig

COMPLETION_WINDOW_S = 86_400
MAX_REQUESTS = 50_000
MAX_LISTED_ERRORS = 1_000
ENDPOINTS = tuple(MODEL_ENDPOINTS)  # /v1/chat/completions, /v1/completions
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
EXPIRED_ERROR = {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}
CANCELLED_ERROR = {"code": "batch_cancelled", "message": "This request was not executed because the batch was cancelled."}


class SimClock:
    """Simulated unix time: starts at the real time (or ``epoch`` at real time ``start``) and runs
    ``speed`` times faster."""

    def __init__(self, speed: float, real_now=time.monotonic, epoch: float | None = None, start: float | None = None) -> None:
        self.speed = speed
        self._real_now = real_now
        self._start = real_now() if start is None else start
        self._epoch = time.time() if epoch is None else epoch

    def now(self) -> float:
        return self._epoch + (self._real_now() - self._start) * self.speed


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    created_at: int
    data: bytes

    def object(self) -> dict:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass(frozen=True)
class BatchLine:
    number: int  # 1-based line number in the input file
    custom_id: str
    body: dict
    raw: bytes


@dataclass(frozen=True)
class LineResult:
    ok: bool
    line: bytes  # the JSONL line for the output (ok) or error file
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class Batch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict | None
    created_at: float
    lines: list[BatchLine]
    errors: list[dict]  # validation errors; non-empty: the batch fails
    model: str | None
    cancel_at: float | None = None
    results: list[LineResult] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None
    files_written: bool = False


@dataclass(frozen=True)
class Timeline:
    """When each stage starts (simulated unix seconds); None when it never happens."""

    validated_at: float
    in_progress_at: float | None
    finalizing_at: float | None
    completed_at: float | None
    failed_at: float | None
    expired_at: float | None
    cancelling_at: float | None
    cancelled_at: float | None
    work_started: float  # when request 1 starts (in_progress_at, or inf)
    work_stops: float  # when requests stop finishing: all done, expired, or cancelling

    @property
    def terminal_at(self) -> float:
        return min(t for t in (self.completed_at, self.failed_at, self.expired_at, self.cancelled_at, math.inf) if t is not None)


def timeline(created_at: float, requests: int, valid: bool, cancel_at: float | None, config: SimulatorConfig) -> Timeline:
    validated = created_at + config.batch_validate_s
    expires = created_at + COMPLETION_WINDOW_S
    empty = dict(in_progress_at=None, finalizing_at=None, completed_at=None, failed_at=None, expired_at=None,
                 cancelling_at=None, cancelled_at=None, work_started=math.inf, work_stops=math.inf)
    if cancel_at is not None and cancel_at < validated:
        return Timeline(validated, **{**empty, "cancelling_at": cancel_at, "cancelled_at": cancel_at + config.batch_cancel_s})
    if not valid:
        return Timeline(validated, **{**empty, "failed_at": validated})
    all_done = validated + requests * config.batch_seconds_per_request
    stages = {**empty, "in_progress_at": validated, "work_started": validated}
    if cancel_at is not None and cancel_at < min(all_done, expires):
        stages.update(cancelling_at=cancel_at, cancelled_at=cancel_at + config.batch_cancel_s, work_stops=cancel_at)
    elif expires < all_done:
        stages.update(expired_at=expires, work_stops=expires)
    else:
        stages.update(finalizing_at=all_done, completed_at=all_done + config.batch_finalize_s, work_stops=all_done)
    return Timeline(validated, **stages)


def status_at(line: Timeline, now: float) -> str:
    for status in ("cancelled", "expired", "completed", "failed", "cancelling", "finalizing", "in_progress"):
        at = getattr(line, f"{status}_at")
        if at is not None and now >= at:
            return status
    return "validating"


def finished_requests(line: Timeline, requests: int, now: float, per_request_s: float) -> int:
    """How many requests have finished by ``now`` (they finish one after another, in input order)."""
    elapsed = min(now, line.work_stops) - line.work_started
    if elapsed < 0 or math.isinf(line.work_started):
        return 0
    if per_request_s <= 0:
        return requests
    return min(requests, int(elapsed / per_request_s + 1e-9))


def parse_input(data: bytes, endpoint: str, enqueued_token_limit: int | None) -> tuple[list[BatchLine], list[dict], str | None]:
    """The requests of a batch input file, the validation errors (the batch's ``errors.data``) and its model."""
    lines: list[BatchLine] = []
    errors: list[dict] = []
    seen: set[str] = set()
    model: str | None = None
    enqueued = 0

    def error(code: str, message: str, number: int | None, param: str | None = None) -> None:
        if len(errors) < MAX_LISTED_ERRORS:
            errors.append({"code": code, "message": message, "param": param, "line": number})

    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            error("invalid_json_line", "This line is not parseable as valid JSON.", number)
            continue
        if not isinstance(record, dict):
            error("invalid_json_line", "This line is not a JSON object.", number)
            continue
        missing = next((key for key in ("custom_id", "method", "url", "body") if key not in record), None)
        if missing:
            error("missing_required_parameter", f"Missing required parameter: '{missing}'.", number, missing)
            continue
        custom_id, body = record["custom_id"], record["body"]
        if not isinstance(custom_id, str) or not custom_id:
            error("invalid_value", "'custom_id' must be a non-empty string.", number, "custom_id")
        elif custom_id in seen:
            error("duplicate_custom_id", "The custom_id for this request is a duplicate of another request. "
                  "The custom_id parameter must be unique for each request in a batch.", number, "custom_id")
        elif record["method"] != "POST":
            error("invalid_method", "The method provided for this request is not supported. Only POST is supported.",
                  number, "method")
        elif record["url"] != endpoint:
            error("invalid_url", "The URL provided for this request does not match the batch endpoint.", number, "url")
        elif not isinstance(body, dict) or not isinstance(body.get("model"), str):
            error("missing_required_parameter", "Missing required parameter: 'body.model'.", number, "body.model")
        elif model is not None and body["model"] != model:
            error("mismatched_model", "The provided model differs from others in the batch. "
                  "All requests in a batch must use the same model.", number, "body.model")
        else:
            seen.add(custom_id)
            model = body["model"]
            lines.append(BatchLine(number, custom_id, body, raw))
            enqueued += _estimate_charge(body, endpoint)
    if not lines and not errors:
        error("empty_file", "The input file is empty: it has no requests.", None)
    elif len(lines) > MAX_REQUESTS:
        error("too_many_requests", f"The input file has {len(lines)} requests; a batch holds at most {MAX_REQUESTS}.", None)
    elif enqueued_token_limit is not None and enqueued > enqueued_token_limit and not errors:
        error("token_limit_exceeded", f"Enqueued token limit reached for {model} in organization {wire.ORGANIZATION}. "
              f"Limit: {enqueued_token_limit:,} enqueued tokens. Please try again once some in_progress batches "
              "have been completed.", None)
    return lines, errors, model


def _estimate_charge(body: dict, endpoint: str) -> int:
    try:
        return MODEL_ENDPOINTS[endpoint].parse(body).charge
    except wire.ApiFailure:
        return 0


def run_line(line: BatchLine, endpoint: str, player: Player, config: SimulatorConfig, salt: str, fingerprint: str) -> LineResult:
    """One batch request, answered as its endpoint answers a request (content faults and 500/503
    apply; transport faults do not: the batch runner has no connection to break)."""
    key = f"{config.seed}:batch:{hashlib.blake2b(line.raw, digest_size=12).hexdigest()}"
    request_id = chat.new_id("req_", salt)
    handler = MODEL_ENDPOINTS[endpoint]
    try:
        request = handler.parse(line.body)
        http_fault = faults.draw_http_fault(config.faults, random.Random(key + ":http"))
        if http_fault == "500" or http_fault == "502":
            raise wire.server_error()
        if http_fault == "503":
            raise wire.overloaded()
    except wire.ApiFailure as failure:
        return LineResult(False, _result_line(line.custom_id, failure.status, request_id, failure.as_dict(), salt))
    body, _ = handler.respond(request, player, config, key, chat.new_id(handler.id_prefix, salt), fingerprint)
    usage = body["usage"]
    return LineResult(True, _result_line(line.custom_id, 200, request_id, body, salt), usage["prompt_tokens"], usage["completion_tokens"])


def _result_line(custom_id: str, status: int, request_id: str, body: dict, salt: str) -> bytes:
    record = {
        "id": chat.new_id("batch_req_", salt),
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": None,
    }
    return orjson.dumps(record) + b"\n"


def unfinished_line(custom_id: str, error: dict, salt: str) -> bytes:
    return orjson.dumps({"id": chat.new_id("batch_req_", salt), "custom_id": custom_id, "response": None, "error": error}) + b"\n"


class BatchService:
    """The files and batches of one simulator: create, look at, cancel, list."""

    def __init__(self, config: SimulatorConfig, player: Player, salt: str, fingerprint: str, clock: SimClock | None = None) -> None:
        self.config = config
        self.player = player
        self.salt = salt
        self.fingerprint = fingerprint
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, Batch] = {}  # in creation order
        self.store = BatchStore(Path(config.batch_state_dir)) if config.batch_state_dir else None
        if self.store is not None and clock is None:
            clock = self.store.load(self) or SimClock(config.batch_speed, time.time)
        self.clock = clock or SimClock(config.batch_speed)

    # Files
    def add_file(self, filename: str, purpose: str, data: bytes) -> StoredFile:
        stored = StoredFile(chat.new_id("file-", self.salt), filename, purpose, int(self.clock.now()), data)
        if self.store is not None:
            self.store.write_data(stored)
        self.files[stored.id] = stored
        self._save()
        return stored

    def _save(self) -> None:
        if self.store is not None:
            self.store.save(self)

    def file(self, file_id: str) -> StoredFile:
        stored = self.files.get(file_id)
        if stored is None:
            raise wire.no_such_object("File", file_id)
        return stored

    # Batches
    def create(self, body: object) -> dict:
        if not isinstance(body, dict):
            raise wire.unparseable_body()
        for name in ("input_file_id", "endpoint", "completion_window"):
            if body.get(name) is None:
                raise wire.missing_parameter(name)
        endpoint, window, metadata = body["endpoint"], body["completion_window"], body.get("metadata")
        if endpoint not in ENDPOINTS:
            raise wire.bad_request(f"Invalid value: '{endpoint}'. Supported values are: {', '.join(repr(e) for e in ENDPOINTS)}.",
                                   "endpoint", "invalid_value")
        if window != "24h":
            raise wire.bad_request(f"Invalid value: '{window}'. Supported values are: '24h'.", "completion_window", "invalid_value")
        if metadata is not None and not _valid_metadata(metadata):
            raise wire.bad_request("Invalid 'metadata': at most 16 pairs of strings (keys up to 64 characters, "
                                   "values up to 512).", "metadata", "invalid_value")
        source = self.files.get(body["input_file_id"])
        if source is None:
            raise wire.no_such_object("File", str(body["input_file_id"]), "input_file_id")
        if source.purpose != "batch":
            raise wire.bad_request(f"The input file {source.id} has purpose '{source.purpose}'; a batch needs 'batch'.",
                                   "input_file_id", "invalid_value")
        lines, errors, model = parse_input(source.data, endpoint, self.config.batch_enqueued_token_limit)
        batch = Batch(chat.new_id("batch_", self.salt), source.id, endpoint, window, metadata, self.clock.now(), lines, errors, model)
        self.batches[batch.id] = batch
        self._save()
        return self.view(batch)

    def get(self, batch_id: str) -> Batch:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise wire.no_such_object("Batch", batch_id)
        return batch

    def cancel(self, batch_id: str) -> dict:
        batch = self.get(batch_id)
        now = self.clock.now()
        status = status_at(self._timeline(batch), now)
        if status in ("validating", "in_progress"):
            batch.cancel_at = now
            self._save()
        elif status not in ("cancelling", "cancelled"):
            raise wire.bad_request(f"Cannot cancel a batch with status '{status}'.", None, "invalid_value")
        return self.view(batch, now)

    def list(self, limit: int, after: str | None) -> dict:
        newest_first = list(reversed(self.batches.values()))
        start = 0
        if after is not None:
            ids = [batch.id for batch in newest_first]
            if after not in ids:
                raise wire.no_such_object("Batch", after, "after")
            start = ids.index(after) + 1
        page = newest_first[start : start + limit]
        data = [self.view(batch) for batch in page]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": start + limit < len(newest_first),
        }

    def _timeline(self, batch: Batch) -> Timeline:
        return timeline(batch.created_at, len(batch.lines), not batch.errors, batch.cancel_at, self.config)

    def view(self, batch: Batch, now: float | None = None) -> dict:
        """The batch object as of ``now`` (simulated), writing its output files once it has ended."""
        now = self.clock.now() if now is None else now
        line = self._timeline(batch)
        status = status_at(line, now)
        finished = finished_requests(line, len(batch.lines), now, self.config.batch_seconds_per_request)
        self._run_until(batch, finished)
        done = batch.results[:finished]
        completed = sum(1 for r in done if r.ok)
        failed = finished - completed
        # Requests are counted once validation has passed; at the end every request is either
        # completed or failed (unfinished ones included).
        total = len(batch.lines) if line.in_progress_at is not None and now >= line.in_progress_at else 0
        if status in ("completed", "expired", "cancelled"):
            failed = total - completed
            self._write_files(batch, finished, status)
        input_tokens = sum(r.input_tokens for r in done)
        output_tokens = sum(r.output_tokens for r in done)

        def stamp(value: float | None) -> int | None:
            return int(value) if value is not None and now >= value else None

        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "model": batch.model,
            "errors": {"object": "list", "data": batch.errors} if status == "failed" else None,
            "input_file_id": batch.input_file_id,
            "completion_window": batch.completion_window,
            "status": status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": int(batch.created_at),
            "in_progress_at": stamp(line.in_progress_at),
            "expires_at": int(batch.created_at) + COMPLETION_WINDOW_S,
            "finalizing_at": stamp(line.finalizing_at),
            "completed_at": stamp(line.completed_at),
            "failed_at": stamp(line.failed_at),
            "expired_at": stamp(line.expired_at),
            "cancelling_at": stamp(line.cancelling_at),
            "cancelled_at": stamp(line.cancelled_at),
            "request_counts": {"total": total, "completed": completed, "failed": failed},
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            },
            "metadata": batch.metadata,
        }

    def _run_until(self, batch: Batch, finished: int) -> None:
        for line in batch.lines[len(batch.results) : finished]:
            batch.results.append(run_line(line, batch.endpoint, self.player, self.config, self.salt, self.fingerprint))

    def _write_files(self, batch: Batch, finished: int, status: str) -> None:
        if batch.files_written:
            return
        batch.files_written = True
        done = batch.results[:finished]
        output = b"".join(r.line for r in done if r.ok)
        errors = b"".join(r.line for r in done if not r.ok)
        unfinished = EXPIRED_ERROR if status == "expired" else CANCELLED_ERROR
        errors += b"".join(unfinished_line(line.custom_id, unfinished, self.salt) for line in batch.lines[finished:])
        if output:
            batch.output_file_id = self.add_file(f"{batch.id}_output.jsonl", "batch_output", output).id
        if errors:
            batch.error_file_id = self.add_file(f"{batch.id}_error.jsonl", "batch_output", errors).id
        self._save()


def _valid_metadata(metadata: object) -> bool:
    return (
        isinstance(metadata, dict)
        and len(metadata) <= 16
        and all(isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in metadata.items())
    )


class BatchStore:
    """Files and batches on disk: ``state.json`` (replaced atomically) and ``files/<id>`` (the bytes).

    A batch's requests and results are not stored: they are worked out again from its input file,
    deterministically, so a reloaded batch answers as it would have.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "state.json"
        (root / "files").mkdir(parents=True, exist_ok=True)

    def write_data(self, stored: StoredFile) -> None:
        atomic_write(self.root / "files" / stored.id, stored.data)

    def save(self, service: "BatchService") -> None:
        state = {
            "clock": {"wall": time.time(), "sim": service.clock.now()},
            "files": [{"id": f.id, "filename": f.filename, "purpose": f.purpose, "created_at": f.created_at}
                      for f in service.files.values()],
            "batches": [{"id": b.id, "input_file_id": b.input_file_id, "endpoint": b.endpoint,
                         "completion_window": b.completion_window, "metadata": b.metadata, "created_at": b.created_at,
                         "cancel_at": b.cancel_at, "output_file_id": b.output_file_id,
                         "error_file_id": b.error_file_id, "files_written": b.files_written}
                        for b in service.batches.values()],
        }
        atomic_write(self.state, orjson.dumps(state))

    def load(self, service: "BatchService") -> SimClock | None:
        """Fill ``service`` from disk; the clock that goes on from the saved time (None: nothing saved)."""
        if not self.state.is_file():
            return None
        state = orjson.loads(self.state.read_bytes())
        for f in state["files"]:
            data = (self.root / "files" / f["id"]).read_bytes()
            service.files[f["id"]] = StoredFile(f["id"], f["filename"], f["purpose"], f["created_at"], data)
        for b in state["batches"]:
            lines, errors, model = parse_input(service.files[b["input_file_id"]].data, b["endpoint"],
                                               service.config.batch_enqueued_token_limit)
            service.batches[b["id"]] = Batch(
                b["id"], b["input_file_id"], b["endpoint"], b["completion_window"], b["metadata"], b["created_at"],
                lines, errors, model, cancel_at=b["cancel_at"], output_file_id=b["output_file_id"],
                error_file_id=b["error_file_id"], files_written=b["files_written"],
            )
        clock = state["clock"]
        return SimClock(service.config.batch_speed, time.time, epoch=clock["sim"], start=clock["wall"])
