"""``asyncgen score DATASET --model M --batch``: the scoring requests through the Batch API, at batch
prices, read back through the one acceptance path (``score_batch.accept_results``).

Contract
--------
* State: a batch directory beside the scores file, ``DATASET.scores/MODEL.batch/``, laid out as
  ``asyncgen batch``'s (``batch/manifest.py``: ``manifest.json``, ``requests/``, ``results/``,
  ``simulator/`` offline) and driven by the same steps (``batch/lifecycle.py``). Its
  ``directory_id`` is the job's random identity: every request's custom_id ends with it, and a
  result line of another job (or of ``--write-requests``) is refused, as is a result of another
  dataset (the texts' hash) or model. ``fingerprint["scoring"]`` says what the requests were made
  for (dataset, model, forms, readings, the single-token endpoint, the caps): a directory made for
  anything else is refused while it has batches not yet read.
* A round: the requests of every scenario not yet scored, one request file and one batch per
  endpoint (``/v1/completions`` and ``/v1/chat/completions``: a batch holds one endpoint's
  requests). The single-token form's endpoint is decided once per job, before the first round:
  ``--chat``, else one real-time ``/v1/completions`` request (a 404, as OpenAI gives its chat
  models, means chat completions with logprobs), recorded in the manifest.
* Paid once: submit is ``lifecycle.submit`` (intent saved before the batch is created, found again
  by its metadata after a kill), so a re-run never submits a request file twice. A run submits at
  most one new round, and only once the last round's results are read; its worst case at batch
  prices plus what the job spent must stay within ``--max-cost``, or nothing is submitted.
* Read once: results are read when every batch of the round has ended and its files are
  downloaded; the scores file skips scenarios it holds, so reading a file again (after a kill)
  scores nothing twice. Ctrl-C stops waiting; the batches go on server-side and the same command
  resumes. ``--cancel`` cancels the job's batches not ended; what finished is read by the next run.
* One writer: the job directory's lock (``manifest.writer``) and the scores file's.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from asyncgen import locks
from asyncgen.batch import lifecycle
from asyncgen.batch.endpoint import POLL_SECONDS, open_batch_api
from asyncgen.batch.manifest import LOCK, MANIFEST, Entry, Manifest, leftovers
from asyncgen.errors import RunError, UsageError
from asyncgen.prices import Price, at_batch_rates, batch_cost_usd, cost_usd
from asyncgen.progress import LiveLine, _duration, _money, fit_fields, print_summary
from asyncgen.scenario import Scenario
from asyncgen.score_batch import ENDPOINTS, accept_results, batch_requests, worst_cost_usd
from asyncgen.scores import ScoresFile, not_made_yet, remove_made, scores_path
from asyncgen.scoring import ScoreCounts, ScoreSettings, request_body, score_summary
from asyncgen.sink import atomic_write
from asyncgen.stats import RunStats
from asyncgen.terminal import print_fitted

log = logging.getLogger("asyncgen.score")
SHOWN_ERRORS = 5


def job_dir(dataset: str, model: str) -> Path:
    path = scores_path(dataset, model)
    return path.with_name(path.name[: -len(".jsonl")] + ".batch")


@dataclass
class Job:
    """What a ``--batch`` run works with (made by ``score_run.score``)."""

    args: object
    scenarios: list[Scenario]
    settings: ScoreSettings
    header: dict  # the scores file's header
    price: Price | None  # --model's real-time price (its batch columns price the batches)
    mode: str  # "simulator", "openai" or "custom", as for run


IDENTITY_NAMES = {"dataset_id": "dataset", "model": "--model", "forms": "--form", "readings": "answer readings "
                  "(--tokenizer)", "single_via": "single-token endpoint (--chat)", "top_k": "top-k",
                  "max_answer_tokens": "--max-answer-tokens"}


def identity(job: Job, single_via: str | None) -> dict:
    """What a job's requests were made for: a directory made otherwise is another job."""
    header, settings = job.header, job.settings
    return {"dataset_id": header["dataset_id"], "model": settings.model, "forms": list(settings.forms),
            "readings": header["readings"], "single_via": single_via, "top_k": settings.completions_top_k,
            "max_answer_tokens": settings.max_answer_tokens}


