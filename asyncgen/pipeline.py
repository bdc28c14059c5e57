"""The real-time pipeline: workers -> candidate queue -> validator pool -> dedup -> sink.

- ``concurrency`` worker tasks each hold at most one request in flight (a hard bound). A worker
  starts a request only while ``accepted + outstanding requests x learned yield < target`` and the
  cost budget allows its worst case.
- Each request's pairs go onto a bounded ``asyncio.Queue``; validator tasks drain it in batches
  into the process pool (``PairValidator``), so the event loop never tokenizes.
- One writer task owns the sink: it accepts scenarios through ``Acceptance`` (dedup, append,
  counters; shared with ``batch process``) and fsyncs in a thread when the durability policy
  says so. It stops the run at exactly ``target`` scenarios.
- SIGINT/SIGTERM: stop issuing, give in-flight requests ``grace_period`` seconds, flush, summarise.
  A second signal stops at once; the sink is consistent either way (one write per scenario).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable

from asyncgen.acceptance import Acceptance
from asyncgen.annotations import Sidecar
from asyncgen.config import Task
from asyncgen.errors import RunError
from asyncgen.prompting import AVOID_CHARS, AVOID_MAX_CHARS, AVOID_POOL, avoid_pool, request_avoid_list
from asyncgen.sink import ScenarioSink
from asyncgen.stats import RunStats
from asyncgen.validate import PairValidator, Verdict
from asyncgen.workers import Generator

log = logging.getLogger("asyncgen.pipeline")

PRIOR_YIELD_SHARE = 0.5  # before any request settles, expect half of a batch to be accepted
PRIOR_WEIGHT = 2.0  # how many requests' worth the prior counts for
VALIDATION_BATCH_PAIRS = 256
GIVE_UP_AFTER = 25  # requests in a row with no new scenario (at least 2 x concurrency) end the run


@dataclass
class _Candidates:
    request_number: int
    pairs: list[tuple[str, str]]


@dataclass
class _Window:
    """Counters at one moment; ``since`` gives what happened after it."""

    candidates: int = 0
    duplicates: int = 0
    rejected: int = 0
    bad_answers: Counter = field(default_factory=Counter)
    given_up: int = 0
    answered: int = 0
    rejections: Counter = field(default_factory=Counter)

    @classmethod
    def of(cls, stats: RunStats) -> "_Window":
        return cls(stats.candidates, stats.duplicates, stats.rejected, Counter(stats.answer_failures),
                   stats.requests_given_up, stats.requests_ok, Counter(stats.rejections))

    def since(self, stats: RunStats) -> "_Window":
        now = _Window.of(stats)
        return _Window(now.candidates - self.candidates, now.duplicates - self.duplicates, now.rejected - self.rejected,
                       now.bad_answers - self.bad_answers, now.given_up - self.given_up, now.answered - self.answered,
                       now.rejections - self.rejections)

    def cause(self, dataset_size: int) -> str:
        """The main reason these requests brought nothing, in the user's terms, with what to do."""
        bad = ", ".join(f"{kind}: {n}" for kind, n in self.bad_answers.most_common())
        if self.candidates == 0:
            if self.given_up and not self.answered:
                return (f"{self.given_up} were given up after their retries (see the retries in the summary); "
                        "check that the server at --base-url is up and answers in time (--request-timeout)")
            return (f"{self.answered} answers held no usable pair ({bad or 'empty answers'}); "
                    "check --model and the task's instructions")
        if self.duplicates >= self.rejected:
            return (f"{self.duplicates} of the last {self.candidates} candidates were duplicates of the dataset "
                    f"({dataset_size} scenarios) or of each other; the model (or the simulator's lexicon) is "
                    "running out of new pairs: vary the task's instructions or ask for fewer scenarios")
        top = ", ".join(f"{kind}: {n}" for kind, n in self.rejections.most_common(3))
        return (f"{self.rejected} of the last {self.candidates} candidates failed the one-token rule ({top}); "
                "check the task's instructions and examples (`asyncgen check-pairs` shows why a pair fails)")


