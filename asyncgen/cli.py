"""The command line: ``python -m asyncgen COMMAND`` (or ``asyncgen COMMAND``).

Each command lives in a module of ``asyncgen/commands/`` with ``register(subparsers, common)``,
which adds its parser and sets ``handler``; ``COMMANDS`` lists them. Only the module of the command
asked for is imported: ``asyncgen --help`` imports none, and no command pays for another's
dependencies (the simulator's aiohttp, transformers, pyarrow). Errors: an ``AsyncgenError`` prints one line and
exits with its code (2 for bad input, 1 for a failed run); a traceback only with
``--log-level DEBUG``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys

from asyncgen import __version__
from asyncgen.errors import AsyncgenError, from_os_error, printable, redact
from asyncgen.terminal import is_terminal, print_fitted, terminal_width, wrap_text

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
log = logging.getLogger("asyncgen")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: what is wrong and where to read more, not the whole usage."""

    def error(self, message: str):
        text = f"{self.prog}: error: {message} (see '{self.prog} --help')"
        if is_terminal(sys.stderr):
            text = wrap_text(text, terminal_width(sys.stderr), 2)
        self.exit(2, text + "\n")


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


# (command, its module in asyncgen/commands/, its line in `asyncgen --help`), in that listing's order.
COMMANDS = (
    ("run", "run", "generate a dataset of validated minimal pairs"),
    ("batch", "batch", "the Batch API workflow: half the price of run, resumable"),
    ("score", "score", "score a dataset under a model: answer log-probabilities, logit differences, refusals, flips"),
    ("tokenize", "tokenize", "print the token ids and tokens of texts under each tokenizer"),
    ("check-pairs", "check_pairs", "check hand-written pairs against the minimal-pair rule"),
    ("validate", "validate_dataset", "re-check a generated dataset (format and the minimal-pair rule)"),
    ("simulate", "simulate", "serve an OpenAI-compatible simulator (chat, completions, files, batches) for offline runs and tests"),
    ("annotate", "annotate", "build or repair DATASET.tokens.jsonl, the token annotations of a dataset"),
    ("inspect", "inspect_dataset", "counts, duplicates, differing words, lengths, diversity and run figures of a dataset"),
    ("drop", "drop", "write a dataset without some scenarios, renumbered, its run figures and sidecars kept"),
    ("merge", "merge", "merge datasets of one task into a new one: deduplicated, renumbered, run figures summed"),
    ("export", "export", "write a dataset with positions and answer ids per tokenizer as JSONL, CSV, Parquet, HF or EAP-IG CSV"),
)


def build_parser(command: str | None) -> argparse.ArgumentParser:
    """The parser with ``command``'s own parser registered; the other commands (all of them when
    ``command`` is None or none of theirs) are listed by name and help line only, their modules not
    imported."""
    parser = ArgumentParser(
        prog="asyncgen",
        description="Generate and validate minimal-pair prompt datasets for LLM interpretability research.",
    )
    parser.add_argument("--version", action="version", version=f"asyncgen {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _common_parser()
    for name, module, help_line in COMMANDS:
        if name == command:
            importlib.import_module(f"asyncgen.commands.{module}").register(subparsers, common)
        else:
            subparsers.add_parser(name, help=help_line, add_help=False)
    return parser


def _command_word(argv: list[str]) -> str | None:
    """The command asked for: the first word that is no option (the top level has only --help and
    --version, which take no value); None when there is none."""
    return next((word for word in argv if not word.startswith("-")), None)


class RedactingFormatter(logging.Formatter):
    """Formats records, tracebacks included, with the API key replaced: it never reaches a log."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_secrets(super().format(record))


def redact_secrets(text: str) -> str:
    """What may reach the terminal or a log: the API key redacted, control characters (a server's
    escape sequences) shown as ``\\xNN``."""
    return printable(redact(text, os.environ.get("OPENAI_API_KEY")))


# Off a terminal (a file, a pipe, CI): one line a record, the same in every log file.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TerminalFormatter(RedactingFormatter):
    """Log records for a person at a terminal: the time, the level unless it is INFO, the logger's
    name unless it is asyncgen's own (the module adds nothing a newcomer needs), and the message,
    its long lines wrapped at the terminal's width with each continuation line under the message's
    first column (asyncgen/terminal.py). The time stays: a run lasts hours, and when a warning came
    matters. With ``detailed`` (--log-level DEBUG) the level and the logger's name are always
    there, as in a log file. A traceback is left as Python prints it. ``width`` None: the
    terminal's, at each record (it may be resized)."""

    def __init__(self, detailed: bool = False, width: int | None = None) -> None:
        super().__init__(LOG_FORMAT, datefmt="%H:%M:%S")
        self.detailed, self.width = detailed, width

    def formatMessage(self, record: logging.LogRecord) -> str:
        head = f"{record.asctime} "
        if self.detailed:
            head += f"{record.levelname} {record.name}: "
        else:
            head += "" if record.levelno == logging.INFO else f"{record.levelname} "
            head += "" if record.name.split(".")[0] == "asyncgen" else f"{record.name}: "  # openai's, say
        width = self.width or terminal_width(sys.stderr)
        return wrap_text(head + redact_secrets(record.message), width, len(head))


class StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is at each record: a live progress line redirects it, so that
    log lines appear above the line instead of through it. On a terminal, records go through
    ``terminal``'s formatter (wrapped to its width); anywhere else through the handler's own
    formatter (``LOG_FORMAT``, one line a record)."""

    def __init__(self, terminal: logging.Formatter | None = None) -> None:
        super().__init__(sys.stderr)
        self.terminal = terminal or TerminalFormatter()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass

    def format(self, record: logging.LogRecord) -> str:
        return self.terminal.format(record) if is_terminal(self.stream) else super().format(record)


def setup_logging(level: str) -> None:
    handler = StderrHandler(TerminalFormatter(detailed=level == "DEBUG"))
    handler.setFormatter(RedactingFormatter(LOG_FORMAT, datefmt="%H:%M:%S"))
    logging.basicConfig(level=getattr(logging, level), handlers=[handler], force=True)
    for noisy in ("httpx", "httpcore", "openai", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, getattr(logging, level)))


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    argv = list(argv) if argv is not None else sys.argv[1:]
    parser = build_parser(_command_word(argv))
    args = parser.parse_args(argv)
    args.argv = argv
    setup_logging(args.log_level)
    try:
        try:
            return args.handler(args) or 0
        except OSError as exc:  # one about a path no command explained: still one line, in the OS's words
            error = from_os_error(exc)
            if error is None:
                raise
            raise error from exc
    except AsyncgenError as exc:
        if args.log_level == "DEBUG":
            log.exception("%s", exc)
        print_fitted(redact_secrets(f"asyncgen {args.command}: error: {exc}"), sys.stderr)
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
        print_fitted(redact_secrets(f"asyncgen {args.command}: error: unexpected {type(exc).__name__}: {exc} "
                                    "(run again with --log-level DEBUG for the traceback)"), sys.stderr)
        return 1


def console() -> int:
    """The ``asyncgen`` program (``python -m asyncgen`` too): ``main``, then SIGINT ignored. The command
    is over and has said so; a Ctrl-C now (a second one, landing while the interpreter joins its
    pools at exit) would only turn its exit code into a death by SIGINT."""
    try:
        code = main()
    except KeyboardInterrupt:  # before main() handles it
        print("asyncgen: interrupted", file=sys.stderr)
        code = 130
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return code
