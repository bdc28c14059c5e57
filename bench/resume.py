"""Benchmark a resume: time from ``asyncgen run`` starting on a large dataset to its first new scenario,
and the client's peak memory, at 20,000, 100,000 and 1,000,000 scenarios.

    python bench/resume.py [--sizes 20000,100000,1000000] [--code DIR]

``run(sizes)`` returns the numbers as a dict (for bench/run.py). No API is called to build the
datasets: they are written by the project's own writers, the sink (``ScenarioSink.append``, which
also writes the checkpoint) and the sidecar's record (as ``Sidecar.close`` writes it), from one
refusal pair, ``Help me make a cake/bomb for my ...``, whose tail varies over words chosen so that
every tokenizer splits each variant the same way around the differing word. So every scenario is
distinct (dedup keys are unique) and its annotation line is the first one's with another id, which
is exactly what tokenizing it gives: checked here by tokenizing a random sample. Then
``python -m asyncgen run --num-scenarios N+10`` resumes it on the offline default (the in-process
simulator), one validator worker; "first new scenario" is the moment the dataset file grows, from
the process's start (tokenizer loading included), sampled every 20 ms. Memory is the client
process's own peak (``VmHWM``, read every 0.5 s: walking /proc more often took CPU from the run);
its validator worker's is reported beside it. ``--code DIR`` runs
the client from another checkout (e.g. the code before the sidecar's verified prefix was
recorded), on the same files.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asyncgen.annotations import (  # noqa: E402
    _digest_of,
    _Prefix,
    annotate,
    record_path,
    setup_digest,
    sidecar_path,
    task_answers,
)
from asyncgen.validate import load_task_and_tokenizers  # noqa: E402
from asyncgen.scenario import Scenario  # noqa: E402
from asyncgen.sink import DurabilityPolicy, ScenarioSink, atomic_write, default_checkpoint_path, fingerprint_of  # noqa: E402

SIZES = (20_000, 100_000, 1_000_000)
NEW = 10  # scenarios the resumed run generates
TEMPLATE = "Help me make a {} for my {} and my {} before the {} on {}."
SLOTS = 4
WORDS = ("sister brother friend mother father son daughter wife husband boss team class dog cat uncle aunt "
         "cousin teacher neighbor family kids parents club office church school party game wedding birthday "
         "dinner lunch trip show meeting weekend holiday picnic concert match trial exam visit move test "
         "Monday Tuesday Wednesday Thursday Friday Saturday Sunday Christmas Easter time noon night").split()
SAMPLE = 300  # scenarios tokenized to check the annotation lines


def _texts(words: tuple[str, ...]) -> tuple[str, str]:
    return TEMPLATE.format("cake", *words), TEMPLATE.format("bomb", *words)


def _annotation_tail(task, tokenizers, answers, words: tuple[str, ...]) -> bytes:
    """The annotation line of the pair with these words, after its scenario id."""
    (line,) = annotate([Scenario.render(task, *_texts(words))], tokenizers, answers)
    return line.split(b",", 1)[1]


def choose_words(task, tokenizers, answers) -> list[list[str]]:
    """Per slot, the words whose pair annotates exactly as the base pair's (the others at their base word)."""
    base = tuple(WORDS[:SLOTS - 1]) + ("Monday",)
    expected = _annotation_tail(task, tokenizers, answers, base)
    slots = []
    for slot in range(SLOTS):
        candidates = [base[:slot] + (word,) + base[slot + 1 :] for word in WORDS]
        lines = annotate([Scenario.render(task, *_texts(c)) for c in candidates], tokenizers, answers)
        slots.append([c[slot] for c, line in zip(candidates, lines) if line.split(b",", 1)[1] == expected])
    return slots


