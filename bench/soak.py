"""Crash loop: ``asyncgen run`` killed again and again against a faulty, rate-limited simulator.

    python bench/soak.py                 # 2,000 scenarios, 30 SIGKILLs and 30 SIGINTs (a few minutes)
    python bench/soak.py --quick         # 300 scenarios, 3 of each (CI runs it --parallel, in tests/test_soak.py)
    python bench/soak.py --signals KILL --kills 50 --seed 7 --json out.json

For each signal: one simulator process (20% mixed faults, an RPM limit, latency), one dataset.
``asyncgen run`` starts, is killed a random 0.1-1.5 s after its requests begin (SIGKILL to the process, or SIGINT to
its process group as a terminal's Ctrl-C), and is started again, ``--kills`` times; then it runs to
the end. After every kill: the dataset's whole scenarios have contiguous ids and no duplicates, and
no process of the run is left (the validator worker, the resource tracker). At the end: exactly N
scenarios, ``asyncgen validate`` passes, and the cost the checkpoint recorded across all runs is
compared with the simulator's own usage at the same prices. Every delay comes from ``--seed``.

Then ``asyncgen score`` of the SIGKILLed run's dataset (``--score-kills`` SIGKILLs at random moments,
against the same faulty simulator at 20 times the RPM: four requests a scenario): every scenario scored exactly once, none
lost between kills, no process left. Then the same for ``asyncgen batch run`` (``--batch-kills`` SIGKILLs at random moments of its
rounds): besides the dataset checks, the simulator must hold exactly the batches the manifest
knows (none submitted twice), and the recorded cost must equal the batches' usage at batch prices.

Prints a table (and ``--readme`` puts it in docs/reliability.md); ``--json FILE`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from doc_tables import SOAK_TABLE, write_table

REPO = Path(__file__).resolve().parents[1]
FAULTS = "500=0.05,502=0.03,503=0.03,timeout=0.02,reset=0.03,bad_json=0.01,length=0.01,content_filter=0.01,refusal=0.01"
GPT_4O = (2.50, 10.00)  # USD per 1M prompt / completion tokens, config/prices.yaml
GPT_4O_BATCH = (1.25, 5.00)
ENV = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
ENV.update(NO_PROXY="127.0.0.1,localhost", PYTHONPATH=str(REPO))
TORN = re.compile(r"cut a torn tail of (\d+) bytes")


def start_simulator(rpm: int) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "asyncgen", "simulate", "--seed", "11", "--faults", FAULTS, "--hang-s", "3",
         "--rpm", str(rpm), "--latency-ms", "80", "--latency-jitter-ms", "60", "--batch-speed", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV,
    )
    return process, process.stdout.readline().strip()


VALIDATING = threading.Lock()


def validate(dataset: Path) -> bool:
    """``asyncgen validate DATASET`` passes. In this process: it is killed by nobody, and the soak's
    three validations then load the tokenizers once instead of three times."""
    import contextlib
    import io

    sys.path.insert(0, str(REPO))
    from asyncgen.cli import main as asyncgen

    # One at a time: the redirection of stdout is this process's, not a thread's (--parallel).
    with VALIDATING, contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return asyncgen(["validate", str(dataset)]) == 0


def processes_below(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, of in parents.items() if of == parent]
        found += children
        frontier += children
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def check_dataset(path: Path) -> tuple[int, list[str]]:
    """(whole scenarios, problems): contiguous ids and no duplicates among the whole scenarios."""
    if not path.exists():
        return 0, []
    lines = path.read_bytes().split(b"\n")[:-1]
    whole = len(lines) // 4
    problems, prompts, counterfactuals = [], set(), set()
    for index in range(whole):
        group = [json.loads(line) for line in lines[4 * index : 4 * index + 4]]
        if any(record["scenario_id"] != index for record in group):
            problems.append(f"scenario {index}: ids not contiguous")
        prompt, counterfactual = (" ".join(group[k]["text"].casefold().split()) for k in (2, 3))
        if prompt in prompts or counterfactual in counterfactuals:
            problems.append(f"scenario {index}: duplicate")
        prompts.add(prompt)
        counterfactuals.add(counterfactual)
    return whole, problems


# What `batch run` logs as it goes: the round's plan, the submit, the polling, the validation of the
# results (a resumed run always validates again what was left).
BATCH_PHASES = ("round 1:", "submitted as batch", "requests done", "validating")


def wait_for(log: Path, process: subprocess.Popen, text: str, timeout: float) -> None:
    """Until ``text`` shows in the log, the process ends, or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None and text not in log.read_text():
        time.sleep(0.01)


