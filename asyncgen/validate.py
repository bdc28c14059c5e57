"""The pair validator: is a (prompt, counterfactual) a minimal pair under every tokenizer?

The rule (``compare_ids``) is a pure function over two id sequences: equal length and exactly
one differing position. ``validate_pairs`` renders each candidate into its four texts, encodes them
per tokenizer in one ``encode_batch`` call, and applies the rule to both forms. ``PairValidator``
runs that inline or in a process pool (tokenizers loaded once per worker) behind one interface.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import multiprocessing
import multiprocessing.context
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from asyncgen.answers import TaskTokens, task_tokens
from asyncgen.config import FORMS, Task, load_task
from asyncgen.errors import ConfigError
from asyncgen.scenario import Scenario
from asyncgen.tokenizers import Tokenizer, TokenizerSpec, load_all, resolve_specs


@dataclass(frozen=True, slots=True)
class FormVerdict:
    """One tokenizer, one form. ``tokens`` (the two differing tokens) only when ``ok``."""

    ok: bool
    reason: str | None
    positions: tuple[int, ...]
    tokens: tuple[str, str] | None = None
    kind: str | None = None  # why it fails, for counting: "length" or "positions"
    ids: tuple[int, int] | None = None  # the two differing ids, only when ``ok``
    length: int = 0  # of the prompt's ids
    bos: bool = False  # whether the ids start with the BOS that encode adds

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
    # Per tokenizer, the answers' ids after this pair's single-token prompt (see asyncgen.answers);
    # filled when the caller passes the task's tokens, shared between verdicts (pickled once).
    answers: dict[str, TaskTokens] = field(default_factory=dict)

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
    pairs: Sequence[tuple[str, str]],
    task: Task,
    tokenizers: Sequence[Tokenizer],
    answers: dict[str, TaskTokens] | None = None,
) -> list[Verdict]:
    """Verdicts for candidate pairs, in order. Encodes each tokenizer's texts in one batch. With
    ``answers`` (``task_tokens`` per tokenizer name), valid verdicts also carry their answers' ids."""
    verdicts = [Verdict(prompt, cf, valid=False, reason=text_rejection(prompt, cf)) for prompt, cf in pairs]
    live = [v for v in verdicts if v.reason is None]
    _judge([(v, Scenario.render(task, v.prompt, v.counterfactual)) for v in live], tokenizers, answers)
    return verdicts


def judge_scenarios(
    scenarios: Sequence[Scenario], tokenizers: Sequence[Tokenizer], answers: dict[str, TaskTokens] | None = None
) -> list[Verdict]:
    """The token rule on already rendered scenarios (a dataset's), as they are; ``prompt`` and
    ``counterfactual`` of each verdict are the multi-token texts."""
    verdicts = [Verdict(s.multi_token_prompt, s.multi_token_counterfactual, valid=False) for s in scenarios]
    _judge(list(zip(verdicts, scenarios)), tokenizers, answers)
    return verdicts


def _judge(
    live: list[tuple[Verdict, Scenario]], tokenizers: Sequence[Tokenizer], answers: dict[str, TaskTokens] | None
) -> None:
    if not live:
        return
    texts: list[str] = []
    for _, scenario in live:
        texts.extend(scenario.texts())
    for tokenizer in tokenizers:
        ids = tokenizer.encode_batch(texts)
        facts = answers.get(tokenizer.name) if answers else None
        bos = list(facts.bos) if facts is not None else None
        for n, (verdict, scenario) in enumerate(live):
            base = 4 * n
            per_form: dict[str, FormVerdict] = {}
            for k, form in enumerate(FORMS):
                a, b = ids[base + 2 * k], ids[base + 2 * k + 1]
                reason, positions = compare_ids(a, b)
                tokens = pair_ids = None
                if reason is None:
                    p = positions[0]
                    pair_ids = (a[p], b[p])
                    tokens = tuple(tokenizer.ids_to_tokens(pair_ids))
                kind = None if reason is None else ("length" if len(a) != len(b) else "positions")
                starts_with_bos = bool(bos) and a[: len(bos)] == bos
                per_form[form] = FormVerdict(reason is None, reason, positions, tokens, kind, pair_ids, len(a), starts_with_bos)
            verdict.verdicts[tokenizer.name] = per_form
            if facts is not None:
                verdict.answers[tokenizer.name] = facts.for_prompt(tokenizer, scenario.single_token_prompt, ids[base])
    for verdict, _ in live:
        verdict.valid = all(fv.ok for forms in verdict.verdicts.values() for fv in forms.values())


