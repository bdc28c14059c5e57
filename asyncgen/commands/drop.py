"""``asyncgen drop``: a new dataset without some scenarios, renumbered, with what is known of it."""

from __future__ import annotations

import argparse


def register(subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "drop",
        parents=[common],
        description="Write --output: DATASET.jsonl without the scenarios named by --ids or --from, the rest "
        "renumbered 0..n-1 in their order. DATASET is never changed. The new dataset's checkpoint keeps "
        "DATASET's run figures (runs, requests, cost) and setup, and records the drop (which ids, when, "
        "--reason) in its history, which `inspect` shows; `run --output` resumes it. DATASET's token "
        "annotations and scores come along, re-keyed to the new ids, when they are verified as DATASET's "
        "(else the output says so and how to make them again).",
    )
    parser.add_argument("dataset", metavar="DATASET.jsonl", help="the dataset to drop scenarios from (with its "
                        "checkpoint DATASET.checkpoint.json beside it)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--ids", metavar="ID,ID,...", help="the scenario ids to drop, comma-separated, e.g. 3,17,42")
    which.add_argument("--from", dest="from_file", metavar="FILE",
                       help="a file of the ids to drop: one id per line, or JSON lines with scenario_id (or id), "
                       "such as `asyncgen export --format jsonl` writes; when a line holds the export's texts "
                       "they must be DATASET's (else it is refused: the file was made from another dataset). "
                       "Blank lines and lines starting with # are skipped")
    parser.add_argument("--output", required=True, metavar="NEW.jsonl",
                        help="the dataset to write, with its checkpoint, annotations and scores beside it")
    parser.add_argument("--reason", default=None, help="why, kept in the new checkpoint's history")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --output (and its checkpoint, annotations and scores) if it exists")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from asyncgen.dataset_build import assemble, building, commit, now, open_source
    from asyncgen.dataset_ops import describe_ids, drop_entry, parse_id_list

    dropping = ids_from_file(args.from_file) if args.from_file else dict.fromkeys(parse_id_list(args.ids))
    source = open_source(args.dataset, "drop")
    try:
        with building(args.output, task_name=source.checkpoint.fingerprint["task"],
                      fingerprint=source.checkpoint.fingerprint, overwrite=args.overwrite, sources=[source],
                      command="drop") as output:
            carried = assemble([source], output, dropping)
            entry = drop_entry({**source.summary(), "run_state": source.run_state}, list(dropping), args.reason, now())
            output.close_sink([*source.checkpoint.history, entry], source.run_state)
            commit(output)
            written = output.sink.count
    finally:
        source.close()
    left = len(carried.duplicates[0])
    print(f"wrote {args.output}: {written} scenarios, renumbered from 0 "
          f"({args.dataset} less ids {describe_ids(sorted(dropping))}"
          + (f", and {left} duplicates of earlier scenarios: ids {describe_ids(carried.duplicates[0])}" if left else "")
          + ")")
    print("\n".join(carried.lines(args.output)))
    return 0


def ids_from_file(path: str) -> dict[int, dict | None]:
    """{id: its JSON row or None} from a --from file (see the flag's help)."""
    from asyncgen.dataset_ops import id_of_line
    from asyncgen.errors import InputFileError

    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise InputFileError(f"--from {path}: cannot read it ({exc.strerror})") from exc
    found: dict[int, dict | None] = {}
    with handle:
        for number, raw in enumerate(handle, start=1):
            line = id_of_line(raw, f"--from {path}:{number}")
            if line is not None:
                found.setdefault(*line)
    if not found:
        raise InputFileError(f"--from {path} names no scenario id; it holds one id per line, or JSON lines "
                             "with scenario_id")
    return found
