"""The admin tab's handlers over a real service on SQLite: the token check, studies, analysis, export."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import gradio as gr
import pyarrow.parquet as pq
import pytest

from feedback.loop.engine import EngineSettings
from feedback.loop.service import FeedbackService
from feedback.loop.sessions import Principal
from feedback.record.db import open_database
from feedback.studies.service import StudyService
from feedback.web import admin_ui

try:
    from tests.app_server import png_bytes
except ImportError:  # tests/ is not importable as a package: pytest put tests/ itself on sys.path
    from app_server import png_bytes

TOKEN = "admin-secret"
ADMIN = Principal(None, admin=True)


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> FeedbackService:
    folder = tmp_path_factory.mktemp("admin")
    db = open_database(f"sqlite:///{folder / 'ttpo.sqlite3'}")
    yield FeedbackService(db, str(folder / "data"), EngineSettings(backbone="nlm"), admin_token=TOKEN)
    db.engine.dispose()


@pytest.fixture(scope="module")
def studies(service) -> StudyService:
    """The tab's handlers take the app's one StudyService (it owns the background preparation of studies)."""
    studies = StudyService(service)
    yield studies
    studies.close(timeout_s=30)


@pytest.fixture(autouse=True)
def work_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "work"
    monkeypatch.setattr(admin_ui, "WORK_ROOT", root)
    return root


@pytest.fixture(scope="module")
def study_id(studies, tmp_path_factory) -> str:
    """A study created through the tab from pasted YAML; two participants answer every item 'left'."""
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(2):
        paths.append(folder / f"{i}.png")
        paths[-1].write_bytes(png_bytes(32, seed=i))
    definition = "\n".join(["name: pilot", f"images: [{paths[0]}, {paths[1]}]", "conditions: [nlm, bicubic]",
                            "degradations: ['noise:20']", "repeat_share: 0.5", "attention_checks: 1",
                            "consent_text: ok", "consent_version: v1"])
    msg, rows, picker, _scope = admin_ui.create_study(studies, TOKEN, definition, None)
    sid = picker["value"]
    assert "Created study **pilot**" in msg and rows[0][:2] == [sid, "pilot"]
    assert rows[0][7].startswith("preparing") or rows[0][7] == "active"
    assert studies.wait_until_ready(sid, timeout_s=120)["status"] == "active"
    for _ in range(2):
        person = studies.enrol(sid, "v1")
        while not (item := studies.next_item(ADMIN, sid, person.participant_id))["done"]:
            studies.vote(ADMIN, sid, person.participant_id, item["k"], "left", decision_ms=900)
    return sid


@pytest.mark.parametrize("token", [None, "", "wrong", "session"])
def test_wrong_token_is_refused_and_writes_nothing(service, studies, study_id, work_root, token):
    if token == "session":  # a valid session token is not the admin token
        token = service.create_session("Ada")[1]
    calls = [(admin_ui.list_studies, ()), (admin_ui.analyse_study, (study_id, 10, False)),
             (admin_ui.export_preferences, ("parquet", "ttpo", False, "")),
             (admin_ui.create_study, ("name: x", None))]
    for handler, args in calls:
        with pytest.raises(gr.Error, match="wrong or missing admin token"):
            handler(studies, token, *args)
    assert not work_root.exists()


def test_without_an_admin_token_the_tab_is_off(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 'ttpo.sqlite3'}")
    bare = FeedbackService(db, str(tmp_path / "data"), EngineSettings(backbone="nlm"))
    with pytest.raises(gr.Error, match="without an admin token"):
        admin_ui.list_studies(StudyService(bare), "")
    db.engine.dispose()


def test_list_and_analyse(studies, study_id):
    rows, picker, scope, msg = admin_ui.list_studies(studies, f" {TOKEN} ")
    assert msg == "1 studies." and rows[0][0] == study_id and rows[0][3] == 2 and rows[0][6] == f"/study/{study_id}"
    assert rows[0][7] == "active"
    assert picker["value"] == study_id and scope["choices"][0] == ("all", "")

    summary, conditions, agreement, people, plots, files = admin_ui.analyse_study(studies, TOKEN, study_id, 50, False)
    assert "**2** participants" in summary and "alpha" in summary
    by_name = {row[0]: row for row in conditions}
    assert set(by_name) == {"nlm", "bicubic"}
    for name, win, low, high, bt, bt_low, bt_high, n, _ties in conditions:
        assert 0 <= low <= win <= high <= 1 and bt_low <= bt <= bt_high and n > 0, name
    assert [len(row) for row in people] == [len(admin_ui.PARTICIPANT_COLUMNS)] * 2
    assert all(row[2].split("/")[0] == row[2].split("/")[1] for row in people)  # every item answered
    # every stimulus was scored (piqe, entropy) when the study was prepared: agreement is filled, with intervals
    assert {row[0] for row in agreement} == {"piqe", "entropy"}
    assert all(len(row) == len(admin_ui.AGREEMENT_COLUMNS) and row[4] > 0 and row[2] <= row[1] <= row[3]
               for row in agreement)
    assert "Pairwise tests" in summary and "Holm" in summary and "Sampling: **latin**" in summary
    assert sorted(Path(p).name for p in plots) == ["bt_scores.png", "metric_agreement.png", "participants.png",
                                                   "win_rates.png"]
    assert all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    names = {Path(f).name: Path(f) for f in files}
    assert set(names) == {"conditions.csv", "participants.csv", "metric_agreement.csv", "condition_tests.csv",
                          "report.json"}
    csv_rows = names["conditions.csv"].read_text().splitlines()
    assert csv_rows[0].startswith("condition,win_rate,ci_low,ci_high") and len(csv_rows) == 3
    assert json.loads(names["report.json"].read_text())["n_participants"] == 2

    with pytest.raises(gr.Error, match="resamples"):
        admin_ui.analyse_study(studies, TOKEN, study_id, 0, False)
    with pytest.raises(gr.Error, match="pick a study"):
        admin_ui.analyse_study(studies, TOKEN, None, 10, False)
    with pytest.raises(gr.Error, match="no study"):
        admin_ui.analyse_study(studies, TOKEN, "nope", 10, False)


def test_export_is_a_zip_of_the_dataset(studies, study_id):
    expected = len(studies.export_rows(study_id))
    path, msg = admin_ui.export_preferences(studies, TOKEN, "parquet", "ttpo", False, study_id)
    assert msg.startswith(f"Exported {expected} preference pairs") and expected > 0
    with zipfile.ZipFile(path) as archive:
        assert {"train.parquet", "export_info.json"} <= set(archive.namelist())
        archive.extract("train.parquet", Path(path).parent)
    table = pq.read_table(Path(path).parent / "train.parquet")
    assert table.num_rows == expected and {"chosen", "rejected", "label"} <= set(table.column_names)

    path, _ = admin_ui.export_preferences(studies, TOKEN, "jsonl", "pickapic", True, "")
    with zipfile.ZipFile(path) as archive:
        lines = archive.read("train.jsonl").decode().splitlines()
        images = [n for n in archive.namelist() if n.startswith("images/")]
    assert len(lines) <= expected and images and {"jpg_0", "jpg_1", "label_0"} <= set(json.loads(lines[0]))
    with pytest.raises(gr.Error, match="format must be one of"):
        admin_ui.export_preferences(studies, TOKEN, "csv", "ttpo", False, "")


def test_bad_definitions_are_refused(studies, tmp_path):
    with pytest.raises(gr.Error, match="paste a study definition"):
        admin_ui.create_study(studies, TOKEN, "  ", None)
    with pytest.raises(gr.Error, match="neither JSON nor YAML"):
        admin_ui.create_study(studies, TOKEN, "name: [unclosed", None)
    with pytest.raises(gr.Error, match="missing field"):
        admin_ui.create_study(studies, TOKEN, '{"name": "x"}', None)
    text = tmp_path / "study.txt"
    text.write_text("name: x")
    with pytest.raises(gr.Error, match="upload a .json"):
        admin_ui.create_study(studies, TOKEN, None, str(text))


def test_the_live_view_refreshes_a_picked_study_and_stops_on_a_bad_token(studies, study_id, monkeypatch):
    """What the tab's timer shows every few seconds: participants, votes, exclusions, scores with intervals, the
    sampler; it ticks only while a study is picked, and a timer call never raises (it says why it stopped)."""
    assert [admin_ui.live_timer(sid, live).active for sid, live in ((study_id, True), (study_id, False),
                                                                    (None, True), ("", True))] == [
        True, False, False, False]
    line, rows, timer = admin_ui.live_dashboard(studies, TOKEN, study_id, False)
    assert "**2** participants (0 active, 2 completed, 0 screened out)" in line
    assert "votes, 0 flagged, 0 excluded. Sampler: latin." in line and "Updated" in line
    assert timer == gr.skip()  # keeps ticking
    assert {row[0] for row in rows} == {"nlm", "bicubic"} and all(len(r) == len(admin_ui.LIVE_COLUMNS) for r in rows)
    assert rows[0][1] >= rows[1][1] and all(low <= bt <= high and n > 0 for _c, bt, low, high, _w, n in rows)
    line, rows, timer = admin_ui.live_dashboard(studies, TOKEN, None)  # nothing picked: nothing shown, no ticks
    assert (line, rows, timer.active) == ("", [], False)
    for token, sid, needle in [("wrong", study_id, "wrong or missing admin token"), (TOKEN, "nope", "no study")]:
        line, rows, timer = admin_ui.live_dashboard(studies, token, sid)
        assert needle in line and "stopped" in line and rows == [] and timer.active is False
    monkeypatch.setattr(studies, "study_status", lambda sid: {"status": "preparing", "progress": {"done": 1,
                                                                                                "total": 4}})
    line, rows, timer = admin_ui.live_dashboard(studies, TOKEN, study_id)
    assert "being prepared (1 of 4 stimuli)" in line and rows == [] and timer == gr.skip()