def run(job: Job) -> int:
    """``score --batch``: submit (or find again) the round, wait for it, read it; the exit code."""
    from asyncgen.eventloop import run_event_loop

    args = job.args
    directory = job_dir(args.dataset, args.model)
    path = scores_path(args.dataset, args.model)
    made = not_made_yet(path, directory)  # what this run makes
    _make(directory)
    with _writer(directory, "score --batch"):
        manifest = scores = None
        try:
            manifest = _manifest(directory, job)
            _use_via(job, manifest)
            scores = ScoresFile.open(path, job.header, job.scenarios)
            if scores.torn_saved:
                log.warning("%s: cut an incomplete last line (a killed run leaves one), saved in %s", path,
                            scores.torn_saved)
            if len(scores.scored) >= len(job.scenarios):
                print(f"{path} already scores all {len(job.scenarios)} scenarios of {args.dataset}: nothing to do")
                if getattr(args, "control", None) is not None:  # the Python API's result: nothing spent
                    args.control.record_cost(None if job.price is None else 0.0, job.mode == "simulator")
                return 0
            outcome = Outcome(RunStats(target=len(job.scenarios), accepted=len(scores.scored)), ScoreCounts())
            outcome.stats.cost_simulated = job.mode == "simulator"
            try:
                run_event_loop(_run_async(job, directory, manifest, scores, outcome))
            except (KeyboardInterrupt, asyncio.CancelledError):  # CancelledError: the Python API's stop
                outcome.stop = "interrupted"
        except BaseException:
            # Failed before anything was asked (an unknown model): what the run made goes, while the
            # scores file's lock is still held, so a concurrent `score` never loses a file it opened.
            if manifest is None or not manifest.entries:
                remove_made(made, tree=directory)
            raise
        finally:
            if scores is not None:
                scores.close()
    return _report(job, directory, manifest, path, outcome)


def cancel(args) -> int:
    """``score --batch --cancel``: cancel the job's batches that have not ended."""
    from asyncgen.eventloop import run_event_loop

    directory = job_dir(args.dataset, args.model)
    if not (directory / MANIFEST).is_file():
        raise UsageError(f"no --batch scoring job of {args.model!r} in {directory}: nothing to cancel")
    with _writer(directory, "score --batch --cancel"):
        manifest = Manifest.load(directory)

        async def go() -> list[Entry]:
            async with open_batch_api(args, directory, manifest) as (api, _):
                for entry in manifest.unsubmitted():  # a run killed as it created the batch: find it first
                    if entry.state == "submitting" and entry.token:
                        found = await api.find(entry.token, entry.intent_at or 0)
                        if found is not None:
                            lifecycle.update(entry, found)
                            manifest.save(directory)
                await lifecycle.refresh(directory, manifest, api)
                return await lifecycle.cancel(directory, manifest, api)
        cancelled = run_event_loop(go())
    for entry in cancelled:
        print(f"{entry.batch_id} ({entry.endpoint}): {entry.status}")
    if not cancelled:
        print_fitted(f"nothing to cancel in {directory}: its batches have all ended; "
                     f"`{_command(args, drop=('--cancel',))}` reads what they answered", sys.stdout)
        return 0
    print_fitted(f"cancelled {len(cancelled)} batch(es) of {directory}; what finished is kept: "
                 f"`{_command(args, drop=('--cancel',))}` reads it and asks again for the rest (a new batch, paid again)",
                 sys.stdout)
    return 0


# --- the directory -------------------------------------------------------------------------------


def _writer(directory: Path, command: str):
    """The job directory's one writer (``locks.held``); a second is refused, naming the first."""
    return locks.held(directory / LOCK, str(directory), command,
                      remedy="wait for it to end, or stop it (Ctrl-C: its batches go on)")


