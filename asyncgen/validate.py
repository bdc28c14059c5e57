"""The pair validator: is a (prompt, counterfactual) a minimal pair under every tokenizer?

The rule (``compare_ids``) is a pure function over two id sequences: equal length and exactly
one differing position. ``validate_pairs`` renders each candidate into its four texts, encodes them
per tokenizer in one ``encode_batch`` call, and applies the rule to both forms. ``PairValidator``
runs that inline or in a process pool (tokenizers loaded once per worker) behind one interface.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from asyncgen.config import FORMS, Task
from asyncgen.errors import ConfigError
from asyncgen.scenario import Scenario
from asyncgen.tokenizers import Tokenizer, TokenizerSpec, load_all


@dataclass(frozen=True, slots=True)
class FormVerdict:
    """One tokenizer, one form. ``tokens`` (the two differing tokens) only when ``ok``."""

    ok: bool
    reason: str | None
    positions: tuple[int, ...]
    tokens: tuple[str, str] | None = None
    kind: str | None = None  # why it fails, for counting: "length" or "positions"

    def to_json(self) -> dict:
        out = {"ok": self.ok, "reason": self.reason, "positions": list(self.positions)}
        if self.tokens is not None:
            out["tokens"] = list(self.tokens)
        return out


@dataclass(slots=True)
class Verdict:
    prompt: str
    counterfactual: str
    valid: bool
    reason: str | None = None  # why the texts were rejected before tokenizing, if they were
    verdicts: dict[str, dict[str, FormVerdict]] = field(default_factory=dict)

    def failures(self) -> list[tuple[str, str, str]]:
        """(tokenizer, form, reason) of each failing check; ('*', '*', reason) for a text rejection."""
        if self.reason is not None:
            return [("*", "*", self.reason)]
        return [
            (name, form, verdict.reason or "")
            for name, forms in self.verdicts.items()
            for form, verdict in forms.items()
            if not verdict.ok
        ]

    def failure_kinds(self) -> list[str]:
        """What to count for a rejected pair: the text reason, or "TOKENIZER FORM KIND" per failing check."""
        if self.reason is not None:
            return [self.reason]
        return [
            f"{name} {form} {verdict.kind}"
            for name, forms in self.verdicts.items()
            for form, verdict in forms.items()
            if not verdict.ok
        ]

    def to_json(self) -> dict:
        out: dict = {"prompt": self.prompt, "counterfactual": self.counterfactual, "valid": self.valid}
        if self.reason is not None:
            out["reason"] = self.reason
        out["verdicts"] = {
            name: {form: verdict.to_json() for form, verdict in forms.items()}
            for name, forms in self.verdicts.items()
        }
        return out


def compare_ids(a: Sequence[int], b: Sequence[int]) -> tuple[str | None, tuple[int, ...]]:
    """The rule. Returns (reason it fails or None, differing positions)."""
    if len(a) != len(b):
        return f"lengths {len(a)}/{len(b)}", ()
    positions = tuple(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    if len(positions) != 1:
        return f"{len(positions)} positions differ", positions
    return None, positions


def text_rejection(prompt: str, counterfactual: str) -> str | None:
    """Why a candidate's texts cannot form a pair at all, before any tokenizing."""
    for label, text in (("prompt", prompt), ("counterfactual", counterfactual)):
        if not isinstance(text, str) or not text:
            return f"empty {label}"
        if text.isspace():
            return f"whitespace-only {label}"
        if "\n" in text or "\r" in text:
            return f"newline in {label}"
    if prompt == counterfactual:
        return "identical texts"
    return None


def validate_pairs(
    pairs: Sequence[tuple[str, str]], task: Task, tokenizers: Sequence[Tokenizer]
) -> list[Verdict]:
    """Verdicts for candidate pairs, in order. Encodes each tokenizer's texts in one batch."""
    verdicts = [Verdict(prompt, cf, valid=False, reason=text_rejection(prompt, cf)) for prompt, cf in pairs]
    live = [v for v in verdicts if v.reason is None]
    if not live:
        return verdicts
    texts: list[str] = []
    for verdict in live:
        texts.extend(Scenario.render(task, verdict.prompt, verdict.counterfactual).texts())
    for tokenizer in tokenizers:
        ids = tokenizer.encode_batch(texts)
        for n, verdict in enumerate(live):
            base = 4 * n
            per_form: dict[str, FormVerdict] = {}
            for k, form in enumerate(FORMS):
                a, b = ids[base + 2 * k], ids[base + 2 * k + 1]
                reason, positions = compare_ids(a, b)
                tokens = None
                if reason is None:
                    p = positions[0]
                    tokens = tuple(tokenizer.ids_to_tokens([a[p], b[p]]))
                kind = None if reason is None else ("length" if len(a) != len(b) else "positions")
                per_form[form] = FormVerdict(reason is None, reason, positions, tokens, kind)
            verdict.verdicts[tokenizer.name] = per_form
    for verdict in live:
        verdict.valid = all(fv.ok for forms in verdict.verdicts.values() for fv in forms.values())
    return verdicts


