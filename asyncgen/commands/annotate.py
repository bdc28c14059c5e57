"""``asyncgen annotate``: build or repair the token annotations sidecar of a dataset."""

from __future__ import annotations

import argparse
import os
import sys

from asyncgen.annotations import Sidecar, sidecar_path
from asyncgen.commands._shared import add_dataset_flags, load_dataset_and_task
from asyncgen.errors import InputFileError
from asyncgen.terminal import print_fitted

try:
    import fcntl
except ImportError:  # Windows: no advisory lock
    fcntl = None  # type: ignore[assignment]


def register(subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "annotate",
        parents=[common],
        description="Write DATASET.tokens.jsonl beside DATASET.jsonl: one JSON line per scenario with, per "
        "tokenizer and form, the prompt's length in ids, the position where the pair differs, the two ids and "
        "tokens there, whether the ids start with BOS, and the answers' ids under both readings (see "
        "docs/annotations.md). Every scenario is tokenized again and compared: lines that agree are kept, a sidecar "
        "that disagrees (other ids, tokenizers or texts) is rewritten from the first line that does.",
    )
    add_dataset_flags(parser)
    parser.add_argument("--out", default=None, metavar="PATH", help="where to write (default: DATASET.tokens.jsonl)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    _, task, tokenizers = load_dataset_and_task(args)
    with _held(args.dataset):
        with Sidecar.open(args.dataset, task, tokenizers, path=args.out or sidecar_path(args.dataset),
                          full_check=True, remedy="pass another --out") as sidecar:
            repair = sidecar.repair
    print_fitted(repair.message, sys.stdout)
    if repair.non_pairs:
        print_fitted(f"note: {repair.non_pairs} scenarios are not minimal pairs under every tokenizer (their position, "
                     "ids and tokens are null there); `python -m asyncgen validate` says which", sys.stdout)
    return 0


class _held:
    """A shared lock on the dataset: refuses while a run holds it (the run keeps its sidecar itself)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> None:
        if fcntl is None:
            return
        self.fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.fd)
            self.fd = None
            raise InputFileError(f"{self.path}: a run is writing it and keeps its annotations itself; "
                                 "run annotate after it ends") from exc

    def __exit__(self, *exc_info) -> None:
        if self.fd is not None:
            os.close(self.fd)
