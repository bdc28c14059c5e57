"""The errors a user can see.

Every error that reaches the command line is an ``AsyncgenError``: the CLI prints its one-line
message (what went wrong, where, what to do) and exits with its ``exit_code``; a traceback is
shown only with ``--log-level DEBUG``. ``UsageError`` and its subclasses are bad input (exit 2);
``RunError`` and its subclasses are runs that failed on the way (exit 1).
"""

from __future__ import annotations

import errno
import re

_SDK_PREFIX = re.compile(r"^Error code: \d+ - ")
_TRACEBACK_TAIL = re.compile(r"\n\s*File \".*", re.S)  # FastAPI servers (llama.cpp) append one
SERVER_WORDS_MAX = 400
# A pydantic validation error as FastAPI servers print it: "{'type': ..., 'loc': ('body', 'x'), 'msg': "..."".
_PYDANTIC_ITEM = re.compile(r"'loc': \(([^)]*)\), 'msg': (\"[^\"]*\"|'[^']*')")


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


# What the OS says about a path that the user can fix by choosing another or changing it.
_PATH_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR,
                          errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP})


def from_os_error(exc: OSError) -> AsyncgenError | None:
    """An ``OSError`` about a path that no command turned into its own message, as one line naming
    the path in the OS's words: bad input (exit 2) when the path is the user's to fix (permissions,
    a read-only file system, a missing folder, a file where a folder should be), else a failed run
    (exit 1: a full disk, an I/O error). None when it names no path: that is not the user's input."""
    if exc.filename is None:
        return None
    where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
    words = exc.strerror or str(exc)
    if exc.errno in _PATH_ERRNOS:
        return UsageError(f"{where}: {words}; check that path (its folder, its permissions) or give another")
    return RunError(f"{where}: {words}")


def redact(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` (an API key) replaced, so it never reaches output or logs."""
    if secret and len(secret) >= 4:
        text = text.replace(secret, "sk-...REDACTED")
    return text


# Control characters but the line feed and the tab: a server's words (an error message, a batch's
# error lines) reach the terminal through logs, error lines and summaries, and an escape sequence
# or a carriage return in them could rewrite what the user sees.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with every control character but newline and tab shown as ``\\xNN``. Pure."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def server_words(exc: BaseException) -> str:
    """What the server said, on one line, without the SDK's ``Error code: 401 - {...}`` wrapping.

    Reads the SDK's parsed body: OpenAI's ``{"error": {"message": ...}}``, FastAPI's
    ``{"detail": "..."}`` or ``{"detail": [{"msg": ...}, ...]}``, or a plain-text body (a proxy's
    page); otherwise the exception's own message. Whitespace is collapsed, a Python traceback tail
    that some servers append is cut off, and the text is bounded in length.
    """
    body = getattr(exc, "body", None)
    text = None
    if isinstance(body, dict):
        message, detail = body.get("message"), body.get("detail")
        if isinstance(message, str) and message.strip():
            text = message
        elif isinstance(detail, str) and detail.strip():
            text = detail
        elif isinstance(detail, list) and detail:
            text = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    elif isinstance(body, str) and body.strip():
        text = body
    if text is None:
        text = _SDK_PREFIX.sub("", str(getattr(exc, "message", None) or exc))
    text = " ".join(_TRACEBACK_TAIL.sub("", text).split())
    items = _PYDANTIC_ITEM.findall(text) if "validation error" in text else []
    if items:  # the pydantic repr, read: "body.response_format.type: Input should be 'text' or 'json_object'"
        text = "; ".join(f"{_dotted(loc)}: {msg[1:-1]}" for loc, msg in items)
    return text if len(text) <= SERVER_WORDS_MAX else text[: SERVER_WORDS_MAX - 3] + "..."


def _dotted(loc: str) -> str:
    """``'body', 'response_format', 'type'`` -> ``body.response_format.type``."""
    return ".".join(part.strip(" '\"") for part in loc.split(",") if part.strip())
