"""``asyncgen merge``: one dataset from several of one task, deduplicated, renumbered, histories kept."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def register(subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "merge",
        parents=[common],
        description="Write --output: the scenarios of the DATASETs in the order given, a scenario whose prompt or "
        "counterfactual repeats an earlier one's left out (the key `run` deduplicates by), renumbered 0..n-1. "
        "The DATASETs must be of one task and setup (templates, tokenizers) as their checkpoints record, and "
        "are never changed. The new checkpoint's run figures are their sums, each run counted once (a "
        "dataset and its own drop share runs), and its history keeps each source's (`inspect` shows both); `run --output` resumes it. Token annotations come along when every "
        "source has verified ones, scores of a model when every source has them with the same settings.",
    )
    parser.add_argument("datasets", nargs="+", metavar="DATASET.jsonl",
                        help="two or more datasets, each with its checkpoint DATASET.checkpoint.json beside it")
    parser.add_argument("--output", required=True, metavar="NEW.jsonl",
                        help="the dataset to write, with its checkpoint, annotations and scores beside it")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --output (and its checkpoint, annotations and scores) if it exists")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from asyncgen.dataset_build import assemble, building, commit, now, open_source
    from asyncgen.dataset_ops import (
        combine_origins, describe_ids, merge_entry, merged_run_state, origins_run_state, run_origins, setup_difference,
        shared_origins, shared_runs,
    )
    from asyncgen.errors import UsageError

    paths = [Path(name) for name in args.datasets]
    if len(paths) < 2:
        raise UsageError("name at least two datasets to merge")
    seen: dict[Path, str] = {}
    for path in paths:
        if path.resolve() in seen:
            raise UsageError(f"{path} is named twice (as {seen[path.resolve()]}); name each dataset once")
        seen[path.resolve()] = str(path)
    sources = []
    try:
        for path in paths:
            sources.append(open_source(path, "merge"))
        first = sources[0]
        for source in sources[1:]:
            differs = setup_difference(first.checkpoint.fingerprint, source.checkpoint.fingerprint)
            if differs:
                raise UsageError(f"{source.path} and {first.path} differ in {differs}, as their checkpoints "
                                 "record; merge datasets of one task and setup")
        origins = [run_origins(s.checkpoint.dataset_id, s.run_state, s.checkpoint.history) for s in sources]
        if all(found is not None for found in origins):  # each run counted once
            run_state = origins_run_state(combine_origins(origins))  # type: ignore[arg-type]
            shared = shared_origins([(str(s.path), found) for s, found in zip(sources, origins)])  # type: ignore[misc]
        else:  # made from a drop or merge that did not record its source's figures: summed, as then
            run_state, shared = merged_run_state([s.run_state for s in sources]), []
            for line in shared_runs([(str(s.path), s.checkpoint.dataset_id, s.checkpoint.history) for s in sources]):
                logging.getLogger("asyncgen.merge").warning("%s", line)
        with building(args.output, task_name=first.checkpoint.fingerprint["task"],
                      fingerprint=first.checkpoint.fingerprint, overwrite=args.overwrite, sources=sources,
                      command="merge") as output:
            carried = assemble(sources, output)
            details = [{**source.summary(), "kept": len(new_ids), "duplicates": duplicates,
                        "run_state": source.run_state, "history": list(source.checkpoint.history)}
                       for source, new_ids, duplicates in zip(sources, carried.new_ids, carried.duplicates)]
            output.close_sink([merge_entry(details, now(), run_state)], run_state)
            commit(output)
            written = output.sink.count
    finally:
        for source in sources:
            source.close()
    left = sum(len(d) for d in carried.duplicates)
    print(f"wrote {args.output}: {written} scenarios, renumbered from 0")  # a line a source: 80 columns
    for source, ids in zip(sources, carried.new_ids):
        print(f"  {source.path}: {len(ids)} of its {source.scenarios} scenarios")
    if left:
        print(f"left out {left} duplicates of earlier scenarios (same prompt or counterfactual):")
        for source, duplicates in zip(sources, carried.duplicates):
            if duplicates:
                print(f"  {source.path}: ids {describe_ids(duplicates)}")
    else:
        print("no duplicates")
    if shared:
        print("run figures: " + "; ".join(shared))
    print("\n".join(carried.lines(args.output)))
    return 0