def check_task(task: Task, tokenizers: Sequence[Tokenizer]) -> None:
    """Reject a task whose answers are not single tokens or whose examples are not valid pairs.

    An answer is checked in context: the tokens of (rendered example prompt + answer) beyond their
    common prefix with the tokens of the rendered prompt alone must be exactly one. (A trailing
    space in the suffix merges into the answer token: ``": "`` + ``"Yes"`` -> ``":"``, ``" Yes"``.)
    Examples are shown to the model as what to produce, so each must itself be a valid pair.
    """
    prompt = task.templates.single_token.render(task.examples[0].safe)
    for tokenizer in tokenizers:
        for label, answer in (("safe", task.answers.safe), ("harmful", task.answers.harmful)):
            alone, extended = tokenizer.encode_batch([prompt, prompt + answer])
            common = 0
            while common < min(len(alone), len(extended)) and alone[common] == extended[common]:
                common += 1
            added = tokenizer.ids_to_tokens(extended[common:])
            if len(added) != 1:
                raise ConfigError(
                    f"task {task.task_name}: answer {label}={answer!r} is {len(added)} tokens under "
                    f"tokenizer {tokenizer.name} ({' '.join(added)}) after the single-token suffix; "
                    "choose an answer that is a single token under every tokenizer"
                )
    examples = [(example.safe, example.harmful) for example in task.examples]
    for number, verdict in enumerate(validate_pairs(examples, task, tokenizers), start=1):
        if not verdict.valid:
            name, form, reason = verdict.failures()[0]
            where = "" if name == "*" else f" under {name} ({form})"
            raise ConfigError(
                f"task {task.task_name}: example {number} ({verdict.prompt!r} / {verdict.counterfactual!r}) "
                f"is not a valid pair{where}: {reason}; fix or remove it, the model copies its examples"
            )


# --- Inline and process-pool execution -------------------------------------------------------

_worker_state: tuple[Task, list[Tokenizer]] | None = None
PARENT_CHECK_SECONDS = 0.5


def _init_worker(task: Task, specs: list[TokenizerSpec], cache_dir: str | None, parent: int) -> None:
    global _worker_state
    _exit_with_parent(parent)
    # A terminal's Ctrl-C reaches the whole process group; the parent decides how to stop, and a
    # worker that died of it would break the pool under the run's grace period. (SIGINT is ignored
    # from the start: see _sigint_ignored.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _worker_state = (task, load_all(specs, cache_dir))


def _exit_with_parent(parent: int) -> None:
    """End this worker when its parent is gone, whatever killed it (a SIGKILL leaves no time to
    shut the pool down): a worker holds ~280 MB of tokenizers and ignores SIGTERM."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Start processes with SIGINT ignored: an ignored signal stays ignored across exec, so a Ctrl-C
    while a worker is still importing cannot kill it (a handler set later comes too late). Only the
    main thread may change signal handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _validate_in_worker(pairs: list[tuple[str, str]]) -> list[Verdict]:
    assert _worker_state is not None, "worker not initialised"
    task, tokenizers = _worker_state
    return validate_pairs(pairs, task, tokenizers)


class PairValidator:
    """Validates batches of pairs for one task, inline (``workers=0``) or in a process pool.

    ``validate(pairs)`` blocks; ``submit(pairs)`` returns a ``concurrent.futures.Future`` (already
    done in inline mode). Pool workers load the tokenizers once, in their initializer; the parent
    loads them first so the builtin cache is built once, not raced by every worker.
    """

    def __init__(
        self,
        task: Task,
        specs: Sequence[TokenizerSpec],
        *,
        cache_dir: str | None = None,
        workers: int = 0,
        tokenizers: Sequence[Tokenizer] | None = None,
    ) -> None:
        self.task = task
        self.specs = list(specs)
        self.workers = workers
        self.tokenizers = list(tokenizers) if tokenizers is not None else load_all(self.specs, cache_dir)
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        if workers > 0:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(task, self.specs, cache_dir, os.getpid()),
            )
            # Start the workers (and load their tokenizers) now, while the first requests are out,
            # rather than on the first batch.
            with _sigint_ignored():
                for _ in range(workers):
                    self._pool.submit(_validate_in_worker, [])

    def validate(self, pairs: Sequence[tuple[str, str]]) -> list[Verdict]:
        return self.submit(pairs).result()

    def submit(self, pairs: Sequence[tuple[str, str]]) -> concurrent.futures.Future:
        if self._pool is not None:
            return self._pool.submit(_validate_in_worker, list(pairs))
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(validate_pairs(pairs, self.task, self.tokenizers))
        except Exception as exc:  # delivered through the future, as the pool would
            future.set_exception(exc)
        return future

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "PairValidator":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
