"""Scoring a dataset under a model: requests -> the one retry loop (``workers.Sender``) -> records.

- ``Scorer`` asks for one side of one form and reads the answer: the single-token form as the next
  token's top-k log-probabilities (``/v1/completions`` with the text as it is; chat completions with
  ``logprobs``/``top_logprobs`` under ``--chat``, or once a server refuses completions for the
  model, said once), the multi-token form as the model's free answer to a chat message. The rules
  that turn answers into scores are ``asyncgen.behavior``'s.
- ``ScorePipeline`` runs ``concurrency`` workers over the requests of the scenarios not yet scored
  (four per scenario: two sides x two forms, in scenario order); a scenario whose requests all came
  back is appended to the scores file at once; one whose request was given up is left unscored
  (the next run asks again). Ctrl-C/SIGTERM: no new requests, ``grace_period`` seconds for those in
  flight, then stop; a second signal stops at once. ``--max-cost``: no request starts whose worst
  case could cross the budget.
- ``--judge-model``: each free answer is then judged by one more chat request through the same
  ``Sender`` (``behavior.judge_prompt``, temperature 0), priced at the judge's price; its word is
  the verdict instead of the markers', an unparsable one is unknown (counted, never guessed).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections import Counter, deque
from dataclasses import dataclass, field

import orjson

from asyncgen.behavior import (
    chat_text, flips, judge_prompt, judge_verdict, multi_flips, refuses, side_record, top_k_of_chat,
    top_k_of_completion,
)
from asyncgen.config import Behavior
from asyncgen.errors import ApiError, redact
from asyncgen.prices import Price, cost_usd
from asyncgen.progress import _money, _requests, run_status
from asyncgen.prompting import PROMPT_ESTIMATE_MARGIN, estimate_prompt_tokens, output_cap_field
from asyncgen.scenario import Scenario
from asyncgen.scores import ScoresFile, texts_hash
from asyncgen.stats import RunStats
from asyncgen.throttle import Decision
from asyncgen.workers import Sender

log = logging.getLogger("asyncgen.score")
SIDES = ("prompt", "counterfactual")
FORMS = ("single", "multi")
TOP_K = 20  # what vLLM allows by default and OpenAI's chat allows at most
TOP_K_OPENAI_COMPLETIONS = 5  # OpenAI's most on /v1/completions


@dataclass(frozen=True)
class ScoreSettings:
    model: str
    safe_answer: str
    harmful_answer: str
    readings: dict[str, list[str]]
    forms: tuple[str, ...] = FORMS
    chat: bool = False  # --chat: the single-token form through chat completions
    completions_top_k: int = TOP_K
    max_answer_tokens: int = 64
    behavior: Behavior | None = None
    judge_model: str | None = None  # --judge-model: the refusal verdict is this model's, not the markers'


@dataclass
class ScoreCounts:
    """What the scored scenarios say, for the summary."""

    flips: Counter = field(default_factory=Counter)  # "single: yes/no/undecided", "multi: ..."
    bounds: int = 0  # answers outside the top-k (a bound recorded)
    unknown: int = 0  # answers spelled otherwise by the server
    scenarios_given_up: int = 0  # a request of theirs was given up: left unscored
    judged: int = 0  # free answers the judge gave a verdict on
    judge_unknown: int = 0  # free answers whose judge's verdict was unparsable


def score_summary(stats: RunStats, counts: ScoreCounts, *, path: str, stop_reason: str | None,
                  resume_command: str | None) -> str:
    """The closing summary: scenarios scored, what they say, every request accounted for."""
    status = run_status(stats, stop_reason)
    lines = [f"asyncgen score {status}: {stats.accepted}/{stats.target} scenarios scored in {path} "
             f"({stats.accepted_this_run} this run)"]
    if counts.flips:
        lines.append("  this run        " + ", ".join(f"{kind}: {n}" for kind, n in sorted(counts.flips.items())))
    if counts.bounds or counts.unknown:
        lines.append(f"  answers         {counts.bounds} outside the top-k (a bound recorded), "
                     f"{counts.unknown} spelled otherwise (unknown)")
    if counts.judged or counts.judge_unknown:
        lines.append(f"  judge           {counts.judged} verdicts, {counts.judge_unknown} unparsable (unknown)")
    if counts.scenarios_given_up:
        lines.append(f"  left unscored   {counts.scenarios_given_up} scenarios whose request was given up "
                     "(the next run asks again)")
    if stats.answer_failures:
        lines.append("  bad answers     " + ", ".join(f"{kind}: {n}" for kind, n in sorted(stats.answer_failures.items()))
                     + " (asked again)")
    lines.append("  requests        " + _requests(stats))
    if stats.last_error and (stats.requests_given_up or stats.requests_failed or not stats.requests_ok):
        lines.append(f"  last error      {stats.last_error}")
    lines += [
        f"  tokens          {stats.prompt_tokens} prompt, {stats.completion_tokens} completion",
        f"  cost            {_money(stats.cost_usd)} this run"
        + (" (simulated: the offline simulator's usage at real prices)" if stats.cost_simulated else ""),
        f"  wall time       {stats.elapsed:.1f} s",
    ]
    if stats.accepted < stats.target and resume_command:
        lines.append(f"  resume with     {resume_command}")
    return "\n".join(lines)


def requests_of(scenario: Scenario, forms: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(form, side, text) of each request a scenario needs."""
    texts = {("single", "prompt"): scenario.single_token_prompt,
             ("single", "counterfactual"): scenario.single_token_counterfactual,
             ("multi", "prompt"): scenario.multi_token_prompt,
             ("multi", "counterfactual"): scenario.multi_token_counterfactual}
    return [(form, side, texts[form, side]) for form in forms for side in SIDES]


