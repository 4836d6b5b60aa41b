"""Telling the restorer the degradation (`hint`): the service records it, the classical baselines choose their
method by it, a SIPL backbone told haze dehazes its output; a bad hint is refused before anything is stored."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from feedback.loop.engine import EngineSettings, RefineSettings, RoundSettings
from feedback.loop.service import FeedbackService
from feedback.record.db import open_database
from feedback.record.errors import InputError
from feedback.record.models import Round
from feedback.web import ui
from feedback.web.api import build_api


def _png(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:48, 0:48] / 48.0
    img = np.stack([xx, yy, 0.5 + 0.3 * np.sin(8 * (xx + yy))], -1) + 0.05 * rng.standard_normal((48, 48, 3))
    buf = io.BytesIO()
    Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("hint")
    settings = EngineSettings(backbone="classical", round=RoundSettings(num_candidates=2, steps=2),
                              refine=RefineSettings(steps=2))
    return FeedbackService(open_database(data_dir=tmp_path), str(tmp_path), settings)


def _rounds(service) -> int:
    with service.db.sessions.begin() as s:
        return s.query(Round).count()


def test_the_hint_is_told_to_the_restorer_and_recorded(service, tmp_path):
    session_id = service.create_session("Ada")[0]
    data = _png()
    blind = service.start_round(session_id, data, degradation="haze", backbone="classical", seed=3, generate=False)
    told = service.start_round(session_id, data, degradation="haze", backbone="classical", seed=3, generate=False,
                               hint="haze")
    assert "hint" not in blind.params and blind.params["backbone"]["degradation_hint"] is None
    assert told.params["hint"] == "haze" and told.params["backbone"]["degradation_hint"] == "haze"
    assert "dehaze" in told.params["backbone"]["plan"]
    a = np.asarray(Image.open(service.images.path_for(blind.start_image_id)), np.float32)
    b = np.asarray(Image.open(service.images.path_for(told.start_image_id)), np.float32)
    assert np.abs(a - b).mean() > 1.0  # the told restorer did something else
    assert service.start_round(session_id, data, generate=False, hint="none").params.get("hint") is None
    before = _rounds(service)
    with pytest.raises(InputError, match=r"hint \(the degradation the restorer is told\): .*unknown degradation "
                                         r"'hazy'"):
        service.start_round(session_id, data, generate=False, hint="hazy")
    assert _rounds(service) == before  # refused before anything was stored

    # the page: the status says what the restorer was told
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    out = ui.restore(service, {"session_id": session_id}, str(path), "haze", "classical", 3, True, "haze")
    assert "told *haze*" in out[3]
    # the REST API: a form field
    client = TestClient(build_api(service))
    sid, token = service.create_session("Grace")
    url, headers = f"/api/v1/sessions/{sid}/rounds", {"Authorization": f"Bearer {token}"}
    files = {"image": ("p.png", data, "image/png")}
    ok = client.post(url, files=files, data={"candidates": "1", "hint": "haze"}, headers=headers)
    assert ok.status_code == 200, ok.text
    bad = client.post(url, files=files, data={"candidates": "1", "hint": "fog"}, headers=headers)
    assert bad.status_code == 400 and "hint (the degradation the restorer is told)" in bad.json()["error"]


def test_a_sipl_backbone_told_haze_dehazes_its_output(service, tmp_path, monkeypatch):
    pytest.importorskip("restoration.backbones.sipl")
    from restoration.backbones import registry
    from restoration.backbones.sipl import save_weights
    from tests.restoration.backbones.test_sipl import tiny_net

    path = tmp_path / "blind.safetensors"
    save_weights(tiny_net(), path)
    monkeypatch.setitem(registry.SIPL_WEIGHTS, "sipl", path)
    monkeypatch.setitem(registry.SIPL_POST_DECONVOLUTION, "sipl", tmp_path / "no_post.safetensors")
    registry.clear_restorer_cache()
    try:
        session_id = service.create_session("Ada")[0]
        told = service.start_round(session_id, _png(), degradation="rain+haze", backbone="sipl", generate=False,
                                   hint="rain+haze")
        assert told.params["backbone"]["told"] == "rain+haze"
        assert told.params["backbone"]["told_dehaze"] == {"omega": 0.75, "t0": 0.4}
        plain = service.start_round(session_id, _png(), backbone="sipl", generate=False)
        assert plain.params["backbone"]["told"] is None and plain.params["backbone"]["told_dehaze"] is None
    finally:
        registry.clear_restorer_cache()
