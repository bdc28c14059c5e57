"""Benchmark the scenario sink: append rate, the cost of fsync, resume time of a 100,000-scenario file.

    python bench/sink.py [--quick]

``run(quick)`` returns the numbers as a dict (for bench/run.py). Everything is written under a
temporary folder (on the file system of ``tempfile.gettempdir()``, which is what the numbers
describe) and removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asyncgen.config import load_task  # noqa: E402
from asyncgen.scenario import Scenario, encode_lines  # noqa: E402
from asyncgen.sink import DurabilityPolicy, ScenarioSink, fingerprint_of  # noqa: E402

RESUME_SCENARIOS = 100_000
TOKENIZERS = ("gpt2", "qwen", "llama")


def scenarios(task, count: int, salt: str = "") -> list[Scenario]:
    """Distinct scenarios shaped like the refusal task's (a sentence, one word swapped)."""
    return [
        Scenario.render(task, f"Help me make a cake for my sister, {salt}order {i}.", f"Help me make a bomb for my sister, {salt}order {i}.")
        for i in range(count)
    ]


def _open(output: Path, checkpoint: Path | None, task, **kwargs) -> ScenarioSink:
    return ScenarioSink.open(output, checkpoint, task_name=task.task_name, fingerprint=fingerprint_of(task, TOKENIZERS), **kwargs)


def append_rate(folder: Path, task, batch: list[Scenario], policy: DurabilityPolicy) -> float:
    """Scenarios per second through append (with the policy's syncs) and close."""
    output, checkpoint = folder / "append.jsonl", folder / "append.checkpoint.json"
    sink = _open(output, checkpoint, task, overwrite=True, durability=policy)
    started = time.perf_counter()
    for scenario in batch:
        sink.append(scenario)
    sink.close()
    return len(batch) / (time.perf_counter() - started)


def sync_cost_ms(folder: Path, task, batch: list[Scenario]) -> tuple[float, float]:
    """Median ms of a bare fsync after writing one scenario, and of a sink's whole sync (fsync + checkpoint)."""
    fsyncs, syncs = [], []
    fd = os.open(folder / "fsync.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for index, scenario in enumerate(batch):
            os.write(fd, encode_lines(index, task.task_name, scenario))
            started = time.perf_counter()
            os.fsync(fd)
            fsyncs.append(time.perf_counter() - started)
    finally:
        os.close(fd)
    sink = _open(folder / "sync.jsonl", folder / "sync.checkpoint.json", task, overwrite=True, auto_sync=False)
    for scenario in batch:
        sink.append(scenario)
        started = time.perf_counter()
        sink.sync()
        syncs.append(time.perf_counter() - started)
    sink.close()
    return statistics.median(fsyncs) * 1000, statistics.median(syncs) * 1000


def resume_times(folder: Path, task, repeats: int) -> tuple[float, float, int]:
    """Best-of-``repeats`` seconds to open a 100,000-scenario file with its checkpoint and without one."""
    output, checkpoint = folder / "resume.jsonl", folder / "resume.checkpoint.json"
    with _open(output, checkpoint, task, overwrite=True) as sink:
        for scenario in scenarios(task, RESUME_SCENARIOS):
            sink.append(scenario)
    size = output.stat().st_size
    with_checkpoint, without = [], []
    for attempt in range(repeats):
        started = time.perf_counter()
        sink = _open(output, checkpoint, task)
        with_checkpoint.append(time.perf_counter() - started)
        assert sink.resume.used_checkpoint and sink.count == RESUME_SCENARIOS, sink.resume.message
        sink.close()
        fresh = folder / f"missing-{attempt}.checkpoint.json"  # no checkpoint there: the whole file is checked
        started = time.perf_counter()
        sink = _open(output, fresh, task)
        without.append(time.perf_counter() - started)
        assert not sink.resume.used_checkpoint and sink.count == RESUME_SCENARIOS, sink.resume.message
        sink.close()
        fresh.unlink()
    return min(with_checkpoint), min(without), size


def run(quick: bool = False) -> dict:
    task = load_task("refusal")
    default = DurabilityPolicy()
    with tempfile.TemporaryDirectory(prefix="asyncgen-bench-sink-") as name:
        folder = Path(name)
        many = scenarios(task, 20_000 if quick else 100_000, salt="a ")
        few = scenarios(task, 200 if quick else 1_000, salt="b ")
        per_s_default = append_rate(folder, task, many, default)
        per_s_fsync_each = append_rate(folder, task, few, DurabilityPolicy(every_scenarios=1))
        fsync_ms, sync_ms = sync_cost_ms(folder, task, few)
        resume_s, resume_no_checkpoint_s, size = resume_times(folder, task, repeats=1 if quick else 3)
    return {
        "append_per_s_default": round(per_s_default),
        "append_per_s_fsync_each": round(per_s_fsync_each),
        "fsync_each_slowdown": round(per_s_default / per_s_fsync_each, 1),
        "fsync_ms": round(fsync_ms, 3),
        "sync_ms": round(sync_ms, 3),
        "default_policy": f"{default.every_scenarios} scenarios or {default.every_seconds} s",
        "resume_100k_s": round(resume_s, 3),
        "resume_100k_no_checkpoint_s": round(resume_no_checkpoint_s, 3),
        "resume_100k_file_mb": round(size / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer scenarios and repeats (a few seconds)")
    args = parser.parse_args()
    print(f"sink benchmark in {tempfile.gettempdir()} ({os.cpu_count()} CPUs, Python {sys.version.split()[0]})")
    results = run(args.quick)
    print(f"append, default policy ({results['default_policy']}): {results['append_per_s_default']:,} scenarios/s")
    print(f"append, fsync + checkpoint after every scenario: {results['append_per_s_fsync_each']:,} scenarios/s "
          f"({results['fsync_each_slowdown']}x slower)")
    print(f"fsync of the sink: {results['fsync_ms']} ms; whole sync (fsync + atomic checkpoint): {results['sync_ms']} ms (medians)")
    print(f"resume of {RESUME_SCENARIOS:,} scenarios ({results['resume_100k_file_mb']} MB): "
          f"{results['resume_100k_s']} s with the checkpoint, {results['resume_100k_no_checkpoint_s']} s without")


if __name__ == "__main__":
    main()
