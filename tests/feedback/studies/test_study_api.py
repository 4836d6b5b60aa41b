"""A scripted user study through the REST API of the real app: simulated participants with a planted
preference order (and one who always picks the left image), resume, idempotent votes, analysis, withdrawal."""

from __future__ import annotations

import json
import sqlite3
import time

import httpx
import pytest

from feedback.analysis.export import export_dataset
from feedback.ops.integrity import integrity_check
from feedback.record.db import open_database
from feedback.record.images import ImageStore

try:
    from tests.app_server import ADMIN_TOKEN, create_study, png_bytes, running_app
except ImportError:  # pytest run from inside tests/
    from app_server import ADMIN_TOKEN, create_study, png_bytes, running_app

API = "/api/v1"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PLANTED = ["nlm", "median", "bicubic"]  # best first: what the attentive participants prefer
RANK = {"attention-clean": -1, **{c: i for i, c in enumerate(PLANTED)}, "attention-control": 99}
N_ATTENTIVE = 6  # two full Latin squares of the 3 condition pairs


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("study") / "data") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=300) as c:
        yield c


@pytest.fixture(scope="module")
def study(client, tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(4):
        (folder / f"img{i}.png").write_bytes(png_bytes(40, seed=i))
        paths.append(str(folder / f"img{i}.png"))
    definition = {"name": "planted order", "images": paths, "conditions": ["bicubic", "nlm", "median"],
                  "degradations": ["noise:20"], "items_per_participant": 12, "repeat_share": 0.34,
                  "attention_checks": 1, "consent_text": "Your choices are stored pseudonymously.",
                  "consent_version": "v2", "seed": 5}
    body = create_study(client, definition)
    assert body["stimuli"] == 4 and body["n_items"] == 12 + 4 + 1
    return body


def _enrol(client, study_id, **extra):
    r = client.post(f"{API}/studies/{study_id}/participants", json={"consent_version": "v2", **extra})
    assert r.status_code == 200, r.text
    body = r.json()
    return body["participant_id"], {"Authorization": f"Bearer {body['token']}"}, body


def _next(client, study_id, pid, headers):
    r = client.get(f"{API}/studies/{study_id}/participants/{pid}/next", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def _vote(client, study_id, pid, headers, k, choice):
    return client.post(f"{API}/studies/{study_id}/participants/{pid}/items/{k}/vote", headers=headers,
                       json={"choice": choice, "decision_ms": 1200 + k, "zoom_count": k % 3,
                             "viewport": [1280, 800], "dpr": 2.0})


def _methods(server) -> dict[str, str]:
    """The oracle: which condition made each image (the participants never see this)."""
    with sqlite3.connect(server.db_path) as db:
        return dict(db.execute("SELECT image_hash, method FROM candidates"))


def _run_participant(client, server, study_id, always_left=False, platform_id=None):
    pid, headers, _ = _enrol(client, study_id, **({"platform_id": platform_id} if platform_id else {}))
    methods = _methods(server)
    while not (item := _next(client, study_id, pid, headers))["done"]:
        left, right = methods[item["left"]["image_id"]], methods[item["right"]["image_id"]]
        choice = "left" if always_left or RANK[left] < RANK[right] else "right"
        assert _vote(client, study_id, pid, headers, item["k"], choice).status_code == 200
    return pid, headers, item["completion_code"]


@pytest.fixture(scope="module")
def run(client, server, study):
    sid = study["study_id"]
    attentive = [_run_participant(client, server, sid) for _ in range(N_ATTENTIVE)]
    careless = _run_participant(client, server, sid, always_left=True)
    return sid, attentive, careless


def test_enrolment_checks_consent_and_study(client, study) -> None:
    sid = study["study_id"]
    r = client.post(f"{API}/studies/{sid}/participants", json={"consent_version": "v1"})
    assert r.status_code == 400 and "v2" in r.json()["error"]
    assert client.post(f"{API}/studies/nope/participants", json={"consent_version": "v2"}).status_code == 404
    info = client.get(f"{API}/studies/{sid}").json()
    assert info["consent_version"] == "v2" and info["n_items"] == 17
    listed = client.get(f"{API}/studies", headers=ADMIN).json()[0]
    assert listed["study_id"] == sid and listed["status"] == "active" and listed["progress"]["done"] == 4
    assert client.get(f"{API}/studies").status_code == 401
    assert client.get(f"{API}/studies/{sid}/status").status_code == 401
    assert client.get(f"{API}/studies/nope/status", headers=ADMIN).status_code == 404
    page = client.get(f"/study/{sid}")
    assert page.status_code == 200 and "PROLIFIC_PID" in page.text and "ArrowLeft" in page.text
    assert client.get(f"/study/{'0' * 32}").status_code == 404
    assert "Create study" in client.get("/study-admin").text


def test_resume_idempotent_votes_and_order(client, study) -> None:
    sid = study["study_id"]
    pid, headers, body = _enrol(client, sid, platform_id="prolific-123")
    first = _next(client, sid, pid, headers)
    assert first["k"] == 1 and first["n"] == body["n_items"] == 17
    assert _next(client, sid, pid, headers) == first  # a reload shows the same item
    assert client.get(first["left"]["url"], headers=headers).content[:4] == b"\x89PNG"
    assert _vote(client, sid, pid, headers, 2, "left").status_code == 409  # item 1 first
    assert _vote(client, sid, pid, headers, 1, "right").json()["created"] is True
    assert _vote(client, sid, pid, headers, 1, "right").json()["created"] is False  # a retry records once
    assert _vote(client, sid, pid, headers, 1, "left").status_code == 409  # no changing answers
    second = _next(client, sid, pid, headers)
    assert second["k"] == 2
    # Re-enrolling with the same platform id resumes the participant (new token, old one revoked).
    pid2, headers2, body2 = _enrol(client, sid, platform_id="prolific-123")
    assert pid2 == pid and body2["resumed"] is True
    assert _next(client, sid, pid, headers2) == second
    assert client.get(f"{API}/studies/{sid}/participants/{pid}/next", headers=headers).status_code == 401
    _other, other_headers, _ = _enrol(client, sid)
    assert client.get(f"{API}/studies/{sid}/participants/{pid}/next", headers=other_headers).status_code == 403
    bad = client.post(f"{API}/studies/{sid}/participants/{pid}/items/2/vote", headers=headers2,
                      json={"choice": "up"})
    assert bad.status_code == 400 and "left, right, tie" in bad.json()["error"]


def test_analysis_recovers_the_planted_order_and_flags_the_careless(client, server, run, tmp_path) -> None:
    sid, attentive, careless = run
    report = client.get(f"{API}/studies/{sid}/analysis?n_resamples=50", headers=ADMIN).json()
    conditions = report["conditions"]
    assert set(conditions) == set(PLANTED)  # attention checks are not conditions
    by_strength = sorted(conditions, key=lambda c: -conditions[c]["bt_score"])
    assert by_strength == PLANTED
    people = report["study_participants"]
    flagged = {p for p, info in people.items() if report["participants"].get(info["pseudonym"], {}).get("flagged")}
    assert flagged == {careless[0]}
    for pid, _h, _code in attentive:
        assert people[pid]["attention_passed"] == people[pid]["attention_checks"] == 1
        assert report["participants"][people[pid]["pseudonym"]]["consistency"] == 1.0
    with sqlite3.connect(server.db_path) as db:
        conditions_recorded = db.execute(
            "SELECT COUNT(*) FROM choices WHERE viewport_w = 1280 AND viewport_h = 800 AND device_pixel_ratio = 2.0 "
            "AND consent_version = 'v2' AND zoom_count IS NOT NULL AND decision_ms > 1200").fetchone()[0]
    assert conditions_recorded >= 17 * (N_ATTENTIVE + 1)
    lines = client.get(f"{API}/studies/{sid}/export", headers=ADMIN).text.splitlines()
    assert len(lines) >= 17 * (N_ATTENTIVE + 1)
    # the dataset export reads study votes unchanged; attention checks are not human preferences
    rows = _human_export_rows(server, sid, tmp_path / "dataset")
    assert len(rows) == report["n_votes"] and len(rows) < len(lines)
    assert {r["chosen_method"] for r in rows} == set(PLANTED)


def _human_export_rows(server, study_id, out_dir):
    """The study's rows of the JSONL preference dataset (human choices only), read back."""
    database = open_database(f"sqlite:///{server.db_path}", migrate=False)
    try:
        with database.sessions.begin() as s:
            result = export_dataset(s, ImageStore(server.data_dir), out_dir, format="jsonl", human_only=True,
                                    study_id=study_id)
    finally:
        database.engine.dispose()
    return [json.loads(line) for line in result.data_file.read_text().splitlines()]


def _counts(db_path, participant_id=None):
    tables = ["study_items", "choices", "preference_pairs", "choice_candidates", "candidates", "rounds",
              "participants", "sessions", "annotators", "source_images", "studies"]
    with sqlite3.connect(db_path) as db:
        return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}


def test_withdrawal_deletes_exactly_that_participant(client, server, run) -> None:
    sid, attentive, careless = run
    pid, headers, code = careless
    assert _next(client, sid, pid, headers) == {"done": True, "completion_code": code, "n": 17}
    before = _counts(server.db_path)
    with sqlite3.connect(server.db_path) as db:
        session_id = db.execute("SELECT session_id FROM participants WHERE id = ?", (pid,)).fetchone()[0]
        own_pairs = db.execute(
            "SELECT COUNT(*) FROM preference_pairs p JOIN choices c ON p.choice_id = c.id "
            "JOIN rounds r ON c.round_id = r.id WHERE r.session_id = ?", (session_id,)).fetchone()[0]
        others = db.execute("SELECT id FROM choices ORDER BY id").fetchall()
    t0 = time.perf_counter()
    r = client.post(f"{API}/studies/{sid}/withdraw", json={"completion_code": code.lower()})
    print(f"\nwithdraw: {time.perf_counter() - t0:.2f} s")
    assert r.status_code == 200, r.text
    after = _counts(server.db_path)
    expected = {"study_items": 17, "choices": 17, "preference_pairs": own_pairs, "choice_candidates": 2 * 17,
                "candidates": 2 * 17, "rounds": 17, "participants": 1, "sessions": 1, "annotators": 1,
                "source_images": 0, "studies": 0}
    assert {t: before[t] - after[t] for t in before} == expected
    assert r.json()["deleted"]["study_items"] == 17
    with sqlite3.connect(server.db_path) as db:
        remaining = db.execute("SELECT id FROM choices ORDER BY id").fetchall()
    assert set(remaining) < set(others) and len(others) - len(remaining) == 17
    assert client.post(f"{API}/studies/{sid}/withdraw", json={"completion_code": code}).status_code == 404
    report = client.get(f"{API}/studies/{sid}/analysis?n_resamples=50", headers=ADMIN).json()
    assert pid not in report["study_participants"]
    assert not any(p["flagged"] for p in report["participants"].values())
    assert _next(client, sid, attentive[0][0], attentive[0][1])["done"] is True  # others untouched
    database = open_database(f"sqlite:///{server.db_path}", migrate=False)
    try:
        with database.sessions.begin() as s:
            assert integrity_check(s, ImageStore(server.data_dir)) == []  # nothing left dangling
    finally:
        database.engine.dispose()


def test_ttpo_auto_condition_runs_one_automatic_round(client, server) -> None:
    definition = {"name": "ttpo vs backbone", "images": [], "conditions": ["nlm", "ttpo-auto:nlm"],
                  "repeat_share": 0, "attention_checks": 0, "consent_text": "ok", "consent_version": "v2"}
    r = client.post(f"{API}/studies", json={**definition, "conditions": ["nlm", "ttpo-auto:nope"],
                                            "images": ["x.png"]}, headers=ADMIN)
    assert r.status_code == 400 and "ttpo-auto:nope" in r.json()["error"] and "available" in r.json()["error"]
    image_path = server.data_dir / "upload.png"
    image_path.write_bytes(png_bytes(32, seed=9))
    t0 = time.perf_counter()
    sid = create_study(client, {**definition, "images": [str(image_path)]})["study_id"]
    print(f"\nttpo-auto study (1 image, 32 px): {time.perf_counter() - t0:.2f} s")
    pid, headers, body = _enrol(client, sid, platform_id="p")
    assert body["n_items"] == 1
    item = _next(client, sid, pid, headers)
    assert item["left"]["image_id"] != item["right"]["image_id"]  # the refined image differs from nlm's
    with sqlite3.connect(server.db_path) as db:
        params = db.execute("SELECT params FROM rounds WHERE study_id = ?", (sid,)).fetchone()[0]
    assert '"selector"' in params and '"refine"' in params  # what the automatic round did is recorded


def test_the_admin_page_example_definition_is_valid(client) -> None:
    html = client.get("/study-admin").text
    example = json.loads(html.split('<textarea id="definition">', 1)[1].split("</textarea>", 1)[0])
    t0 = time.perf_counter()
    created = create_study(client, example)
    print(f"\nadmin example study (2 images at 128 px, nlm + bicubic): {time.perf_counter() - t0:.2f} s")
    assert created["stimuli"] == 2


def test_a_study_killed_while_preparing_is_prepared_after_a_restart(tmp_path) -> None:
    """SIGKILL the app right after it accepted a study: the study stays 'preparing' with no stimuli, and the
    restarted app prepares it (no partial rows in between), so participants can enrol."""
    paths = []
    for i in range(4):
        (tmp_path / f"img{i}.png").write_bytes(png_bytes(32, seed=20 + i))
        paths.append(str(tmp_path / f"img{i}.png"))
    definition = {"name": "killed", "images": paths, "conditions": ["nlm", "ttpo-auto:nlm"], "repeat_share": 0,
                  "attention_checks": 0, "consent_text": "ok", "consent_version": "v2"}
    data_dir = tmp_path / "data"
    with running_app(data_dir) as server:
        r = httpx.post(f"{server.url}{API}/studies", json=definition, headers=ADMIN, timeout=60)
        server.process.kill()  # SIGKILL while the background thread computes the first stimuli
        server.process.wait(timeout=30)
    assert r.status_code == 202, r.text
    sid = r.json()["study_id"]
    with sqlite3.connect(server.db_path) as db:
        status, stimuli = db.execute("SELECT status, stimuli FROM studies WHERE id = ?", (sid,)).fetchone()
        sources = db.execute("SELECT COUNT(*) FROM source_images WHERE origin = 'study'").fetchone()[0]
    assert (status, json.loads(stimuli), sources) == ("preparing", [], 0)
    with running_app(data_dir) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        deadline = time.monotonic() + 300
        while (now := client.get(f"{API}/studies/{sid}/status?wait_s=10", headers=ADMIN).json())["status"] \
                == "preparing" and time.monotonic() < deadline:
            pass
        assert now["status"] == "active" and now["progress"] == {"done": 4, "total": 4}, now
        pid, headers, body = _enrol(client, sid)
        assert body["n_items"] == 4 and _next(client, sid, pid, headers)["k"] == 1


# ------------------------------------------------------------------------------------------- a gallery study
GALLERY_PLANTED = ["nlm", "median", "wiener", "bicubic"]  # best first
GALLERY_RANK = {"attention-clean": -1, **{c: i for i, c in enumerate(GALLERY_PLANTED)}, "attention-control": 99}
N_GALLERY_ATTENTIVE = 8


def _run_gallery_participant(client, server, study_id, careless=False):
    """Picks the best by the planted order and marks the worst; a careless one always picks position 1."""
    pid, headers, _ = _enrol(client, study_id)
    methods = _methods(server)
    while not (item := _next(client, study_id, pid, headers))["done"]:
        assert "left" not in item and len(item["gallery"]) == 3
        ranks = [GALLERY_RANK[methods[g["image_id"]]] for g in item["gallery"]]
        best, worst = ranks.index(min(ranks)) + 1, ranks.index(max(ranks)) + 1
        body = {"choice": "1"} if careless else {"choice": str(best), "worst": None if min(ranks) < 0 else str(worst)}
        r = client.post(f"{API}/studies/{study_id}/participants/{pid}/items/{item['k']}/vote", headers=headers,
                        json={**body, "decision_ms": 900, "viewport": [1280, 800], "dpr": 1.0})
        assert r.status_code == 200, r.text
    return pid, headers, item["completion_code"]


@pytest.fixture(scope="module")
def gallery(client, server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gallery")
    paths = []
    for i in range(4):
        (folder / f"g{i}.png").write_bytes(png_bytes(40, seed=30 + i))
        paths.append(str(folder / f"g{i}.png"))
    definition = {"name": "gallery of three", "images": paths, "conditions": ["bicubic", "wiener", "nlm", "median"],
                  "candidates_per_round": 3, "degradations": ["noise:20"], "items_per_participant": 8,
                  "repeat_share": 0.25, "attention_checks": 1, "consent_text": "ok", "consent_version": "v2",
                  "seed": 7}
    created = create_study(client, definition)
    assert created["n_items"] == 8 + 2 + 1
    sid = created["study_id"]
    attentive = [_run_gallery_participant(client, server, sid) for _ in range(N_GALLERY_ATTENTIVE)]
    careless = _run_gallery_participant(client, server, sid, careless=True)
    return sid, attentive, careless


def test_gallery_votes_are_checked(client, gallery) -> None:
    sid = gallery[0]
    pid, headers, _ = _enrol(client, sid)
    item = _next(client, sid, pid, headers)
    assert [g["url"] for g in item["gallery"]] == [f"{API}/images/{g['image_id']}" for g in item["gallery"]]
    url = f"{API}/studies/{sid}/participants/{pid}/items/1/vote"
    for body, message in [({"choice": "left"}, "gallery position 1..3"), ({"choice": "4"}, "1..3"),
                          ({"choice": "2", "worst": "2"}, "worst must not be"), ({"choice": "2", "worst": "9"}, "worst")]:
        r = client.post(url, headers=headers, json=body)
        assert r.status_code == 400 and message in r.json()["error"], r.text
    assert client.post(url, headers=headers, json={"choice": "2", "worst": "3"}).json()["created"] is True
    assert client.post(url, headers=headers, json={"choice": "2", "worst": "3"}).json()["created"] is False
    assert client.post(url, headers=headers, json={"choice": "2"}).status_code == 409  # no changing the worst


def test_gallery_analysis_recovers_the_planted_order(client, server, gallery, tmp_path) -> None:
    sid, attentive, careless = gallery
    report = client.get(f"{API}/studies/{sid}/analysis?n_resamples=50", headers=ADMIN).json()
    conditions = report["conditions"]
    assert sorted(conditions, key=lambda c: -conditions[c]["bt_score"]) == GALLERY_PLANTED
    assert sorted(conditions, key=lambda c: -conditions[c]["win_rate"]) == GALLERY_PLANTED
    people = report["study_participants"]
    quality = {pid: report["participants"][info["pseudonym"]] for pid, info in people.items()}
    assert {pid for pid, q in quality.items() if q["flagged"]} == {careless[0]}
    assert "position 1 in 100%" in " ".join(quality[careless[0]]["reasons"])
    for pid, _h, _code in attentive:
        assert people[pid]["attention_passed"] == people[pid]["attention_checks"] == 1
        assert quality[pid]["consistency"] == 1.0 and quality[pid]["repeats"] == 2  # the same best picked again
        assert set(quality[pid]["position_picks"]) == {"1", "2", "3"}
    assert report["krippendorff_alpha"] > 0.5
    # The dataset: each attentive gallery vote is 3 pairs (best > 2 others, middle > worst), the careless 2.
    rows = _human_export_rows(server, sid, tmp_path / "gallery")
    assert len(rows) == report["n_votes"] and {r["label"] for r in rows} == {1.0}

    def choices_of(pids):
        with sqlite3.connect(server.db_path) as db:
            return {c for pid in pids for (c,) in db.execute(
                "SELECT choice_id FROM study_items WHERE participant_id = ? AND is_attention_check = 0", (pid,))}

    careless_choices = choices_of([careless[0]])
    simulated = choices_of([p for p, _h, _c in attentive]) | careless_choices
    assert sum(r["choice_id"] in simulated for r in rows) == N_GALLERY_ATTENTIVE * 10 * 3 + 10 * 2
    for r in rows:
        if r["choice_id"] in simulated - careless_choices:
            assert GALLERY_RANK[r["chosen_method"]] < GALLERY_RANK[r["rejected_method"]], r
    with sqlite3.connect(server.db_path) as db:
        answers = db.execute("SELECT answer, worst, gallery FROM study_items WHERE participant_id = ? "
                             "AND is_attention_check = 0", (attentive[0][0],)).fetchall()
    assert all(a in {"1", "2", "3"} and w in {"1", "2", "3"} and w != a and len(json.loads(g)) == 3
               for a, w, g in answers)


# ------------------------------------------------------------------------------------------- an adaptive study
def test_adaptive_study_with_region_marks_through_the_api(client, server, tmp_path) -> None:
    """sampling 'adaptive' over REST: items come one at a time, votes carry region marks (bad boxes: 400 saying
    what is allowed), the study export has the regions, the analysis fills metric_agreement and the sampler's
    state; a participant withdraws mid-way with their own token."""
    paths = []
    for i in range(3):
        (tmp_path / f"a{i}.png").write_bytes(png_bytes(40, seed=60 + i))
        paths.append(str(tmp_path / f"a{i}.png"))
    definition = {"name": "adaptive", "images": paths, "conditions": ["bicubic", "nlm", "median"],
                  "degradations": ["noise:20"], "items_per_participant": 6, "repeat_share": 0.0,
                  "attention_checks": 1, "consent_text": "ok", "consent_version": "v2", "seed": 11,
                  "sampling": "adaptive", "completion_url": "https://example.test/c?cc="}
    sid = create_study(client, definition)["study_id"]
    box = {"on": "left", "x": 0.0, "y": 0.5, "w": 0.5, "h": 0.5, "tag": "residual-noise"}
    for n in range(4):
        pid, headers, body = _enrol(client, sid)
        assert body["n_items"] == 7
        while not (item := _next(client, sid, pid, headers))["done"]:
            assert item["n"] == 7
            methods = _methods(server)  # adaptive items (and their candidates) are made when they are reached
            left, right = methods[item["left"]["image_id"]], methods[item["right"]["image_id"]]
            url = f"{API}/studies/{sid}/participants/{pid}/items/{item['k']}/vote"
            bad = client.post(url, headers=headers, json={"choice": "left", "regions": [{**box, "w": 0}]})
            assert bad.status_code == 400 and "0 < w, h" in bad.json()["error"], bad.text
            choice = "left" if RANK[left] < RANK[right] else "right"
            r = client.post(url, headers=headers, json={"choice": choice, "regions": [box]})
            assert r.status_code == 200, r.text
            if n == 3 and item["k"] == 3:  # withdraws in the middle, with the participant's own token
                gone = client.post(f"{API}/studies/{sid}/participants/{pid}/withdraw", headers=headers)
                assert gone.status_code == 200 and gone.json()["deleted"]["study_items"] == 3, gone.text
                break
        else:
            assert item["redirect"] == "https://example.test/c?cc=" + item["completion_code"]
    lines = [json.loads(line) for line in client.get(f"{API}/studies/{sid}/export", headers=ADMIN).text.splitlines()]
    assert lines and all(row["regions"] == [{**box, "position": 0}] for row in lines)
    report = client.get(f"{API}/studies/{sid}/analysis?n_resamples=50", headers=ADMIN).json()
    assert report["metric_agreement"] and all(a["n"] > 0 for a in report["metric_agreement"].values())
    assert report["sampling"]["sampler"] == "adaptive" and report["sampling"]["items"] == {"adaptive": 3 * 7}
    # attention checks are not human preferences: their boxes stay out of the heat maps
    assert set(report["regions"]) <= set(PLANTED) and sum(r["boxes"] for r in report["regions"].values()) == 3 * 6
    with sqlite3.connect(server.db_path) as db:
        scores = db.execute("SELECT sampler_score FROM study_items i JOIN participants p ON i.participant_id = p.id "
                            "WHERE p.study_id = ? AND i.is_attention_check = 0", (sid,)).fetchall()
    assert len(scores) == 3 * 6 and all(s > 0 for (s,) in scores)
