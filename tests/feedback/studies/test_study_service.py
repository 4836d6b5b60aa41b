"""The study service in-process on SQLite and PostgreSQL: background preparation (409 until active, failure
records nothing, a study left 'preparing' is resumed), enrol, answer, withdraw, integrity."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from feedback.analysis import export
from feedback.analysis.votes import AnalysisConfig
from feedback.loop.engine import EngineSettings
from feedback.loop.service import FeedbackService
from feedback.loop.sessions import AuthError, Principal
from feedback.ops.integrity import integrity_check
from feedback.record.db import open_database
from feedback.record.errors import Conflict, InputError, NotFound
from feedback.record.models import Choice, Participant, SourceImage, Study, StudyItem
from feedback.record.store import count_rows
from feedback.studies import prepare as study_prepare
from feedback.studies.sampling import SamplerState, choose_adaptive_item
from feedback.studies.service import StudyService
from feedback.studies.study import study_from_dict

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
    service = StudyService(FeedbackService(db, str(tmp_path / "data"), EngineSettings(backbone="nlm")))
    yield service
    service.close(timeout_s=30)
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
    assert studies.wait_until_ready(sid, timeout_s=120)["status"] == "active"
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


def _images(tmp_path, n: int = 2) -> list[str]:
    paths = []
    for i in range(n):
        paths.append(tmp_path / f"in{i}.png")
        paths[-1].write_bytes(png_bytes(32, seed=10 + i))
    return [str(p) for p in paths]


def _definition(tmp_path, **extra) -> dict:
    return {"name": "async", "images": _images(tmp_path), "conditions": ["nlm", "median"], "attention_checks": 0,
            "repeat_share": 0, "consent_text": "ok", "consent_version": "v1", **extra}


def _study_rows(studies: StudyService, sid: str) -> tuple[Study, int]:
    with studies.fb.db.sessions.begin() as s:
        row = s.get(Study, sid)
        sources = s.query(SourceImage).filter(SourceImage.origin == "study").count()
        return row, sources


def test_create_returns_at_once_and_enrolment_waits_for_the_stimuli(studies: StudyService, tmp_path) -> None:
    definition = _definition(tmp_path)
    # Bad input is refused before anything is recorded: definition, condition, degradation, image file.
    for bad, message in [({"conditions": ["nlm", "nope"]}, "condition 'nope'"),
                         ({"degradations": ["noise:x"]}, "degradation 'noise:x'"),
                         ({"images": [str(tmp_path / "missing.png")]}, "cannot be read"),
                         ({"candidates_per_round": 9}, "candidates_per_round")]:
        with pytest.raises(InputError, match=message):
            studies.create_study({**definition, **bad})
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(InputError, match="text.png"):
        studies.create_study({**definition, "images": [str(tmp_path / "text.png")]})
    assert studies.list_studies() == []
    with studies.fb.gate.slot():  # the engine is busy with interactive work: the study waits behind it
        created = studies.create_study(definition)
        sid = created["study_id"]
        assert created["status"] == "preparing" and created["progress"] == {"done": 0, "total": 2}
        with pytest.raises(Conflict, match=r"still being prepared \(0 of 2 stimuli\)"):
            studies.enrol(sid, "v1")
        assert studies.public_info(sid)["status"] == "preparing"
        listed = studies.list_studies()
        assert [(s["study_id"], s["status"], s["progress"]) for s in listed] == [(sid, "preparing",
                                                                                   {"done": 0, "total": 2})]
        assert studies.wait_until_ready(sid, timeout_s=0.3)["status"] == "preparing"
    status = studies.wait_until_ready(sid, timeout_s=120)
    assert status == {"study_id": sid, "name": "async", "status": "active", "progress": {"done": 2, "total": 2},
                      "error": None}
    row, sources = _study_rows(studies, sid)
    assert len(row.stimuli) == 2 and sources == 2 and len(row.inputs) == 2
    person = studies.enrol(sid, "v1")
    assert studies.next_item(ADMIN, sid, person.participant_id)["k"] == 1


def test_a_failure_records_the_error_and_no_stimuli(studies: StudyService, tmp_path, monkeypatch) -> None:
    real, calls = study_prepare.run_condition, []

    def failing(fb, condition, degraded, seed, guide=None):
        calls.append(condition)
        if len(calls) == 3:  # the first condition of the second stimulus
            raise RuntimeError("out of memory on the test device")
        return real(fb, condition, degraded, seed, guide)

    monkeypatch.setattr(study_prepare, "run_condition", failing)
    sid = studies.create_study(_definition(tmp_path))["study_id"]
    status = studies.wait_until_ready(sid, timeout_s=120)
    assert status["status"] == "failed" and status["error"] == "RuntimeError: out of memory on the test device"
    assert status["progress"] == {"done": 1, "total": 2}
    row, sources = _study_rows(studies, sid)
    assert row.stimuli == [] and sources == 0  # nothing half-written
    with pytest.raises(Conflict, match="failed") as refused:
        studies.enrol(sid, "v1")
    assert "memory" not in str(refused.value)  # the error text is for the admin, not for participants
    assert studies.list_studies()[0]["error"] == status["error"]


def test_a_study_left_preparing_by_a_killed_process_is_prepared_on_start(studies: StudyService, tmp_path,
                                                                         monkeypatch) -> None:
    definition = _definition(tmp_path, degradations=["noise:20"])
    reference = studies.create_study({**definition, "name": "reference"})["study_id"]
    assert studies.wait_until_ready(reference, timeout_s=120)["status"] == "active"
    # The process dies right after recording the study (and after one stimulus): nothing ran in the background.
    monkeypatch.setattr(studies.preparer, "submit", lambda study_id: None)
    sid = studies.create_study(definition)["study_id"]
    with studies.fb.db.sessions.begin() as s:
        s.get(Study, sid).progress_done = 1
    for path in definition["images"]:  # the inputs were stored at creation: the files are no longer needed
        Path(path).unlink()
    restarted = StudyService(studies.fb)
    try:
        assert restarted.resume_preparing() == [sid]
        assert restarted.wait_until_ready(sid, timeout_s=120)["status"] == "active"
    finally:
        restarted.close(timeout_s=30)
    row, _ = _study_rows(studies, sid)
    ref, _ = _study_rows(studies, reference)
    assert row.progress_done == row.progress_total == 2
    # The same images as an uninterrupted preparation (every output is a function of the definition).
    assert [{k: st[k] for k in ("clean", "degraded", "control", "outputs")} for st in row.stimuli] == [
        {k: st[k] for k in ("clean", "degraded", "control", "outputs")} for st in ref.stimuli]
    assert StudyService(studies.fb).resume_preparing() == []


def test_gallery_study_on_both_databases(studies: StudyService, tmp_path) -> None:
    definition = _definition(tmp_path, conditions=["nlm", "median", "bicubic"], candidates_per_round=3,
                             attention_checks=1, repeat_share=0.5)
    sid = studies.create_study(definition)["study_id"]
    assert studies.wait_until_ready(sid, timeout_s=120)["status"] == "active"
    person = studies.enrol(sid, "v1")
    assert person.n_items == 2 + 1 + 1
    with pytest.raises(InputError, match="worst applies to gallery items only|gallery position"):
        studies.vote(ADMIN, sid, person.participant_id, 1, "left")
    while not (item := studies.next_item(ADMIN, sid, person.participant_id))["done"]:
        assert len(item["gallery"]) == 3
        studies.vote(ADMIN, sid, person.participant_id, item["k"], 1, worst="3")
    with studies.fb.db.sessions.begin() as s:
        assert integrity_check(s, studies.fb.images) == []
        assert count_rows(s)["preference_pairs"] == 4 * 3 and count_rows(s)["candidates"] == 4 * 3
    deleted = studies.withdraw(sid, item["completion_code"])
    assert deleted["preference_pairs"] == 12 and deleted["study_items"] == 4


# ------------------------------------------------------------------------------ adaptive studies
def _item_row(studies: StudyService, participant_id: str, k: int) -> StudyItem:
    with studies.fb.db.sessions.begin() as s:
        row = s.scalar(select(StudyItem).where(StudyItem.participant_id == participant_id,
                                               StudyItem.position == k - 1))
        s.expunge(row)
        return row


def test_adaptive_study_regions_metrics_and_prolific_flow(studies: StudyService, tmp_path) -> None:
    """Adaptive sampling on both databases: items made one at a time (the first one reproducible from the seed),
    recorded with their sampler and score; metric scores at preparation fill metric_agreement; region marks are
    checked, stored, exported and mapped; a failed attention check screens out; withdrawal at any point."""
    definition = _definition(tmp_path, conditions=["nlm", "median", "bicubic"], degradations=["noise:20"],
                             sampling="adaptive", items_per_participant=4, repeat_share=0.25, attention_checks=1,
                             completion_url="https://example.test/done?cc=",
                             screenout_url="https://example.test/screened-out")
    sid = studies.create_study(definition)["study_id"]
    assert studies.wait_until_ready(sid, timeout_s=120)["status"] == "active"
    with studies.fb.db.sessions.begin() as s:
        stimuli = s.get(Study, sid).stimuli
    for stim in stimuli:  # every output scored by piqe and entropy at preparation
        assert set(stim["scores"]) == {"nlm", "median", "bicubic"}
        assert all(set(v) == {"piqe", "entropy"} and all(isinstance(x, float) for x in v.values())
                   for v in stim["scores"].values())
    people = [studies.enrol(sid, "v1") for _ in range(4)]
    assert [p.n_items for p in people] == [6] * 4
    study = study_from_dict(definition)
    first = choose_adaptive_item(study, SamplerState(study.conditions), 0, 0, study.seed).item
    row = _item_row(studies, people[0].participant_id, 1)
    if not row.is_attention_check:  # the first main item is the sampler's pure function of (no votes, seed)
        assert (row.stimulus, row.left_condition, row.right_condition) == (first.stimulus, first.left, first.right)
    rank = {"nlm": 0, "median": 1, "bicubic": 2}
    box = {"on": "right", "x": 0.1, "y": 0.2, "w": 0.3, "h": 0.3, "tag": "artefacts"}
    screened = people[3].participant_id
    for _turn in range(6):  # the participants take turns, so each choice sees the others' votes
        for p in people:
            item = studies.next_item(ADMIN, sid, p.participant_id)
            if item["done"]:
                continue
            row = _item_row(studies, p.participant_id, item["k"])
            if row.is_attention_check:
                answer = row.expected if p.participant_id != screened else {"left": "right", "right": "left"}[
                    row.expected]
                out = studies.vote(ADMIN, sid, p.participant_id, item["k"], answer)
                assert out.get("screened_out", False) == (p.participant_id == screened)
                continue
            with pytest.raises(InputError, match=r"x \+ w <= 1"):
                studies.vote(ADMIN, sid, p.participant_id, item["k"], "left", regions=[{**box, "x": 0.9}])
            with pytest.raises(InputError, match="'left' or 'right'"):
                studies.vote(ADMIN, sid, p.participant_id, item["k"], "left", regions=[{**box, "on": "3"}])
            better = "left" if rank[row.left_condition] < rank[row.right_condition] else "right"
            studies.vote(ADMIN, sid, p.participant_id, item["k"], better, regions=[box])
    out = studies.next_item(ADMIN, sid, screened)
    assert out["screened_out"] and out["redirect"] == "https://example.test/screened-out"
    with pytest.raises(Conflict, match="screened out"):
        studies.vote(ADMIN, sid, screened, out["n"], "left")
    for p in people[:3]:
        done = studies.next_item(ADMIN, sid, p.participant_id)
        assert done["done"] and done["n"] == 6
        assert done["redirect"] == "https://example.test/done?cc=" + done["completion_code"]
    with studies.fb.db.sessions.begin() as s:
        items = list(s.scalars(select(StudyItem).join(Participant).where(Participant.study_id == sid)))
        assert {i.sampler for i in items} == {"adaptive"}
        for person in people[:3]:
            own = sorted((i for i in items if i.participant_id == person.participant_id), key=lambda i: i.position)
            assert [i.position for i in own] == list(range(6))
            mains = [i for i in own if not i.is_repeat and not i.is_attention_check]
            assert len(mains) == 4 and all(i.sampler_score > 0 and i.sampler_votes is not None for i in mains)
            for i in own:
                if i.is_repeat:  # sides swapped, after its first showing
                    original = own[i.repeat_of]
                    assert (i.stimulus, i.left_condition, i.right_condition) == (
                        original.stimulus, original.right_condition, original.left_condition)
        assert max(i.sampler_votes or 0 for i in items) > 0  # later choices saw earlier votes
        assert integrity_check(s, studies.fb.images) == []
    report = studies.analysis(sid, AnalysisConfig(n_resamples=50))
    agreement = report["metric_agreement"]
    assert set(agreement) == {"piqe", "entropy"} and all(a["n"] > 0 for a in agreement.values())
    assert all(a["ci"][0] <= a["rate"] <= a["ci"][1] for a in agreement.values())
    marked = report["regions"]
    with studies.fb.db.reads.begin() as s:
        marked_votes = s.scalar(select(func.count()).select_from(Choice).where(Choice.regions.is_not(None)))
    assert marked_votes >= 3 * 4 and sum(r["boxes"] for r in marked.values()) == marked_votes
    assert set(marked) <= set(rank)  # each box counted for the condition it was drawn on
    assert all(r["tags"] == {"artefacts": r["boxes"]} and len(r["grid"]) == 8 for r in marked.values())
    assert report["sampling"]["sampler"] == "adaptive" and set(report["sampling"]["posterior"]) == set(rank)
    posterior = report["sampling"]["posterior"]
    assert posterior["nlm"]["mean"] > posterior["bicubic"]["mean"]
    with studies.fb.db.reads.begin() as s:
        rows = list(export.preference_rows(s, human_only=True, study_id=sid))
    assert rows and all(r["regions"] and r["regions"][0]["tag"] == "artefacts" for r in rows)
    assert all(r["chosen_scores"] != "{}" for r in rows)
    # withdraw at any point with the participant's own token; another participant's token may not
    own = studies.fb.authenticate(people[1].token)
    with pytest.raises(AuthError):
        studies.withdraw_participant(studies.fb.authenticate(people[2].token), sid, people[1].participant_id)
    deleted = studies.withdraw_participant(own, sid, people[1].participant_id)
    assert deleted["participants"] == 1 and deleted["study_items"] == 6
