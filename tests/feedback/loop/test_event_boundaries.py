"""Each event of the loop crosses into compute once and writes in one transaction (issue 29's counts).

How they are counted: a profile hook records every call made from a frame of `feedback/loop/service.py` into a
`TTPOWorker` method or any function under `restoration/` (the loop's crossings into compute); a SQLAlchemy
`begin` listener counts the transactions begun on the database without the read-only option (write transactions).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import event

from feedback.loop.engine import EngineSettings, RefineSettings, RoundSettings
from feedback.loop.service import FeedbackService
from feedback.record.choices import ChoiceInput, ChoiceKind
from feedback.record.db import READ_ONLY_OPTION, open_database

SETTINGS = EngineSettings(backbone="nlm", round=RoundSettings(num_candidates=2, steps=2),
                          refine=RefineSettings(steps=2))
SERVICE_FILE = str(Path(sys.modules[FeedbackService.__module__].__file__))
RESTORATION = str(Path(__file__).resolve().parents[3] / "restoration")


def _image(size: int = 32) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    return (np.stack([x, y, 1 - x], -1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    data = tmp_path_factory.mktemp("events")
    svc = FeedbackService(open_database(data_dir=data), str(data), SETTINGS, admin_token="admin")
    svc.worker.warm_up()
    return svc


@contextmanager
def counted(service: FeedbackService):
    """Yields {'crossings': [qualified names], 'writes': n} filled while the block runs."""
    seen: dict = {"crossings": [], "writes": 0}

    def profile(frame, what, _arg):
        if what != "call" or frame.f_back is None or frame.f_back.f_code.co_filename != SERVICE_FILE:
            return
        code = frame.f_code
        if code.co_qualname.startswith("TTPOWorker.") or code.co_filename.startswith(RESTORATION):
            seen["crossings"].append(code.co_qualname)

    def begin(conn):
        if not conn.get_execution_options().get(READ_ONLY_OPTION, False):
            seen["writes"] += 1

    event.listen(service.db.engine, "begin", begin)
    sys.setprofile(profile)
    try:
        yield seen
    finally:
        sys.setprofile(None)
        event.remove(service.db.engine, "begin", begin)


def test_a_restore_event_crosses_once_and_writes_once(service) -> None:
    session_id, _ = service.create_session("Ada")
    with counted(service) as seen:
        view = service.start_round(session_id, _image(), degradation="noise:10", seed=3, generate=False)
    assert seen["crossings"] == ["TTPOWorker.check_restore", "TTPOWorker.restore"]  # names checked, then compute
    assert seen["writes"] == 1
    assert view.candidates == [] and view.params["backbone"]["name"] == "nlm"


def test_candidates_vote_and_refine_events_each_write_once(service) -> None:
    session_id, _ = service.create_session("Bo")
    round_id = service.start_round(session_id, _image(), seed=4, generate=False).round_id
    with counted(service) as seen:
        view = service.generate_candidates(round_id)
    assert seen["writes"] == 1 and len(view.candidates) == 3
    ids = [c.id for c in view.candidates]
    with counted(service) as seen:
        service.record_choice(round_id, ChoiceInput(ChoiceKind.PAIRWISE, ids[:1], ids[1:]))
    assert seen["writes"] == 1 and seen["crossings"] == []  # a vote runs no model
    with counted(service) as seen:
        refined = service.refine(round_id)  # the refinement, the next round and its candidates together
    assert seen["writes"] == 1
    assert "TTPOWorker.refine" in seen["crossings"]
    assert refined.next_round.round_index == 1 and len(refined.next_round.candidates) == 3


def test_a_cancelled_next_round_stores_no_refinement(service) -> None:
    """The refinement and the next round's candidates are one write: cancelling the candidates stores neither."""
    from feedback.loop.jobs import Cancelled

    session_id, _ = service.create_session("Cy")
    view = service.start_round(session_id, _image(), seed=5)
    ids = [c.id for c in view.candidates]
    service.record_choice(view.round_id, ChoiceInput(ChoiceKind.PAIRWISE, ids[:1], ids[1:]))

    def progress(_fraction, message: str) -> None:
        if message.startswith("candidates"):
            service.cancel(session_id)

    with pytest.raises(Cancelled):
        service.refine(view.round_id, progress=progress)
    assert service.get_round(view.round_id).status == "chosen"
    again = service.refine(view.round_id)  # the round goes on
    assert len(again.next_round.candidates) == 3
