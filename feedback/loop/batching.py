"""Candidate requests of concurrent sessions, batched together while they wait for the engine.

The engine runs one computation at a time (`EngineGate`). A candidate request joins a waiting list and
then queues for the gate like any other request. Whoever gets the gate first takes every waiting
request that can share its batch (same prior, same image size, same candidate settings but the seed)
and runs them as one `TTPOWorker.candidates_many` call; the others find their result ready when their
turn comes and leave at once. With one session nothing changes; with many, their denoising steps share
U-Net batches, which a GPU runs in about the time of one (docs/history/benchmarks.md, "Concurrent sessions").

    batcher = CandidateBatcher(gate, worker, max_jobs=8)
    made, seconds = batcher.candidates(start, settings, prior="default")
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from feedback.loop.engine import RoundSettings, TTPOWorker
from feedback.loop.jobs import shared_computation


@dataclass(eq=False)
class _Job:
    start: torch.Tensor
    settings: RoundSettings
    prior: str | None
    key: str
    done: threading.Event = field(default_factory=threading.Event)
    result: tuple[list[Any], float] | None = None
    error: BaseException | None = None
    batch_size: int = 0


class CandidateBatcher:
    """Runs waiting candidate requests that can share a batch together, at most `max_jobs` images at once
    (1: no batching)."""

    def __init__(self, gate, worker: TTPOWorker, max_jobs: int = 8) -> None:
        if max_jobs < 1:
            raise ValueError(f"max_jobs must be >= 1, got {max_jobs}")
        self.gate, self.worker, self.max_jobs = gate, worker, max_jobs
        self._lock = threading.Lock()
        self._waiting: list[_Job] = []
        self.batches: list[int] = []  # size of every batch run so far (for benchmarks and tests)

    def candidates(self, start: torch.Tensor, settings: RoundSettings, prior: str | None = None
                   ) -> tuple[list[Any], float]:
        """[(image, CandidateMeta)] of `start`'s candidates and the seconds their batch took."""
        batchable = {k: v for k, v in settings.to_dict().items() if k != "seed"}
        key = json.dumps([prior, list(start.shape), batchable], sort_keys=True)
        job = _Job(start, settings, prior, key)
        with self._lock:
            self._waiting.append(job)
        try:
            with self.gate.slot():
                if not job.done.is_set():
                    self._run(self._take(job))
        finally:
            with self._lock:  # refused by the gate (Busy) or failed: never leave it for another batch
                if job in self._waiting:
                    self._waiting.remove(job)
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _take(self, first: _Job) -> list[_Job]:
        with self._lock:
            batch = [first] + [j for j in self._waiting if j is not first and j.key == first.key]
            batch = batch[: self.max_jobs]
            for j in batch:
                self._waiting.remove(j)
        return batch

    def _run(self, batch: list[_Job]) -> None:
        try:
            with shared_computation(len(batch) > 1):  # a session's cancel must not stop the others' candidates
                made, seconds = self.worker.candidates_many([j.start for j in batch], [j.settings for j in batch],
                                                            batch[0].prior)
        except BaseException as exc:  # noqa: BLE001 - every job of the batch gets the error; each caller re-raises it
            for j in batch:
                j.error = exc
                j.done.set()
            return
        self.batches.append(len(batch))
        for j, m in zip(batch, made):
            j.result, j.batch_size = (m, seconds), len(batch)
            j.done.set()