class Pipeline:
    def __init__(
        self,
        task: Task,
        generator: Generator,
        validator: PairValidator,
        sink: ScenarioSink,
        stats: RunStats,
        *,
        concurrency: int,
        max_cost: float | None = None,
        request_cost_bound: Callable[[], float] = lambda: 0.0,
        avoid_chars: int = AVOID_CHARS,
        grace_period: float = 10.0,
        first_request_number: int = 0,
        annotations: "Sidecar | asyncio.Future[Sidecar] | None" = None,
        handle_signals: bool = True,
    ) -> None:
        self.task, self.generator, self.validator, self.sink, self.stats = task, generator, validator, sink, stats
        # An open still under way (a future): joined before the first scenario is written.
        self._annotations_opening = annotations if isinstance(annotations, asyncio.Future) else None
        self.acceptance = Acceptance(task, sink, stats, None if self._annotations_opening else annotations)
        self.concurrency = concurrency
        # The worst-case USD of the next request, at the output cap in force: read just before the
        # request starts, which reads the same cap before its first await.
        self.max_cost, self.request_cost_bound = max_cost, request_cost_bound
        self.avoid_chars = avoid_chars
        self.grace_period = grace_period
        # SIGINT/SIGTERM stop the run (``interrupt``) when it runs on the main thread's own loop; not on
        # a loop that someone else's code owns (a notebook kernel's), whose handlers it would replace.
        self.handle_signals = handle_signals
        self.candidates: asyncio.Queue[_Candidates] = asyncio.Queue(maxsize=2 * concurrency)
        self.verdicts: asyncio.Queue[tuple[list[_Candidates], list[Verdict]]] = asyncio.Queue()
        self.outstanding = 0  # requests issued whose candidates are not yet written or dropped
        self.settled = 0
        # Request numbers (and the seeds derived from them) go on from where earlier runs stopped, so
        # a resumed run does not ask again for the answers it already has.
        self.issued = first_request_number
        self.reserved_cost = 0.0
        self.unproductive = 0  # requests in a row that brought no new scenario
        self.give_up_after = max(GIVE_UP_AFTER, 2 * concurrency)
        self.recent_prompts: deque[str] = deque(avoid_pool(task, sink.resumed_prompts), maxlen=AVOID_POOL)
        self.window = _Window()  # what the requests since the last new scenario brought
        self.stopping = False  # no new requests
        self.stop_reason: str | None = None  # why the run ended early (interrupt, budget)
        self.interrupts = 0
        self._changed = asyncio.Condition()
        self._done = asyncio.Event()
        self._failure: BaseException | None = None
        self._wake_task: asyncio.Task | None = None

    # --- scheduling ---------------------------------------------------------------------------

    def expected_yield(self) -> float:
        prior = PRIOR_YIELD_SHARE * self.task.batch_size
        return (self.stats.accepted_this_run + PRIOR_WEIGHT * prior) / (self.settled + PRIOR_WEIGHT)

    def _remaining(self) -> int:
        return self.acceptance.remaining()

    def _budget_allows(self) -> bool:
        if self.max_cost is None:
            return True
        spent = self.stats.budget_spent_usd or 0.0
        return spent + self.reserved_cost + self.request_cost_bound() <= self.max_cost

    def _may_issue(self) -> bool:
        return (
            not self.stopping
            and self._remaining() > self.outstanding * self.expected_yield()
            and self._budget_allows()
        )

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
        if self.max_cost is not None and not self.stopping and self.outstanding == 0 and not self._budget_allows():
            self._stop("max_cost")

    # --- stages -------------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: self.stopping or self._may_issue())
            if self.stopping:
                return
            self.issued += 1
            number = self.issued
            self.outstanding += 1
            bound = self.request_cost_bound()
            self.reserved_cost += bound
            avoid = request_avoid_list(self.recent_prompts, self.avoid_chars, number)
            try:
                pairs = await self.generator.generate(number, avoid)
            except BaseException:
                self.outstanding -= 1
                self.reserved_cost -= bound
                raise
            self.reserved_cost -= bound
            await self.candidates.put(_Candidates(number, pairs))

    async def _validate(self) -> None:
        while True:
            batch = [await self.candidates.get()]
            size = len(batch[0].pairs)
            while size < VALIDATION_BATCH_PAIRS and not self.candidates.empty():
                item = self.candidates.get_nowait()
                batch.append(item)
                size += len(item.pairs)
            pairs = self.acceptance.fresh(pair for item in batch for pair in item.pairs)
            verdicts = await self._validated(pairs) if pairs else []
            await self.verdicts.put((batch, verdicts))

    async def _validated(self, pairs: list[tuple[str, str]]) -> list[Verdict]:
        if self.validator.workers > 0:
            return await asyncio.wrap_future(self.validator.submit(pairs))
        # Inline mode still keeps tokenizing off the event loop (tokenizers releases the GIL).
        return await asyncio.to_thread(self.validator.validate, pairs)

    async def _write(self) -> None:
        stats = self.stats
        while True:
            batch, verdicts = await self.verdicts.get()
            await self._annotations_ready()
            accepted_before = stats.accepted_this_run
            taken = self.acceptance.take(verdicts)
            stats.beyond_target += len(taken.surplus)  # counted, not kept (batch keeps them as spares)
            for verdict in taken.accepted:
                if len(verdict.prompt) <= AVOID_MAX_CHARS:
                    self.recent_prompts.append(verdict.prompt)
            self.outstanding -= len(batch)
            self.settled += len(batch)
            if stats.accepted_this_run > accepted_before:
                self.unproductive, self.window = 0, _Window.of(stats)
            else:
                self.unproductive += len(batch)
            if self.sink.sync_due():
                await asyncio.to_thread(self.sink.sync, stats.to_run_state())
            if self._remaining() <= 0:
                self._stop(None)
                self._done.set()
                return
            if self.stopping and self.outstanding == 0:
                self._done.set()
                return
            if self.unproductive >= self.give_up_after:
                raise RunError(
                    f"the last {self.unproductive} requests gave no new scenario: "
                    f"{self.window.since(stats).cause(self.sink.count)}; then run again to resume"
                )
            await self._notify()

    # --- control ------------------------------------------------------------------------------

    def _stop(self, reason: str | None) -> None:
        if not self.stopping:
            self.stopping = True
            self.stop_reason = reason
            self.stats.stopping = reason or "target reached"
            self.generator.stop()  # "no new requests" includes those waiting for the rate limits
            # Keep a reference: the loop holds tasks only weakly.
            self._wake_task = asyncio.get_running_loop().create_task(self._notify())
            if self.outstanding == 0:
                self._done.set()

    def interrupt(self) -> None:
        self.interrupts += 1
        if self.interrupts == 1:
            log.warning("%s", self.generator.sender.stop_words(self.grace_period))
            self._stop("interrupted")
            asyncio.get_running_loop().call_later(self.grace_period, self._done.set)
        else:
            self.stop_reason = "interrupted"
            self._done.set()

    def _on_task_done(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self._failure is None:
            self._failure = exc
            self._done.set()

    async def run(self) -> None:
        """Run until the target is reached, the run is stopped, or a stage fails (re-raised)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM) if self.handle_signals else ():
            try:
                loop.add_signal_handler(sig, self.interrupt)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
                pass
        workers = [asyncio.create_task(self._worker(), name=f"worker-{i}") for i in range(self.concurrency)]
        validators = [
            asyncio.create_task(self._validate(), name=f"validator-{i}")
            for i in range(max(1, self.validator.workers))
        ]
        writer = asyncio.create_task(self._write(), name="writer")
        for task in (*workers, *validators, writer):
            task.add_done_callback(self._on_task_done)
        if self._remaining() <= 0:
            self._done.set()
        await self._notify()  # stops at once if not even one request fits the budget
        try:
            await self._done.wait()
        finally:
            # The signal handlers stay until the loop closes: a Ctrl-C during the final flush only
            # repeats "stop now", it does not raise KeyboardInterrupt into the sink's close.
            for task in (*workers, *validators, writer):
                task.cancel()
            await asyncio.gather(*workers, *validators, writer, return_exceptions=True)
        if self._failure is not None:
            raise self._failure
        await self._annotations_ready()  # a run that wrote nothing still brings the sidecar in line

    async def _annotations_ready(self) -> None:
        if self._annotations_opening is not None:
            self.acceptance.annotations = await asyncio.shield(self._annotations_opening)
            self._annotations_opening = None
