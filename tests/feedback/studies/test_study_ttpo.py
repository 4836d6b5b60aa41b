"""TTPO conditions of studies on the real service (SQLite, tiny seeded priors, nlm): prior and selector variants
of 'ttpo-auto:', checked at creation and recorded with each stimulus; a guide study through the REST API whose
simulated participants prefer a planted candidate, then 'ttpo-human:nlm' vs 'ttpo-auto:nlm' vs 'nlm' guided by it."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator

import pytest
import torch
from fastapi.testclient import TestClient

from feedback.analysis.export import export_dataset
from feedback.loop.engine import EngineSettings, RefineSettings, RoundSettings
from feedback.loop.service import FeedbackService
from feedback.record.db import open_database
from feedback.record.errors import InputError
from feedback.record.models import Study
from feedback.studies.service import StudyService
from feedback.web.api import build_api
from feedback.web.study_api import build_study_router
from restoration.diffusion.pixel import build_pixel_unet, save_pixel_prior
from restoration.diffusion.priors import weights_sha256

try:
    from conftest import TINY_PRIOR

    from tests.app_server import create_study, png_bytes
except ImportError:  # tests/ is not importable as a package: pytest put tests/ itself on sys.path
    from app_server import create_study, png_bytes
    from conftest import TINY_PRIOR


ADMIN_TOKEN = "test-admin-token"  # the token create_study (tests.app_server) sends
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
API = "/api/v1"
PLANTED_BEST, PLANTED_WORST = "c1", "restored"


@pytest.fixture(scope="module")
def priors(tmp_path_factory) -> dict[str, str]:
    """Two tiny priors with different seeded weights: offered as 'default' and 'other'."""
    folder = tmp_path_factory.mktemp("priors")
    dirs = {}
    for seed, name in enumerate(("default", "other")):
        torch.manual_seed(seed)
        dirs[name] = str(save_pixel_prior(folder / name, build_pixel_unet(TINY_PRIOR), TINY_PRIOR))
    return dirs


@pytest.fixture(scope="module")
def studies(tmp_path_factory, priors) -> Iterator[StudyService]:
    data = tmp_path_factory.mktemp("data")
    engine = EngineSettings(backbone="nlm", prior=priors["default"], extra_priors=(("other", priors["other"]),),
                            backbones=("nlm", "bicubic", "median"), selector=("piqe",),
                            round=RoundSettings(num_candidates=2, steps=2), refine=RefineSettings(steps=2))
    db = open_database(data_dir=data)
    service = StudyService(FeedbackService(db, str(data), engine, admin_token=ADMIN_TOKEN))
    yield service
    service.close(timeout_s=30)
    db.engine.dispose()


def _images(folder, n: int = 2, size: int = 32) -> list[str]:
    paths = []
    for i in range(n):
        paths.append(folder / f"in{i}.png")
        paths[-1].write_bytes(png_bytes(size, seed=30 + i))
    return [str(p) for p in paths]


def _definition(folder, **extra) -> dict:
    return {"name": "ttpo", "images": _images(folder), "degradations": ["noise:20"], "conditions": ["nlm", "bicubic"],
            "attention_checks": 0, "repeat_share": 0, "consent_text": "ok", "consent_version": "v1", "seed": 3,
            **extra}


def _stimuli(studies: StudyService, sid: str) -> list[dict]:
    with studies.fb.db.sessions.begin() as s:
        return s.get(Study, sid).stimuli


@pytest.mark.parametrize("conditions, words", [
    (["nlm", "ttpo-auto:nlm;prior=nope"], ["unknown prior 'nope'", "available: default, other"]),
    (["nlm", "ttpo-auto:nlm;selector=piqe+nope"], ["'ttpo-auto:nlm;selector=piqe+nope'", "nope"]),
    (["nlm", "ttpo-auto:sipl9"], ["unknown backbone 'sipl9'", "available: nlm, bicubic, median"]),
    (["ttpo-auto:nlm", "ttpo-auto:nlm;prior=default;selector=piqe"], ["same system"]),
    (["ttpo-auto:nlm;selector=entropy+piqe", "ttpo-auto:nlm;selector=piqe+entropy"], ["same system"]),
])
def test_bad_ttpo_conditions_are_refused_at_creation(studies, tmp_path, conditions, words) -> None:
    with pytest.raises(InputError) as err:
        studies.create_study(_definition(tmp_path, conditions=conditions))
    for word in words:
        assert word in str(err.value)


def test_prior_and_selector_variants_are_prepared_and_recorded(studies, tmp_path, priors) -> None:
    conditions = ["nlm", "ttpo-auto:nlm", "ttpo-auto:nlm;prior=other", "ttpo-auto:nlm;selector=entropy+piqe"]
    sid = studies.create_study(_definition(tmp_path, conditions=conditions))["study_id"]
    assert studies.wait_until_ready(sid, timeout_s=300)["status"] == "active"
    for stim in _stimuli(studies, sid):
        facts, outputs = stim["facts"], stim["outputs"]
        assert "prior" not in facts["nlm"]
        default, other = facts["ttpo-auto:nlm"]["prior"], facts["ttpo-auto:nlm;prior=other"]["prior"]
        assert default["name"] == "default" and default["weights_hash"] == weights_sha256(priors["default"])
        assert other["name"] == "other" and other["weights_hash"] == weights_sha256(priors["other"])
        assert facts["ttpo-auto:nlm"]["selector"] == "piqe" and facts["ttpo-auto:nlm"]["metrics"] == ["piqe"]
        assert facts["ttpo-auto:nlm;selector=entropy+piqe"]["metrics"] == ["entropy", "piqe"]
        assert facts["ttpo-auto:nlm;selector=entropy+piqe"]["prior"] == default
        assert outputs["ttpo-auto:nlm"] != outputs["ttpo-auto:nlm;prior=other"]  # another prior, another image
        assert facts["ttpo-auto:nlm"]["candidates"] == {**RoundSettings(num_candidates=2, steps=2).to_dict(),
                                                        "seed": stim["seed"]}


# ---------------------------------------------------------------------------------------- guide studies
@pytest.fixture(scope="module")
def client(studies) -> Iterator[TestClient]:
    app = build_api(studies.fb, routers=[build_study_router(studies.fb, studies)])
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    return _images(tmp_path_factory.mktemp("guide_images"))


def _guide_definition(images, **extra) -> dict:
    return {"name": "guide", "kind": "guide", "images": images, "degradations": ["noise:20"],
            "conditions": ["ttpo-human:nlm"], "candidates_per_round": 3, "attention_checks": 1, "repeat_share": 0.5,
            "consent_text": "ok", "consent_version": "v1", "seed": 3, **extra}


def _compare_definition(images, guide_id, **extra) -> dict:
    return {"name": "human vs auto", "images": images, "degradations": ["noise:20"], "guide_study": guide_id,
            "conditions": ["nlm", "ttpo-auto:nlm", "ttpo-human:nlm"], "attention_checks": 0, "repeat_share": 0,
            "consent_text": "ok", "consent_version": "v1", "seed": 3, **extra}


def _labels(studies: StudyService, sid: str) -> dict[str, str]:
    """The oracle: which candidate label each image of the study is (participants never see this)."""
    with sqlite3.connect(studies.fb.db.engine.url.database) as db:
        return dict(db.execute("SELECT c.image_hash, c.method FROM candidates c JOIN rounds r ON c.round_id = r.id "
                               "WHERE r.study_id = ?", (sid,)))


def _participant(client, studies, sid, inattentive=False) -> str:
    r = client.post(f"{API}/studies/{sid}/participants", json={"consent_version": "v1"})
    assert r.status_code == 200, r.text
    pid, headers = r.json()["participant_id"], {"Authorization": f"Bearer {r.json()['token']}"}
    labels = _labels(studies, sid)
    while not (item := client.get(f"{API}/studies/{sid}/participants/{pid}/next", headers=headers).json())["done"]:
        shown = [labels[g["image_id"]] for g in item["gallery"]]
        if inattentive:  # always the first image (with this seed the attention check's clean one is elsewhere)
            vote = {"choice": "1"}
        elif "attention-clean" in shown:
            vote = {"choice": str(shown.index("attention-clean") + 1)}
        else:
            vote = {"choice": str(shown.index(PLANTED_BEST) + 1), "worst": str(shown.index(PLANTED_WORST) + 1)}
        r = client.post(f"{API}/studies/{sid}/participants/{pid}/items/{item['k']}/vote", headers=headers, json=vote)
        assert r.status_code == 200, r.text
    return pid


@pytest.fixture(scope="module")
def guide(client, studies, images) -> str:
    r = client.post(f"{API}/studies", headers=ADMIN, json=_guide_definition(images, candidates_per_round=2))
    assert r.status_code == 400 and "candidates_per_round must be an integer in [3, 6]" in r.json()["error"]
    gid = create_study(client, _guide_definition(images))["study_id"]
    for _ in range(3):
        _participant(client, studies, gid)
    _participant(client, studies, gid, inattentive=True)
    return gid


def test_guide_study_shows_the_candidates_with_their_lineage(studies, guide, tmp_path) -> None:
    stim = _stimuli(studies, guide)[0]
    assert list(stim["outputs"]) == ["restored", "c0", "c1"] and len(set(stim["outputs"].values())) == 3
    assert stim["facts"]["restored"]["is_restored"] is True
    assert [stim["facts"][c]["seed"] for c in ("c0", "c1")] == [stim["seed"], stim["seed"] + 1]
    assert stim["guide"]["candidates"]["num_candidates"] == 2 and stim["guide"]["prior"]["name"] == "default"
    report = studies.analysis(guide, None)
    assert sorted(p["attention_passed"] for p in report["study_participants"].values()) == [0, 1, 1, 1]
    assert max(report["conditions"], key=lambda c: report["conditions"][c]["bt_score"]) == PLANTED_BEST
    with studies.fb.db.sessions.begin() as s:  # votes among candidates export as pairs with seeds and strengths
        result = export_dataset(s, studies.fb.images, tmp_path / "guide", format="jsonl", human_only=True,
                                study_id=guide)
    rows = [json.loads(line) for line in result.data_file.read_text().splitlines()]
    assert rows and all(r["prior_weights_hash"] == stim["guide"]["prior"]["weights_hash"] for r in rows)
    for r in rows:
        for side in ("chosen", "rejected"):
            if r[f"{side}_method"] == "restored":
                assert r[f"{side}_is_restored"] and r[f"{side}_strength"] is None
            else:
                assert r[f"{side}_strength"] == stim["facts"][r[f"{side}_method"]]["strength"]
                assert r[f"{side}_seed"] >= 3


def test_human_guided_refinement_uses_the_planted_choice(client, studies, guide, images) -> None:
    sid = create_study(client, _compare_definition(images, guide))["study_id"]
    for j, stim in enumerate(_stimuli(studies, sid)):
        human, auto = stim["facts"]["ttpo-human:nlm"], stim["facts"]["ttpo-auto:nlm"]
        assert human["preferred"] == [PLANTED_BEST] and human["rejected"] == [PLANTED_WORST]
        # 3 attentive participants; the inattentive one failed the attention check and is not counted
        assert human["guide_votes"] == {"votes": 3, "best": {PLANTED_BEST: 3}, "worst": {PLANTED_WORST: 3},
                                        "preferred": [PLANTED_BEST], "rejected": [PLANTED_WORST]}
        assert human["guide_study"] == guide and human["selector"] == "human"
        # only the choice differs: the guide's candidates and the same refinement settings for both
        assert human["candidates"] == auto["candidates"] == _stimuli(studies, guide)[j]["guide"]["candidates"]
        assert human["refine"] == auto["refine"] and human["prior"] == auto["prior"]
    person = client.post(f"{API}/studies/{sid}/participants", json={"consent_version": "v1"})
    assert person.status_code == 200 and person.json()["n_items"] == 2


def test_a_guide_that_cannot_guide_is_refused_clearly(client, studies, guide, images, tmp_path) -> None:
    def refused(definition) -> str:
        r = client.post(f"{API}/studies", headers=ADMIN, json=definition)
        assert r.status_code == 400, r.text
        return r.json()["error"]

    assert "no study with this id" in refused(_compare_definition(images, "0" * 32))
    assert "need guide_study" in refused({**_compare_definition(images, guide), "guide_study": None})
    assert "ttpo-human" in refused({**_compare_definition(images, guide), "conditions": ["nlm", "ttpo-auto:nlm"]})
    error = refused(_compare_definition(images, guide, min_guide_votes=4))
    assert "lacks votes" in error and "stimulus 0 (image 0, noise:20): 3" in error and "stimulus 1" in error
    assert "other images" in refused(_compare_definition(_images(tmp_path, size=40), guide))
    assert "other seed" in refused(_compare_definition(images, guide, seed=4))
    assert "same backbone and prior" in refused(
        _compare_definition(images, guide, conditions=["nlm", "ttpo-human:nlm;prior=other"]))
    compare = create_study(client, {**_compare_definition(images, guide), "conditions": ["nlm", "bicubic"],
                                    "guide_study": None})["study_id"]
    assert "not a guide study" in refused(_compare_definition(images, compare))
    with studies.fb.gate.slot():  # the engine is busy: a new guide study stays 'preparing'
        pending = client.post(f"{API}/studies", headers=ADMIN, json=_guide_definition(images)).json()["study_id"]
        assert "still being prepared" in refused(_compare_definition(images, pending))
    assert studies.wait_until_ready(pending, timeout_s=300)["status"] == "active"
    assert "lacks votes" in refused(_compare_definition(images, pending))  # active, but nobody voted yet


def test_candidates_that_differ_from_the_guides_fail_the_preparation(client, studies, guide, images) -> None:
    """The guide's candidates are remade and compared pixel for pixel: a guide whose stored candidate is not what
    the backbone and prior make now (here: tampered) fails the study with what differs, and records nothing."""
    with studies.fb.db.sessions.begin() as s:
        row = s.get(Study, guide)
        original = row.stimuli
        tampered = json.loads(json.dumps(original))
        tampered[1]["outputs"]["c0"] = tampered[1]["outputs"]["restored"]
        row.stimuli = tampered
    try:
        r = client.post(f"{API}/studies", headers=ADMIN, json=_compare_definition(images, guide))
        assert r.status_code == 202, r.text
        status = studies.wait_until_ready(r.json()["study_id"], timeout_s=300)
    finally:
        with studies.fb.db.sessions.begin() as s:
            s.get(Study, guide).stimuli = original
    assert status["status"] == "failed" and status["progress"]["done"] == 1
    assert "stimulus 1 differ from the ones guide_study" in status["error"] and "(c0)" in status["error"]
    assert _stimuli(studies, r.json()["study_id"]) == []
