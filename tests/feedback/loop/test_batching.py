"""Candidate requests of concurrent sessions share one batch while they wait for the engine."""
from __future__ import annotations

import threading
import time

import pytest
import torch
from inprocess_app import tiny_service

from feedback.loop.engine import RoundSettings
from feedback.loop.gate import Busy


@pytest.fixture()
def service(tmp_path, prior):
    return tiny_service(tmp_path, prior, max_waiting=8)


def _start(seed: int, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(size, size), mode="bilinear")


def _submit_while_busy(service, jobs):
    """Hold the engine, submit every (start, settings) from its own thread, wait until all are listed, release."""
    results: dict[int, object] = {}

    def call(i, start, settings):
        try:
            results[i] = service.batcher.candidates(start, settings)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i, *job)) for i, job in enumerate(jobs)]
    with service.gate.slot():
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(service.batcher._waiting) < len(jobs) and time.monotonic() < deadline:
            time.sleep(0.01)
    for t in threads:
        t.join(60)
    return [results[i] for i in range(len(jobs))]


def test_waiting_requests_run_as_one_batch_with_the_images_each_would_get_alone(service):
    settings = [RoundSettings(num_candidates=2, steps=2, seed=s) for s in (1, 5, 9)]
    starts = [_start(s) for s in (1, 2, 3)]
    batched = _submit_while_busy(service, list(zip(starts, settings)))
    assert service.batcher.batches == [3]
    for start, setting, (made, seconds) in zip(starts, settings, batched):
        alone, _ = service.worker.candidates(start, setting)
        assert [m.seed for _, m in made] == setting.seeds() and seconds > 0
        for (img, meta), (ref, ref_meta) in zip(made, alone):
            assert meta == ref_meta and (img - ref).abs().max() < 1e-5


def test_only_compatible_requests_share_a_batch(service):
    jobs = [(_start(1), RoundSettings(num_candidates=2, steps=2, seed=0)),
            (_start(2, size=40), RoundSettings(num_candidates=2, steps=2, seed=0)),  # another size
            (_start(3), RoundSettings(num_candidates=2, steps=3, seed=0)),  # other steps
            (_start(4), RoundSettings(num_candidates=2, steps=2, seed=7))]  # only the seed differs: joins the first
    results = _submit_while_busy(service, jobs)
    assert sorted(service.batcher.batches) == [1, 1, 2]
    assert all(isinstance(r, tuple) for r in results) and results[1][0][0][0].shape[-1] == 40
    assert not service.batcher._waiting


def test_an_error_reaches_every_request_of_the_batch_and_nothing_is_left_waiting(service, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(service.worker, "candidates_many", broken)
    results = _submit_while_busy(service, [(_start(i), RoundSettings(num_candidates=2, steps=2)) for i in range(2)])
    assert [str(r) for r in results] == ["out of memory (simulated)"] * 2
    assert not service.batcher._waiting and service.batcher.batches == []


def test_a_request_refused_by_the_gate_leaves_the_waiting_list(tmp_path, prior):
    service = tiny_service(tmp_path, prior, max_waiting=0)
    with service.gate.slot(), pytest.raises(Busy, match="the restoration engine is busy"):  # busy, nobody may wait
        service.batcher.candidates(_start(0), RoundSettings(num_candidates=2, steps=2))
    assert not service.batcher._waiting


def test_max_jobs_one_turns_batching_off(service):
    service.batcher.max_jobs = 1
    _submit_while_busy(service, [(_start(i), RoundSettings(num_candidates=2, steps=2, seed=i)) for i in range(3)])
    assert service.batcher.batches == [1, 1, 1]
