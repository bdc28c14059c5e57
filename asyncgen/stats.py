"""The counters of a run: what the progress line, the summary and the checkpoint report."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable


class TargetedResult:
    """What the Python API's results share (``GenerateResult``, ``BatchResult``, ``ScoreResult``):
    ``scenarios`` held, or scored, of the ``target`` asked for. A base of frozen dataclasses that
    have both fields."""

    scenarios: int
    target: int

    @property
    def finished(self) -> bool:
        """Whether ``scenarios`` reached ``target``: the dataset holds the scenarios asked for (for
        ``ScoreResult``: every scenario of the dataset is scored)."""
        return self.scenarios >= self.target


@dataclass
class RunStats:
    target: int
    accepted: int = 0  # scenarios in the dataset, including those from earlier runs
    accepted_this_run: int = 0
    candidates: int = 0
    duplicates: int = 0
    rejected: int = 0
    beyond_target: int = 0  # valid and new, but validated once the dataset held its target: not written
    rejections: Counter = field(default_factory=Counter)  # "tokenizer/form: reason kind" or text reason
    # Every attempt sent ends one way: sent == ok + sum(retries) + sum(resent_another_way) + given_up
    # + failed + cancelled (+ in_flight while the run goes on).
    requests_sent: int = 0  # attempts, retries included
    requests_ok: int = 0  # answered (HTTP 200), whatever the answer held
    requests_given_up: int = 0  # requests whose last attempt failed too
    requests_failed: int = 0  # attempts that ended the run (a permanent error)
    requests_cancelled: int = 0  # attempts in flight when the run stopped
    stopping: str | None = None  # why the run is stopping (no new requests): its progress shows it, not an ETA
    retries: Counter = field(default_factory=Counter)  # failed attempts tried again, by cause
    # Attempts the server refused for the way they asked, not for the request (an endpoint it lacks,
    # a response format it refuses), sent again at once another way: no retry, by cause.
    resent_another_way: Counter = field(default_factory=Counter)
    # Attempts abandoned while the server may have been generating (timeouts, cancelled at stop):
    # a server may bill for what it generated, which no answer reports, so their cost is unknown.
    abandoned_attempts: int = 0
    # The most they may have cost: each at the cost bound of its request (what --max-cost counts).
    abandoned_cost_bound_usd: float = 0.0
    answer_failures: Counter = field(default_factory=Counter)  # answers with no pair: bad_json, bad_shape, no_pairs, refusal, length, content_filter, empty
    dropped_items: Counter = field(default_factory=Counter)  # items of a pairs list that were no pair, by kind
    over_cap_answers: int = 0  # answers longer than the output cap (the server ignored it)
    output_cap: int | None = None  # the output cap in force (learned from the answers; None: none answered yet)
    cut_at_cap: int = 0  # answers cut at their output cap (finish_reason length): the cap was too low
    last_error: str | None = None  # the server's words on the latest failed attempt (key-redacted)
    rate_limited: int = 0
    in_flight: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float | None = 0.0  # None once any response's model has no price
    cost_before_usd: float | None = 0.0  # carried over from the checkpoint on resume
    cost_simulated: bool = False  # the offline simulator's usage at real prices: not money spent
    carried: dict = field(default_factory=dict)  # the checkpoint's run_state: earlier runs' totals
    started: float = field(default_factory=time.monotonic)
    first_accepted_s: float | None = None
    on_usage: Callable[[], None] | None = field(default=None, repr=False, compare=False)  # e.g. journal it

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def unchecked(self) -> int:
        """Candidates of this run never validated: answers that arrived after the target was reached
        (or the run was stopped). With ``rejected``, ``duplicates``, ``accepted_this_run`` and
        ``beyond_target`` they make up ``candidates``."""
        return max(0, self.candidates - self.rejected - self.duplicates - self.accepted_this_run - self.beyond_target)

    @property
    def total_cost_usd(self) -> float | None:
        if self.cost_usd is None or self.cost_before_usd is None:
            return None
        return self.cost_before_usd + self.cost_usd

    @property
    def abandoned_bound_in_all_usd(self) -> float:
        """The abandoned attempts' cost bound, this run's and the earlier runs' of the dataset."""
        carried = self.carried.get("abandoned_cost_bound_usd")
        return self.abandoned_cost_bound_usd + (carried if isinstance(carried, (int, float)) else 0.0)

    @property
    def budget_spent_usd(self) -> float | None:
        """What --max-cost counts as spent: the answers' cost, plus the abandoned attempts at their bound
        (a server bills what it generated for an attempt whose answer never arrived)."""
        total = self.total_cost_usd
        return None if total is None else total + self.abandoned_bound_in_all_usd

    def add_abandoned(self, cost_bound: float | None) -> None:
        """One attempt abandoned (timed out, or in flight at the stop) of a request whose cost bound is ``cost_bound``."""
        self.abandoned_attempts += 1
        self.abandoned_cost_bound_usd += cost_bound or 0.0
        if self.on_usage is not None:
            self.on_usage()

    def add_cost(self, usd: float | None) -> None:
        """One answered request's cost (its tokens are counted first); tells ``on_usage``."""
        self.cost_usd = None if usd is None or self.cost_usd is None else self.cost_usd + usd
        if self.on_usage is not None:
            self.on_usage()

    def to_run_state(self) -> dict:
        """What the checkpoint keeps: totals over every run that wrote this dataset."""
        this_run = {
            "requests_ok": self.requests_ok,
            "requests_sent": self.requests_sent,
            "abandoned_attempts": self.abandoned_attempts,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "candidates": self.candidates,
            "accepted": self.accepted_this_run,
            "beyond_target": self.beyond_target,
            "unchecked": self.unchecked,
        }
        totals = {key: value + count_of(self.carried.get(key)) for key, value in this_run.items()}
        if count_of(self.carried.get("runs")) and "beyond_target" not in self.carried:
            del totals["beyond_target"], totals["unchecked"]  # earlier runs did not count them: unknown
        carried_rejections = self.carried.get("rejections")
        rejections = Counter(
            {k: count_of(v) for k, v in carried_rejections.items()} if isinstance(carried_rejections, dict) else {}
        )
        rejections.update(self.rejections)
        # cost_usd is what answers reported; abandoned_attempts may have cost more (unknown).
        return {"cost_usd": self.total_cost_usd, **totals, "runs": count_of(self.carried.get("runs")) + 1,
                "abandoned_cost_bound_usd": self.abandoned_bound_in_all_usd,
                "rejected": self.rejected + count_of(self.carried.get("rejected")),
                "duplicates": self.duplicates + count_of(self.carried.get("duplicates")),
                "rejections": dict(rejections.most_common())}


def count_of(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
