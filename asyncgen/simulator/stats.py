"""What the simulator saw, for GET /_stats: counts by route, status and fault, tokens served,
rate-limit rejections, and the arrival time and status of recent model requests (chat and completions)."""

from __future__ import annotations

import time
from collections import deque

MAX_LOGGED = 100_000


class Stats:
    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        self.requests: dict[str, int] = {}
        self.statuses: dict[int, int] = {}
        self.faults: dict[str, int] = {}
        self.prompt_tokens = 0
        self.completion_tokens = 0
        # Of those, what went into answers the client never received (reset, hung past its timeout,
        # or it had gone): a real API bills them too, but no client can count them.
        self.undelivered_prompt_tokens = 0
        self.undelivered_completion_tokens = 0
        self.rate_limited = {"requests": 0, "tokens": 0, "too_large": 0, "quota": 0}
        # (seconds since start at arrival, final status) of chat and completions requests, most recent MAX_LOGGED.
        self.chat_log: deque[tuple[float, int]] = deque(maxlen=MAX_LOGGED)
        self.in_flight = 0
        self.max_in_flight = 0

    def since_start(self) -> float:
        return self._clock() - self.started

    def count(self, table: dict, key) -> None:
        table[key] = table.get(key, 0) + 1

    def snapshot(self) -> dict:
        return {
            "uptime_s": round(self.since_start(), 4),
            "requests": dict(self.requests),
            "statuses": {str(code): n for code, n in sorted(self.statuses.items())},
            "faults": dict(self.faults),
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens,
                       "undelivered_prompt": self.undelivered_prompt_tokens,
                       "undelivered_completion": self.undelivered_completion_tokens},
            "rate_limited": dict(self.rate_limited),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "chat": {
                "count": len(self.chat_log),
                # [arrival seconds since start, status], oldest first.
                "arrivals": [[round(t, 4), status] for t, status in self.chat_log],
            },
        }
