"""Planning a round of batch requests: how many, in which files, at what cost. Pure functions.

A round asks for ``deficit`` more scenarios. A round of the Batch API takes up to a day, so it is
sized to reach the target by itself in at least ``ONE_ROUND_PROBABILITY`` of cases, from the
measured yield (valid new pairs per request: a pilot of a few real-time requests, or earlier rounds
in the same directory) and its spread: see ``requests_to_reach``. When ``batch run`` may finish a
small shortfall with real-time requests (seconds, not another day), the round only needs to come
within that allowance, and is sized for the least expected waste: see ``round_size``. Before
anything is measured, the task's prior (half of ``batch_size``, as ``run`` assumes before its first
answer) with a ``MARGIN``. Requests are split into ``num_batches`` files, more if a file would
pass the Batch API's limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist, fmean, stdev
from typing import TYPE_CHECKING, Sequence

import orjson

from asyncgen.batch.ledger import custom_id
from asyncgen.config import Task
from asyncgen.prices import Price
from asyncgen.prompting import (
    AVOID_CHARS,
    GenerationSettings,
    estimate_prompt_tokens,
    max_output_tokens,
    request_avoid_list,
    request_body,
    request_cost_bound as one_request_cost_bound,
)

if TYPE_CHECKING:
    from asyncgen.batch.manifest import Manifest

MAX_REQUESTS_PER_FILE = 50_000  # the Batch API's limits per input file
MAX_BYTES_PER_FILE = 200 * 1024 * 1024
PRIOR_YIELD_SHARE = 0.5  # as run's pipeline: before anything is measured, half of a request's pairs
MARGIN = 1.1  # 10 % more requests than the expected yield needs: a top-up round costs a day
ENDPOINT = "/v1/chat/completions"


@dataclass(frozen=True)
class Plan:
    files: list[list[bytes]]  # JSONL lines per file
    requests: int  # lines in all files
    new_requests: int  # of which new (the rest resubmitted)
    expected_tokens: tuple[float, float]  # input, output over all requests
    worst_cost_usd: float | None
    capped_by_budget: bool


def prior_yield(task: Task) -> float:
    return PRIOR_YIELD_SHARE * task.batch_size


def requests_needed(deficit: int, yield_per_request: float) -> int:
    """At the prior yield (nothing measured): ``MARGIN`` more than the yield needs."""
    if deficit <= 0:
        return 0
    return max(1, math.ceil(deficit * MARGIN / max(yield_per_request, 0.01) - 1e-9))


ONE_ROUND_PROBABILITY = 0.9  # a round sized from a measured yield reaches the target alone this often
# The spread of one request's yield relative to its mean, assumed only to size a pilot's first wave
# (what it measures is used for the rest and for the round); the offline simulator's is about 0.22.
PRIOR_SPREAD = 0.3
PILOT_MIN, PILOT_MAX = 4, 60
PILOT_WAVES = 3  # the pilot's requests go out in at most this many waves, each sized by what the last measured
# A smaller round is sized by the prior: a pilot would cost more than the margin it saves (four
# real-time requests are 8 % of a 100-request round, and measure the mean to about 10 % only).
PILOT_MIN_ROUND = 100
# What one pilot request costs beyond the batch request it replaces, in batch requests: it is paid
# at real-time prices (twice the batch price) and its pairs go into the dataset, one request fewer
# for the round to ask.
PILOT_PREMIUM = 1.0


@dataclass(frozen=True)
class YieldEstimate:
    """Valid new pairs per request: the mean, the spread (standard deviation) of one request's
    yield, and how many requests the mean was measured on."""

    mean: float
    spread: float
    requests: int

    @classmethod
    def of(cls, yields: Sequence[float], pairs_asked: int = 0) -> "YieldEstimate":
        """From the yields of single requests (at least two). With ``pairs_asked`` (per request),
        the spread is at least the binomial one, ``sqrt(b x p x (1 - p))`` for ``b`` pairs asked each
        valid with ``p = mean / b``: pairs that come right or wrong together only add to it, and a
        few requests that happen to agree must not make the round look certain."""
        mean, spread = fmean(yields), stdev(yields)
        if pairs_asked > 0:
            share = min(max(mean / pairs_asked, 0.0), 1.0)
            spread = max(spread, math.sqrt(pairs_asked * share * (1 - share)))
        return cls(mean, spread, len(yields))


def requests_to_reach(deficit: int, estimate: YieldEstimate, probability: float = ONE_ROUND_PROBABILITY) -> int:
    """The fewest requests whose pairs reach ``deficit`` with ``probability``. Pure.

    The sum of n requests' yields is taken as normal, with mean ``n x mean`` and variance
    ``n x spread^2`` (requests differ) ``+ n^2 x spread^2 / measured`` (the mean itself is known
    from ``measured`` requests only): the one-sided bound ``n x mean - z x sd`` must reach the deficit.
    The spread too is measured on those requests, so the bound is Student's t with ``measured - 1``
    degrees of freedom, not the normal's (a pilot of 8 would reach 9 times in 10 only 87 times in
    100 with the normal's). A mean too uncertain for any n is taken at half its value."""
    if deficit <= 0:
        return 0
    mean = max(estimate.mean, 0.01)
    measured = max(estimate.requests, 1)
    z = t_quantile(probability, measured - 1)

    def reaches(n: int) -> bool:
        return n * mean - z * estimate.spread * math.sqrt(n + n * n / measured) >= deficit

    if mean - z * estimate.spread / math.sqrt(measured) <= mean / 2:
        return max(1, math.ceil(deficit / (mean / 2) - 1e-9))
    low, high = max(1, math.floor(deficit / mean)), max(1, math.ceil(deficit / mean))
    while not reaches(high):
        low, high = high, high * 2
    while low < high:  # the bound grows with n: the smallest n that reaches
        middle = (low + high) // 2
        if reaches(middle):
            high = middle
        else:
            low = middle + 1
    return high


