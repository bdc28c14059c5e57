"""``python tests/dataset_ops_killer.py POINT asyncgen-args...``: run asyncgen drop or merge,
SIGKILLing itself at POINT, for the kill-safety tests of ``asyncgen.dataset_build``:

- ``append:K``: while the new dataset is built, after its K-th scenario;
- ``move:K``: while it is moved into place, after the K-th rename (the dataset file's is the last).
"""

import os
import signal
import sys


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def after(owner, name: str, limit: int) -> None:
    """Make ``owner.name`` die once it has been called ``limit`` times (and returned)."""
    original, calls = getattr(owner, name), []

    def counted(*args, **kwargs):
        result = original(*args, **kwargs)
        if result is not None or name == "move":
            calls.append(1)
            if len(calls) >= limit:
                die()
        return result

    setattr(owner, name, counted)


def main() -> int:
    point, argv = sys.argv[1], sys.argv[2:]
    kind, _, count = point.partition(":")
    if kind == "append":
        from asyncgen.sink import ScenarioSink

        after(ScenarioSink, "append", int(count))
    elif kind == "move":
        from asyncgen import dataset_build

        after(dataset_build, "move", int(count))
    else:
        raise SystemExit(f"unknown point {point!r}")
    from asyncgen.cli import main as asyncgen

    return asyncgen(argv)


if __name__ == "__main__":
    sys.exit(main())
