"""Processing batch results into the dataset, through the same acceptance path as ``run``.

``read_results`` (pure) reads OpenAI batch-format output and error lines: candidate pairs from
each answered request, and what went wrong otherwise, counted by cause (error lines by code or
status, bad answers by kind: refusal, length, bad_json, ...). Nothing in a result file is fatal.
Each line is first admitted by the directory's ledger (``asyncgen/batch/ledger.py``): a line of a
request the directory did not make is left out (counted as foreign), a request already counted is
not counted again, whatever file it comes in.

``process_pass`` runs one pass: spares first, then the result files of the given entries, through
``Acceptance.fresh`` -> the validator pool -> ``Acceptance.take``; valid pairs beyond the target
become the new spares file. Kill-safety: before the first append the pass writes a marker into the
manifest (the entries, the spares file it reads, the sink's count); a pass killed midway is
replayed from the same inputs on the next start: what it had appended is found as duplicates and
counted back as accepted (the sink grew by exactly that many), so neither the dataset nor the
counters change twice. The new spares file is written before the manifest that names it.

Every sink sync of a pass records ``run_state()`` in the dataset's checkpoint, which carries the
directory's accounting (``Manifest.accounting``): the marker as soon as it is set, the pass's
ledger, counters and spares at its end, so the checkpoint never covers scenarios its record does
not account for. A lost manifest is rebuilt from that (``batch rebuild``), not counted again.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import orjson

from asyncgen.acceptance import Acceptance
from asyncgen.annotations import Sidecar
from asyncgen.batch.ledger import DUPLICATE, FOREIGN, NEW, Ledger
from asyncgen.batch.lifecycle import REQUESTS
from asyncgen.batch.manifest import Entry, Manifest
from asyncgen.config import Task
from asyncgen.prompting import parse_answer
from asyncgen.sink import ScenarioSink, atomic_write
from asyncgen.stats import RunStats
from asyncgen.validate import PairValidator, Verdict

log = logging.getLogger("asyncgen.batch")
VALIDATION_CHUNK = 256


@dataclass
class ResultRead:
    pairs: list[tuple[str, str]] = field(default_factory=list)
    requests_ok: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    errors: Counter = field(default_factory=Counter)  # failed request lines, by cause
    answer_failures: Counter = field(default_factory=Counter)  # answered, but no usable pairs: by kind
    new: int = 0  # lines admitted
    repeated: int = 0  # lines of requests counted before (an earlier file, a copy, the same file again)
    foreign: int = 0  # lines of requests the directory did not make
    foreign_example: str | None = None
    priced: Counter = field(default_factory=Counter)  # {"input", "output"} tokens of admitted lines ``priced`` says are this file's to pay

    def add(self, other: "ResultRead") -> None:
        self.pairs += other.pairs
        for name in ("requests_ok", "input_tokens", "output_tokens", "new", "repeated", "foreign"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.foreign_example = self.foreign_example or other.foreign_example
        for name in ("errors", "answer_failures", "priced"):
            getattr(self, name).update(getattr(other, name))


def read_results(data: bytes, admit: Callable[[dict, bytes], str] = lambda line, raw: NEW,
                 priced: Callable[[dict], bool] = lambda line: True) -> ResultRead:
    """Candidate pairs and counters from batch output or error file bytes (lines in any order), of
    the lines ``admit`` says are NEW (see ``Ledger.admit``)."""
    read = ResultRead()
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
            response, error = line.get("response"), line.get("error")
        except (orjson.JSONDecodeError, AttributeError):
            read.errors["malformed result line"] += 1
            continue
        verdict = admit(line, raw)
        if verdict == FOREIGN:
            read.foreign += 1
            read.foreign_example = read.foreign_example or str(line.get("custom_id"))
            continue
        if verdict == DUPLICATE:
            read.repeated += 1
            continue
        read.new += 1
        if error:
            read.errors[str(error.get("code") or "error") if isinstance(error, dict) else "error"] += 1
            continue
        if not isinstance(response, dict):
            read.errors["malformed result line"] += 1
            continue
        status, body = response.get("status_code"), response.get("body")
        if status != 200:
            detail = body.get("error") if isinstance(body, dict) else None
            code = (detail.get("code") or detail.get("type")) if isinstance(detail, dict) else None
            read.errors[f"HTTP {status}" + (f" {code}" if code else "")] += 1
            continue
        try:
            usage = body.get("usage") or {}
            tokens_in, tokens_out = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
            read.input_tokens += tokens_in
            read.output_tokens += tokens_out
            if priced(line):
                read.priced.update(input=tokens_in, output=tokens_out)
            answers = [(c["message"].get("content"), c.get("finish_reason"), c["message"].get("refusal"))
                       for c in body["choices"]]
        except (AttributeError, KeyError, TypeError, ValueError):
            read.requests_ok += 1
            read.answer_failures["bad_shape"] += 1
            continue
        read.requests_ok += 1
        for content, finish_reason, refusal in answers:
            answer = parse_answer(content, finish_reason, refusal)
            if answer.failure:
                read.answer_failures[answer.failure] += 1
            read.pairs.extend(answer.pairs)
    return read


def read_entry(ledger: Ledger, entry: Entry, paths: list[Path], sent: set[int]) -> ResultRead:
    """The result files of one entry, through ``ledger`` (updated). Old-style ids are trusted only in
    the directory's own downloads; a results file pays for the lines no batch of the directory ran."""
    read = ResultRead()
    for path in paths:
        read.add(read_results(
            path.read_bytes(),
            lambda line, raw: ledger.admit(line, raw, trust_old_ids=entry.source == "api", external=entry.source == "external"),
            lambda line: ledger.number(line.get("custom_id"), True) not in sent))
    return read