def soak(signal_name: str, scenarios: int, kills: int, rng: random.Random, folder: Path, rpm: int,
         batch: bool = False) -> dict:
    simulator, base_url = start_simulator(rpm)
    dataset = folder / f"soak-{signal_name}{'-batch' if batch else ''}.jsonl"
    prices = ["--prices", str(REPO / "config" / "prices.yaml")]
    if batch:
        command = [sys.executable, "-m", "asyncgen", "batch", "run", "--base-url", base_url, "--output", str(dataset),
                   "--dir", str(folder / f"batches-{signal_name}"), "--num-scenarios", str(scenarios),
                   "--poll-seconds", "0.2", *prices]
    else:
        command = [sys.executable, "-m", "asyncgen", "run", "--base-url", base_url, "--output", str(dataset),
                   "--num-scenarios", str(scenarios), "--concurrency", "16", "--request-timeout", "2",
                   "--validator-workers", "1", *prices, "--grace-period", "5"]
    result = {"signal": signal_name, "command": "batch run" if batch else "run", "scenarios": scenarios, "kills": 0, "finished_early": 0, "lost": 0,
              "problems": [], "orphans": 0, "bytes_repaired": 0, "delays_s": []}
    started = time.monotonic()
    try:
        for _ in range(kills):
            delay = rng.uniform(0.1, 1.5)
            log = folder / f"run-{signal_name}{'-batch' if batch else ''}.log"
            with open(log, "w") as stderr:
                process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=ENV,
                                           start_new_session=True)
                # The delay counts from the end of the start-up (tokenizer loading, the validator
                # process and the annotations sidecar before it take a varying time).
                wait_for(log, process, "token annotations", 60)
                if batch:  # one round of a few seconds: a kill at a random phase of it, a little into it
                    wait_for(log, process, rng.choice(BATCH_PHASES if not result["delays_s"] else BATCH_PHASES[-1:]), 30)
                    delay /= 10
                time.sleep(delay)
                below = processes_below(process.pid)
                before, _ = check_dataset(dataset)
                result.setdefault("scenarios_at_signal", []).append(before)
                if process.poll() is not None:
                    result["finished_early"] += 1
                elif signal_name == "KILL":
                    process.send_signal(signal.SIGKILL)
                    result["kills"] += 1
                else:
                    os.killpg(process.pid, signal.SIGINT)
                    result["kills"] += 1
                process.wait(timeout=120)
            result.setdefault("exit_codes", []).append(process.returncode)
            if process.returncode not in (-signal.SIGKILL, 130, 0):  # a run that failed by itself: why
                result.setdefault("unexpected", []).append(log.read_text().strip().splitlines()[-1][:500])
            result["delays_s"].append(round(delay, 2))
            result["bytes_repaired"] += sum(int(n) for n in TORN.findall(log.read_text()))
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(alive(pid) for pid in below):
                time.sleep(0.05)
            result["orphans"] += sum(alive(pid) for pid in below)
            for pid in below:  # never leave one behind for the next round
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
            whole, problems = check_dataset(dataset)
            result["lost"] += max(0, before - whole)
            result["problems"] += problems
            if whole >= scenarios:
                break
        final = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
        result["bytes_repaired"] += sum(int(n) for n in TORN.findall(final.stderr))
        result["final_exit"] = final.returncode
        whole, problems = check_dataset(dataset)
        result["problems"] += problems
        result["final_scenarios"] = whole
        result["validate_ok"] = validate(dataset)
        stats = httpx.get(base_url.removesuffix("/v1") + "/_stats", trust_env=False, timeout=10).json()
        checkpoint = json.loads(dataset.with_name(dataset.stem + ".checkpoint.json").read_text())
        state = checkpoint["run_state"]
        result["faults"] = stats["faults"]
        result["rate_limited_429"] = sum(stats["rate_limited"].values())
        result["runs"] = state.get("runs")
        result["attempts_recorded"] = state.get("requests_sent")
        result["answered_recorded"] = state.get("requests_ok")
        result["answered_by_simulator"] = stats["requests"].get("POST /v1/chat/completions", 0)
        result["cost_recorded_usd"] = state.get("cost_usd")
        tokens = stats["tokens"]  # real-time requests (batch run's pilot, if it had one)
        delivered = (tokens["prompt"] - tokens["undelivered_prompt"],
                     tokens["completion"] - tokens["undelivered_completion"])
        result["cost_simulator_usd"] = (delivered[0] * GPT_4O[0] + delivered[1] * GPT_4O[1]) / 1e6
        result["cost_undelivered_usd"] = (tokens["undelivered_prompt"] * GPT_4O[0]
                                          + tokens["undelivered_completion"] * GPT_4O[1]) / 1e6
        if batch:  # batches are priced at batch prices from their own usage; none is lost on the wire
            batches = httpx.get(f"{base_url}/batches", params={"limit": 100}, trust_env=False, timeout=10,
                                headers={"Authorization": "Bearer sk-soak"}).json()["data"]
            manifest = json.loads((folder / f"batches-{signal_name}" / "manifest.json").read_text())
            result["batches_created"] = len(batches)
            result["batches_in_manifest"] = len([e for e in manifest["entries"] if e.get("source", "api") == "api"])
            used = [sum(b["usage"][k] for b in batches if b.get("usage")) for k in ("input_tokens", "output_tokens")]
            result["cost_simulator_usd"] += (used[0] * GPT_4O_BATCH[0] + used[1] * GPT_4O_BATCH[1]) / 1e6
        result["wall_s"] = round(time.monotonic() - started, 1)
    finally:
        simulator.kill()
        simulator.wait()
    return result


