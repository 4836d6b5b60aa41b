"""End-to-end tests of the REST API: the real `python app.py` server in a subprocess, driven with httpx."""

from __future__ import annotations

import json
import sqlite3
import time

import httpx
import pytest

try:
    from tests.app_server import ADMIN_TOKEN, BACKBONE, REPO, png_bytes, running_app
except ImportError:  # pytest run from inside tests/
    from app_server import ADMIN_TOKEN, BACKBONE, REPO, png_bytes, running_app

API = "/api/v1"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # the shipped prior once more under another name: a second prior to choose, loaded on first use
    extra = ("--extra-prior", f"shipped-copy={REPO / 'assets' / 'prior'}")
    with running_app(tmp_path_factory.mktemp("api") / "data", extra_args=extra) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=300) as c:
        yield c


def _session(client, name="Ada"):
    r = client.post(f"{API}/sessions", json={"annotator": name})
    assert r.status_code == 200, r.text
    body = r.json()
    return body["session_id"], {"Authorization": f"Bearer {body['token']}"}


def _round(client, session_id, headers, **fields):
    data = {"backbone": BACKBONE, "candidates": "2", "seed": "7", **fields}
    return client.post(f"{API}/sessions/{session_id}/rounds", headers=headers, data=data,
                       files={"image": ("x.png", png_bytes(48), "image/png")})


@pytest.fixture(scope="module")
def first_round(client):
    session_id, headers = _session(client)
    t0 = time.perf_counter()
    r = _round(client, session_id, headers, degradation="noise:15")
    print(f"\nround (restore + 2 candidates, 48 px, {BACKBONE}): {time.perf_counter() - t0:.2f} s")
    assert r.status_code == 200, r.text
    return session_id, headers, r.json()


def test_session_and_round_shape(first_round):
    _sid, _h, body = first_round
    assert len(body["round_id"]) == 32
    assert len(body["restored"]["id"]) == 64 and body["restored"]["url"] == f"{API}/images/{body['restored']['id']}"
    # two diffusion candidates plus the restored image itself, at shuffled positions
    assert len(body["candidates"]) == 3
    assert [c["position"] for c in body["candidates"]] == [0, 1, 2]
    assert sum(c["image_id"] == body["restored"]["id"] for c in body["candidates"]) == 1
    assert len({c["id"] for c in body["candidates"]}) == 3


def test_auth(client, first_round):
    session_id, _headers, body = first_round
    _other_sid, other = _session(client, "Grace")
    r = client.get(body["restored"]["url"])
    assert r.status_code == 401 and "error" in r.json()
    assert client.get(body["restored"]["url"], headers={"Authorization": "Bearer nope"}).status_code == 401
    for response in (client.get(body["restored"]["url"], headers=other),
                     client.post(f"{API}/rounds/{body['round_id']}/choices", headers=other,
                                 json={"preferred": [body["candidates"][0]["id"]], "rejected": []}),
                     _round(client, session_id, other)):
        assert response.status_code == 403, response.text
        assert "error" in response.json()
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert client.get(body["restored"]["url"], headers=admin).status_code == 200
    assert client.get(f"{API}/rounds/{body['round_id']}", headers=admin).json()["round_id"] == body["round_id"]