def check_task(task: Task, tokenizers: Sequence[Tokenizer]) -> dict[str, TaskTokens]:
    """Reject a task whose answers are not single tokens or whose examples are not valid pairs;
    return the task's tokens per tokenizer name (its answer ids, see ``asyncgen.answers``).

    An answer must be one token under both readings: after the prompt's ids as encoded, which end
    in the template's trailing-space token (``answer_ids``), and with that space merged into it
    (``answer_ids_merged``: ``": "`` + ``"Yes"`` -> ``":"``, ``" Yes"``). Examples are shown to the
    model as what to produce, so each must itself be a valid pair.
    """
    answers = {tokenizer.name: task_tokens(task, tokenizer) for tokenizer in tokenizers}
    examples = [(example.safe, example.harmful) for example in task.examples]
    for number, verdict in enumerate(validate_pairs(examples, task, tokenizers), start=1):
        if not verdict.valid:
            name, form, reason = verdict.failures()[0]
            where = "" if name == "*" else f" under {name} ({form})"
            raise ConfigError(
                f"task {task.task_name}: example {number} ({verdict.prompt!r} / {verdict.counterfactual!r}) "
                f"is not a valid pair{where}: {reason}; fix or remove it, the model copies its examples"
            )
    return answers


def load_task_and_tokenizers(
    task_name: str, config_dir: str | None, tokenizer_flags: list[str], cache_dir: str | None
) -> tuple[Task, list[TokenizerSpec], list[Tokenizer]]:
    """The task, its tokenizer set, the loaded tokenizers; rejects answers that are not one token."""
    task = load_task(task_name, config_dir)
    specs = resolve_specs(task.tokenizers, tokenizer_flags)
    tokenizers = load_all(specs, cache_dir)
    check_task(task, tokenizers)
    return task, specs, tokenizers


# --- Inline and process-pool execution -------------------------------------------------------

_worker_state: tuple[Task, list[Tokenizer], dict[str, TaskTokens]] | None = None
PARENT_CHECK_SECONDS = 0.5


def _init_worker(task: Task, specs: list[TokenizerSpec], cache_dir: str | None, parent: int, started) -> None:
    global _worker_state
    _exit_with_parent(parent)
    started.send(os.getpid())  # the pool's queues, and so their semaphores, are open by now
    started.close()
    # A terminal's Ctrl-C reaches the whole process group; the parent decides how to stop, and a
    # worker that died of it would break the pool under the run's grace period. (SIGINT is ignored
    # from the start: see _sigint_ignored.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tokenizers = load_all(specs, cache_dir)
    _worker_state = (task, tokenizers, {t.name: task_tokens(task, t) for t in tokenizers})


def _exit_with_parent(parent: int) -> None:
    """End this worker when its parent is gone, whatever killed it (a SIGKILL leaves no time to
    shut the pool down): a worker holds ~280 MB of tokenizers and ignores SIGTERM."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


# --- Processes that leave the parent's __main__ alone -------------------------------------------

_leaving_main_out = threading.local()
_MAIN_MODULE_KEYS = ("init_main_from_path", "init_main_from_name")


def _preparation_data_without_main(get_preparation_data):
    """``multiprocessing.spawn.get_preparation_data``, less the entries that make the child run the
    parent's ``__main__`` (the user's script) again, for the processes this thread is starting for
    a validator pool; everyone else's processes get it unchanged."""

    def preparation_data(name):
        data = get_preparation_data(name)
        if getattr(_leaving_main_out, "active", False):
            for key in _MAIN_MODULE_KEYS:
                data.pop(key, None)
        return data

    preparation_data.leaves_main_out = True
    return preparation_data


class _SpawnProcessWithoutMain(multiprocessing.context.SpawnProcess):
    """A spawned process that does not import the parent's ``__main__``.

    A spawned (or forkserver) child re-runs the parent's main module, as ``__mp_main__``, so that
    what the parent pickled by reference to ``__main__`` can be found: a script without the
    ``if __name__ == "__main__":`` guard then runs ``asyncgen.generate(...)`` again in every
    validator process. The validator's functions and arguments all live in asyncgen's modules, so
    its processes need no ``__main__``: the preparation data sent to them leaves it out, and a
    plain script, ``python -c``, ``python -m``, stdin and a notebook all work alike. (Plain fork is
    no option: the parent has threads, the tokenizers' and the event loop's.)"""

    @staticmethod
    def _Popen(process_obj):
        from multiprocessing import spawn

        # The Popen asks spawn.get_preparation_data for what the child needs: wrapped once, on the
        # first validator process; the wrapper changes nothing outside the flag set here.
        if not getattr(spawn.get_preparation_data, "leaves_main_out", False):
            spawn.get_preparation_data = _preparation_data_without_main(spawn.get_preparation_data)
        _leaving_main_out.active = True  # the Popen writes the preparation data in this call, in this thread
        try:
            return multiprocessing.context.SpawnProcess._Popen(process_obj)
        finally:
            _leaving_main_out.active = False