def scored_ids(path: Path) -> list[int]:
    """The scenario ids of a scores file's whole lines (a torn last line left out)."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")[1:-1]
    ids = []
    for line in lines:
        try:
            ids.append(json.loads(line)["scenario_id"])
        except (ValueError, KeyError):
            pass
    return ids


def soak_score(dataset: Path, kills: int, rng: random.Random, folder: Path, rpm: int) -> dict:
    """``asyncgen score`` of the soaked dataset, SIGKILLed ``kills`` times at random moments, then run
    to the end: every scenario scored exactly once, none lost between kills, no process left."""
    simulator, base_url = start_simulator(rpm)
    scores = dataset.with_name(dataset.stem + ".scores") / "gpt-4o.jsonl"
    command = [sys.executable, "-m", "asyncgen", "score", str(dataset), "--base-url", base_url, "--model", "gpt-4o",
               "--concurrency", "16", "--request-timeout", "2"]
    whole, _ = check_dataset(dataset)
    result = {"signal": "KILL", "command": "score", "scenarios": whole, "kills": 0, "lost": 0, "problems": [],
              "orphans": 0, "bytes_repaired": 0, "delays_s": []}
    started = time.monotonic()
    try:
        for _ in range(kills):
            delay = rng.uniform(0.1, 1.5)
            log = folder / "score.log"
            with open(log, "w") as stderr:
                process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=ENV,
                                           start_new_session=True)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and process.poll() is None and "simulator" not in log.read_text() \
                        and "refused /v1/completions" not in log.read_text() and "resuming" not in log.read_text():
                    time.sleep(0.02)
                time.sleep(delay)
                below = processes_below(process.pid)
                before = len(scored_ids(scores))
                result.setdefault("scenarios_at_signal", []).append(before)
                if process.poll() is None:
                    process.send_signal(signal.SIGKILL)
                    result["kills"] += 1
                process.wait(timeout=120)
            if process.returncode not in (-signal.SIGKILL, 0):
                result.setdefault("unexpected", []).append(log.read_text().strip().splitlines()[-1][:500])
            result["delays_s"].append(round(delay, 2))
            result["bytes_repaired"] = len(list(scores.parent.glob(scores.name + ".torn-*")))  # torn lines cut and kept
            result["orphans"] += sum(alive(pid) for pid in below)
            ids = scored_ids(scores)
            result["lost"] += max(0, before - len(ids))
            if len(ids) != len(set(ids)):
                result["problems"].append("a scenario scored twice")
            if len(ids) >= whole:
                break
        final = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
        result["final_exit"] = final.returncode
        ids = scored_ids(scores)
        if sorted(ids) != list(range(whole)):
            result["problems"].append(f"scored {len(ids)} lines, {len(set(ids))} distinct, of {whole}")
        result["final_scenarios"] = len(set(ids))
        result["validate_ok"] = final.returncode == 0
        stats = httpx.get(base_url.removesuffix("/v1") + "/_stats", trust_env=False, timeout=10).json()
        result["faults"] = stats["faults"]
        result["rate_limited_429"] = sum(stats["rate_limited"].values())
        result["wall_s"] = round(time.monotonic() - started, 1)
    finally:
        simulator.kill()
        simulator.wait()
    return result


def table(results: list[dict], seed: int) -> str:
    rows = [
        "| command, signal | kills survived | faults seen by kind | 429s | retries | bytes repaired | scenarios lost | orphans | "
        "final | cost recorded / simulator's usage of delivered answers | undelivered (unknowable) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(r["faults"].items()))
        if r["command"] == "score":
            final = f"{r['final_scenarios']}/{r['scenarios']} scored, each once" if not r["problems"] else "; ".join(r["problems"])
            rows.append(f"| score, SIGKILL | {r['kills']} | {faults} | {r['rate_limited_429']} | n/a | "
                        f"{r['bytes_repaired']} torn lines kept | {r['lost']} | {r['orphans']} | {final} | n/a | n/a |")
            continue
        retries = (r["attempts_recorded"] or 0) - (r["answered_recorded"] or 0)
        recorded = r["cost_recorded_usd"]
        ratio = f"${recorded:.4f} / ${r['cost_simulator_usd']:.4f} = {recorded / r['cost_simulator_usd']:.4f}" \
            if recorded and r["cost_simulator_usd"] else "n/a"
        final = f"{r['final_scenarios']}/{r['scenarios']}, validate {'OK' if r['validate_ok'] else 'FAILED'}"
        rows.append(f"| {r['command']}, SIG{r['signal']} | {r['kills']} | {faults} | {r['rate_limited_429']} | {retries} | "
                    f"{r['bytes_repaired']} | {r['lost']} | {r['orphans']} | {final} | {ratio} | "
                    f"${r['cost_undelivered_usd']:.4f} |")
    walls = ", ".join(f"SIG{r['signal']} {r['wall_s']} s" for r in results)
    return "\n".join(rows) + f"\n\nseed {seed}; wall time {walls}"


class Lane:
    """Series run one after the other (``steps``: functions of the delay generator, each returning a
    result or None when it has nothing to soak), their results kept in order."""

    def __init__(self, *steps, on_end=lambda: None) -> None:
        self.steps, self.results, self.error, self.on_end = steps, [], None, on_end

    def __call__(self, rng: random.Random) -> None:
        try:
            self.run(rng)
        except BaseException as exc:  # noqa: BLE001 (raised again by main, in its thread)
            self.error = exc
        finally:
            self.on_end()

    def run(self, rng: random.Random) -> None:
        for label, step in self.steps:
            result = step(rng)
            if result is not None:
                self.results.append(result)
                print(f"{label(result)}: {json.dumps({k: v for k, v in result.items() if k != 'delays_s'})}",
                      file=sys.stderr)


def series(args: argparse.Namespace, signals: list[str], folder: Path) -> list[Lane]:
    """The soak's series as lanes. Without --parallel one lane, from one generator: the delays the
    serial soak always drew (a seed gives the same table it did). With it, two: the run series; the
    batch run, then the score of the SIGKILL series' dataset once that series has ended."""
    soaked = folder / "soak-KILL.jsonl"

    def run(name):
        return (lambda result: f"SIG{result['signal']}",
                lambda rng: soak(name, args.scenarios, args.kills, rng, folder, args.rpm))

    score = (lambda result: "score SIGKILL",
             lambda rng: soak_score(soaked, args.score_kills, rng, folder, args.score_rpm or args.rpm * 20)
             if args.score_kills and soaked.exists() else None)
    batch = (lambda result: "batch SIGKILL",
             lambda rng: soak("KILL", args.scenarios, args.batch_kills, rng, folder, args.rpm, batch=True)
             if args.batch_kills else None)
    if not args.parallel:
        return [Lane(*[run(name) for name in signals], score, batch)]
    # The run series one after the other (two runs at once drew fewer faults), the batch run beside
    # them, then the score of the SIGKILLed run's dataset once that series has ended.
    killed = threading.Event()

    def mark(step):
        label, call = step

        def marked(rng):
            try:
                return call(rng)
            finally:
                killed.set()
        return label, marked

    def after_kill_series(step):
        label, call = step
        return label, lambda rng: killed.wait() and call(rng)

    runs = [mark(run(name)) if name == "KILL" else run(name) for name in signals]
    if "KILL" not in signals:
        killed.set()
    return [Lane(*runs, on_end=killed.set), Lane(batch, after_kill_series(score))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", type=int, default=2000, help="dataset size (default: 2000)")
    parser.add_argument("--kills", type=int, default=30, help="kills per signal (default: 30)")
    parser.add_argument("--signals", default="KILL,INT", help="KILL, INT, both or none (default: KILL,INT)")
    parser.add_argument("--batch-kills", type=int, default=10, help="SIGKILLs of `batch run` (default: 10; 0: none)")
    parser.add_argument("--rpm", type=int, default=400, help="the simulator's request limit (default: 400; slow enough that every kill lands mid-run)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the kill delays (default: random, printed)")
    parser.add_argument("--quick", action="store_true", help="300 scenarios, 3 kills per signal, 200 RPM (12,000 while scoring)")
    parser.add_argument("--score-kills", type=int, default=10, help="SIGKILLs of `score` of the SIGKILL run's dataset (default: 10; 0: none)")
    parser.add_argument("--score-rpm", type=int, default=None, help="the simulator's request limit while scoring (default: 20 x --rpm; score sends four requests a scenario)")
    parser.add_argument("--parallel", action="store_true",
                        help="run the batch run and then the score beside the run series (SIGKILL, SIGINT), the score "
                             "once the SIGKILL series has ended, each side with its delays drawn from its own seed: the "
                             "same checks in less wall time; the default runs them one after the other from one seed")
    parser.add_argument("--json", default=None, help="write every figure to this file")
    parser.add_argument("--readme", action="store_true", help="put the table into docs/reliability.md (between its markers)")
    args = parser.parse_args()
    if args.quick:
        args.scenarios, args.kills, args.rpm, args.batch_kills, args.score_kills = 300, 3, 200, 2, 2
        # Scoring's kills land within 1.5 s of its start, 300 of its 1,200 requests at most at this rate.
        args.score_rpm = 12_000
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    signals = [n.strip().upper() for n in args.signals.split(",") if n.strip() and n.strip().upper() != "NONE"]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        lanes = series(args, signals, folder)
        if args.parallel:  # each lane in a thread of its own, its delays from a generator of its own
            threads = [threading.Thread(target=lane, args=(random.Random(f"{seed}-{index}"),)) for index, lane in enumerate(lanes)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        else:
            rng = random.Random(seed)
            for lane in lanes:
                lane(rng)
        for lane in lanes:
            if lane.error is not None:
                raise lane.error
        # In the serial soak's order: the runs by signal, the score, the batch run.
        results = sorted((result for lane in lanes for result in lane.results),
                         key=lambda result: ("run", "score", "batch run").index(result["command"]))
    text = table(results, seed)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"seed": seed, "results": results}, indent=2))
    if args.readme and not write_table(SOAK_TABLE, text):
        print(f"--readme: no {SOAK_TABLE.start} ... {SOAK_TABLE.end} markers in {SOAK_TABLE.page}; left it alone",
              file=sys.stderr)
    bad = any(r["lost"] or r["orphans"] or r["problems"] or r.get("unexpected")
              or r.get("batches_created", 0) != r.get("batches_in_manifest", 0) or not r["validate_ok"] or r["final_scenarios"] != r["scenarios"]
              for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