# Without --max-cost, `batch run` plans no round for a measured yield under this share of the prior:
# the task or the model is not doing what it should, and the round would cost many times the plan's.
LOWEST_YIELD_SHARE = 0.1
# A round of `batch run` that ends short by at most this share of the target is finished with
# real-time requests (seconds, at real-time prices: one batch request's price more per request)
# instead of another round of up to a day (--real-time-finish).
FINISH_SHARE = 0.1


def round_size(deficit: int, estimate: YieldEstimate, finish_allowance: int = 0,
               probability: float = ONE_ROUND_PROBABILITY) -> int:
    """Requests of a round for ``deficit`` scenarios when a shortfall of up to ``finish_allowance``
    scenarios is finished in real time: enough to come within the allowance with ``probability``,
    and at least the median's (``deficit / mean``). Beyond that, a request more is a surplus
    request's price saved only when the round falls short, which the finish pays one batch
    request's price more for: a pair short costs what a pair over does, so the least expected
    waste (``expected_waste``) is at the median. With no allowance: ``requests_to_reach``. Pure."""
    if deficit <= 0:
        return 0
    within = requests_to_reach(deficit - finish_allowance, estimate, probability) if deficit > finish_allowance else 0
    return max(within, requests_to_reach(deficit, estimate, 0.5))


def expected_waste(requests: int, deficit: int, estimate: YieldEstimate) -> float:
    """What a round of ``requests`` is expected to waste for ``deficit``, in batch requests: its
    surplus (pairs paid for beyond the deficit) and its shortfall (pairs asked again, in real time
    at one batch request's price more per request, or in another round). The sum of the round's
    yields as in ``requests_to_reach``: normal, its variance the requests' and the mean's. Pure."""
    mean = max(estimate.mean, 0.01)
    over = requests * mean - deficit  # pairs, expected
    sd = estimate.spread * math.sqrt(requests + requests * requests / max(estimate.requests, 1))
    if sd <= 0:
        return abs(over) / mean
    z = over / sd
    normal = NormalDist()
    return (2 * sd * normal.pdf(z) + over * (2 * normal.cdf(z) - 1)) / mean  # E|X| for X ~ N(over, sd^2)


# A round's candidates repeat one another more the more of them there are (a model, like the
# simulator's lexicon, has favourite pairs): of a round of C candidates, about
# DUPLICATES_AT_1000 x sqrt(C / 1000) repeat. A pilot's few dozen candidates cannot measure it; this
# is what the offline simulator shows (`run` and `batch run` of 1,500: 7.1-7.6 % of 2,260-2,430
# candidates; `batch run` of 6,000: 17.2 % of 13,200). Top-ups are sized by the yield the rounds
# measured, duplicates included, instead.
DUPLICATES_AT_1000 = 0.049


def at_round_scale(estimate: YieldEstimate, deficit: int, pairs_asked: int) -> YieldEstimate:
    """A pilot's yield estimate for a round that reaches ``deficit``: its mean less the duplicates
    the round's own candidates will have among themselves (``DUPLICATES_AT_1000``). Pure."""
    scaled = estimate
    for _ in range(3):  # the round's size depends on the yield, which depends on the size: converges at once
        candidates = requests_to_reach(deficit, scaled) * pairs_asked
        share = duplicate_share(candidates)
        scaled = YieldEstimate(estimate.mean * (1 - share), estimate.spread, estimate.requests)
    return scaled