def test_choice_idempotent_refine_next_round(client, server, first_round):
    _sid, headers, body = first_round
    ids = [c["id"] for c in body["candidates"]]
    url = f"{API}/rounds/{body['round_id']}/choices"
    choice = {"preferred": [ids[0]], "rejected": ids[1:], "tags": ["artefacts"], "decision_ms": 1234}
    t0 = time.perf_counter()
    first = client.post(url, json=choice, headers={**headers, "Idempotency-Key": "retry-1"})
    print(f"\nchoice latency: {1000 * (time.perf_counter() - t0):.1f} ms")
    again = client.post(url, json=choice, headers={**headers, "Idempotency-Key": "retry-1"})
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert first.json()["choice_id"] == again.json()["choice_id"]
    assert first.json()["pairs"] == 2 and again.json()["created"] is False
    with sqlite3.connect(server.db_path) as db:
        assert db.execute("select count(*) from choices where idempotency_key='retry-1'").fetchone()[0] == 1
    # the same key for a different choice is a conflict, not a silent overwrite
    clash = client.post(url, json={"preferred": [ids[1]], "rejected": [ids[0]]},
                        headers={**headers, "Idempotency-Key": "retry-1"})
    assert clash.status_code == 409 and "error" in clash.json()

    t0 = time.perf_counter()
    refined = client.post(f"{API}/rounds/{body['round_id']}/refine", headers=headers)
    print(f"refine + next round's candidates: {time.perf_counter() - t0:.2f} s")
    assert refined.status_code == 200, refined.text
    out = refined.json()
    assert out["round_id"] != body["round_id"] and len(out["candidates"]) == 3
    png = client.get(out["image"]["url"], headers=headers)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    nxt = client.get(f"{API}/rounds/{out['round_id']}", headers=headers).json()
    assert nxt["parent_round_id"] == body["round_id"] and nxt["round_index"] == 1
    assert nxt["restored"]["id"] == out["image"]["id"]  # the next round starts from the refined image
    with sqlite3.connect(server.db_path) as db:
        row = db.execute("select round_id, next_round_id from refinements").fetchone()
    assert row == (body["round_id"], out["round_id"])


def test_tie_skip_and_refine_rules(client, first_round):
    session_id, headers, _ = first_round
    body = _round(client, session_id, headers).json()
    url = f"{API}/rounds/{body['round_id']}"
    no_choice = client.post(f"{url}/refine", headers=headers)
    assert no_choice.status_code == 409 and "choice" in no_choice.json()["error"]
    empty = client.post(f"{url}/choices", json={"preferred": [], "rejected": []}, headers=headers)
    assert empty.status_code == 400 and "error" in empty.json()
    tie = client.post(f"{url}/choices", json={"preferred": [], "rejected": [], "tie": True}, headers=headers)
    assert tie.status_code == 200 and tie.json()["kind"] == "tie" and tie.json()["pairs"] == 3
    skip = client.post(f"{url}/choices", json={"skip": True}, headers=headers)
    assert skip.status_code == 200 and skip.json()["pairs"] == 0
    assert client.post(f"{url}/refine", headers=headers).status_code == 409  # latest is a skip
    foreign = client.post(f"{url}/choices", json={"preferred": ["f" * 32], "rejected": []}, headers=headers)
    assert foreign.status_code == 400


