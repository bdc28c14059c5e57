"""``asyncgen tokenize``: how each tokenizer splits a text, as JSON lines."""

from __future__ import annotations

import argparse
import sys
from itertools import islice
from typing import Iterable, Iterator

import orjson

from asyncgen.answers import trailing_space_positions
from asyncgen.commands._shared import add_tokenizer_flags
from asyncgen.errors import InputFileError
from asyncgen.jsonl import read_jsonl
from asyncgen.tokenizers import load_all, resolve_specs

CHUNK = 2048


def register(subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "tokenize",
        parents=[common],
        description="For each text and tokenizer, print one JSON line "
        '{"text", "tokenizer", "ids", "tokens", "trailing_space"}, with ids exactly as encode(text) returns '
        "them (BOS included where the model adds one). trailing_space lists the positions of the tokens at "
        "the end that hold only the text's trailing whitespace: a single-token prompt ends in one "
        '(Answer: + a space gives ":" then "Ġ" or "▁"), and its answer is the token after it.',
    )
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="texts to tokenize")
    parser.add_argument("--jsonl", metavar="FILE", help='read texts from the "text" field of each JSON line of FILE')
    add_tokenizer_flags(parser)
    parser.set_defaults(handler=run)


def _texts_from_jsonl(path: str) -> Iterator[str]:
    expected = 'an object with a string "text" field'
    for number, record in read_jsonl(path, expected=expected):
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise InputFileError(f"{path}:{number}: expected {expected}")
        yield record["text"]


def _chunks(texts: Iterable[str]) -> Iterator[list[str]]:
    iterator = iter(texts)
    while chunk := list(islice(iterator, CHUNK)):
        yield chunk


def run(args: argparse.Namespace) -> int:
    if bool(args.texts) == bool(args.jsonl):
        raise InputFileError("give either TEXT arguments or --jsonl FILE (one of the two)")
    tokenizers = load_all(resolve_specs(None, args.tokenizer), args.cache_dir)
    texts = args.texts or _texts_from_jsonl(args.jsonl)
    out = sys.stdout.buffer
    for chunk in _chunks(texts):
        encoded = [(tokenizer, tokenizer.encode_batch(chunk)) for tokenizer in tokenizers]
        lines = []
        for i, text in enumerate(chunk):
            for tokenizer, ids in encoded:
                lines.append(
                    orjson.dumps(
                        {
                            "text": text,
                            "tokenizer": tokenizer.name,
                            "ids": ids[i],
                            "tokens": tokenizer.ids_to_tokens(ids[i]),
                            "trailing_space": trailing_space_positions(tokenizer, text, ids[i]),
                        }
                    )
                )
        out.write(b"\n".join(lines) + b"\n")
    out.flush()
    return 0
