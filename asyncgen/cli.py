"""The command line: ``python -m asyncgen COMMAND`` (or ``asyncgen COMMAND``).

Each command lives in ``asyncgen/commands/<name>.py`` with ``register(subparsers, common)``,
which adds its parser and sets ``handler``. Errors: an ``AsyncgenError`` prints one line and
exits with its code (2 for bad input, 1 for a failed run); a traceback only with
``--log-level DEBUG``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from asyncgen import __version__
from asyncgen.errors import AsyncgenError, redact

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
log = logging.getLogger("asyncgen")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: what is wrong and where to read more, not the whole usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _common_parser() -> argparse.ArgumentParser:
    common = ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="logging level; DEBUG also shows tracebacks on errors (default: INFO)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    from asyncgen.commands import (
        annotate, batch, check_pairs, export, inspect_dataset, run, score, simulate, tokenize, validate_dataset,
    )

    parser = ArgumentParser(
        prog="asyncgen",
        description="Generate and validate minimal-pair prompt datasets for LLM interpretability research.",
    )
    parser.add_argument("--version", action="version", version=f"asyncgen {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _common_parser()
    for module in (run, batch, score, tokenize, check_pairs, validate_dataset, simulate, annotate, inspect_dataset,
                   export):
        module.register(subparsers, common)
    return parser


class RedactingFormatter(logging.Formatter):
    """Formats records, tracebacks included, with the API key replaced: it never reaches a log."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_secrets(super().format(record))


def redact_secrets(text: str) -> str:
    return redact(text, os.environ.get("OPENAI_API_KEY"))


class StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is at each record: a live progress line redirects it, so that
    log lines appear above the line instead of through it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(level: str) -> None:
    handler = StderrHandler()
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=getattr(logging, level), handlers=[handler], force=True)
    for noisy in ("httpx", "httpcore", "openai", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, getattr(logging, level)))


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    setup_logging(args.log_level)
    try:
        return args.handler(args) or 0
    except AsyncgenError as exc:
        if args.log_level == "DEBUG":
            log.exception("%s", exc)
        print(redact_secrets(f"asyncgen {args.command}: error: {exc}"), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"asyncgen {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: not an error.
        sys.stderr.close()
        return 0
    except Exception as exc:  # a bug or an unforeseen failure: still one line unless DEBUG
        if args.log_level == "DEBUG":
            log.exception("unexpected error")
        print(redact_secrets(f"asyncgen {args.command}: error: unexpected {type(exc).__name__}: {exc} "
                             "(run again with --log-level DEBUG for the traceback)"), file=sys.stderr)
        return 1