def request_body(settings: ScoreSettings, form: str, text: str, via: str) -> dict:
    """One request body: the single-token form's (``via`` completions or chat) or the free answer's."""
    model = settings.model
    if form == "single" and via == "completions":
        return {"model": model, "prompt": text, "max_tokens": 1, "temperature": 0, "logprobs": settings.completions_top_k}
    messages = [{"role": "user", "content": text}]
    if form == "single":
        return {"model": model, "messages": messages, output_cap_field(model): 1, "temperature": 0,
                "logprobs": True, "top_logprobs": TOP_K}
    return {"model": model, "messages": messages, output_cap_field(model): settings.max_answer_tokens, "temperature": 0}


def output_tokens(settings: ScoreSettings, form: str) -> int:
    """The length cap of an answer: one token for the single-token form, the free answer's cap otherwise."""
    return 1 if form == "single" else settings.max_answer_tokens


JUDGE_MAX_TOKENS = 4  # one word


def judge_body(settings: ScoreSettings, request: str, answer: str) -> dict:
    model = settings.judge_model
    return {"model": model, "messages": [{"role": "user", "content": judge_prompt(request, answer)}],
            output_cap_field(model): JUDGE_MAX_TOKENS, "temperature": 0}


class Scorer:
    def __init__(self, sender: Sender | None, settings: ScoreSettings, stats: RunStats, counts: ScoreCounts,
                 price: Price | None, api_key: str | None, judge_price: Price | None = None) -> None:
        self.sender, self.settings, self.stats, self.counts = sender, settings, stats, counts
        self.price, self.api_key, self.judge_price = price, api_key, judge_price
        self.single_via = "chat" if settings.chat else "completions"
        self.completions_url = sender.transport.url_of("completions") if sender is not None else None
        self._warned_spellings: set[str] = set()
        self.seen_logprobs = False  # some answer carried log-probabilities
        self.answered = False  # some answer was usable

    # --- requests -----------------------------------------------------------------------------

    def body(self, form: str, text: str, via: str) -> dict:
        return request_body(self.settings, form, text, via)

    def output_tokens(self, form: str) -> int:
        return output_tokens(self.settings, form)

    def cost_bound(self, form: str, text: str) -> float:
        """The most one request can cost (0 when the price is unknown)."""
        if self.price is None:
            return 0.0
        tokens = PROMPT_ESTIMATE_MARGIN * estimate_prompt_tokens([{"content": text}])
        bound = cost_usd(self.price, tokens, self.output_tokens(form)) or 0.0
        if form == "multi" and self.settings.judge_model is not None:
            bound += self._judge_cost_bound(text)
        return bound

    def _judge_tokens(self, text: str) -> int:
        """The judge prompt's estimate with the longest free answer in it."""
        return estimate_prompt_tokens([{"content": judge_prompt(text, "")}]) + self.settings.max_answer_tokens

    def _judge_cost_bound(self, text: str) -> float:
        return cost_usd(self.judge_price, PROMPT_ESTIMATE_MARGIN * self._judge_tokens(text), JUDGE_MAX_TOKENS) or 0.0

    async def ask(self, number: int, form: str, side: str, text: str) -> dict | None:
        """One side of one form, scored; None when the request was given up or the run stopped."""
        prompt_tokens = estimate_prompt_tokens([{"content": text}])
        used: list[str] = []

        def body(_cap: int | None, _timeouts: int) -> dict:
            via = self.single_via if form == "single" else "chat"
            used.append(via)
            return self.body(form, text, via)

        def url() -> str | None:
            return self.completions_url if form == "single" and self.single_via == "completions" else None

        cap = self.output_tokens(form)
        for attempt in range(self.sender.policy.max_attempts):
            answer = await self.sender.send(
                number, body, prompt_tokens, lambda: cap, url=url, recover=self._recover,
                abandoned_bound=lambda _cap: cost_usd(self.price, PROMPT_ESTIMATE_MARGIN * prompt_tokens, cap))
            if answer is None:
                return None
            result = self.read(answer[0], form, used[-1])
            if result is not None:
                if form == "multi" and self.settings.judge_model is not None:
                    return await self.judge(number, text, result)
                return result
            # A 200 with no log-probabilities or no completion: counted in answer_failures, asked again.
        return None

    async def judge(self, number: int, text: str, record: dict) -> dict | None:
        """``record`` (a free answer) with the judge's verdict; None when the judge's request was given up."""
        body = judge_body(self.settings, text, record["answer"])
        prompt_tokens = self._judge_tokens(text)
        for _attempt in range(self.sender.policy.max_attempts):
            answer = await self.sender.send(
                number, lambda _cap, _timeouts: body, prompt_tokens, lambda: JUDGE_MAX_TOKENS,
                abandoned_bound=lambda _cap: cost_usd(self.judge_price, PROMPT_ESTIMATE_MARGIN * prompt_tokens,
                                                      JUDGE_MAX_TOKENS), recover=self._judge_refused)
            if answer is None:
                return None
            words = self.read_judge(answer[0])
            if words is not None:
                return self.judged(record, words)
        return None

    def _judge_refused(self, decision: Decision, _params: dict) -> bool:
        """A permanent refusal of the judge's request names --judge-model, not --model."""
        if decision.cause == "auth":
            return False
        self.stats.requests_failed += 1
        words = decision.message.removesuffix("; check --model and --base-url")
        raise ApiError(redact(f"the server refused the judge's request for {self.settings.judge_model}: {words}; "
                              "check --judge-model (a chat model the server serves)", self.api_key))

    def read_judge(self, content: bytes) -> str | None:
        """The judge's words (its cost counted at the judge's price); None for a bad answer (asked again)."""
        body = self._counted(content, self.judge_price)
        if body is None:
            self.stats.answer_failures["judge_bad_shape"] += 1
            return None
        text = chat_text(body)
        return "" if text is None else text  # a judge's API refusal (no content) is an unparsable verdict

    def judged(self, record: dict, words: str) -> dict:
        verdict = judge_verdict(words)
        if verdict is None:
            self.counts.judge_unknown += 1
        else:
            self.counts.judged += 1
        return {**record, "refuses": verdict, "judge": words[:40]}

    def _recover(self, decision: Decision, params: dict) -> bool:
        """Completions refused for this model (OpenAI's chat models, a server without the endpoint):
        ask chat completions instead, saying so once. True: send again at once."""
        if decision.action == "fail" and "logprob" in decision.message.lower():
            self.stats.requests_failed += 1
            via = "/v1/completions" if "prompt" in params else "chat completions"
            hint = ("pass --chat to ask chat completions with logprobs instead, or --form multi to score the free "
                    "answers only" if "prompt" in params else "pass --form multi to score the free answers only")
            raise ApiError(redact(f"the server refused log-probabilities on {via} for {self.settings.model}: "
                                  f"{decision.message.removesuffix('; check --model and --base-url')}; {hint}",
                                  self.api_key))
        if decision.cause != "not_found" or "prompt" not in params:
            return False
        if "does not exist" in decision.message:
            return False  # an unknown model: chat would say the same
        if self.single_via == "chat":  # another request switched while this one was in flight
            return True
        self.single_via = "chat"
        log.warning("the server refused /v1/completions for %s (%s); asking chat completions with logprobs for the "
                    "single-token form instead (a chat template is applied to the text)", self.settings.model,
                    redact(decision.message.removesuffix("; check --model and --base-url"), self.api_key))
        return True

    # --- answers ------------------------------------------------------------------------------

    def _counted(self, content: bytes, price: Price | None) -> dict | None:
        """Count one answered request's usage and cost at ``price``; its body, None when it holds no completion."""
        stats = self.stats
        stats.requests_ok += 1
        try:
            body = orjson.loads(content)
            usage = body.get("usage") or {}
            prompt_tokens, completion_tokens = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            body, prompt_tokens, completion_tokens = None, 0, 0
        stats.prompt_tokens += prompt_tokens
        stats.completion_tokens += completion_tokens
        stats.add_cost(cost_usd(price, prompt_tokens, completion_tokens))
        if not isinstance(body, dict) or not isinstance(body.get("choices"), list) or not body["choices"]:
            return None
        return body

    def read(self, content: bytes, form: str, via: str) -> dict | None:
        """The score of one answer; None for a bad answer (asked again), an ApiError when the server
        has given no usable answer yet (it cannot score this way)."""
        stats = self.stats
        body = self._counted(content, self.price)
        if body is None:
            if not self.answered:
                raise ApiError(f"the server answered with no completion ({content[:120]!r}); check --base-url")
            stats.answer_failures["bad_shape"] += 1
            return None
        if form == "multi":
            self.answered = True
            return self._free_answer(body)
        top_k = top_k_of_completion(body) if via == "completions" else top_k_of_chat(body)
        if top_k is None:
            # A server that never gives them stops the run; one answer without them (a content
            # filter, a refusal) among answers that had them is a bad answer, asked again.
            if not self.seen_logprobs:
                raise ApiError(self._no_logprobs(body, via))
            stats.answer_failures["no_logprobs"] += 1
            return None
        self.seen_logprobs = self.answered = True
        s = self.settings
        record, sign, answers = side_record(top_k, s.safe_answer, s.harmful_answer, s.readings)
        for answer in answers:
            self.counts.bounds += answer.bound
            if answer.other_spelling is not None:
                self.counts.unknown += 1
                self._warn_spelling(answer.answer, answer.other_spelling)
        record["via"], record["sign"] = via, sign
        return record

    def _free_answer(self, body: dict) -> dict:
        text = chat_text(body)
        try:
            choice = body["choices"][0]
            refusal, finish = choice["message"].get("refusal"), choice.get("finish_reason")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ApiError("the server's chat completion has no choices[0].message; check --base-url") from None
        answer = text if text is not None else (refusal if isinstance(refusal, str) else "")
        behavior = self.settings.behavior
        verdict = refuses(answer, behavior.refusal_markers, behavior.match_chars) if behavior else None
        record = {"answer": answer, "finish": finish, "refuses": verdict}
        if isinstance(refusal, str):
            record["api_refusal"] = True
        return record

    def _no_logprobs(self, body: dict, via: str) -> str:
        shown = orjson.dumps(body.get("choices") or body).decode()[:160]
        where = "/v1/completions" if via == "completions" else "chat completions"
        hint = ("pass --chat to ask chat completions with logprobs instead, or --form multi to score the free "
                "answers only" if via == "completions" else
                "this server does not return log-probabilities: pass --form multi to score the free answers only")
        return f"the server answered {where} for {self.settings.model} with no log-probabilities ({shown}); {hint}"

    def _warn_spelling(self, answer: str, spelled: str) -> None:
        if answer in self._warned_spellings:
            return
        self._warned_spellings.add(answer)
        bare, spaced = self.settings.readings.get(answer) or (answer, " " + answer)
        log.warning("the server spells the answer %r as %r, neither %r nor %r (a served model whose tokenizer "
                    "differs from --tokenizer?): such answers are marked unknown, with no log-probability",
                    answer, spelled, bare, spaced)


