"""``batch process``: downloaded (or --results) result lines through the validator pool, dedup and
the checkpointed sink, one pass at a time (``asyncgen/batch/process.py``), which ``batch run``
runs too; Ctrl-C during a pass (``Interrupts``); what the dataset's checkpoint records of the
directory (``run_state``)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from asyncgen.batch import lifecycle
from asyncgen.batch.ledger import line_digest, parse
from asyncgen.batch.manifest import ACCOUNTING, Entry, Manifest
from asyncgen.commands.batch.directory import Setup, load_setup, refuse_a_lost_dataset
from asyncgen.commands.batch.display import Display
from asyncgen.commands.batch.summary import summary_text
from asyncgen.errors import UsageError
from asyncgen.progress import print_summary
from asyncgen.sink import default_checkpoint_path

log = logging.getLogger("asyncgen.batch")


@contextlib.contextmanager
def processing_stages(args, setup: Setup, manifest: Manifest):
    """The sink and the validator for processing passes."""
    from asyncgen.sink import ScenarioSink
    from asyncgen.validate import PairValidator

    checkpoint = args.checkpoint or default_checkpoint_path(manifest.output)
    sink = ScenarioSink.open(manifest.output, checkpoint, task_name=setup.task.task_name, fingerprint=setup.fingerprint,
                             force_resume=args.force)
    with contextlib.ExitStack() as stack:
        stack.callback(sink.close)
        if sink.resume.message:
            log.info("%s", sink.resume.message)
        if "sink_cost_before" not in manifest.totals:
            manifest.totals["sink_cost_before"] = sink.resume.run_state.get("cost_usd", 0.0)
        validator = stack.enter_context(PairValidator(setup.task, setup.specs, cache_dir=args.cache_dir, workers=args.validator_workers,
                                                      tokenizers=setup.tokenizers))
        annotations = None
        if args.annotate:
            from asyncgen.annotations import Sidecar

            annotations = Sidecar.open(sink.path, setup.task, setup.tokenizers, dataset_digest=sink.dataset_digest())
            stack.callback(annotations.close)
            log.info("%s", annotations.repair.message)
        yield sink, validator, annotations


class Interrupts:
    """Ctrl-C while results are validated (synchronous work that the event loop's own handler
    would only see when it ends): the first is acknowledged at once and stops the pass after the
    chunk in hand, keeping what is validated; a second stops the validation at once (elsewhere in
    the pass, appending to the dataset, it waits for the few milliseconds left: a scenario is
    never cut in two). The signal handler is installed on the main thread only; off it (the Python
    API's worker thread) ``interrupt()`` is the first Ctrl-C. One per run (``batch run`` keeps its
    own across its passes, entered by each): ``active`` says whether one of its passes is under
    way, so a stop to one run never reaches another running in the same process."""

    def __init__(self) -> None:
        self.count = 0
        self.active = False
        self._previous = None

    def __enter__(self) -> "Interrupts":
        self.count = 0
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        self.active = True
        return self

    def __exit__(self, *exc_info) -> None:
        self.active = False
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def interrupt(self) -> bool:
        """Count one Ctrl-C; True for the first, which is acknowledged at once."""
        self.count += 1
        if self.count == 1:
            os.write(2, b"\ninterrupted: stopping after the chunk being validated; what is validated is kept "
                        b"(Ctrl-C again to stop now)\n")
        return self.count == 1

    def _on_sigint(self, signum, frame) -> None:
        from asyncgen.batch.process import validate_all

        if self.interrupt():
            return
        while frame is not None:
            if frame.f_code is validate_all.__code__:  # it ends with the verdicts so far
                raise KeyboardInterrupt
            frame = frame.f_back

    def stop(self) -> bool:
        return self.count > 0


def processing_pass(setup: Setup, manifest: Manifest, sink, validator, annotations, names: list[str],
                    display: Display | None = None, interrupts: Interrupts | None = None):
    """One processing pass; ``interrupts``: the run's (``batch run``: its stop reaches the pass), else its own."""
    from asyncgen.batch.process import process_pass

    if display is not None:
        display.count = sink.count
    try:
        with interrupts or Interrupts() as interrupts:
            return process_pass(setup.directory, manifest, setup.task, sink, validator, names,
                                lambda name: lifecycle.result_files(setup.directory, manifest.entry(name)),
                                lambda: run_state(setup, manifest, sink),
                                display.validated if display else (lambda done, total: None), annotations,
                                stop=interrupts.stop)
    finally:
        if display is not None:
            display.validating = None


def run_state(setup: Setup, manifest: Manifest, sink) -> dict:
    """What the dataset's checkpoint records: the batch dir, the cost of the dataset so far, and the
    directory's accounting (``Manifest.accounting``: what ``batch rebuild`` restores)."""
    at_batch, _ = manifest.cost(setup.costs)
    before = manifest.totals.get("sink_cost_before")
    recorded = sink.resume.run_state.get(ACCOUNTING)
    return {**sink.resume.run_state, "batch_dir": str(setup.directory),
            "cost_usd": None if at_batch is None or before is None else before + at_batch,
            ACCOUNTING: {**(recorded if isinstance(recorded, dict) else {}), manifest.directory_id: manifest.accounting()}}