def sent_numbers(ledger: Ledger, request_files: list[Path]) -> set[int]:
    """Numbers of the requests in ``request_files`` (those the directory sent to the API)."""
    numbers = set()
    for path in request_files:
        with contextlib.suppress(FileNotFoundError):
            for raw in path.read_bytes().splitlines():
                number = ledger.number(orjson.loads(raw).get("custom_id"), True) if raw.strip() else None
                if number is not None:
                    numbers.add(number)
    return numbers


def read_spares(path: Path | None) -> list[tuple[str, str]]:
    if path is None or not path.is_file():
        return []
    pairs = []
    for raw in path.read_bytes().splitlines():
        if raw.strip():
            record = orjson.loads(raw)
            pairs.append((record["prompt"], record["counterfactual"]))
    return pairs


def validate_all(validator: PairValidator, pairs: list[tuple[str, str]], progress: Callable[[int, int], None],
                 stop: Callable[[], bool] = lambda: False) -> list[Verdict]:
    """Verdicts in input order, through the pool in chunks (inline when it has no workers). When
    ``stop()`` turns true, or a KeyboardInterrupt comes (a second Ctrl-C), it ends after the chunk
    in hand (or at once), with the verdicts of the chunks done: a prefix of ``pairs``."""
    chunks = [pairs[i : i + VALIDATION_CHUNK] for i in range(0, len(pairs), VALIDATION_CHUNK)]
    verdicts: list[Verdict] = []
    futures = [validator.submit(chunk) for chunk in chunks] if validator.workers > 0 else []
    try:
        for number, chunk in enumerate(chunks):
            if stop():
                break
            verdicts += futures[number].result() if futures else validator.validate(chunk)
            progress(len(verdicts), len(pairs))
    except KeyboardInterrupt:
        pass
    finally:
        for future in futures:
            future.cancel()
    return verdicts


@dataclass
class PassReport:
    read: ResultRead
    stats: RunStats
    accepted: int
    spares: int
    replayed: bool
    unvalidated: int = 0  # candidates left when the pass was stopped (Ctrl-C); replayed by the next pass
    stopped: bool = False  # a stop was asked during the pass (a Ctrl-C in its last chunk leaves nothing unvalidated)
    validated: int = 0  # candidates validated by a stopped pass (its figures are not in the totals)


