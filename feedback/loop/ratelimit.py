"""Per-session rate limits on expensive engine work (round creation, candidates, auto selection, refinement).

A token bucket per key (a session id): it holds at most `burst` tokens, refills at `per_minute / 60`
tokens per second, and each expensive request takes one. An empty bucket raises `RateLimited`, which
the API answers with HTTP 429 and a Retry-After header (whole seconds until a token is back). A request
refused on purpose (bad input, unknown id, conflict, full queue: any `FeedbackError`) gets its token
back, since nothing expensive ran; only work the engine did is counted. This bounds what one session
can queue; `feedback.loop.gate.EngineGate` still bounds the whole process (503).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from feedback.record.errors import FeedbackError


class RateLimited(FeedbackError):
    """This session made too many expensive requests; retry after `retry_after` seconds (HTTP 429)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RateLimit:
    """`per_minute` sustained requests per session, `burst` at once after a pause; per_minute 0 turns it off."""

    per_minute: float = 30.0
    burst: int = 10

    def __post_init__(self) -> None:
        if not (self.per_minute >= 0 and math.isfinite(self.per_minute)):
            raise ValueError(f"rate limit per minute must be a finite number >= 0, got {self.per_minute}")
        if self.per_minute > 0 and self.burst < 1:
            raise ValueError(f"rate limit burst must be >= 1, got {self.burst}")

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0


class RateLimiter:
    """Token buckets keyed by session id; thread-safe (FastAPI runs sync routes in a thread pool)."""

    def __init__(self, limit: RateLimit = RateLimit(), clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10_000) -> None:
        self.limit = limit
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, time of last update)

    def take(self, key: str, what: str = "requests") -> None:
        """Take one token from `key`'s bucket; RateLimited (with the seconds to wait) when it is empty."""
        if not self.limit.enabled:
            return
        rate = self.limit.per_minute / 60.0  # tokens per second
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(key, (float(self.limit.burst), now))
            tokens = min(float(self.limit.burst), tokens + (now - last) * rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = max(1, math.ceil((1.0 - tokens) / rate))
                raise RateLimited(f"too many {what} for this session (limit {self.limit.per_minute:g} per minute, "
                                  f"{self.limit.burst} at once); retry in {wait} s", wait)
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > self._max_keys:
                self._forget_full(now, rate)

    def give_back(self, key: str) -> None:
        """Return the token of a request that did no expensive work."""
        with self._lock:
            if key in self._buckets:
                tokens, last = self._buckets[key]
                self._buckets[key] = (min(float(self.limit.burst), tokens + 1.0), last)

    @contextmanager
    def metered(self, key: str, what: str = "requests") -> Iterator[None]:
        """Take a token for the work in the `with` block; a FeedbackError inside gives it back (and propagates)."""
        self.take(key, what)
        try:
            yield
        except FeedbackError:
            if self.limit.enabled:
                self.give_back(key)
            raise

    def _forget_full(self, now: float, rate: float) -> None:
        # A bucket that has refilled is the same as no bucket: drop those so idle sessions cost no memory.
        full = [k for k, (tokens, last) in self._buckets.items()
                if tokens + (now - last) * rate >= self.limit.burst]
        for k in full:
            del self._buckets[k]