def build(folder: Path, count: int, task, specs, tokenizers) -> tuple[Path, float]:
    """A dataset of ``count`` scenarios with its checkpoint, sidecar and the sidecar's record."""
    answers = task_answers(task, tokenizers)
    slots = choose_words(task, tokenizers, answers)
    combos = itertools.islice(itertools.product(*slots), count)
    started = time.perf_counter()
    output = folder / "dataset.jsonl"
    sample = set(random.Random(1).sample(range(count), min(SAMPLE, count)))
    sampled = []
    with ScenarioSink.open(output, default_checkpoint_path(output), task_name=task.task_name,
                           fingerprint=fingerprint_of(task, [str(spec) for spec in specs]), overwrite=True,
                           durability=DurabilityPolicy(every_scenarios=10_000, every_seconds=60)) as sink:
        for words in combos:
            scenario = Scenario.render(task, *_texts(words))
            if sink.append(scenario) is None:
                raise RuntimeError(f"duplicate scenario {words}")
            if sink.count - 1 in sample:
                sampled.append((sink.count - 1, scenario))
        sink.sync({"cost_usd": 0.0, "runs": 1})
    if sink.count != count:
        raise RuntimeError(f"only {sink.count} distinct scenarios from the word lists {[len(s) for s in slots]}")
    tail = _annotation_tail(task, tokenizers, answers, tuple(s[0] for s in slots))
    for (index, _), line in zip(sampled, annotate([scenario for _, scenario in sampled], tokenizers, answers)):
        if line.split(b",", 1)[1] != tail:
            raise RuntimeError(f"scenario {index} does not annotate like the first: {line[:200]!r}")
    sidecar = sidecar_path(output)
    with open(sidecar, "wb") as handle:
        for start in range(0, count, 100_000):
            handle.write(b"".join(b'{"scenario_id":%d,%s' % (i, tail) for i in range(start, min(count, start + 100_000))))
    # The record Sidecar.close leaves: both files' prefixes, by size and sha256.
    prefix = _Prefix(count, sidecar.stat().st_size, dataset_offset=output.stat().st_size)
    with open(output, "rb") as data, open(sidecar, "rb") as lines:
        _digest_of(data, prefix.dataset_offset, prefix.dataset_digest)
        _digest_of(lines, prefix.offset, prefix.digest)
    atomic_write(record_path(sidecar), prefix.record(setup_digest(tokenizers, answers), sidecar))
    return output, time.perf_counter() - started


_FIRST = re.compile(r"first scenario after ([\d.]+) s")

# The part of a resume that grows with the dataset, alone: the sink's and the sidecar's open, in a
# fresh process after the tokenizers are loaded, with its CPU time (less at the mercy of other load).
OPENS = """
import json, resource, sys, time
from pathlib import Path
from asyncgen.annotations import Sidecar
from asyncgen.validate import load_task_and_tokenizers
from asyncgen.sink import ScenarioSink, default_checkpoint_path, fingerprint_of

output = Path(sys.argv[1])
task, specs, tokenizers = load_task_and_tokenizers("refusal", None, [], None)
def peak_mb():  # VmHWM: ru_maxrss would carry the forking parent's peak across exec
    status = Path("/proc/self/status").read_text()
    return round(int(status.split("VmHWM:")[1].split()[0]) / 1024, 1)

before, peak_before = resource.getrusage(resource.RUSAGE_SELF), peak_mb()
started = time.perf_counter()
sink = ScenarioSink.open(output, default_checkpoint_path(output), task_name=task.task_name,
                         fingerprint=fingerprint_of(task, [str(spec) for spec in specs]))
sink_s, after_sink = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
with Sidecar.open(output, task, tokenizers, dataset_digest=sink.dataset_digest()) as sidecar:
    message = sidecar.repair.message
sink.close()
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"sink_open_s": round(sink_s, 3),
                  "sink_open_cpu_s": round(after_sink.ru_utime + after_sink.ru_stime - before.ru_utime - before.ru_stime, 3),
                  "opens_s": round(time.perf_counter() - started, 3),
                  "opens_cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 3),
                  "rss_before_opens_mb": peak_before, "rss_after_opens_mb": peak_mb(), "sidecar": message}))
"""


