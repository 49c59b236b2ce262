"""Rate limiting: a sliding-window counter per client IP, kept in this process's memory."""

from __future__ import annotations

import math
import time
from collections import deque

from service.config import RateLimit


class RateLimiter:
    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._hits: dict[str, deque[float]] = {}
        self._last_sweep = time.monotonic()

    def hit(self, key: str) -> float:
        """Count one request; 0 when allowed, else the seconds until the next one would be."""
        now = time.monotonic()
        self._sweep(now)
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - self.limit.period:
            hits.popleft()
        if len(hits) >= self.limit.count:
            return hits[0] + self.limit.period - now
        hits.append(now)
        return 0.0

    def _sweep(self, now: float) -> None:
        # Forget idle clients now and then, so memory follows active clients only.
        if now - self._last_sweep < self.limit.period:
            return
        self._last_sweep = now
        horizon = now - self.limit.period
        for key in [k for k, hits in self._hits.items() if not hits or hits[-1] <= horizon]:
            del self._hits[key]


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
