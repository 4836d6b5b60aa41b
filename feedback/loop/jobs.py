"""Progress and cancellation of a session's long engine stages (restore, candidates, refine).

A stage runs inside `Jobs.run(session_id, stage, key, modules, report)`. Every forward call of one of `modules`
(the restorer's network, the diffusion prior's U-Net) made by the job's own thread is one step: it is counted,
reported with an estimate, and is where a cancelled job stops (`Cancelled` raised out of the network call). The
number of steps a stage takes is learnt per `key` (stage, size and settings) the first time it completes, so later
runs report "step k of n, about s seconds left"; the first reports steps and elapsed time only.

Nothing is stored while a stage computes: the service writes images and rows only after it returns, and checks
`job.check()` right before writing, so a cancelled job leaves nothing behind. A computation shared with other
sessions (candidates batched together, `feedback.loop.batching`) is not interrupted: it runs to its end for the others
and the cancelled session's share is dropped at that check.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from feedback.record.errors import Conflict

_shared = threading.local()  # set by `shared_computation` in the thread computing for several sessions


class Cancelled(Conflict):
    """The session cancelled the stage; nothing of it was stored (HTTP 409)."""


@dataclass(eq=False)
class Job:
    """One running stage of a session: steps done, steps expected (None until learnt), when it began."""

    session_id: str
    stage: str
    key: str
    total: int | None
    started: float = field(default_factory=time.perf_counter)
    step: int = 0
    thread: int = field(default_factory=threading.get_ident)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    report: Callable[[Job], None] | None = None
    _handles: list[Any] = field(default_factory=list)

    def watch(self, modules: Sequence[Any]) -> None:
        """Count the forward calls of these torch modules made by this job's thread as its steps."""
        self._handles += [m.register_forward_pre_hook(self._hook) for m in modules]

    def _hook(self, _module: Any, _args: Any) -> None:
        if threading.get_ident() != self.thread:
            return  # another session's computation through the same (shared) network
        self.step += 1
        if self.cancelled and not getattr(_shared, "value", False):
            raise Cancelled(f"{self.stage} was cancelled at step {self.step}; nothing of it was stored")
        if self.report is not None:
            self.report(self)

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check(self) -> None:
        """Raise Cancelled when the session cancelled this stage (call right before storing anything)."""
        if self.cancelled:
            raise Cancelled(f"{self.stage} was cancelled; nothing of it was stored")

    def snapshot(self) -> dict[str, Any]:
        """{'stage', 'step', 'total', 'elapsed_s', 'eta_s', 'fraction', 'cancelled'} (total, eta, fraction: None
        until this stage's step count is known)."""
        elapsed = time.perf_counter() - self.started
        total = self.total if self.total and self.total >= self.step else None
        eta = fraction = None
        if total and self.step:
            fraction = self.step / total
            eta = elapsed / self.step * (total - self.step)
        return {"stage": self.stage, "step": self.step, "total": total, "elapsed_s": round(elapsed, 2),
                "eta_s": None if eta is None else round(eta, 1), "fraction": fraction, "cancelled": self.cancelled}

    def describe(self) -> str:
        """'candidates: step 12 of 40, about 6 s left' (or 'step 12, 3 s so far' before the count is known)."""
        p = self.snapshot()
        if p["total"]:
            return f"{self.stage}: step {p['step']} of {p['total']}, about {p['eta_s']:.0f} s left"
        return f"{self.stage}: step {p['step']}, {p['elapsed_s']:.0f} s so far"


@contextmanager
def shared_computation(shared: bool) -> Iterator[None]:
    """Mark the current thread's computation as serving several sessions: no job interrupts it."""
    before = getattr(_shared, "value", False)
    _shared.value = shared
    try:
        yield
    finally:
        _shared.value = before


class Jobs:
    """The running stages of every session of one process, and the learnt step count of each stage key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, list[Job]] = {}
        self._steps: dict[str, int] = {}

    @contextmanager
    def run(self, session_id: str, stage: str, key: str, modules: Sequence[Any] = (),
            report: Callable[[Job], None] | None = None) -> Iterator[Job]:
        """Track one stage of `session_id` computed in this thread; steps are the forward calls of `modules` (and
        of those given to `job.watch` later)."""
        with self._lock:
            job = Job(session_id, stage, key, self._steps.get(key), report=report)
            self._running.setdefault(session_id, []).append(job)
        try:
            job.watch(modules)
            yield job
            if not job.cancelled and job.step:
                with self._lock:
                    self._steps[key] = job.step
        finally:
            for handle in job._handles:
                handle.remove()
            with self._lock:
                jobs = self._running.get(session_id, [])
                if job in jobs:
                    jobs.remove(job)
                if not jobs:
                    self._running.pop(session_id, None)

    def cancel(self, session_id: str) -> int:
        """Cancel every running stage of the session; how many there were."""
        with self._lock:
            jobs = list(self._running.get(session_id, []))
        for job in jobs:
            job.cancel_event.set()
        return len(jobs)

    def progress(self, session_id: str) -> list[dict[str, Any]]:
        """Snapshots of the session's running stages (empty when none)."""
        with self._lock:
            jobs = list(self._running.get(session_id, []))
        return [job.snapshot() for job in jobs]


def network_modules(obj: Any, depth: int = 3) -> list[Any]:
    """The torch modules a restorer (or a wrapper around one) computes with: its nn.Module attributes, looked for
    through wrapper objects (`inner`, a spandrel descriptor's `model`) up to `depth` levels."""
    import torch

    found: list[Any] = []
    seen: set[int] = set()

    def walk(value: Any, level: int) -> None:
        if id(value) in seen or level > depth:
            return
        seen.add(id(value))
        if isinstance(value, torch.nn.Module):
            found.append(value)
            return
        module = type(value).__module__
        if not (module.startswith("restoration") or module.startswith("spandrel")) or not hasattr(value, "__dict__"):
            return
        for attr in vars(value).values():
            walk(attr, level + 1)

    walk(obj, 0)
    return found
