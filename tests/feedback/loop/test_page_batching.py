"""Two users of the Gradio page asking for candidates at once share one batch (the page's queue lets them wait
at the engine together), through the real app over HTTP with gradio_client."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from app_server import free_port
from inprocess_app import tiny_app, tiny_service
from PIL import Image


@pytest.fixture()
def served(tmp_path, prior):
    import uvicorn

    service = tiny_service(tmp_path, prior, max_waiting=8)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(tiny_app(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.started, "the in-process app did not start"
    yield service, f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=30)


def _restored_client(url: str, name: str, image: str):
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    client.predict(name, api_name="/sign_in")
    client.predict(handle_file(image), "none", "nlm", 0, True, "", api_name="/restore")
    return client


def test_two_page_users_candidates_run_as_one_batch(served, tmp_path):
    service, url = served
    picture = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)).save(picture)
    clients = [_restored_client(url, f"user{i}", str(picture)) for i in range(2)]
    before = list(service.batcher.batches)
    with service.gate.slot():  # the engine is busy: both users' requests must wait for it together
        jobs = [c.submit(2, 7 + i, "0.2, 0.4", True, api_name="/generate") for i, c in enumerate(clients)]
        deadline = time.monotonic() + 60
        while len(service.batcher._waiting) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        waiting = len(service.batcher._waiting)
    for job in jobs:
        outputs = job.result(timeout=120)  # the round's outputs less the state: the gallery first
        assert len(outputs[0]) == 3  # 2 candidates and the restored image
    assert waiting == 2, "the page ran the second user's candidate request only after the first"
    assert service.batcher.batches[len(before):] == [2]