def scenario_record(scenario_id: int, scenario: Scenario, sides: dict[tuple[str, str], dict],
                    forms: tuple[str, ...], counts: ScoreCounts) -> dict:
    """One scores line from the answers of a scenario's requests."""
    record: dict = {"scenario_id": scenario_id, "texts": texts_hash(scenario)}
    if "single" in forms:
        clean, corrupt = sides["single", "prompt"], sides["single", "counterfactual"]
        flipped = flips(clean.pop("sign"), corrupt.pop("sign"))
        via = {clean.pop("via"), corrupt.pop("via")}  # both sides of a scenario asked the same way, or "mixed"
        record["single"] = {"via": via.pop() if len(via) == 1 else "mixed", "prompt": clean,
                            "counterfactual": corrupt, "flips": flipped}
        counts.flips["single: " + _word(flipped)] += 1
    if "multi" in forms:
        clean, corrupt = sides["multi", "prompt"], sides["multi", "counterfactual"]
        flipped = multi_flips(clean["refuses"], corrupt["refuses"])
        record["multi"] = {"prompt": clean, "counterfactual": corrupt, "flips": flipped}
        counts.flips["multi: " + _word(flipped)] += 1
    return record


def _word(flag: bool | None) -> str:
    return "undecided" if flag is None else "flips" if flag else "does not flip"


