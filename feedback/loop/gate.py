"""The engine's gate: one computation at a time, a bounded line of waiting callers, `Busy` for the rest.

`EngineGate` serialises every engine computation of the process (restore, candidates, selection,
refinement); when more than `max_waiting` callers already wait it raises `Busy`, which the web turns into
HTTP 503 with a Retry-After header.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from feedback.record.errors import FeedbackError


class Busy(FeedbackError):
    """The engine is busy and its queue is full; retry after `retry_after` seconds (HTTP 503)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineGate:
    """One engine computation at a time; at most `max_waiting` callers wait, the rest get `Busy`."""

    def __init__(self, max_waiting: int = 4, retry_after: int = 10) -> None:
        self._run = threading.Lock()
        self._count = threading.Lock()
        self._pending = 0
        self.max_waiting = max_waiting
        self.retry_after = retry_after

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._count:
            if self._pending > self.max_waiting:
                raise Busy(f"the restoration engine is busy ({self._pending} requests in line); "
                           f"retry in {self.retry_after} s", self.retry_after)
            self._pending += 1
        try:
            with self._run:
                yield
        finally:
            with self._count:
                self._pending -= 1
