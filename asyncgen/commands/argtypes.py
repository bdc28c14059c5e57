"""Argument types for the command line: each turns a flag's text into a value or says, in one line,
what it expected (argparse shows the message as ``argument --flag: <message>``)."""

from __future__ import annotations

import argparse
import math
from urllib.parse import urlsplit


def _number(text: str, kind: type, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def _bounded(kind: type, what: str, accept):
    def convert(text: str):
        value = _number(text, kind, what)
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    convert.__name__ = what  # argparse names the type in some messages
    return convert


positive_int = _bounded(int, "a whole number >= 1", lambda v: v >= 1)
non_negative_int = _bounded(int, "a whole number >= 0", lambda v: v >= 0)
positive_float = _bounded(float, "a number > 0", lambda v: v > 0)
non_negative_float = _bounded(float, "a number >= 0", lambda v: v >= 0)
share = _bounded(float, "a share from 0 to 1", lambda v: 0 <= v <= 1)

# The request fields' ranges as the OpenAI API documents them (../shared/docs/openai-protocol.md):
# a value outside is refused by the API with a 400, after the run has started.
TEMPERATURE_MAX = 2.0
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # the API's seed is a 64-bit integer
temperature = _bounded(float, f"a sampling temperature from 0 to {TEMPERATURE_MAX:g} (the API's range)",
                       lambda v: 0 <= v <= TEMPERATURE_MAX)
seed = _bounded(int, f"a whole number from {SEED_MIN} to {SEED_MAX} (the API's seed is 64-bit)",
                lambda v: SEED_MIN <= v <= SEED_MAX)


def base_url(text: str) -> str:
    """An http(s) URL with a host: anything else could never be reached, so it is bad input."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"expected an http:// or https:// URL with a host, such as http://localhost:8000/v1, got {text!r}"
        )
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise argparse.ArgumentTypeError(f"the port in {text!r} is not a number") from None
    return text.strip()
