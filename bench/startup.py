"""What a ``python -m asyncgen`` process costs before and around its command: the CPU seconds
(user + system, the least of ``--repeat`` runs: wall time on a shared machine is noise) of
``--help``, each command's ``--help``, a dry run and a five-scenario offline run, beside a bare
interpreter. With ``--against DIR`` (a checkout of another commit, e.g. ``git worktree add``), the
same commands with that checkout's code, and the ratio.

    python bench/startup.py [--repeat 5] [--against /path/to/other/checkout]

Each command runs from a temporary folder (so that ``python -m`` finds no package in the working
directory) with ``PYTHONPATH`` set to the checkout measured.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = [
    ["-c", "pass"],
    ["-m", "asyncgen", "--help"],
    *[["-m", "asyncgen", name, "--help"] for name in
      ("run", "batch", "tokenize", "check-pairs", "validate", "simulate", "annotate", "inspect", "export")],
    ["-m", "asyncgen", "run", "--dry-run", "--num-scenarios", "100"],
    ["-m", "asyncgen", "run", "--num-scenarios", "5", "--validator-workers", "0"],
]


def cpu_seconds(checkout: Path, args: list[str], repeat: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout), "NO_PROXY": "127.0.0.1,localhost"}
    env.pop("OPENAI_API_KEY", None)
    env.pop("OPENAI_BASE_URL", None)
    spent = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as folder:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run([sys.executable, *args], env=env, cwd=folder, capture_output=True, timeout=300)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        spent.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return min(spent)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--against", type=Path, default=None, help="another checkout to compare with")
    args = parser.parse_args()
    print(f"| command | CPU s{' | CPU s, ' + str(args.against) + ' | ratio' if args.against else ''} |")
    print("|---|---|" + ("---|---|" if args.against else ""))
    for command in COMMANDS:
        here = cpu_seconds(REPO, command, args.repeat)
        row = f"| `python {' '.join(command)}` | {here:.2f} |"
        if args.against:
            there = cpu_seconds(args.against, command, args.repeat)
            row += f" {there:.2f} | {there / here:.1f}x |"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
