"""Benchmark the pair validator against the tokenizers' own encode_batch, on the same pairs.

    python bench/validator.py [--quick] [--pairs N] [--workers W] [--batch-size B] [--cache-dir DIR]

Candidate pairs are drawn (seeded) from the refusal task's lexicon, a mix of valid and invalid
ones, and cut into batches of the size the validator gets (the task's ``batch_size``: one model
answer). On those batches, in one run, it measures in pairs per second:

- raw: ``tokenizer.backend.encode_batch(texts)`` (the tokenizers library's plain ``encode_batch``)
  over each batch's rendered texts (4 per pair), every tokenizer in turn, as the validator does:
  the whole pass is the reference the ratios use (the validator must encode under every
  tokenizer); each tokenizer's own calls, timed within that pass, give its per-tokenizer rate;
- ``validate_pairs`` inline on the same batches;
- ``PairValidator(workers=W)``, a process pool, with several batches in flight at once. Pool
  start-up (spawning the workers and loading their tokenizers) is timed separately, not counted.

Each measurement is repeated, interleaved with the others, and the best repeat is kept (the
machine may be shared). ``run(quick)`` returns the numbers as a dict (for bench/run.py).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import random
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asyncgen.config import Task, load_task  # noqa: E402
from asyncgen.scenario import Scenario  # noqa: E402
from asyncgen.tokenizers import resolve_specs  # noqa: E402
from asyncgen.validate import PairValidator, text_rejection, validate_pairs  # noqa: E402

QUICK = {"pairs": 1_500, "repeats": 4}
FULL = {"pairs": 4_000, "repeats": 5}
LONG_FILLER_CHARS = 7  # as the simulator: longer fillers are likely several tokens somewhere
MIX = (  # kind of candidate, share; about what a model (or the simulator) hands the validator
    ("perfect", 0.62),
    ("long_filler", 0.15),
    ("second_word", 0.15),
    ("identical", 0.04),
    ("newline", 0.04),
)
# Appended to both texts of a pair (the same tail), so the requests run ~10-15 words like a model's.
TAILS = ("", "", " Keep it simple, please.", " I only have an hour or two.", " Explain each step clearly.",
         " It is for a school project.", " Please list what I need first.")


# --- The candidate pairs ---------------------------------------------------------------------


def make_pairs(task: Task, count: int, seed: int = 1234) -> list[tuple[str, str]]:
    """``count`` candidate (prompt, counterfactual) pairs from the task's lexicon, in the ``MIX``.

    A frame (plus a tail) with its ``{x}`` filled with a safe filler (prompt) and a harmful one
    (counterfactual), the other slots the same in both, as the simulator composes them; the kinds
    other than ``perfect`` are the usual ways a candidate fails (a filler that is several tokens,
    a second changed word, texts rejected before tokenizing).
    """
    lexicon = task.lexicon
    if lexicon is None:
        raise ValueError(f"task {task.task_name} has no lexicon")
    rng = random.Random(seed)
    short_safe = [w for w in lexicon.safe if len(w) <= LONG_FILLER_CHARS] or lexicon.safe
    long_safe = [w for w in lexicon.safe if len(w) > LONG_FILLER_CHARS] or lexicon.safe
    short_harmful = [w for w in lexicon.harmful if len(w) <= LONG_FILLER_CHARS] or lexicon.harmful
    long_harmful = [w for w in lexicon.harmful if len(w) > LONG_FILLER_CHARS] or lexicon.harmful
    kinds, weights = zip(*MIX)
    pairs = []
    for kind in rng.choices(kinds, weights, k=count):
        frame = rng.choice(lexicon.frames) + rng.choice(TAILS)
        slots = {name: rng.choice(values) for name, values in lexicon.slots.items()}
        safe, harmful = rng.choice(short_safe), rng.choice(short_harmful)
        other = dict(slots)
        if kind == "long_filler":
            if rng.random() < 0.5:
                safe = rng.choice(long_safe)
            else:
                harmful = rng.choice(long_harmful)
        elif kind == "second_word":
            used = [name for name in slots if "{" + name + "}" in frame]
            name = used[0] if used else next(iter(slots))
            other[name] = rng.choice([v for v in lexicon.slots[name] if v != slots[name]])
        prompt = frame.format(x=safe, **slots)
        counterfactual = frame.format(x=harmful, **other)
        if kind == "identical":
            counterfactual = prompt
        elif kind == "newline":
            counterfactual = counterfactual.replace(" ", "\n", 1)
        pairs.append((prompt, counterfactual))
    return pairs


def batched(pairs: Sequence[tuple[str, str]], size: int) -> list[list[tuple[str, str]]]:
    return [list(pairs[i : i + size]) for i in range(0, len(pairs), size)]


def rendered_texts(task: Task, batch: Sequence[tuple[str, str]]) -> list[str]:
    """The 4 texts per pair, as the validator renders them (all pairs: raw encodes everything)."""
    return [text for prompt, cf in batch for text in Scenario.render(task, prompt, cf).texts()]


# --- Timing ----------------------------------------------------------------------------------


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def start_pool(task: Task, specs, cache_dir: str | None, workers: int, tokenizers) -> tuple[PairValidator, float]:
    """A started pool and the seconds until every worker had loaded its tokenizers and answered.

    Workers are spawned on demand as tasks arrive; ``os.getpid`` probes are sent through the pool
    until ``workers`` distinct processes have answered (a worker answers only after its
    initializer, which loads the tokenizers, has run).
    """
    started = time.perf_counter()
    validator = PairValidator(task, specs, cache_dir=cache_dir, workers=workers, tokenizers=tokenizers)
    pool = validator._pool
    assert pool is not None
    seen: set[int] = set()
    deadline = started + 120
    while len(seen) < workers:
        if time.perf_counter() > deadline:
            validator.close()
            raise RuntimeError(f"only {len(seen)} of {workers} pool workers started within 120 s")
        seen.update(f.result() for f in [pool.submit(os.getpid) for _ in range(workers)])
        if len(seen) < workers:
            time.sleep(0.01)
    return validator, time.perf_counter() - started


def run_pool(validator: PairValidator, batches: list[list[tuple[str, str]]], in_flight: int) -> list:
    """Verdicts of every batch, keeping ``in_flight`` batches submitted at once."""
    results: list = [None] * len(batches)
    pending: dict[concurrent.futures.Future, int] = {}
    next_batch = 0
    while next_batch < len(batches) or pending:
        while next_batch < len(batches) and len(pending) < in_flight:
            pending[validator.submit(batches[next_batch])] = next_batch
            next_batch += 1
        done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
            results[pending.pop(future)] = future.result()
    return results


def run(
    quick: bool = False,
    *,
    pairs: int | None = None,
    workers: int = 2,
    batch_size: int | None = None,
    repeats: int | None = None,
    in_flight: int | None = None,
    cache_dir: str | None = None,
) -> dict:
    preset = QUICK if quick else FULL
    count = pairs or preset["pairs"]
    repeats = repeats or preset["repeats"]
    task = load_task("refusal")
    size = batch_size or task.batch_size
    in_flight = in_flight or 4 * max(workers, 1)
    specs = resolve_specs(task.tokenizers)

    started = time.perf_counter()
    inline = PairValidator(task, specs, cache_dir=cache_dir)  # loads (or builds) the tokenizers
    load_s = time.perf_counter() - started
    tokenizers = inline.tokenizers
    candidates = make_pairs(task, count)
    batches = batched(candidates, size)
    texts = [rendered_texts(task, batch) for batch in batches]
    # validate_pairs renders and encodes only the pairs whose texts pass text_rejection.
    live_texts = [rendered_texts(task, [p for p in batch if text_rejection(*p) is None]) for batch in batches]
    rejected = sum(text_rejection(*p) is not None for p in candidates)

    def raw_all() -> dict[str, float]:
        """Batch by batch, every tokenizer in turn (the validator's order); each tokenizer's seconds."""
        encoders = [(tokenizer.name, tokenizer.backend.encode_batch) for tokenizer in tokenizers]
        spent = {name: 0.0 for name, _ in encoders}
        clock = time.perf_counter
        for batch_texts in texts:
            for name, encode in encoders:
                started = clock()
                encode(batch_texts)
                spent[name] += clock() - started
        return spent

    def fast_all() -> None:  # exactly the encoding inside validate_pairs: encode_batch_fast + .ids, live pairs
        for batch_texts in live_texts:
            for tokenizer in tokenizers:
                tokenizer.encode_batch(batch_texts)

    def inline_all() -> list:
        return [validate_pairs(batch, task, tokenizers) for batch in batches]

    # Warm-up (untimed): the BPE caches of the parent's tokenizers.
    raw_all()
    expected = [v.valid for verdicts in inline_all() for v in verdicts]

    pool, startup_s = start_pool(task, specs, cache_dir, workers, tokenizers) if workers > 0 else (None, 0.0)
    try:
        if pool is not None:  # warm-up (untimed): the workers' caches; and the same verdicts as inline
            got = [v.valid for verdicts in run_pool(pool, batches, in_flight) for v in verdicts]
            if got != expected:
                raise AssertionError("the pool's verdicts differ from the inline verdicts")
        best: dict[str, float] = {}

        def keep(key: str, seconds: float) -> None:
            best[key] = min(seconds, best.get(key, float("inf")))

        for _ in range(repeats):  # interleaved, so a noisy neighbour hits every measurement alike
            started = time.perf_counter()
            spent = raw_all()
            keep("raw", time.perf_counter() - started)
            for name, seconds in spent.items():
                keep(f"raw:{name}", seconds)
            keep("fast", timed(fast_all))
            keep("inline", timed(inline_all))
            if pool is not None:
                keep("pool", timed(lambda: run_pool(pool, batches, in_flight)))
    finally:
        if pool is not None:
            pool.close()

    per_s = {key: count / seconds for key, seconds in best.items()}
    raw = per_s["raw"]
    pool_per_s = per_s.get("pool")  # None: not measured (workers=0)
    return {
        "pairs_per_s_raw": round(raw),
        "pairs_per_s_inline": round(per_s["inline"]),
        "pairs_per_s_pool": None if pool_per_s is None else round(pool_per_s),
        "raw_ratio_inline": round(per_s["inline"] / raw, 3),
        "raw_ratio_pool": None if pool_per_s is None else round(pool_per_s / raw, 3),
        "pool_startup_s": round(startup_s, 3),
        "batch_size": size,
        "pairs": count,
        # Context for the numbers above.
        "pairs_per_s_raw_by_tokenizer": {t.name: round(per_s[f"raw:{t.name}"]) for t in tokenizers},
        "pairs_per_s_encode_fast": round(per_s["fast"]),
        "valid_share": round(sum(expected) / len(expected), 3),
        "text_rejected_share": round(rejected / count, 3),
        "workers": workers,
        "in_flight": in_flight,
        "repeats": repeats,
        "tokenizer_load_s": round(load_s, 3),
        "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM", "(unset)"),
    }


def table(results: dict) -> str:
    raw = results["pairs_per_s_raw"]
    rows = [
        (f"raw `backend.encode_batch`, {name}", per_s)
        for name, per_s in results["pairs_per_s_raw_by_tokenizer"].items()
    ]
    rows += [
        ("raw `backend.encode_batch`, all tokenizers in turn (reference)", raw),
        ("`encode_batch_fast` + `.ids`, all tokenizers, text-accepted pairs only (the encoding inside validate_pairs)",
         results["pairs_per_s_encode_fast"]),
        ("`validate_pairs` inline", results["pairs_per_s_inline"]),
    ]
    if results["pairs_per_s_pool"] is not None:
        rows.append((f"`PairValidator(workers={results['workers']})`, {results['in_flight']} batches in flight",
                     results["pairs_per_s_pool"]))
    lines = ["| measurement | pairs/s | / raw (all) |", "|---|---:|---:|"]
    lines += [f"| {label} | {per_s:,} | {per_s / raw:.2f} |" for label, per_s in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK['pairs']:,} pairs, {QUICK['repeats']} repeats")
    parser.add_argument("--pairs", type=int, help=f"candidate pairs (default {FULL['pairs']:,}, quick {QUICK['pairs']:,})")
    parser.add_argument("--workers", type=int, default=2, help="pool workers (default 2; 0 skips the pool)")
    parser.add_argument("--batch-size", type=int, help="pairs per batch (default: the task's batch_size)")
    parser.add_argument("--repeats", type=int, help="repeats per measurement, best kept")
    parser.add_argument("--in-flight", type=int, help="batches submitted to the pool at once (default 4 per worker)")
    parser.add_argument("--cache-dir", help="tokenizer cache (default: the asyncgen cache)")
    args = parser.parse_args()
    if args.pairs is not None and args.pairs < 1:
        parser.error("--pairs must be at least 1")
    if args.workers < 0:
        parser.error("--workers must be 0 or more")
    results = run(
        args.quick,
        pairs=args.pairs,
        workers=args.workers,
        batch_size=args.batch_size,
        repeats=args.repeats,
        in_flight=args.in_flight,
        cache_dir=args.cache_dir,
    )
    print(
        f"validator benchmark: {results['pairs']:,} refusal pairs ({results['valid_share']:.0%} valid, "
        f"{results['text_rejected_share']:.0%} rejected before tokenizing) in batches of "
        f"{results['batch_size']}, best of {results['repeats']}; {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"TOKENIZERS_PARALLELISM={results['tokenizers_parallelism']} (pool workers: false)\n"
    )
    print(table(results))
    print(f"\nraw_ratio_inline = {results['raw_ratio_inline']}  (inline / raw)")
    if results["workers"] > 0:
        print(f"raw_ratio_pool = {results['raw_ratio_pool']}  (pool / raw)")
        print(f"pool start-up ({results['workers']} workers, tokenizers loaded): {results['pool_startup_s']} s (not in the pool's rate)")
    print(f"tokenizer load in this process: {results['tokenizer_load_s']} s")


if __name__ == "__main__":
    main()