def process_pass(
    directory: Path,
    manifest: Manifest,
    task: Task,
    sink: ScenarioSink,
    validator: PairValidator,
    entries: list[str],
    files_of: Callable[[str], list[Path]],
    run_state: Callable[[], dict] = lambda: None,
    progress: Callable[[int, int], None] = lambda done, total: None,
    annotations: Sidecar | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> PassReport:
    """Process the result files of ``entries`` (names in the manifest) and the spares, up to the
    manifest's target; ``run_state()``, of the manifest as it is then, goes into the sink's
    checkpoint with every sync. See the module.

    Stopped (``stop()``, or a second Ctrl-C) while validating: what was validated is accepted and
    synced; the marker stays, so the next pass replays these inputs, as after a kill: nothing is
    lost and nothing counted twice. The report says how many candidates were left unvalidated."""
    stats = RunStats(target=manifest.target, accepted=sink.count)
    acceptance = Acceptance(task, sink, stats, annotations)
    replayed = manifest.processing is not None
    if replayed:
        marker = manifest.processing
        entries = marker["entries"]
        log.info("replaying a processing pass that was cut short (%d result files)", len(entries))
    else:
        marker = {"entries": entries, "sink_before": sink.count, "spares_file": manifest.spares_file}
        manifest.processing = marker
        manifest.save(directory)
        sink.sync(run_state())  # the checkpoint's record has the marker before the pass appends
    spares_in = read_spares(directory / marker["spares_file"] if marker["spares_file"] else None)
    read = ResultRead(pairs=list(spares_in))
    ledger = manifest.ledger()
    sent = set()
    if any(manifest.entry(name).source != "api" for name in entries):
        sent = sent_numbers(ledger, [directory / REQUESTS / e.name for e in manifest.entries if e.source == "api" and e.batch_id])
    for name in entries:
        entry = manifest.entry(name)
        got = read_entry(ledger, entry, files_of(name), sent)
        if entry.source != "api":  # an API batch's cost is its usage; a results file's, its new lines'
            entry.usage = {"input": got.priced["input"], "output": got.priced["output"]}
            entry.requests = got.requests_ok
        read.add(got)
    fresh = acceptance.fresh(read.pairs)
    log.info("validating %d candidate pairs from %d answers (Ctrl-C stops between chunks and keeps what is validated)",
             len(fresh), read.requests_ok)
    verdicts = validate_all(validator, fresh, progress, stop)
    taken = acceptance.take(verdicts)
    if len(verdicts) < len(fresh):
        sink.sync(run_state())
        return PassReport(read, stats, len(taken.accepted), manifest.spares, replayed, unvalidated=len(fresh) - len(verdicts),
                          stopped=True, validated=len(verdicts))
    already = sink.count - len(taken.accepted) - marker["sink_before"]  # appended by the pass that was cut short
    if already > 0:
        stats.duplicates -= already
        stats.accepted_this_run += already
    accepted = len(taken.accepted) + max(0, already)

    generation = int(manifest.totals.get("passes", 0)) + 1
    spares_name = f"spares-{generation}.jsonl" if taken.surplus else None
    if spares_name:
        atomic_write(directory / spares_name, b"".join(
            orjson.dumps({"prompt": v.prompt, "counterfactual": v.counterfactual}) + b"\n" for v in taken.surplus))

    totals = manifest.totals
    for key, value in (("passes", 1), ("accepted", accepted), ("requests_ok", read.requests_ok),
                       ("candidates", len(read.pairs) - len(spares_in)), ("rejected", stats.rejected),
                       ("duplicates", stats.duplicates),
                       ("useful", max(0, accepted + len(taken.surplus) - len(spares_in))),
                       ("input_tokens", read.input_tokens), ("output_tokens", read.output_tokens),
                       ("foreign", read.foreign), ("repeated", read.repeated),
                       ("external_requests", sum(manifest.entry(n).requests for n in entries if manifest.entry(n).source == "external"))):
        totals[key] = totals.get(key, 0) + value
    for key, counter in (("errors", read.errors), ("answer_failures", read.answer_failures), ("rejections", stats.rejections)):
        totals[key] = dict(Counter(totals.get(key, {})) + counter)
    for name in entries:
        manifest.entry(name).processed = True
    manifest.keep(ledger)
    old_spares = marker["spares_file"]
    manifest.spares_file, manifest.spares = spares_name, len(taken.surplus)
    manifest.processing = None
    sink.sync(run_state())
    manifest.save(directory)
    if old_spares and old_spares != spares_name:
        (directory / old_spares).unlink(missing_ok=True)
    return PassReport(read, stats, accepted, len(taken.surplus), replayed, stopped=stop())
