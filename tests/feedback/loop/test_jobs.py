"""Progress and cancel of restore, candidates and refine: per step, with an estimate once a stage's step count is
known; a cancelled stage stops at its next step and stores no row and no image file."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from feedback.loop.jobs import Cancelled, Jobs
from feedback.record import store
from feedback.record.choices import ChoiceInput, ChoiceKind
from feedback.web.api import build_api

try:
    from tests.app_server import png_bytes
    from tests.inprocess_app import tiny_service
except ImportError:  # tests/ itself is on sys.path under pytest
    from app_server import png_bytes
    from inprocess_app import tiny_service


@pytest.fixture(scope="module")
def service(tmp_path_factory, prior):
    svc = tiny_service(tmp_path_factory.mktemp("jobs"), prior)
    yield svc
    svc.db.engine.dispose()


def _stored(service) -> tuple[dict[str, int], int]:
    with service.db.reads.begin() as s:
        rows = store.count_rows(s)
    return rows, sum(1 for p in service.images.root.rglob("*") if p.is_file())


def _chosen_round(service, session_id: str) -> str:
    view = service.start_round(session_id, png_bytes(32, seed=1), seed=3)
    ids = [c.id for c in view.candidates]
    service.record_choice(view.round_id, ChoiceInput(ChoiceKind.PAIRWISE, ids[:1], ids[1:]))
    return view.round_id


def _cancel_at(service, session_id: str, step: int, seen: list[str]):
    def progress(_fraction, message: str) -> None:
        seen.append(message)
        if len(seen) == step:
            assert service.cancel(session_id) == 1
    return progress


def test_cancelled_refine_and_candidates_store_nothing(service) -> None:
    session_id, _ = service.create_session("Ada")
    round_id = _chosen_round(service, session_id)
    before = _stored(service)
    seen: list[str] = []
    with pytest.raises(Cancelled, match="refine was cancelled at step 2"):
        service.refine(round_id, progress=_cancel_at(service, session_id, 2, seen))
    assert _stored(service) == before and service.progress(session_id) == []
    assert seen[0] == "loading images" and seen[1].startswith("refine: step 1")

    fresh = service.start_round(session_id, png_bytes(32, seed=2), seed=4, generate=False)
    before = _stored(service)
    with pytest.raises(Cancelled, match="candidates was cancelled"):
        service.generate_candidates(fresh.round_id, candidates=2, seed=9, progress=_cancel_at(service, session_id,
                                                                                               1, []))
    assert _stored(service) == before
    again = service.get_round(fresh.round_id)
    assert again.candidates == [] and again.params["candidates"]["seed"] == 4  # the new seed was not recorded
    assert len(service.generate_candidates(fresh.round_id).candidates) == 3  # the round goes on


def test_restore_cancelled_while_waiting_for_the_engine_stores_nothing(service) -> None:
    session_id, _ = service.create_session("Bo")
    before = _stored(service)
    outcome: dict[str, BaseException] = {}

    def restore() -> None:
        try:
            service.start_round(session_id, png_bytes(32, seed=5), seed=1)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    with service.gate._run:  # the engine is busy with someone else
        worker = threading.Thread(target=restore)
        worker.start()
        for _ in range(200):
            if service.progress(session_id):
                break
            time.sleep(0.01)
        assert [p["stage"] for p in service.progress(session_id)] == ["restore"]
        assert service.cancel(session_id) == 1
    worker.join(30)
    assert isinstance(outcome.get("error"), Cancelled)
    assert _stored(service) == before


def test_a_known_stage_reports_steps_of_a_total_with_an_estimate(service) -> None:
    session_id, _ = service.create_session("Cy")
    service.refine(_chosen_round(service, session_id), generate_next=False)  # learns the step count
    seen: list[tuple[float | None, str]] = []
    service.refine(_chosen_round(service, session_id), generate_next=False,
                   progress=lambda f, m: seen.append((f, m)))
    steps = [(f, m) for f, m in seen if m.startswith("refine:")]
    total = int(steps[-1][1].split(" of ")[1].split(",")[0])
    assert len(steps) == total and "s left" in steps[-1][1] and steps[-1][0] == 1.0
    assert all(0 < f <= 1 for f, _ in steps)


def test_only_the_jobs_own_thread_counts_and_a_shared_computation_is_not_interrupted() -> None:
    import torch

    from feedback.loop.jobs import shared_computation

    jobs, net = Jobs(), torch.nn.Identity()
    with jobs.run("s", "candidates", "k", [net]) as job:
        other = threading.Thread(target=lambda: net(torch.zeros(1)))
        other.start()
        other.join()
        net(torch.zeros(1))
        assert job.step == 1
        jobs.cancel("s")
        with shared_computation(True):
            net(torch.zeros(1))  # computing for other sessions too: runs on
        with pytest.raises(Cancelled):
            net(torch.zeros(1))
        with pytest.raises(Cancelled):
            job.check()
    assert jobs.progress("s") == [] and net._forward_pre_hooks == {}


def test_rest_progress_and_cancel(service) -> None:
    client = TestClient(build_api(service))
    body = client.post("/api/v1/sessions", json={"annotator": "Di"}).json()
    headers = {"Authorization": f"Bearer {body['token']}"}
    url = f"/api/v1/sessions/{body['session_id']}"
    assert client.get(f"{url}/progress", headers=headers).json() == {"running": []}
    assert client.post(f"{url}/cancel", headers=headers).json() == {"cancelled": 0}
    with service.gate._run:  # a round waiting for the engine, cancelled over REST: 409, nothing stored
        before = _stored(service)
        answer: dict = {}
        thread = threading.Thread(target=lambda: answer.update(r=client.post(
            f"{url}/rounds", headers=headers, data={"seed": "2"},
            files={"image": ("x.png", png_bytes(32, seed=6), "image/png")})))
        thread.start()
        for _ in range(200):
            if client.get(f"{url}/progress", headers=headers).json()["running"]:
                break
            time.sleep(0.01)
        running = client.get(f"{url}/progress", headers=headers).json()["running"]
        assert [r["stage"] for r in running] == ["restore"] and running[0]["step"] == 0
        assert client.post(f"{url}/cancel", headers=headers).json() == {"cancelled": 1}
    thread.join(30)
    assert answer["r"].status_code == 409 and "cancelled" in answer["r"].json()["error"]
    assert _stored(service) == before
