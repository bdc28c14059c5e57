"""``asyncgen check-pairs``: the validator's verdict on hand-written pairs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from asyncgen.annotations import encode_annotation, task_answers
from asyncgen.commands._shared import add_task_flags, add_tokenizer_flags
from asyncgen.errors import InputFileError
from asyncgen.jsonl import read_jsonl
from asyncgen.validate import load_task_and_tokenizers, validate_pairs

CHUNK = 1024


def register(subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "check-pairs",
        parents=[common],
        description='FILE has JSON lines {"prompt", "counterfactual"}. For each pair print one JSON line '
        '{"prompt", "counterfactual", "valid", "verdicts": {TOKENIZER: {"single_token": {"ok", "reason", '
        '"positions"}, "multi_token": {...}}}}; positions are indices into the ids as `asyncgen tokenize` '
        "prints them (BOS included). A summary goes to stderr; exit code 1 if any pair is invalid.",
    )
    parser.add_argument("file", metavar="FILE", help='JSONL file of {"prompt", "counterfactual"} lines')
    parser.add_argument("--annotate", default=None, metavar="OUT.tokens.jsonl",
                        help="also write the token annotations of the valid pairs there (the sidecar format of "
                        "`asyncgen annotate`; scenario_id is the pair's 0-based index in FILE)")
    add_task_flags(parser)
    add_tokenizer_flags(parser)
    parser.set_defaults(handler=run)


def _read_pairs(path: str) -> list[tuple[str, str]]:
    pairs = []
    expected = 'an object with string "prompt" and "counterfactual"'
    for number, record in read_jsonl(path, expected=expected):
        if not (
            isinstance(record, dict)
            and isinstance(record.get("prompt"), str)
            and isinstance(record.get("counterfactual"), str)
        ):
            raise InputFileError(f"{path}:{number}: expected {expected}")
        pairs.append((record["prompt"], record["counterfactual"]))
    return pairs


def run(args: argparse.Namespace) -> int:
    pairs = _read_pairs(args.file)
    task, _specs, tokenizers = load_task_and_tokenizers(args.task, args.config_dir, args.tokenizer, args.cache_dir)
    answers = task_answers(task, tokenizers) if args.annotate else None
    annotations: list[bytes] = []
    valid = 0
    out = sys.stdout.buffer
    for start in range(0, len(pairs), CHUNK):
        verdicts = validate_pairs(pairs[start : start + CHUNK], task, tokenizers, answers)
        valid += sum(v.valid for v in verdicts)
        out.write(b"".join(orjson.dumps(v.to_json()) + b"\n" for v in verdicts))
        if answers is not None:
            annotations.extend(encode_annotation(start + n, v) for n, v in enumerate(verdicts) if v.valid)
    out.flush()
    if args.annotate:
        try:
            Path(args.annotate).write_bytes(b"".join(annotations))
        except OSError as exc:
            raise InputFileError(f"--annotate {args.annotate}: cannot write it ({exc.strerror})") from exc
    print(f"{valid} of {len(pairs)} pairs valid under {', '.join(t.name for t in tokenizers)}", file=sys.stderr)
    return 0 if valid == len(pairs) else 1