def duplicate_share(candidates: int) -> float:
    """The share of a round's ``candidates`` expected to repeat one another (see ``DUPLICATES_AT_1000``)."""
    return min(0.5, DUPLICATES_AT_1000 * math.sqrt(candidates / 1000))


def t_quantile(probability: float, degrees_of_freedom: int) -> float:
    """Student's t quantile, by the Cornish-Fisher expansion around the normal's (within 1 % from 3
    degrees of freedom on; fewer are taken as 3, the normal's beyond 10,000). Pure."""
    z = NormalDist().inv_cdf(probability)
    if degrees_of_freedom > 10_000:
        return z
    v = max(degrees_of_freedom, 3)
    return (z + (z**3 + z) / (4 * v) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3))


def yield_estimate(manifest: "Manifest", pairs_asked: int, deficit: int = 0) -> tuple[YieldEstimate | None, str]:
    """The yield a round is sized by, and where it comes from: the batch rounds processed in the
    directory of ``manifest`` (their mean over every answered request; the spread of one request's
    yield from the pilot, else the binomial one of the ``pairs_asked``), else the pilot alone, less
    the duplicates a round for ``deficit`` will have among its own candidates; None before anything
    is measured."""
    pilot_yields = manifest.totals.get("pilot_yields") or []
    measured = manifest.yield_per_request()
    answered = manifest.totals.get("requests_ok", 0)
    if measured is not None:
        spread = (YieldEstimate.of(pilot_yields, pairs_asked).spread if len(pilot_yields) >= 2
                  else YieldEstimate.of([measured, measured], pairs_asked).spread)
        return (YieldEstimate(measured, spread, answered),
                f"measured over the {answered} requests processed in this directory")
    if len(pilot_yields) >= 2:
        estimate = YieldEstimate.of(pilot_yields, pairs_asked)
        scaled = at_round_scale(estimate, deficit, pairs_asked)
        return scaled, (f"measured by a pilot of {len(pilot_yields)} real-time requests ({estimate.mean:.1f}, spread "
                        f"{estimate.spread:.1f}), less {1 - scaled.mean / estimate.mean:.0%} for the duplicates a round this size has")
    return None, f"prior: half of the {pairs_asked} pairs asked, nothing measured yet"


def pilot_size(deficit: int, prior: float, batch_size: int, finish_allowance: int = 0) -> int:
    """The first wave of real-time requests that measure the yield before a first round is sized:
    0 when the deficit is too small to be worth it. Half of ``best_pilot`` at the prior yield and
    ``PRIOR_SPREAD`` (the prior is a guess: the later waves are sized by what this one measures),
    at most as many pairs as the deficit asks, so the pilot never leaves a surplus. Pure."""
    room = deficit // max(batch_size, 1)
    round_requests = deficit / max(prior, 0.01)
    if room < PILOT_MIN or round_requests < PILOT_MIN_ROUND:
        return 0
    assumed = YieldEstimate(prior, PRIOR_SPREAD * prior, PILOT_MIN)
    return min(max(PILOT_MIN, math.ceil(best_pilot(deficit, assumed, 0, room, finish_allowance) / 2)), room)


def best_pilot(deficit: int, estimate: YieldEstimate, pairs_asked: int, most: int = PILOT_MAX,
               finish_allowance: int = 0) -> int:
    """How many pilot requests in all (at least the ``estimate.requests`` measured, at most
    ``most``) make the least of what they and the round's waste cost, in batch requests: each
    pilot request ``PILOT_PREMIUM``; the waste, ``expected_waste`` of the round ``round_size``
    gives at the round's scale, as if the mean and spread measured so far had been measured on k
    requests. The waste shrinks about as ``c x spread x R / sqrt(k)`` for a round of R requests
    (``c`` about 0.8 for a round at the median, about the normal quantile for one that must reach
    the target alone), the premium grows as k: their sum is least near
    ``k = (c x spread x R / (2 x mean))^(2/3)``. Pure."""
    done = max(estimate.requests, 1)
    most = max(min(most, PILOT_MAX), done)
    if deficit <= 0 or estimate.mean <= 0:
        return done

    def cost(k: int) -> float:
        measured = YieldEstimate(estimate.mean, estimate.spread, k)
        scaled = at_round_scale(measured, deficit, pairs_asked) if pairs_asked else measured
        return PILOT_PREMIUM * k + expected_waste(round_size(deficit, scaled, finish_allowance), deficit, scaled)

    return min(range(done, most + 1), key=lambda k: (cost(k), k))


