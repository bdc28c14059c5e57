"""``asyncgen check-pairs``: the validator's verdict on hand-written pairs."""

from __future__ import annotations

import argparse
import sys

import orjson

from asyncgen.commands._shared import add_task_flags, add_tokenizer_flags, load_task_and_tokenizers, read_jsonl
from asyncgen.errors import InputFileError
from asyncgen.validate import validate_pairs

CHUNK = 1024


def register(subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "check-pairs",
        parents=[common],
        help="check hand-written pairs against the minimal-pair rule",
        description='FILE has JSON lines {"prompt", "counterfactual"}. For each pair print one JSON line '
        '{"prompt", "counterfactual", "valid", "verdicts": {TOKENIZER: {"single_token": {"ok", "reason", '
        '"positions"}, "multi_token": {...}}}}; positions are indices into the ids as `asyncgen tokenize` '
        "prints them (BOS included). A summary goes to stderr; exit code 1 if any pair is invalid.",
    )
    parser.add_argument("file", metavar="FILE", help='JSONL file of {"prompt", "counterfactual"} lines')
    add_task_flags(parser)
    add_tokenizer_flags(parser)
    parser.set_defaults(handler=run)


def _read_pairs(path: str) -> list[tuple[str, str]]:
    pairs = []
    for number, record in read_jsonl(path):
        if not (
            isinstance(record, dict)
            and isinstance(record.get("prompt"), str)
            and isinstance(record.get("counterfactual"), str)
        ):
            raise InputFileError(f'{path}:{number}: expected an object with string "prompt" and "counterfactual"')
        pairs.append((record["prompt"], record["counterfactual"]))
    return pairs


def run(args: argparse.Namespace) -> int:
    pairs = _read_pairs(args.file)
    task, _specs, tokenizers = load_task_and_tokenizers(args.task, args.config_dir, args.tokenizer, args.cache_dir)
    valid = 0
    out = sys.stdout.buffer
    for start in range(0, len(pairs), CHUNK):
        verdicts = validate_pairs(pairs[start : start + CHUNK], task, tokenizers)
        valid += sum(v.valid for v in verdicts)
        out.write(b"".join(orjson.dumps(v.to_json()) + b"\n" for v in verdicts))
    out.flush()
    print(f"{valid} of {len(pairs)} pairs valid under {', '.join(t.name for t in tokenizers)}", file=sys.stderr)
    return 0 if valid == len(pairs) else 1