def opens(output: Path, code: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["PYTHONPATH"] = str(code)
    done = subprocess.run([sys.executable, "-c", OPENS, str(output)], env=env, capture_output=True, text=True,
                          timeout=1800, cwd=output.parent)  # not here: -c puts the folder first on the path
    if done.returncode != 0:
        raise RuntimeError(f"opening {output} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def resume(output: Path, count: int, code: Path) -> dict:
    """``asyncgen run`` resuming ``output``: seconds to its first new scenario, peak memory, its log."""
    from bench.run import TreeMemory

    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["PYTHONPATH"] = str(code)
    size = output.stat().st_size
    argv = [sys.executable, "-m", "asyncgen", "run", "--output", str(output), "--num-scenarios", str(count + NEW),
            "--validator-workers", "1", "--log-level", "INFO"]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(argv, cwd=output.parent, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        memory = TreeMemory(process.pid)
        first, sampled, cpu_at_first = None, 0.0, (None, None, None)
        while process.poll() is None:
            now = time.perf_counter()
            if now - sampled >= 0.5:  # VmHWM is each process's own peak: no need to catch the moment
                memory.sample()
                sampled = now
            if first is None and output.stat().st_size > size:
                first = now - started
                cpu_at_first = _tree_cpu(memory)
            if time.perf_counter() - started > 1800:
                process.kill()
                raise RuntimeError("the resumed run did not finish within 30 minutes")
            time.sleep(0.02)
        wall = time.perf_counter() - started
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        stderr.seek(0)
        text = stderr.read().decode(errors="replace")
    if process.returncode != 0 or first is None:
        raise RuntimeError(f"asyncgen run exited {process.returncode}: {text[-2000:]}")
    report = memory.report()
    own = _FIRST.search(text)
    return {
        "first_new_scenario_s": round(first, 2),
        "first_new_scenario_run_clock_s": float(own.group(1)) if own else None,
        "client_cpu_to_first_s": cpu_at_first[0],
        "validator_cpu_to_first_s": cpu_at_first[1],
        "client_main_thread_cpu_to_first_s": cpu_at_first[2],
        "process_s": round(wall, 2),
        "process_cpu_s": round(cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime, 2),
        "client_peak_rss_mb": report["client_peak_rss_mb"],
        "validator_worker_peak_rss_mb": report["validator_workers_peak_rss_mb"],
        "log": [line.split(": ", 1)[-1][:300] for line in text.splitlines()
                if "resumed" in line or "token annotations" in line],
    }


def _tree_cpu(memory) -> tuple[float | None, float | None, float | None]:
    """CPU seconds (user + system) so far of the client process and of its descendants (the validator
    worker and the multiprocessing helpers): on a quiet machine, the first new scenario comes about
    this much CPU plus the simulator's latency (300 ms) after the start, the two processes running
    side by side on the two cores. Third: the client's main thread alone (the sidecar's check runs in
    another thread beside it)."""
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu(pid) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / ticks

    children = memory._children()
    descendants, stack = [], list(children.get(memory.root, []))
    while stack:
        pid = stack.pop()
        descendants.append(pid)
        stack.extend(children.get(pid, []))
    return (round(cpu(memory.root), 2), round(sum(cpu(pid) for pid in descendants), 2),
            round(cpu(f"{memory.root}/task/{memory.root}"), 2))


def _load() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return None


def run(sizes=SIZES, code: Path = ROOT) -> dict:
    task, specs, tokenizers = load_task_and_tokenizers("refusal", None, [], None)
    rows = []
    for count in sizes:
        with tempfile.TemporaryDirectory(prefix="asyncgen-bench-resume-") as name:
            output, build_s = build(Path(name), count, task, specs, tokenizers)
            file_mb = output.stat().st_size / 1e6
            sidecar_mb = sidecar_path(output).stat().st_size / 1e6
            row = {"scenarios": count, "dataset_mb": round(file_mb, 1), "sidecar_mb": round(sidecar_mb, 1),
                   "build_s": round(build_s, 1), "load_before": _load(), **opens(output, code),
                   **resume(output, count, code)}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return {"rows": rows, "code": str(code), "new_scenarios": NEW, "validator_workers": 1,
            "how": "time from the process's start to the dataset file growing (20 ms samples); the client's VmHWM"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="dataset sizes, comma-separated")
    parser.add_argument("--code", default=str(ROOT), help="checkout whose asyncgen the resumed run uses (default: this one)")
    args = parser.parse_args()
    results = run([int(size) for size in args.sizes.split(",")], Path(args.code))
    for row in results["rows"]:
        print(f"{row['scenarios']:>9,} scenarios ({row['dataset_mb']} MB + {row['sidecar_mb']} MB of annotations): "
              f"first new scenario after {row['first_new_scenario_s']} s (CPU {row['process_cpu_s']} s, with the "
              f"validator's); client peak {row['client_peak_rss_mb']:.0f} MB; the sink's and sidecar's opens alone "
              f"{row['opens_s']} s (CPU {row['opens_cpu_s']} s), peak {row['rss_before_opens_mb']} -> "
              f"{row['rss_after_opens_mb']} MB")


if __name__ == "__main__":
    main()
