"""The study service in-process on SQLite and PostgreSQL: enrol, answer, withdraw, integrity."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, select

from feedback.db import open_database
from feedback.engine import EngineSettings
from feedback.errors import Conflict, InputError, NotFound
from feedback.integrity import integrity_check
from feedback.models import Choice
from feedback.service import FeedbackService, Principal
from feedback.store import count_rows
from feedback.study_service import StudyService

try:
    from tests.app_server import png_bytes
    from tests.pg import postgres_url
except ImportError:  # tests/ is not importable as a package: pytest put tests/ itself on sys.path
    from app_server import png_bytes
    from pg import postgres_url  # noqa: F401

ADMIN = Principal(None, admin=True)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def studies(request: pytest.FixtureRequest, tmp_path, monkeypatch) -> Iterator[StudyService]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    admin = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ttpo.sqlite3'}"
    else:
        server = request.getfixturevalue("postgres_url")
        admin = create_engine(server, isolation_level="AUTOCOMMIT")
        name = f"study_{uuid.uuid4().hex[:12]}"
        with admin.connect() as c:
            c.exec_driver_sql(f"CREATE DATABASE {name}")
        url = server.rsplit("/", 1)[0] + "/" + name
    db = open_database(url)
    yield StudyService(FeedbackService(db, str(tmp_path / "data"), EngineSettings(backbone="nlm")))
    db.engine.dispose()
    if admin is not None:
        with admin.connect() as c:
            c.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
        admin.dispose()


def test_enrol_answer_withdraw(studies: StudyService, tmp_path) -> None:
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(png_bytes(32, seed=i))
    created = studies.create_study({
        "name": "s", "images": [str(p) for p in paths], "conditions": ["nlm", "bicubic"],
        "degradations": ["noise:20"], "repeat_share": 0.5, "attention_checks": 1,
        "consent_text": "ok", "consent_version": "v1"})
    sid = created["study_id"]
    assert created["n_items"] == 2 + 1 + 1
    with pytest.raises(InputError, match="conditions"):
        studies.create_study({"name": "s", "images": ["x"], "conditions": ["nlm"], "consent_text": "ok",
                              "consent_version": "v1"})
    people = [studies.enrol(sid, "v1") for _ in range(2)]
    assert [p.n_items for p in people] == [4, 4]
    for p in people:
        while not (item := studies.next_item(ADMIN, sid, p.participant_id))["done"]:
            studies.vote(ADMIN, sid, p.participant_id, item["k"], "left", decision_ms=900, zoom_count=1,
                         viewport=[800, 600], dpr=1.5)
    with pytest.raises(Conflict):
        studies.vote(ADMIN, sid, people[0].participant_id, 1, "right")
    with pytest.raises(InputError, match="viewport"):
        studies.vote(ADMIN, sid, people[0].participant_id, 1, "left", viewport=[800])
    code = studies.next_item(ADMIN, sid, people[0].participant_id)["completion_code"]
    with studies.fb.db.sessions.begin() as s:
        before = count_rows(s)
        assert {c.consent_version for c in s.scalars(select(Choice))} == {"v1"}
    deleted = studies.withdraw(sid, code)
    with studies.fb.db.sessions.begin() as s:
        after = count_rows(s)
        assert integrity_check(s, studies.fb.images) == []
    assert {t: before[t] - after[t] for t in before if before[t] != after[t]} == {
        t: n for t, n in deleted.items() if n}
    assert deleted["study_items"] == deleted["rounds"] == deleted["choices"] == 4 and deleted["participants"] == 1
    assert after["participants"] == 1 and after["study_items"] == 4 and after["studies"] == 1
    with pytest.raises(NotFound):
        studies.withdraw(sid, code)
    report = studies.analysis(sid)
    assert list(report["study_participants"]) == [people[1].participant_id]
    assert report["study_participants"][people[1].participant_id]["attention_checks"] == 1