class _SpawnContextWithoutMain(multiprocessing.context.SpawnContext):
    Process = _SpawnProcessWithoutMain


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Start processes with SIGINT ignored: an ignored signal stays ignored across exec, so a Ctrl-C
    while a worker is still importing cannot kill it (a handler set later comes too late). The price:
    a Ctrl-C in the few milliseconds of the spawn itself is lost (blocking SIGINT meanwhile does not
    keep it, since the tokenizers' native threads take it); the next one is not. Only the main
    thread may change signal handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _forget_semaphore_names(pool: concurrent.futures.ProcessPoolExecutor, started, workers: int) -> None:
    """Unlink the names of the pool's semaphores once every worker has opened them.

    A spawned worker opens the semaphores of the pool's queues by name, so multiprocessing keeps the
    names (files in /dev/shm) until the pool is gone and registers them with its resource tracker,
    which unlinks them if the parent dies first, warning of "leaked semaphore objects": after every
    SIGKILL. Once every worker has the semaphores open, the names serve nobody; unlinked (and
    unregistered, and their unlinking at exit cancelled) they cannot leak, whoever dies first.
    Runs in a thread. ``workers`` starts mean the pool is full: it spawns no more, so no process
    needs the names later. A worker that dies before it starts leaves them to the usual cleanup."""
    try:
        for _ in range(workers):
            started.recv()
    except (EOFError, OSError):
        return
    finally:
        started.close()
    try:
        from multiprocessing import resource_tracker, synchronize, util

        names = [value._semlock.name for holder in vars(pool).values()
                 for value in list(getattr(holder, "__dict__", {}).values())
                 if isinstance(value, synchronize.SemLock) and value._semlock.name]
        for finalizer in list(util._finalizer_registry.values()):
            name = (getattr(finalizer, "_args", None) or [None])[0]
            if getattr(finalizer, "_callback", None) is synchronize.SemLock._cleanup and name in names:
                finalizer.cancel()
                synchronize.sem_unlink(name)
                resource_tracker.unregister(name, "semaphore")
    except Exception:  # multiprocessing's internals changed: the names stay, as without this
        logging.getLogger(__name__).debug("could not unlink the validator pool's semaphore names", exc_info=True)


def _validate_in_worker(pairs: list[tuple[str, str]]) -> list[Verdict]:
    assert _worker_state is not None, "worker not initialised"
    task, tokenizers, answers = _worker_state
    return validate_pairs(pairs, task, tokenizers, answers)


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
        self.answers = {t.name: task_tokens(task, t) for t in self.tokenizers}
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._forgetting: threading.Thread | None = None
        if workers > 0:
            context = _SpawnContextWithoutMain()
            started, started_writer = context.Pipe(duplex=False)
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=workers,
                mp_context=context,
                initializer=_init_worker,
                initargs=(task, self.specs, cache_dir, os.getpid(), started_writer),
            )
            # Start the workers (and load their tokenizers) now, while the first requests are out,
            # rather than on the first batch.
            with _sigint_ignored():
                for _ in range(workers):
                    self._pool.submit(_validate_in_worker, [])
            # Kept until close(): a worker spawned later (the pool spawns on demand) gets a copy too.
            self._started_writer = started_writer
            self._forgetting = threading.Thread(target=_forget_semaphore_names, args=(self._pool, started, workers),
                                                name="forget-semaphore-names", daemon=True)
            self._forgetting.start()

    def validate(self, pairs: Sequence[tuple[str, str]]) -> list[Verdict]:
        return self.submit(pairs).result()

    def submit(self, pairs: Sequence[tuple[str, str]]) -> concurrent.futures.Future:
        if self._pool is not None:
            return self._pool.submit(_validate_in_worker, list(pairs))
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(validate_pairs(pairs, self.task, self.tokenizers, self.answers))
        except Exception as exc:  # delivered through the future, as the pool would
            future.set_exception(exc)
        return future

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            if self._forgetting is not None:  # ends when every worker started, or all are gone
                self._started_writer.close()
                self._forgetting.join()
            self._pool = None

    def __enter__(self) -> "PairValidator":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