def _add_results(setup: Setup, manifest: Manifest, paths: list[str], external: bool) -> list[str]:
    """Entries for ``process --results`` files, known by their content (the custom_ids they answer;
    see asyncgen/batch/ledger.py): a file answering none of the directory's requests is refused
    (unless ``external``), one whose requests were all counted before is skipped, with a note."""
    from asyncgen.batch.process import read_entry

    directory, scratch, names = setup.directory, manifest.ledger(), []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            raise UsageError(f"--results {given} is a folder; give its result files (e.g. {given}/*_output.jsonl)")
        if not path.is_file():
            raise UsageError(f"--results {given}: no such file")
        resolved = str(path.resolve())
        probe = Entry(resolved, 0, 0, source="external" if external else "results", output_path=resolved)
        got = read_entry(scratch, probe, [path], set())
        if got.foreign and not got.new and not got.repeated:
            whose = ("old-style ids, which do not name the directory that made them" if (parse(got.foreign_example) or (1,))[0] is None
                     else "another batch directory's, or another pipeline's")
            raise UsageError(
                f"--results {given}: none of its {got.foreign} results answers a request of --dir {directory} (custom_ids "
                f"like {got.foreign_example}: {whose}); process it with the --dir that wrote its requests, or, to take "
                "its pairs anyway, add --external --task TASK")
        if not got.new:
            if not got.repeated:
                raise UsageError(f"--results {given}: no batch result lines in it; give an OpenAI batch-format output file")
            print(f"{given}: its {got.repeated} results were processed before (the same "
                  f"{'lines' if external else 'custom_ids'}); skipped (nothing is counted twice)")
            continue
        if got.foreign:
            print(f"{given}: {got.foreign} of its results answer requests {directory} never made (custom_ids like "
                  f"{got.foreign_example}); left out")
        if got.repeated:
            print(f"{given}: {got.repeated} of its results were counted before (the same custom_ids); not counted again")
        name = f"{resolved} ({line_digest(path.read_bytes())[:12]})"
        if not any(e.name == name for e in manifest.entries):
            manifest.entries.append(Entry(name, 0, got.requests_ok, source=probe.source, status="completed",
                                          downloaded=True, output_path=resolved))
        names.append(name)
    manifest.save(directory)
    return names


def cmd_process(args) -> int:
    if args.external and not (args.results and args.task):
        raise UsageError("--external takes --results files of another pipeline: give them, and say which task's pairs "
                         "they are with --task")
    setup = load_setup(args, load_tokenizers=True)
    manifest = setup.manifest
    if manifest is None:
        if not args.results:
            raise UsageError(f"--dir {setup.directory} holds no batch manifest; give --results FILE... or run `batch create` first")
        manifest = Manifest(str(args.task or "refusal"), setup.model, setup.fingerprint,
                            args.target_scenarios or 1500, args.output or "dataset.jsonl")
    if args.target_scenarios:
        manifest.target = args.target_scenarios
    if args.output:
        manifest.output = args.output
    refuse_a_lost_dataset(manifest, setup.directory)
    setup.manifest = manifest
    # With --results, the directory's own downloaded results not processed yet go into the same pass
    # (first: a request is counted once, whichever file answers it), so that it leaves none behind.
    names = [e.name for e in manifest.entries if e.downloaded and not e.processed]
    if args.results:
        names += [name for name in _add_results(setup, manifest, args.results, args.external) if name not in names]
    manifest.save(setup.directory)
    with processing_stages(args, setup, manifest) as (sink, validator, annotations):
        if not names and manifest.processing is None and (not manifest.spares or sink.count >= manifest.target):
            if not manifest.totals.get("passes"):
                print(f"nothing to process in {setup.directory} (download ended batches first: `batch download`)")
                return 0
            print(f"nothing new to process in {setup.directory}: every downloaded result is counted already, once")
            print_summary(summary_text(setup, manifest, sink.count), sys.stdout)
            return 0 if sink.count >= manifest.target else 1
        with Display(setup, manifest, time.monotonic()) as display:
            report = processing_pass(setup, manifest, sink, validator, annotations, names, display)
        count = sink.count
    print_summary(summary_text(setup, manifest, count, report, stop="interrupted" if report.unvalidated else None,
                               unvalidated=report.unvalidated, stopped_pass=report if report.unvalidated else None),
                  sys.stdout)
    if count >= manifest.target:
        return 0
    if report.unvalidated:
        print("interrupted: run the same command to validate the rest", file=sys.stderr)
        return 130
    print(f"short by {manifest.target - count}: python -m asyncgen batch topup --dir {setup.directory}")
    return 1