def pilot_wave(deficit: int, yields: Sequence[int], batch_size: int, prior: float, finish_allowance: int = 0) -> int:
    """How many real-time requests the pilot's next wave sends, given the ``yields`` its earlier
    waves measured (valid new pairs per request) and the ``deficit`` left after their pairs: the
    first wave ``pilot_size``; a later one as many as ``best_pilot`` adds; 0: the pilot is over.
    Never more pairs than the deficit asks. Pure."""
    room = deficit // max(batch_size, 1)
    if not yields:
        return pilot_size(deficit, prior, batch_size, finish_allowance)
    if len(yields) < 2 or deficit <= 0:
        return 0
    estimate = YieldEstimate.of(yields, batch_size)
    return min(best_pilot(deficit, estimate, batch_size, len(yields) + room, finish_allowance) - len(yields), room)


def request_cost_bound(task: Task, price: Price | None, avoid_chars: int = AVOID_CHARS) -> float | None:
    """Worst-case batch USD of one request: run's bound at batch prices, at the task's output bound
    (the cap every batch request is sent with; see ``request_line``)."""
    return one_request_cost_bound(task, price, avoid_chars, batch=True)


def request_line(task: Task, settings: GenerationSettings, directory_id: str, number: int, avoid_pool: Sequence[str],
                 avoid_chars: int = AVOID_CHARS) -> bytes:
    """One batch input line, with run's request body and avoid list (``avoid_chars`` characters of
    ``avoid_pool``, drawn by the request's number); its custom_id names the directory and the number.

    Its output cap is the task's bound, not a cap learned from earlier rounds' answers: a batch is
    billed for the tokens its answers use, not for the cap, so a lower cap would save nothing and
    risk answers cut short, found only when the batch ends (up to 24 h later) and paid for again."""
    body = request_body(task, settings, request_avoid_list(avoid_pool, avoid_chars, number), number)
    return orjson.dumps({"custom_id": custom_id(directory_id, number), "method": "POST", "url": ENDPOINT, "body": body}) + b"\n"


def split(lines: list[bytes], num_batches: int) -> list[list[bytes]]:
    """``lines`` in ``num_batches`` files of near-equal size, more if one would pass the limits."""
    if not lines:
        return []
    files = max(1, min(num_batches, len(lines)), math.ceil(len(lines) / MAX_REQUESTS_PER_FILE),
                math.ceil(sum(map(len, lines)) / MAX_BYTES_PER_FILE))
    while True:
        size = math.ceil(len(lines) / files)
        chunks = [lines[i : i + size] for i in range(0, len(lines), size)]
        if all(sum(map(len, c)) <= MAX_BYTES_PER_FILE for c in chunks):
            return chunks
        files += 1


def affordable(needed: int, bound: float | None, budget_left: float | None) -> tuple[int, bool]:
    """How many of ``needed`` requests fit ``budget_left`` USD at worst ``bound`` each; and whether capped."""
    if budget_left is None or not bound:
        return needed, False
    fits = max(0, int(budget_left / bound + 1e-9))
    return min(needed, fits), fits < needed


def plan_round(
    task: Task,
    settings: GenerationSettings,
    price: Price | None,
    *,
    count: int,
    directory_id: str,
    first_number: int,
    num_batches: int,
    avoid_pool: Sequence[str] = (),
    avoid_chars: int = AVOID_CHARS,
    resubmit: Sequence[bytes] = (),
    measured_tokens: tuple[float, float] | None = None,
    capped_by_budget: bool = False,
) -> Plan:
    """A round of ``resubmit`` lines (first, as they are) and ``count`` new requests numbered from
    ``first_number``, in files. Expected tokens: ``measured_tokens`` per request (means of earlier
    rounds) when given, else the prompt estimate and the output cap."""
    new = [request_line(task, settings, directory_id, first_number + i, avoid_pool, avoid_chars) for i in range(count)]
    lines = list(resubmit) + new
    if measured_tokens:
        expected = (len(lines) * measured_tokens[0], len(lines) * measured_tokens[1])
    else:
        prompt = sum(estimate_prompt_tokens(orjson.loads(line)["body"]["messages"]) for line in lines)
        expected = (prompt, len(lines) * max_output_tokens(task))
    bound = request_cost_bound(task, price, avoid_chars)
    return Plan(split(lines, num_batches), len(lines), count, expected,
                None if bound is None else bound * len(lines), capped_by_budget)