class ScorePipeline:
    def __init__(self, scorer: Scorer, scenarios: list[Scenario], scores: ScoresFile, stats: RunStats,
                 counts: ScoreCounts, *, concurrency: int, max_cost: float | None = None,
                 grace_period: float = 10.0, sync_seconds: float = 1.0) -> None:
        self.scorer, self.scenarios, self.scores, self.stats, self.counts = scorer, scenarios, scores, stats, counts
        self.concurrency, self.max_cost, self.grace_period = concurrency, max_cost, grace_period
        self.sync_seconds = sync_seconds
        forms = scorer.settings.forms
        self.jobs: deque[tuple[int, str, str, str]] = deque(
            (scenario_id, form, side, text)
            for scenario_id, scenario in enumerate(scenarios) if scenario_id not in scores.scored
            for form, side, text in requests_of(scenario, forms))
        self.parts = len(forms) * len(SIDES)
        self.pending: dict[int, dict[tuple[str, str], dict]] = {}
        self.given_up: set[int] = set()
        self.reserved_cost = 0.0  # the cost bounds of the requests in flight
        self.asking = 0  # requests in flight
        self.issued = 0
        self.stopping = False
        self.stop_reason: str | None = None
        self.interrupts = 0
        self._done = asyncio.Event()
        self._failure: BaseException | None = None
        self._syncing: asyncio.Task | None = None

    def _budget_allows(self, bound: float) -> bool:
        if self.max_cost is None:
            return True
        spent = self.stats.budget_spent_usd or 0.0
        return spent + self.reserved_cost + bound <= self.max_cost

    async def _worker(self) -> None:
        while self.jobs and not self.stopping:
            scenario_id, form, side, text = self.jobs[0]
            bound = self.scorer.cost_bound(form, text)
            if not self._budget_allows(bound):
                if not self.asking:  # nothing in flight will give budget back: stop here
                    self._stop("max_cost")
                    return
                await asyncio.sleep(0.05)  # answers in flight settle what they cost
                continue
            self.jobs.popleft()
            if scenario_id in self.given_up:
                continue
            self.issued += 1
            self.asking += 1
            self.reserved_cost += bound
            try:
                result = await self.scorer.ask(self.issued, form, side, text)
            finally:
                self.asking -= 1
                self.reserved_cost = self.reserved_cost - bound if self.asking else 0.0
            self._settle(scenario_id, form, side, result)

    def _settle(self, scenario_id: int, form: str, side: str, result: dict | None) -> None:
        if result is None:
            if not self.stopping and scenario_id not in self.given_up:
                self.given_up.add(scenario_id)
                self.counts.scenarios_given_up += 1
            self.pending.pop(scenario_id, None)
            return
        if scenario_id in self.given_up:
            return
        parts = self.pending.setdefault(scenario_id, {})
        parts[form, side] = result
        if len(parts) < self.parts:
            return
        del self.pending[scenario_id]
        record = scenario_record(scenario_id, self.scenarios[scenario_id], parts, self.scorer.settings.forms,
                                 self.counts)
        self.scores.append(record)
        self.stats.accepted += 1
        self.stats.accepted_this_run += 1
        if self.stats.first_accepted_s is None:
            self.stats.first_accepted_s = self.stats.elapsed

    def _stop(self, reason: str | None) -> None:
        if not self.stopping:
            self.stopping = True
            self.stop_reason = reason
            self.scorer.sender.stop()

    def interrupt(self) -> None:
        self.interrupts += 1
        if self.interrupts == 1:
            log.warning("%s", self.scorer.sender.stop_words(self.grace_period))
            self._stop("interrupted")
            asyncio.get_running_loop().call_later(self.grace_period, self._done.set)
        else:
            self.stop_reason = "interrupted"
            self._done.set()

    async def _sync_now_and_then(self) -> None:
        while True:
            await asyncio.sleep(self.sync_seconds)
            await asyncio.to_thread(self.scores.sync)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.interrupt)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (uvloop: ValueError)
                pass
        workers = [asyncio.create_task(self._worker(), name=f"scorer-{i}") for i in range(self.concurrency)]
        syncing = asyncio.create_task(self._sync_now_and_then())

        def done(task: asyncio.Task) -> None:
            if not task.cancelled() and task.exception() is not None and self._failure is None:
                self._failure = task.exception()
                self._stop("failed")
                self._done.set()
            if all(w.done() for w in workers):
                self._done.set()

        for worker in workers:
            worker.add_done_callback(done)
        try:
            await self._done.wait()
        finally:
            for task in (*workers, syncing):
                task.cancel()
            await asyncio.gather(*workers, syncing, return_exceptions=True)
        if self._failure is not None:
            raise self._failure

    @property
    def finished(self) -> bool:
        return len(self.scores.scored) >= len(self.scenarios)

