"""Scoring on another engine: ``score --write-requests FILE`` writes the requests as OpenAI batch
input lines (``vllm run-batch -i FILE -o OUT``, or the Batch API); ``score --results OUT`` reads the
output lines back through the same answer path as real-time scoring (``Scorer.read``) into the
scores file. ``score --batch`` (``asyncgen.score_batch_job``) sends the same lines through the
Batch API and reads its output files back through ``accept_results``, the one acceptance path.

A request's ``custom_id`` is ``score:ID:FORM:SIDE:VIA:HASH``: the scenario, which request, the
endpoint it was written for, and the hash of the scenario's texts; a ``--batch`` job's requests end
with ``:JOB``, the job's random id. A result whose hash is not the dataset's scenario's, whose model
is not ``--model``, or (``--batch``) whose job is not the job's, is refused: results are trusted by
what they carry, not by their file name.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import orjson

from asyncgen.batch.ledger import RETRIED_ERRORS
from asyncgen.errors import ApiError, InputFileError, UsageError
from asyncgen.jsonl import read_jsonl
from asyncgen.prices import Price, batch_cost_usd
from asyncgen.progress import print_summary
from asyncgen.prompting import PROMPT_ESTIMATE_MARGIN, estimate_prompt_tokens
from asyncgen.scenario import Scenario
from asyncgen.scores import ScoresFile, texts_hash
from asyncgen.scoring import (
    ScoreCounts, ScoreSettings, Scorer, output_tokens, request_body, requests_of, scenario_record, score_summary,
)
from asyncgen.sink import atomic_write
from asyncgen.stats import RunStats
from asyncgen.terminal import print_fitted

log = logging.getLogger("asyncgen.score")
ENDPOINTS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
BATCH_OUTPUT_LINE = "a batch output line of `asyncgen score --write-requests` (a custom_id score:ID:FORM:SIDE:VIA:HASH)"


def custom_id(scenario_id: int, form: str, side: str, via: str, scenario: Scenario, job: str | None = None) -> str:
    return f"score:{scenario_id}:{form}:{side}:{via}:{texts_hash(scenario)}" + (f":{job}" if job else "")


@dataclass(frozen=True)
class BatchRequest:
    """One scoring request as a batch input line, with what its cost bound needs."""

    url: str  # the endpoint its line names: a batch holds one endpoint's requests
    form: str
    text: str
    line: bytes


def batch_requests(scenarios: list[Scenario], settings: ScoreSettings, *, job: str | None = None,
                   scenario_ids: list[int] | None = None) -> list[BatchRequest]:
    """The batch requests of ``scenario_ids`` (default: every scenario), their custom_ids carrying ``job``."""
    single_via = "chat" if settings.chat else "completions"
    out = []
    for scenario_id in range(len(scenarios)) if scenario_ids is None else scenario_ids:
        scenario = scenarios[scenario_id]
        for form, side, text in requests_of(scenario, settings.forms):
            via = single_via if form == "single" else "chat"
            line = orjson.dumps({"custom_id": custom_id(scenario_id, form, side, via, scenario, job), "method": "POST",
                                 "url": ENDPOINTS[via], "body": request_body(settings, form, text, via)})
            out.append(BatchRequest(ENDPOINTS[via], form, text, line))
    return out


def batch_lines(scenarios: list[Scenario], settings: ScoreSettings) -> list[bytes]:
    """The batch input lines of every request of ``scenarios``."""
    return [request.line for request in batch_requests(scenarios, settings)]


def worst_cost_usd(requests: list[BatchRequest], settings: ScoreSettings, price: Price | None) -> float | None:
    """The most ``requests`` can cost at batch prices (the prompt estimate with its margin, every
    answer at its length cap); None when the price is unknown. Pure."""
    if price is None:
        return None
    return sum(batch_cost_usd(price, PROMPT_ESTIMATE_MARGIN * estimate_prompt_tokens([{"content": r.text}]),
                              output_tokens(settings, r.form)) for r in requests)


def write_requests(args, scenarios: list[Scenario], settings: ScoreSettings) -> int:
    lines = batch_lines(scenarios, settings)
    path = Path(args.write_requests)
    if path.resolve() == Path(args.dataset).resolve():
        raise UsageError(f"--write-requests {path} is the dataset itself; choose another file")
    try:
        atomic_write(path, b"\n".join(lines) + b"\n")
    except OSError as exc:
        raise UsageError(f"--write-requests {path}: cannot write it ({exc.strerror or exc}); choose another file") from exc
    print_fitted(f"wrote {len(lines)} scoring requests for {len(scenarios)} scenarios to {path}; run them, e.g. "
                 f"`vllm run-batch -i {path} -o results.jsonl --model {args.model}`, then read them back with "
                 f"`python -m asyncgen score {args.dataset} --model {args.model} --results results.jsonl`", sys.stderr)
    return 0


def read_results(args, scenarios: list[Scenario], settings: ScoreSettings, scores: ScoresFile, stats: RunStats,
                 counts: ScoreCounts, price) -> int:
    """``--results FILE``: read batch output lines into the scores file; every scenario whose requests
    all answered is scored."""
    path = Path(args.results)
    accept_results([(f"--results {path}", path)], scenarios, settings, scores, stats, counts, price)
    print_summary(score_summary(stats, counts, path=str(scores.path), stop_reason="incomplete", resume_command=None))
    if stats.accepted < stats.target:
        print_fitted(f"asyncgen score: {stats.target - stats.accepted} scenarios are still unscored: their requests are "
                     f"not in {path} or failed; write their requests again (--write-requests) and run them", sys.stderr)
        return 1
    return 0


def accept_results(sources: list[tuple[str, Path]], scenarios: list[Scenario], settings: ScoreSettings,
                   scores: ScoresFile, stats: RunStats, counts: ScoreCounts, price: Price | None,
                   job: str | None = None) -> None:
    """Read the batch output lines of ``sources`` ((what to call it, path)) together into the scores
    file: a scenario is scored once all its requests answered, in whichever file; a scenario already
    scored is skipped (nothing is scored twice, a file read again counts nothing again). ``job``: only
    lines of that ``--batch`` job are taken, any other is refused. ``price``: what the answers cost."""
    scorer = Scorer(None, settings, stats, counts, price, None)
    parts: dict[int, dict] = {}
    failed: set[int] = set()
    wanted = len(settings.forms) * 2
    for name, path in sources:
        for number, line in read_jsonl(path, name, BATCH_OUTPUT_LINE):
            where = f"{name}:{number}"
            scenario_id, form, side, via = _parse(line, where, scenarios, settings, job)
            error = line.get("error")
            if isinstance(error, dict) and error.get("code") in RETRIED_ERRORS:
                failed.add(scenario_id)  # a request its batch never ran (expired, cancelled): asked again
                continue
            stats.requests_sent += 1
            if scenario_id in scores.scored:
                continue  # scored by an earlier read: nothing is scored twice
            response = line.get("response") or {}
            if line.get("error") or response.get("status_code") != 200:
                stats.requests_given_up += 1
                stats.last_error = orjson.dumps(line.get("error") or response.get("body"))[:200].decode(errors="replace")
                failed.add(scenario_id)
                continue
            body = response.get("body")
            model = body.get("model") if isinstance(body, dict) else None
            if model is not None and model != settings.model and not str(model).startswith(settings.model):
                raise InputFileError(f"{where}: answered by model {model!r}, not --model {settings.model!r}; "
                                     "read it with the --model that made it")
            try:
                result = scorer.read(orjson.dumps(body), form, via)
            except ApiError as exc:
                raise InputFileError(f"{where}: {exc}") from exc
            if result is None:  # a bad answer (counted): its scenario stays unscored
                failed.add(scenario_id)
                continue
            sides = parts.setdefault(scenario_id, {})
            if (form, side) in sides:
                raise InputFileError(f"{where}: a second answer to scenario {scenario_id}'s {form} {side} request; "
                                     "the file joins two batches' output: read each once")
            sides[form, side] = result
            if len(sides) == wanted and scenario_id not in failed:
                scores.append(scenario_record(scenario_id, scenarios[scenario_id], parts.pop(scenario_id),
                                              settings.forms, counts))
                stats.accepted += 1
                stats.accepted_this_run += 1
    counts.scenarios_given_up = len(failed - scores.scored)


def _parse(line, where: str, scenarios: list[Scenario], settings: ScoreSettings, job: str | None):
    """(scenario id, form, side, via) of a batch output line (decoded), refused unless it is one
    of this scoring's requests (of ``job``, with ``--batch``)."""
    try:
        kind, sid, form, side, via, digest, *made_by = str(line["custom_id"]).split(":")
        scenario_id = int(sid)
        if len(made_by) > 1:
            raise ValueError(made_by)
    except (KeyError, TypeError, ValueError):
        raise InputFileError(f"{where}: not {BATCH_OUTPUT_LINE}") from None
    if job is not None and made_by != [job]:
        raise InputFileError(f"{where}: custom_id {line['custom_id']!r} is a request of "
                             f"{'scoring job ' + made_by[0] if made_by else '--write-requests'}, not of this scoring "
                             f"job ({job}): these results belong to another job; move the file away")
    if kind != "score" or form not in settings.forms or side not in ("prompt", "counterfactual") or via not in ENDPOINTS:
        raise InputFileError(f"{where}: custom_id {line['custom_id']!r} is not one of this scoring's requests "
                             f"(--form {'both' if len(settings.forms) == 2 else settings.forms[0]})")
    if not 0 <= scenario_id < len(scenarios) or texts_hash(scenarios[scenario_id]) != digest:
        raise InputFileError(f"{where}: scenario {scenario_id}'s texts are not this dataset's; the results belong "
                             "to another dataset")
    return scenario_id, form, side, via