def _make(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{directory}: cannot create it ({exc.strerror or exc}); check the dataset's folder") from exc


def _manifest(directory: Path, job: Job) -> Manifest:
    """The job's manifest: the one in ``directory`` if it was made for this job, else a new one (a
    directory of another job with batches not yet read is refused)."""
    manifest = Manifest.load(directory)
    if manifest is None and leftovers(directory):
        raise UsageError(f"{directory} holds {leftovers(directory)} but no manifest.json: their batches may have run "
                         "and been paid; move the folder away to score through new batches (paid again)")
    if manifest is not None:
        made_for = manifest.fingerprint.get("scoring") or {}
        decided = made_for.get("single_via")
        now = identity(job, "chat" if job.settings.chat and decided else decided)
        if made_for == now:
            return manifest
        pending = [e for e in manifest.entries if not e.processed]
        if pending:
            key = next(key for key in now if made_for.get(key) != now[key])
            raise UsageError(f"{directory} holds a scoring job made with another {IDENTITY_NAMES[key]} "
                             f"({made_for.get(key)} there, {now[key]} now) and {len(pending)} batch(es) not yet read; "
                             "run with the flags that made it, or cancel it (--cancel) and move the folder away")
        log.info("%s: its earlier job was made for another setup and is all read: a new job starts", directory)
    manifest = Manifest(job.header["task"], job.settings.model, {"scoring": identity(job, None)}, len(job.scenarios),
                        str(scores_path(job.args.dataset, job.settings.model)))
    manifest.save(directory)
    return manifest


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Outcome:
    stats: RunStats
    counts: ScoreCounts
    stop: str | None = None  # "interrupted", "max_cost", "failed" (batches failed validation), "incomplete"
    submitted: bool = False  # this run submitted a round
    worst: float | None = None  # the refused round's worst case (max_cost)


def _round(manifest: Manifest) -> list[Entry]:
    return [e for e in manifest.entries if e.round == manifest.rounds and e.source == "api"]


async def _run_async(job: Job, directory: Path, manifest: Manifest, scores: ScoresFile, outcome: Outcome) -> None:
    started = time.monotonic()
    if getattr(job.args, "control", None) is not None:  # the Python API's stop and result (asyncgen.score)
        job.args.control.attach(asyncio.current_task().cancel, outcome.stats)  # on this loop, from any thread
    async with open_batch_api(job.args, directory, manifest) as (api, mode):
        with LiveLine(lambda width: _progress(job, manifest, scores, width, time.monotonic() - started),
                      logger=log) as line:
            while True:
                current = _round(manifest)
                if not current or all(e.processed for e in current):
                    unscored = [i for i in range(len(job.scenarios)) if i not in scores.scored]
                    if not unscored:
                        return
                    if outcome.submitted:
                        outcome.stop = "incomplete"
                        return
                    if not await _new_round(job, directory, manifest, api, unscored, outcome):
                        return
                    current = _round(manifest)
                if manifest.unsubmitted():
                    await _submit(directory, manifest, api, mode)
                await _wait(directory, manifest, api, line, POLL_SECONDS[mode])
                await lifecycle.download(directory, manifest, api)
                _read(job, directory, manifest, scores, outcome)


async def _submit(directory: Path, manifest: Manifest, api, mode: str) -> None:
    """``lifecycle.submit``; a server with no Files or Batch API (a 404 on the upload) says what to do instead."""
    from asyncgen.batch.api import Refused

    try:
        await lifecycle.submit(directory, manifest, api, say=lambda text: log.info("%s", text))
    except Refused as exc:
        if mode != "custom" or getattr(exc.__cause__, "status_code", None) != 404:
            raise
        raise UsageError(f"{api.where} has no Batch API ({exc.__cause__.request.url.path}: 404); score in real "
                         "time there, or write the requests with --write-requests FILE, run them (e.g. `vllm "
                         "run-batch`) and read them back with --results") from exc


async def _wait(directory: Path, manifest: Manifest, api, line: LiveLine, poll: float) -> None:
    """Poll the round's batches until all have ended, the progress line showing them."""
    logged = 0.0
    while True:
        await lifecycle.refresh(directory, manifest, api)
        if not manifest.in_flight():
            return
        if line.tty or time.monotonic() - logged >= 30:
            logged = time.monotonic()
            line.refresh()
        await asyncio.sleep(poll)


async def _new_round(job: Job, directory: Path, manifest: Manifest, api, unscored: list[int], outcome: Outcome) -> bool:
    """Write the request files of the ``unscored`` scenarios, one per endpoint; False when
    ``--max-cost`` refuses them (nothing written)."""
    requests = batch_requests(job.scenarios, job.settings, job=manifest.directory_id, scenario_ids=unscored)
    worst = worst_cost_usd(requests, job.settings, job.price)  # the endpoint does not change it: same texts, caps
    max_cost = job.args.max_cost
    if max_cost is not None:
        spent = _spent(manifest, job.price)
        if spent is None or worst is None or spent + worst > max_cost:
            outcome.stop, outcome.worst = "max_cost", worst
            return False
    scoring = manifest.fingerprint["scoring"]
    if "single" in job.settings.forms and scoring["single_via"] is None:
        scoring["single_via"] = "chat" if job.settings.chat else await _probe(job, api, manifest)
        manifest.save(directory)
        _use_via(job, manifest)
        requests = batch_requests(job.scenarios, job.settings, job=manifest.directory_id, scenario_ids=unscored)
    settings = job.settings
    manifest.rounds += 1
    (directory / lifecycle.REQUESTS).mkdir(exist_ok=True)
    for via, url in ENDPOINTS.items():
        part = [r for r in requests if r.url == url]
        if not part:
            continue
        name = f"round-{manifest.rounds}-{via}.jsonl"
        atomic_write(directory / lifecycle.REQUESTS / name, b"".join(r.line + b"\n" for r in part))
        manifest.entries.append(Entry(name, manifest.rounds, len(part), worst_cost_usd(part, settings, job.price),
                                      endpoint=url))
    manifest.save(directory)
    outcome.submitted = True
    log.info("round %d: %d requests for %d scenarios in %d batch(es), at most %s at batch prices", manifest.rounds,
             len(requests), len(unscored), len({r.url for r in requests}), _money(worst))
    return True


def _use_via(job: Job, manifest: Manifest) -> None:
    """The job's settings with the single-token form's endpoint the job decided on."""
    from dataclasses import replace

    if manifest.fingerprint["scoring"]["single_via"] == "chat" and not job.settings.chat:
        job.settings = replace(job.settings, chat=True)


async def _probe(job: Job, api, manifest: Manifest) -> str:
    """The single-token form's endpoint: "completions" if the server answers one real-time request
    there for the model, else "chat" (said once). An answered request is kept as a pilot entry, its
    usage paid at real-time prices (``Manifest.cost``)."""
    text = job.scenarios[0].single_token_prompt
    answer, refusal = await api.completions_served(request_body(job.settings, "single", text, "completions"))
    if answer is not None:
        usage = answer.get("usage") or {}
        manifest.entries.append(Entry("probe", 0, 1, source="pilot", state="submitted", status="completed",
                                      downloaded=True, processed=True,
                                      usage={"input": usage.get("prompt_tokens") or 0,
                                             "output": usage.get("completion_tokens") or 0}))
        return "completions"
    log.warning("the server refused /v1/completions for %s (404: %s); the single-token form goes to chat "
                "completions with logprobs instead (a chat template is applied to the text), as real-time scoring "
                "does", job.settings.model, refusal)
    return "chat"


def _spent(manifest: Manifest, price: Price | None) -> float | None:
    """USD the job's batches cost at batch prices so far (their usage as the API reports it)."""
    at_batch, _ = manifest.cost(lambda i, o: (batch_cost_usd(price, i, o), cost_usd(price, i, o)))
    return at_batch


def _read(job: Job, directory: Path, manifest: Manifest, scores: ScoresFile, outcome: Outcome) -> None:
    """Read the round's downloaded files into the scores file (the one acceptance path); mark them read."""
    entries = [e for e in _round(manifest) if e.downloaded and not e.processed]
    failed = [e for e in _round(manifest) if e.status == "failed"]  # nothing to read: marked read at once
    for entry in failed:
        log.error("batch %s (%s) failed validation:", entry.batch_id, entry.name)
        for error in entry.errors[:SHOWN_ERRORS]:
            log.error("    line %s: %s: %s", error["line"], error["code"], error["message"])
    sources = [(str(directory / p), directory / p) for e in entries for p in (e.output_path, e.error_path) if p]
    accept_results(sources, job.scenarios, job.settings, scores, outcome.stats, outcome.counts,
                   at_batch_rates(job.price), job=manifest.directory_id)
    scores.sync()
    for entry in entries:
        entry.processed = True
    manifest.save(directory)
    if failed:
        outcome.stop = "failed"
        raise RunError(f"{len(failed)} batch(es) of round {manifest.rounds} in {directory} failed validation (errors "
                       "above), so none of their requests ran; fix the cause, then run the same command to submit "
                       "them in a new round")


# --- what is shown -------------------------------------------------------------------------------


def _progress(job: Job, manifest: Manifest, scores: ScoresFile, width: int | None, elapsed: float) -> str:
    running = [e for e in _round(manifest) if e.batch_id]
    done = sum((e.request_counts or {}).get("completed", 0) for e in running)
    total = sum((e.request_counts or {}).get("total") or e.requests for e in running)
    statuses = ", ".join(sorted({e.status or "submitting" for e in running})) or "submitting"
    fields = [(0, f"{len(scores.scored)}/{len(job.scenarios)} scored"),
              (1, f"round {manifest.rounds}: {len(running)} batch(es) {statuses}, {done}/{total} requests done"),
              (2, f"cost {_money(_spent(manifest, job.price))} at batch prices"), (3, f"elapsed {_duration(elapsed)}")]
    return fit_fields(fields, width) if width else " | ".join(text for _, text in fields)


def _command(args, drop: tuple[str, ...] = (), add: tuple[str, ...] = ()) -> str:
    argv = [a for a in (getattr(args, "argv", None) or sys.argv[1:]) if a not in drop]
    return "python -m asyncgen " + shlex.join([*argv, *(a for a in add if a not in argv)])


def _report(job: Job, directory: Path, manifest: Manifest, path: Path, outcome: Outcome) -> int:
    stats, args = outcome.stats, job.args
    stop = outcome.stop if stats.accepted < stats.target else None
    stats.cost_usd = stats.cost_usd if job.price is not None else None
    text = score_summary(stats, outcome.counts, path=str(path), stop_reason=stop, resume_command=None)
    at_batch, at_real = manifest.cost(lambda i, o: (batch_cost_usd(job.price, i, o), cost_usd(job.price, i, o)))
    ratio = f", {at_batch / at_real:.2f}x" if at_batch is not None and at_real else ""
    text += (f"\n  batches         {sum(1 for e in manifest.entries if e.batch_id)} in {manifest.rounds} round(s), "
             f"state in {directory}"
             f"\n  job cost        {_money(at_batch)} at batch prices (real time: {_money(at_real)}{ratio})"
             + (" (simulated: the offline simulator's usage at real prices)"
               if (manifest.bound_endpoint() or {}).get("mode") == "simulator" else ""))
    print_summary(text)
    resume, cancel_it = _command(args), _command(args, add=("--cancel",))
    if stop is None:
        return 0
    if stop == "interrupted":  # a line a command: they stay whole at 80 columns
        if manifest.in_flight():
            print(f"asyncgen score: stopped waiting; the batches go on at the server\n"
                  f"  resume with: {resume}\n  or cancel them with: {cancel_it}", file=sys.stderr)
        else:
            print(f"asyncgen score: interrupted; no batch of it is running\n  resume with: {resume}", file=sys.stderr)
        return 130
    if stop == "max_cost":
        spent = _spent(manifest, job.price)
        print_fitted(f"asyncgen score: nothing submitted: the batch for the {stats.target - stats.accepted} unscored "
                     f"scenarios could cost up to {_money(outcome.worst)} at batch prices, which with {_money(spent)} "
                     f"spent crosses --max-cost ${args.max_cost}; raise --max-cost, or score fewer forms (--form)",
                     sys.stderr)
        return 1
    print(f"asyncgen score: {stats.target - stats.accepted} scenarios are still unscored (their requests failed); "
          f"ask again for them in a new batch with: {resume}", file=sys.stderr)
    return 1
