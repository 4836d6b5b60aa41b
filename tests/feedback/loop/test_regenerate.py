"""`ttpo regenerate`: a round made through REST (restore, candidates, a choice, refine) is recomputed from the
database and matches pixel for pixel; a changed image, a different prior and an unknown round are told apart."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import ttpo_cli
from feedback.web.api import build_api

try:
    from tests.inprocess_app import tiny_service
except ImportError:  # tests/ itself is on sys.path under pytest
    from inprocess_app import tiny_service


def _png(size: int = 32) -> bytes:
    rng = np.random.default_rng(4)
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.clip(np.stack([x, y, 1 - x], -1) + 0.05 * rng.standard_normal((size, size, 3)), 0, 1)
    buf = io.BytesIO()
    Image.fromarray((img * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, prior):
    """A round made through the REST API on the tiny prior: (data dir, prior folder, round id, REST answers)."""
    folder = tmp_path_factory.mktemp("regen")
    service = tiny_service(folder, prior)
    client = TestClient(build_api(service))
    session = client.post("/api/v1/sessions", json={"annotator": "Ada"}).json()
    headers = {"Authorization": f"Bearer {session['token']}"}
    made = client.post(f"/api/v1/sessions/{session['session_id']}/rounds", headers=headers,
                       data={"degradation": "noise:20", "seed": "11", "candidates": "2"},
                       files={"image": ("x.png", _png(), "image/png")})
    assert made.status_code == 200, made.text
    body = made.json()
    ids = [c["id"] for c in body["candidates"]]
    chose = client.post(f"/api/v1/rounds/{body['round_id']}/choices", headers=headers,
                        json={"preferred": [ids[0]], "rejected": ids[1:]})
    assert chose.status_code == 200, chose.text
    refined = client.post(f"/api/v1/rounds/{body['round_id']}/refine", headers=headers)
    assert refined.status_code == 200, refined.text
    service.db.engine.dispose()
    return folder / "data", folder / "prior", body["round_id"], refined.json()


def _run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = ttpo_cli.main(["regenerate", *args])
    except SystemExit as exc:  # argparse's exit on an error
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_rest_round_regenerates_identically(recorded, capsys) -> None:
    data, prior_dir, round_id, refined = recorded
    url = f"sqlite:///{data / 'ttpo.sqlite3'}"
    code, out, err = _run(capsys, "--db", url, "--round", round_id, "--json", "--prior", str(prior_dir))
    assert code == 0, err
    report = json.loads(out)
    assert report["round_id"] == round_id and report["all_match"] is True and report["rule"] == "identical"
    assert sorted(i["kind"] for i in report["images"]) == ["candidate", "candidate", "refined", "restored"]
    assert all(i["identical"] and i["psnr"] == 100.0 for i in report["images"])
    assert [i["image_id"] for i in report["images"] if i["kind"] == "refined"] == [refined["image"]["id"]]
    # the next round starts from the refined image: its candidates regenerate from it
    code, out, _ = _run(capsys, "--db", url, "--round", refined["round_id"], "--json", "--prior", str(prior_dir))
    nxt = json.loads(out)
    assert code == 0 and nxt["all_match"] and "refined image of round" in nxt["start"]
    assert [i["kind"] for i in nxt["images"]] == ["candidate", "candidate"]


def test_a_changed_image_or_another_prior_or_round_is_reported(recorded, capsys, tmp_path) -> None:
    data, prior_dir, round_id, _ = recorded
    url = f"sqlite:///{data / 'ttpo.sqlite3'}"
    # a copy of the data folder with one candidate's file overwritten by another image
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    code, out, _ = _run(capsys, "--db", f"sqlite:///{copy / 'ttpo.sqlite3'}", "--round", round_id, "--json",
                        "--prior", str(prior_dir))
    candidate = next(i for i in json.loads(out)["images"] if i["kind"] == "candidate")
    path = next(copy.glob(f"images/**/{candidate['image_id']}.png"))
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
    code, out, _ = _run(capsys, "--db", f"sqlite:///{copy / 'ttpo.sqlite3'}", "--round", round_id, "--json",
                        "--prior", str(prior_dir))
    report = json.loads(out)
    assert code == 1 and report["all_match"] is False
    changed = [i for i in report["images"] if not i["match"]]
    # the changed candidate differs, and so does the refinement guided by it; the restoration still matches
    assert min((i["kind"], i["id"]) for i in changed) == ("candidate", candidate["id"])
    assert sorted(i["kind"] for i in changed) == ["candidate", "refined"] and changed[0]["psnr"] < 20
    # the shipped prior is not the one the round used; an unknown round; a bad --extra-prior
    for args, needle in ((["--round", round_id], "pass the app's --prior"),
                         (["--round", "f" * 32, "--prior", str(prior_dir)], "no round with id"),
                         (["--round", round_id, "--extra-prior", "x"], "NAME=SOURCE")):
        code, _out, err = _run(capsys, "--db", url, *args)
        assert code == 2 and needle in err, err


def test_a_round_recorded_on_a_gpu_is_compared_by_psnr_here(recorded, capsys, tmp_path) -> None:
    """Recorded on CUDA, recomputed on this CPU: the rule is PSNR >= 60 dB, and the report says both devices."""
    import shutil
    import sqlite3

    data, prior_dir, round_id, _ = recorded
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    with sqlite3.connect(copy / "ttpo.sqlite3") as db:
        db.execute("update rounds set device = 'cuda'")
    code, out, err = _run(capsys, "--db", f"sqlite:///{copy / 'ttpo.sqlite3'}", "--round", round_id, "--json",
                          "--prior", str(prior_dir), "--device", "cpu")
    report = json.loads(out)
    assert code == 0, err
    assert report["rule"] == "psnr>=60" and report["recorded"]["device"] == "cuda" and report["here"]["device"] == "cpu"
    assert report["all_match"] and all(i["psnr"] >= 60 for i in report["images"])


def test_regenerate_is_a_ttpo_subcommand(capsys) -> None:
    assert ttpo_cli.main(["--help"]) == 0
    assert "regenerate" in capsys.readouterr().out