def test_a_corrected_choice_supersedes_the_first_and_refine_and_export_use_only_it(client, server, first_round):
    session_id, headers, _ = first_round
    body = _round(client, session_id, headers).json()
    ids = [c["id"] for c in body["candidates"]]
    url = f"{API}/rounds/{body['round_id']}"
    first = client.post(f"{url}/choices", json={"preferred": [ids[0]], "rejected": [ids[1]]},
                        headers={**headers, "Idempotency-Key": "page-1"})
    assert first.status_code == 200 and first.json()["superseded"] == 0
    second = client.post(f"{url}/choices", json={"preferred": [ids[2]], "rejected": [ids[0]], "zoom_count": 4,
                                                 "viewport": [1280, 720], "dpr": 2},
                         headers={**headers, "Idempotency-Key": "page-2"})
    assert second.status_code == 200 and second.json()["superseded"] == 1, second.text
    bad = client.post(f"{url}/choices", json={"preferred": [ids[2]], "rejected": [ids[0]], "viewport": [0, 5]},
                      headers=headers)
    assert bad.status_code == 400 and "viewport width" in bad.json()["error"]
    retry = client.post(f"{url}/choices", json={"preferred": [ids[0]], "rejected": [ids[1]]},
                        headers={**headers, "Idempotency-Key": "page-1"})  # a late retry of the first
    assert retry.json() == {**first.json(), "created": False}
    with sqlite3.connect(server.db_path) as db:
        rows = db.execute("select id, superseded_at from choices where round_id = ?", (body["round_id"],)).fetchall()
    assert sorted(r[0] for r in rows if r[1] is None) == [second.json()["choice_id"]] and len(rows) == 2
    with sqlite3.connect(server.db_path) as db:
        assert db.execute("select zoom_count, viewport_w, viewport_h, device_pixel_ratio from choices where id = ?",
                          (second.json()["choice_id"],)).fetchone() == (4, 1280, 720, 2.0)
    assert client.post(f"{url}/refine", headers=headers).status_code == 200
    with sqlite3.connect(server.db_path) as db:
        choice_id, params = db.execute("select choice_id, params from refinements where round_id = ?",
                                       (body["round_id"],)).fetchone()
    assert choice_id == second.json()["choice_id"] and json.loads(params)["preferred"] == [ids[2]]
    export = client.get(f"{API}/export", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    mine = [row for line in export.text.splitlines() if (row := json.loads(line))["round_id"] == body["round_id"]]
    assert [(r["chosen_candidate_id"], r["rejected_candidate_id"]) for r in mine] == [(ids[2], ids[0])]
    assert int(export.headers["x-superseded-choices"]) >= 1


def test_a_choice_with_region_marks_is_stored_and_exported_and_bad_boxes_are_400(client, server, first_round):
    session_id, headers, _ = first_round
    body = _round(client, session_id, headers).json()
    ids = [c["id"] for c in body["candidates"]]  # display order: "on" is the 1-based position in it
    url = f"{API}/rounds/{body['round_id']}/choices"
    box = {"on": "2", "x": 0.1, "y": 0.2, "w": 0.5, "h": 0.25, "tag": "residual-noise"}
    for bad, needle in [({"x": 0.6}, "leaves the image"), ({"on": "left"}, "a position '1'..'3'"),
                        ({"tag": "meh"}, "tag one of"), ({"w": "wide"}, "w must be a number")]:
        r = client.post(url, json={"preferred": [ids[0]], "rejected": ids[1:], "regions": [{**box, **bad}]},
                        headers=headers)
        assert r.status_code == 400 and needle in r.json()["error"], r.text
        assert "in [0, 1] image coordinates" in r.json()["error"]
    assert client.post(url, json={"tie": True, "regions": {"on": "1"}}, headers=headers).status_code == 400
    r = client.post(url, json={"preferred": [ids[0]], "rejected": ids[1:], "regions": [box]},
                    headers={**headers, "Idempotency-Key": "boxes-1"})
    assert r.status_code == 200 and r.json()["regions"] == 1, r.text
    other = client.post(url, json={"preferred": [ids[0]], "rejected": ids[1:], "regions": [{**box, "on": "3"}]},
                        headers={**headers, "Idempotency-Key": "boxes-1"})
    assert other.status_code == 409  # the key names the choice with the first boxes
    with sqlite3.connect(server.db_path) as db:
        (stored,) = db.execute("select regions from choices where id = ?", (r.json()["choice_id"],)).fetchone()
    assert json.loads(stored) == [{**box, "position": 1}]
    export = client.get(f"{API}/export", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    mine = [row for line in export.text.splitlines() if (row := json.loads(line))["round_id"] == body["round_id"]]
    assert len(mine) == 2 and all(row["regions"] == [{**box, "position": 1}] for row in mine)


def test_session_lists_and_zip_download(client, first_round):
    import io
    import zipfile

    session_id, headers, body = first_round
    later_id, later = _session(client, "Ada")  # the same name: the same annotator, a second session
    _other_id, other = _session(client, "Grace")
    listed = client.get(f"{API}/sessions", headers=later).json()["sessions"]
    assert [s["session_id"] for s in listed][:2] == [later_id, session_id] and listed[0]["current"]
    assert listed[1]["rounds"] >= 1 and listed[0]["rounds"] == 0
    assert session_id not in {s["session_id"] for s in client.get(f"{API}/sessions", headers=other).json()["sessions"]}
    rounds = client.get(f"{API}/sessions/{session_id}/rounds", headers=headers)
    assert rounds.status_code == 200, rounds.text
    first = rounds.json()["rounds"][0]
    assert first["round_id"] == body["round_id"] and first["start"]["id"] == body["restored"]["id"]
    assert client.get(first["start"]["url"], headers=headers).status_code == 200
    assert client.get(f"{API}/sessions/{session_id}/rounds", headers=other).status_code == 403
    assert client.get(f"{API}/sessions/{session_id}/download", headers=other).status_code == 403
    zipped = client.get(f"{API}/sessions/{session_id}/download", headers=headers)
    assert zipped.status_code == 200 and zipped.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as archive:
        record = json.loads(archive.read("session.json"))
        names = set(archive.namelist())
        assert record["session"]["id"] == session_id
        assert [r["round_id"] for r in record["rounds"]] == [r["round_id"] for r in rounds.json()["rounds"]]
        shown = {c["image"] for r in record["rounds"] for c in r["candidates"]}
        assert {f"images/{i}.png" for i in shown} <= names
        assert archive.read(f"images/{body['restored']['id']}.png").startswith(b"\x89PNG")


def test_images_404_and_traversal(client, first_round):
    _sid, headers, _ = first_round
    assert client.get(f"{API}/images/{'0' * 64}", headers=headers).status_code == 404
    for bad in ("..%2F..%2Fetc%2Fpasswd", "..", "abc", "A" * 64, "0" * 63 + "g"):
        r = client.get(f"{API}/images/{bad}", headers=headers)
        assert r.status_code in (400, 404), (bad, r.status_code)
        assert r.headers["content-type"].startswith("application/json")
    assert client.get(f"{API}/rounds/{'0' * 32}", headers=headers).status_code == 404


def test_export_admin_only(client, first_round):
    _sid, headers, _ = first_round
    assert client.get(f"{API}/export?format=jsonl", headers=headers).status_code == 403
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    r = client.get(f"{API}/export?format=jsonl", headers=admin)
    assert r.status_code == 200
    rows = [json.loads(line) for line in r.text.splitlines() if line]
    assert rows and all(row["label"] in (0.5, 1.0) for row in rows)
    assert {"chosen_image", "rejected_image", "backbone_name", "prior_weights_hash", "seeds"} <= set(rows[0])
    assert client.get(f"{API}/export?format=csv", headers=admin).status_code == 400


@pytest.mark.parametrize("fields, files, needle", [
    ({}, {"image": ("x.png", b"not an image at all", "image/png")}, "image"),
    ({}, {"image": ("x.png", png_bytes(48)[:60], "image/png")}, "corrupt"),
    ({}, {"image": ("x.png", b"", "image/png")}, "empty"),
    ({"degradation": "bogus:3"}, None, "allowed"),
    ({"degradation": "noise:9999"}, None, "noise"),
    ({"backbone": "nope"}, None, "available"),
    ({"backbone": "/etc/passwd"}, None, "available"),
    ({"candidates": "0"}, None, "candidates"),
    ({"candidates": "1000"}, None, "candidates"),
    ({"candidates": "two"}, None, "candidates"),
    ({"seed": "-5"}, None, "seed"),
    ({"prior": "nope"}, None, "available: default, shipped-copy"),
    ({"prior": str(REPO / "assets" / "prior")}, None, "unknown prior"),  # a name, never a server folder
])
def test_bad_input_is_4xx_json(client, first_round, fields, files, needle):
    session_id, headers, _ = first_round
    files = files or {"image": ("x.png", png_bytes(48), "image/png")}
    r = client.post(f"{API}/sessions/{session_id}/rounds", headers=headers,
                    data={"backbone": BACKBONE, **fields}, files=files)
    assert 400 <= r.status_code < 500, r.text
    assert needle in r.json()["error"].lower()


@pytest.mark.parametrize("payload, headers", [
    ({"preferred": "abc", "rejected": []}, {}),
    ({"preferred": [1, 2], "rejected": []}, {}),
    ({"preferred": ["a"], "rejected": ["a"]}, {}),
    ({"tie": True, "tags": ["not-a-tag"]}, {}),
    ({"tie": True, "decision_ms": -1}, {}),
    ({"tie": True}, {"Idempotency-Key": "k" * 500}),
])
def test_bad_choice_is_4xx_json(client, first_round, payload, headers):
    _sid, auth, body = first_round
    r = client.post(f"{API}/rounds/{body['round_id']}/choices", json=payload, headers={**auth, **headers})
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]


def test_bad_refine_settings_are_4xx(client, first_round):
    _sid, auth, body = first_round
    for settings in ({"steps": 0}, {"steps": 10**9}, {"strength": 2.0}, {"guidance_scale": -1}, {"steps": "x"}):
        r = client.post(f"{API}/rounds/{body['round_id']}/refine", json=settings, headers=auth)
        assert 400 <= r.status_code < 500, (settings, r.text)


def test_oversized_and_missing_upload(client, first_round):
    session_id, headers, _ = first_round
    tiny = client.post(f"{API}/sessions/{session_id}/rounds", headers=headers,
                       files={"image": ("x.png", png_bytes(8), "image/png")})
    assert tiny.status_code == 400 and "sides" in tiny.json()["error"]
    missing = client.post(f"{API}/sessions/{session_id}/rounds", headers=headers, data={"seed": "1"})
    assert missing.status_code == 422 and "image" in missing.json()["error"]
    assert client.post(f"{API}/sessions", json={"annotator": "   "}).status_code == 400
    assert client.post(f"{API}/sessions", json={}).status_code == 422


def test_server_keeps_serving(client, server):
    assert server.process.poll() is None
    assert client.get(f"{API}/health").json()["status"] == "ok"
    spec = client.get("/openapi.json").json()
    assert f"{API}/rounds/{{round_id}}/choices" in spec["paths"]
    assert client.get("/").status_code == 200  # the Gradio page beside the API


def test_round_with_a_chosen_prior_records_it(client, server, first_round):
    assert client.get(f"{API}/health").json()["priors"] == ["default", "shipped-copy"]
    session_id, headers = _session(client, "Prue")
    r = _round(client, session_id, headers, prior="shipped-copy")
    assert r.status_code == 200, r.text
    with sqlite3.connect(server.db_path) as db:
        prior_id, params = db.execute("select prior_id, params from rounds where id = ?",
                                      (r.json()["round_id"],)).fetchone()
        default_hash = db.execute("select prior_weights_hash from rounds where prior_id = 'pixel:default'").fetchone()
    assert prior_id == "local:prior" and json.loads(params)["prior"] == "shipped-copy"
    assert default_hash is not None  # first_round used the default prior


def test_a_vote_on_another_sessions_round_is_refused_inside_its_transaction(client, first_round):
    session_id, headers, body = first_round
    _other_id, other = _session(client, "Mallory")

    def listed() -> dict:
        rounds = client.get(f"{API}/sessions/{session_id}/rounds", headers=headers).json()["rounds"]
        return next(r for r in rounds if r["round_id"] == body["round_id"])

    ids = [c["id"] for c in body["candidates"]]
    vote = {"preferred": ids[:1], "rejected": ids[1:2]}
    before = listed()
    refused = client.post(f"{API}/rounds/{body['round_id']}/choices", json=vote, headers=other)
    assert refused.status_code == 403 and "another session" in refused.text
    assert client.post(f"{API}/rounds/{'0' * 32}/choices", json=vote, headers=other).status_code == 404
    after = listed()
    assert (after["choice"], after["pairs"], after["superseded"]) == (before["choice"], before["pairs"],
                                                                      before["superseded"])  # nothing written
    admin = client.post(f"{API}/rounds/{body['round_id']}/choices", json=vote,
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert admin.status_code == 200, admin.text
