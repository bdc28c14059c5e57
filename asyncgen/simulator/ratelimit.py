"""RPM and TPM token buckets, refilled continuously, and the x-ratelimit-* headers.

A bucket holds at most ``limit`` units and refills at ``limit / 60`` units per second. A request
is admitted when the request bucket holds 1 unit and the token bucket holds its charge; both are
then taken. A rejected request takes nothing (it would otherwise starve a client that keeps
asking). ``remaining`` is the whole units left; ``reset`` is the time until the bucket is full
again, as a Go-style duration (``12ms``, ``1s``, ``33.023s``, ``6m0s``).

Every function takes ``now`` (monotonic seconds) so that the rules are testable without sleeping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# A stand-in limit for "unlimited" buckets, so that the headers still say something sensible.
UNLIMITED = 1_000_000_000


def format_duration(seconds: float) -> str:
    """Go's time.Duration.String() at millisecond precision: 0s, 12ms, 1s, 33.023s, 1m12s, 6m0s, 1h0m0s."""
    total_ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if total_ms == 0:
        return "0s"
    if total_ms < 1000:
        return f"{total_ms}ms"
    hours, rest_ms = divmod(total_ms, 3_600_000)
    minutes, rest_ms = divmod(rest_ms, 60_000)
    whole, millis = divmod(rest_ms, 1000)
    secs = f"{whole}.{millis:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


@dataclass
class TokenBucket:
    limit: int
    level: float
    updated: float

    @classmethod
    def full(cls, limit: int, now: float) -> "TokenBucket":
        return cls(limit, float(limit), now)

    @property
    def rate(self) -> float:
        """Units per second."""
        return self.limit / 60.0

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(float(self.limit), self.level + (now - self.updated) * self.rate)
            self.updated = now

    def remaining(self) -> int:
        return int(self.level + 1e-9)

    def wait_for(self, amount: float) -> float:
        """Seconds until the bucket holds ``amount`` (0 if it does now; inf if it never can)."""
        if amount > self.limit:
            return math.inf
        missing = amount - self.level
        return 0.0 if missing <= 1e-9 else missing / self.rate

    def until_full(self) -> float:
        return (self.limit - self.level) / self.rate


@dataclass(frozen=True)
class Decision:
    """The outcome of one admission check: ``rejected_by`` is None, "requests", "tokens" or "too_large"."""

    rejected_by: str | None
    retry_after_s: float
    headers: dict[str, str]
    used: int = 0
    limit: int = 0


class RateLimiter:
    """Both buckets of one model (the simulator serves one organisation and pools all models)."""

    def __init__(self, rpm: int | None, tpm: int | None, now: float, *, drained: bool = False) -> None:
        self.requests = TokenBucket.full(rpm or UNLIMITED, now)
        self.tokens = TokenBucket.full(tpm or UNLIMITED, now)
        if drained:  # as after a minute at the limit: no first burst hides the steady rate
            self.requests.level = self.tokens.level = 0.0

    def admit(self, charge: int, now: float) -> Decision:
        requests, tokens = self.requests, self.tokens
        requests.refill(now)
        tokens.refill(now)
        if charge > tokens.limit:
            return Decision("too_large", math.inf, self.headers(), limit=tokens.limit)
        wait_requests = requests.wait_for(1)
        if wait_requests > 0:
            used = requests.limit - requests.remaining()
            return Decision("requests", wait_requests, self.headers(), used, requests.limit)
        wait_tokens = tokens.wait_for(charge)
        if wait_tokens > 0:
            used = tokens.limit - tokens.remaining()
            return Decision("tokens", wait_tokens, self.headers(), used, tokens.limit)
        requests.level -= 1
        tokens.level -= charge
        return Decision(None, 0.0, self.headers())

    def headers(self) -> dict[str, str]:
        requests, tokens = self.requests, self.tokens
        return {
            "x-ratelimit-limit-requests": str(requests.limit),
            "x-ratelimit-limit-tokens": str(tokens.limit),
            "x-ratelimit-remaining-requests": str(requests.remaining()),
            "x-ratelimit-remaining-tokens": str(tokens.remaining()),
            "x-ratelimit-reset-requests": format_duration(requests.until_full()),
            "x-ratelimit-reset-tokens": format_duration(tokens.until_full()),
        }


def retry_headers(wait_s: float) -> dict[str, str]:
    """The delay hints of a retryable 429: whole milliseconds and whole seconds, both rounded up."""
    return {"retry-after-ms": str(max(1, math.ceil(wait_s * 1000))), "retry-after": str(max(1, math.ceil(wait_s)))}
