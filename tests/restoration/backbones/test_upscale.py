"""Real upscaling by a super-resolution backbone: the restorer, a TTPO round at the output size, the headless command,
the service with its upload limits, the REST field and the page. Tiny seeded spandrel models (x2, x4), 32-64 px."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact

from feedback.loop.engine import EngineSettings, RefineSettings, RoundSettings
from feedback.loop.service import FeedbackService
from feedback.loop.uploads import UploadLimits
from feedback.record.db import open_database
from feedback.record.errors import InputError
from feedback.web import ui
from feedback.web.api import build_api
from restoration.backbones.registry import create_restorer
from restoration.diffusion.candidates import CandidateConfig
from restoration.diffusion.pixel import save_pixel_prior
from restoration.diffusion.refine import RefineConfig
from restoration.io import save_image
from restoration.tpo import TPOConfig, TPOEngine, upscaled_size

try:
    from conftest import TINY_PRIOR
except ImportError:
    from tests.conftest import TINY_PRIOR

ROOT = Path(__file__).resolve().parents[3]


def tiny_sr(path: Path, upscale: int) -> Path:
    """A seeded SRVGGNetCompact (spandrel 'Compact') x`upscale` saved as safetensors."""
    torch.manual_seed(upscale)
    save_file(Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=upscale).state_dict(), str(path))
    return path


def _image(h: int = 32, w: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(h, w), mode="bilinear")
    return (0.15 + 0.7 * x).clamp(0, 1)


def _png(side: int, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    array = (_image(side, side, seed)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- the restorer
@pytest.mark.parametrize("scale", [2, 4])
def test_upscale_is_the_model_on_the_input_as_it_is(tmp_path, scale):
    restorer = create_restorer(str(tiny_sr(tmp_path / f"x{scale}.safetensors", scale)), tile=0)
    x = _image(32, 40)
    out = restorer.upscale(x)
    assert out.shape == (1, 3, 32 * scale, 40 * scale)
    with torch.inference_mode():
        expected = restorer.model(x).clamp(0, 1)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert restorer.restore(x).shape == x.shape  # same-size restoration is unchanged


def test_upscale_is_tiled_where_large(tmp_path):
    path = tiny_sr(tmp_path / "x2.safetensors", 2)
    x = _image(64, 56, seed=1)
    whole = create_restorer(str(path), tile=0).upscale(x)
    tiled_restorer = create_restorer(str(path), tile=24, overlap=8)
    calls = []
    forward = tiled_restorer._forward
    tiled_restorer._forward = lambda t: calls.append(tuple(t.shape[-2:])) or forward(t)
    tiled = tiled_restorer.upscale(x)
    assert len(calls) > 1 and max(max(c) for c in calls) <= 24  # the model saw tiles, not the whole image
    assert tiled.shape == (1, 3, 128, 112)
    assert (tiled - whole).abs().max() < 0.05  # a 2-conv model has a small receptive field: seams blend away


def test_backbones_that_cannot_upscale_say_so(tmp_path):
    for restorer in (create_restorer("nlm"), create_restorer(str(tiny_sr(tmp_path / "x1.safetensors", 1)))):
        assert restorer.scale == 1
        with pytest.raises(ValueError, match="restores at scale 1 and cannot upscale"):
            restorer.upscale(_image())
        with pytest.raises(ValueError, match="cannot upscale"):
            upscaled_size(restorer, 32, 32)
    assert upscaled_size(create_restorer(str(tiny_sr(tmp_path / "x4.safetensors", 4))), 32, 40) == (128, 160)
    with pytest.raises(ValueError, match="sides of at most 4096 px.*up to 1024 px"):
        upscaled_size(create_restorer(str(tmp_path / "x4.safetensors")), 1025, 40)


# ---------------------------------------------------------------------------------------------- a round
def test_round_continues_at_the_upscaled_size(tmp_path, prior):
    restorer = create_restorer(str(tiny_sr(tmp_path / "x2.safetensors", 2)))
    config = TPOConfig(candidates=CandidateConfig(num_candidates=2, steps=2), refine=RefineConfig(steps=2))
    engine = TPOEngine(config, restorer=restorer, prior=prior)
    small = _image(32, 32)
    start, _seconds = engine.restore(small, upscale=True)
    assert start.shape == (1, 3, 64, 64)
    rnd = engine.start_round(start, seed=0)
    assert all(c.image.shape == (1, 3, 64, 64) for c in rnd.candidates)
    refined = engine.refine(rnd, engine.select(rnd))
    assert refined.shape == (1, 3, 64, 64)
    same, _ = engine.restore(small)
    assert same.shape == small.shape


# ---------------------------------------------------------------------------------------------- the command
def test_headless_command_upscales_and_records_it(tmp_path, prior):
    prior_dir = save_pixel_prior(tmp_path / "prior", prior.unet, TINY_PRIOR)
    model = tiny_sr(tmp_path / "x2.safetensors", 2)
    img, gt = tmp_path / "in.png", tmp_path / "gt.png"
    save_image(_image(32, 32), img)
    save_image(_image(64, 64), gt)
    base = [sys.executable, "-m", "restoration.tpo", "--input", str(img), "--prior", str(prior_dir),
            "--candidates", "2", "--steps", "2", "--seed", "1", "--json"]
    res = subprocess.run(base + ["--backbone", str(model), "--upscale", "--gt", str(gt), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert (data["scale_mode"], data["scale"], data["backbone"]["scale"]) == ("upscale", 2, 2)
    assert (data["input_size"], data["output_size"]) == ([32, 32], [64, 64])
    assert data["device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # --device auto is the default
    assert "restored_psnr" in data["rounds"][0]  # --gt at the output's size
    for name in ("restored.png", "round0_c0.png", "round0_refined.png"):
        with Image.open(tmp_path / "o" / name) as im:
            assert im.size == (64, 64), name
    same = subprocess.run(base + ["--backbone", str(model), "--out", str(tmp_path / "s")],
                          capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
    assert same.returncode == 0, same.stderr
    assert (json.loads(same.stdout)["scale_mode"], json.loads(same.stdout)["output_size"]) == ("same_size", [32, 32])
    for extra, message in [
        (["--backbone", "nlm", "--upscale"], "restores at scale 1 and cannot upscale"),
        (["--backbone", str(model), "--upscale", "--degradation", "noise:10"], "--upscale takes a real small input"),
        (["--backbone", str(model), "--upscale", "--gt", str(img)], "differs from the x2 output (64, 64)"),
        (["--backbone", "nlm", "--device", "gpu"], "unknown device 'gpu'"),
    ]:
        bad = subprocess.run(base + extra + ["--out", str(tmp_path / "bad")], capture_output=True, text=True,
                             check=False, cwd=ROOT, timeout=600)
        assert bad.returncode == 2 and message in bad.stderr, (extra, bad.stderr)


# ---------------------------------------------------------------------------------------------- service, REST, page
def test_limits_for_an_upscaled_output():
    limits = UploadLimits(max_side=256, max_pixels=200 * 200)
    x4 = limits.for_output_scale(4)
    assert (x4.max_side, x4.max_pixels, x4.min_side) == (64, 2500, 16)
    assert "x4 upscaling" in x4.upscaling and limits.for_output_scale(1) is limits
    with pytest.raises(InputError, match="x32 upscaling cannot fit"):
        limits.for_output_scale(32)


@pytest.fixture
def service(tmp_path, prior):
    prior_dir = save_pixel_prior(tmp_path / "prior", prior.unet, TINY_PRIOR)
    engine = EngineSettings(backbone="nlm", prior=str(prior_dir), backbones=("nlm",),
                            extra_backbones=(("tiny4", str(tiny_sr(tmp_path / "tiny4.safetensors", 4))),),
                            round=RoundSettings(num_candidates=2, steps=2), refine=RefineSettings(steps=2))
    data = tmp_path / "data"
    return FeedbackService(open_database(data_dir=data), str(data), engine, admin_token="admin-token",
                           limits=UploadLimits(max_side=160, max_pixels=160 * 160))


def _count_rounds(service) -> int:
    from sqlalchemy import func, select

    from feedback.record.models import Round

    with service.db.reads.begin() as s:
        return s.scalar(select(func.count()).select_from(Round))


def test_rest_round_upscales_and_the_loop_continues_at_that_size(service):
    client = TestClient(build_api(service))
    body = client.post("/api/v1/sessions", json={"annotator": "Ada"}).json()
    auth = {"Authorization": f"Bearer {body['token']}"}
    url = f"/api/v1/sessions/{body['session_id']}/rounds"
    r = client.post(url, headers=auth, data={"backbone": "tiny4", "upscale": "true", "candidates": "2", "seed": "3"},
                    files={"image": ("x.png", _png(32), "image/png")})
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["scale_mode"], out["scale"]) == ("upscale", 4)
    view = service.get_round(out["round_id"])
    assert (view.params["scale_mode"], view.params["scale"], view.params["backbone"]["scale"]) == ("upscale", 4, 4)
    assert service.images.get_array(view.input_image_id).shape == (32, 32, 3)
    assert {service.images.get_array(c.image_id).shape for c in view.candidates} == {(128, 128, 3)}
    # a choice, refinement, and the next round: all at the upscaled size, the mode carried along the lineage
    assert client.post(f"/api/v1/rounds/{view.round_id}/auto", headers=auth, json={}).status_code == 200
    refined = client.post(f"/api/v1/rounds/{view.round_id}/refine", headers=auth, json={})
    assert refined.status_code == 200, refined.text
    nxt = service.get_round(refined.json()["round_id"])
    assert service.images.get_array(refined.json()["image"]["id"]).shape == (128, 128, 3)
    assert (nxt.params["scale_mode"], nxt.params["scale"]) == ("upscale", 4)
    assert {service.images.get_array(c.image_id).shape for c in nxt.candidates} == {(128, 128, 3)}

    plain = client.post(url, headers=auth, data={"backbone": "tiny4", "candidates": "1"},
                        files={"image": ("x.png", _png(32), "image/png")})
    assert plain.status_code == 200 and (plain.json()["scale_mode"], plain.json()["scale"]) == ("same_size", 4)
    assert service.images.get_array(plain.json()["restored"]["id"]).shape == (32, 32, 3)

    before = _count_rounds(service)
    for data, side, message in [
        ({"backbone": "nlm", "upscale": "true"}, 32,
         "'nlm' restores at scale 1 and cannot upscale; choose one that can: tiny4"),
        ({"backbone": "tiny4", "upscale": "true", "degradation": "noise:10"}, 32, "leave out either"),
        # 48 px x4 = 192 px: over the 160 px limit, said with the reason
        ({"backbone": "tiny4", "upscale": "true"}, 48,
         "sides must be 16..40 pixels (x4 upscaling: its output must fit sides up to 160 px"),
    ]:
        bad = client.post(url, headers=auth, data=data, files={"image": ("x.png", _png(side), "image/png")})
        assert bad.status_code == 400 and message in bad.json()["error"], bad.text
    assert _count_rounds(service) == before  # refused before anything was stored

    fitted = client.post(url, headers=auth, data={"backbone": "tiny4", "upscale": "true", "fit": "true",
                                                  "candidates": "1"},
                         files={"image": ("x.png", _png(48), "image/png")})
    assert fitted.status_code == 200, fitted.text
    assert fitted.json()["upload"] == {"original_size": [48, 48], "size": [40, 40]}
    assert service.images.get_array(fitted.json()["restored"]["id"]).shape == (160, 160, 3)


def test_page_restore_says_it_upscaled(service, tmp_path):
    session_id = service.create_session("Grace")[0]
    path = tmp_path / "small.png"
    path.write_bytes(_png(32))
    out = ui.restore(service, {"session_id": session_id}, str(path), "none", "tiny4", 3, True, "", True)
    assert "upscaled x4 from 32x32 to 128x128 pixels with **tiny4**" in out[3]
    with Image.open(out[2]) as restored:
        assert restored.size == (128, 128)


def test_check_upscale_script_reports_the_figures(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    import check_upscale

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        save_image(_image(48, 48, seed=i), photos / f"p{i}.png")
    model = tiny_sr(tmp_path / "x2.safetensors", 2)
    assert check_upscale.main([str(photos), "--backbone", str(model), "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert f"{model} x2, 2 photos, 16 -> 32 px: bicubic " in out and "hf_ratio" in out
    with pytest.raises(SystemExit):
        check_upscale.main([str(photos), "--backbone", "nlm"])
    assert "has scale 1" in capsys.readouterr().err
