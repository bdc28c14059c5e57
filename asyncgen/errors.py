"""The errors a user can see.

Every error that reaches the command line is an ``AsyncgenError``: the CLI prints its one-line
message (what went wrong, where, what to do) and exits with its ``exit_code``; a traceback is
shown only with ``--log-level DEBUG``. ``UsageError`` and its subclasses are bad input (exit 2);
``RunError`` and its subclasses are runs that failed on the way (exit 1).
"""

from __future__ import annotations


class AsyncgenError(Exception):
    """Base of every error asyncgen reports to a user."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(AsyncgenError):
    """Bad input: a flag, a file or a config the user can fix. Exit code 2."""

    exit_code = 2


class ConfigError(UsageError):
    """A task config, price table or tokenizer spec is malformed."""


class InputFileError(UsageError):
    """A file given on the command line is missing or malformed."""


class TokenizerError(UsageError):
    """A tokenizer cannot be loaded (missing vendor file, bad checksum, offline hub, gated model)."""


class RunError(AsyncgenError):
    """A run that started and could not finish. Exit code 1."""


class SinkError(RunError):
    """The dataset or checkpoint could not be written or resumed."""


class ApiError(RunError):
    """The API answered with a permanent error (bad key, no quota, unknown model, ...)."""


def redact(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` (an API key) replaced, so it never reaches output or logs."""
    if secret and len(secret) >= 4:
        text = text.replace(secret, "sk-...REDACTED")
    return text
