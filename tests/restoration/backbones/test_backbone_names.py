"""Backbones by name everywhere: --backbone NAME=SOURCE, GET /api/v1/health, a REST round, study conditions; scale
handling of super-resolution checkpoints; --device auto."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact

from feedback.loop.engine import EngineSettings, RefineSettings, RoundSettings
from feedback.loop.service import FeedbackService
from feedback.record.db import open_database
from feedback.record.errors import InputError
from feedback.web.api import build_api
from restoration.backbones.registry import create_restorer
from restoration.diffusion.pixel import save_pixel_prior
from restoration.runtime import resolve_device

try:
    from conftest import TINY_PRIOR
except ImportError:
    from tests.conftest import TINY_PRIOR


def tiny_sr_checkpoint(path, upscale: int):
    """A seeded SRVGGNetCompact (spandrel 'Compact') x`upscale` saved as safetensors."""
    torch.manual_seed(upscale)
    save_file(Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=upscale).state_dict(), str(path))
    return path


# ---------------------------------------------------------------------------------------------- scale
@pytest.mark.parametrize("scale", [2, 4])
def test_sr_model_restores_at_the_input_size_from_a_resampled_input(tmp_path, scale):
    restorer = create_restorer(str(tiny_sr_checkpoint(tmp_path / f"x{scale}.safetensors", scale)))
    assert restorer.scale == scale and restorer.describe()["scale"] == scale
    x = torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    out = restorer.restore(x)
    assert out.shape == x.shape
    # same-size restoration = the model on the input resampled by 1/scale (what a synthesized sr:s undoes)
    small = F.interpolate(x, size=(48 // scale, 40 // scale), mode="bicubic", align_corners=False,
                          antialias=True).clamp(0, 1)
    with torch.inference_mode():
        expected = restorer.model(small).clamp(0, 1)
    assert torch.allclose(out, expected, atol=1e-5)


def test_sr_model_on_a_size_its_scale_does_not_divide(tmp_path):
    restorer = create_restorer(str(tiny_sr_checkpoint(tmp_path / "x4.safetensors", 4)))
    x = torch.rand(1, 3, 50, 37, generator=torch.Generator().manual_seed(1))
    assert restorer.restore(x).shape == x.shape


# ---------------------------------------------------------------------------------------------- --backbone NAME=SOURCE
def test_app_registers_backbones_and_checks_them_at_start(tmp_path, capsys):
    from app import parse_args

    good = tiny_sr_checkpoint(tmp_path / "tiny4.safetensors", 4)
    a = parse_args(["--backbone", f"tiny4={good}", "--backbone", "esr=realesrgan", "--backbone", "tiny4"])
    assert a.extra_backbones == [("tiny4", str(good.resolve())), ("esr", "realesrgan")] and a.backbone == "tiny4"
    assert parse_args([]).backbone == "auto"
    save_file({"w": torch.zeros(3)}, str(tmp_path / "odd.safetensors"))
    torch.save({"model": torch.nn.Conv2d(1, 1, 1)}, tmp_path / "code.pth")  # a pickle that must import a class
    for args, message in [
        (["--backbone", f"x={tmp_path / 'missing.pth'}"], "checkpoint not found"),
        (["--backbone", f"x={tmp_path / 'odd.safetensors'}"], "unrecognised architecture"),
        (["--backbone", f"x={tmp_path / 'code.pth'}"], "refusing to load"),
        (["--backbone", f"nlm={good}"], "the name is taken"),
        (["--backbone", f"Bad Name={good}"], "expected NAME=PATH_OR_BUILTIN"),
        (["--backbone", "x=nosuchbuiltin"], "unknown backbone 'nosuchbuiltin'"),
        (["--backbone", "nosuch"], "not a backbone name"),
        (["--backbone", "nlm", "--backbone", "sipl"], "name one default backbone"),
    ]:
        with pytest.raises(SystemExit):
            parse_args(args)
        assert message in capsys.readouterr().err, args


@pytest.fixture
def service(tmp_path, prior):
    path = tiny_sr_checkpoint(tmp_path / "tiny4.safetensors", 4)
    prior_dir = save_pixel_prior(tmp_path / "prior", prior.unet, TINY_PRIOR)
    engine = EngineSettings(backbone="nlm", prior=str(prior_dir), backbones=("nlm", "bicubic"),
                            extra_backbones=(("tiny4", str(path)),),
                            round=RoundSettings(num_candidates=2, steps=2), refine=RefineSettings(steps=2))
    data = tmp_path / "data"
    return FeedbackService(open_database(data_dir=data), str(data), engine, admin_token="admin-token")


def test_health_lists_the_backbones(service, tmp_path):
    client = TestClient(build_api(service))
    facts = {b["name"]: b for b in client.get("/api/v1/health").json()["backbones"]}
    assert list(facts) == ["nlm", "bicubic", "tiny4"]
    digest = hashlib.sha256((tmp_path / "tiny4.safetensors").read_bytes()).hexdigest()
    assert facts["tiny4"] == {"name": "tiny4", "kind": "spandrel", "architecture": "Compact", "scale": 4,
                              "weights_sha256": digest}
    assert facts["nlm"] == {"name": "nlm", "kind": "classical", "architecture": "nlm", "scale": 1,
                            "weights_sha256": None}


def _png(side: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_rest_round_with_a_registered_backbone_records_it(service, tmp_path):
    client = TestClient(build_api(service))
    body = client.post("/api/v1/sessions", json={"annotator": "Ada"}).json()
    auth = {"Authorization": f"Bearer {body['token']}"}
    r = client.post(f"/api/v1/sessions/{body['session_id']}/rounds", headers=auth,
                    data={"backbone": "tiny4", "degradation": "sr:4", "candidates": "1", "seed": "3"},
                    files={"image": ("x.png", _png(), "image/png")})
    assert r.status_code == 200, r.text
    view = service.get_round(r.json()["round_id"])
    facts = view.params["backbone"]
    assert (facts["name"], facts["architecture"], facts["scale"]) == ("tiny4", "Compact", 4)
    assert str(tmp_path) not in str(view.params)  # the server's file path is not what the round names
    assert service.images.get_array(view.start_image_id).shape == (32, 32, 3)
    bad = client.post(f"/api/v1/sessions/{body['session_id']}/rounds", headers=auth,
                      data={"backbone": str(tmp_path / "tiny4.safetensors")},
                      files={"image": ("x.png", _png(), "image/png")})
    assert bad.status_code == 400 and "unknown backbone" in bad.text  # a client never names a file


def test_study_conditions_take_registered_names(service):
    from feedback.studies.prepare import check_conditions
    from feedback.studies.study import study_from_dict

    base = {"name": "s", "images": ["x"], "consent_text": "ok", "consent_version": "1"}
    study = study_from_dict({**base, "conditions": ["tiny4", "ttpo-auto:tiny4", "nlm"]})
    assert [c.backbone for c in check_conditions(service, study)] == ["tiny4", "tiny4", "nlm"]
    with pytest.raises(InputError, match="condition 'ttpo-auto:tiny5'.*unknown backbone"):
        check_conditions(service, study_from_dict({**base, "conditions": ["nlm", "ttpo-auto:tiny5"]}))


# ---------------------------------------------------------------------------------------------- --device auto
def test_device_auto_falls_back_to_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("CPU") == "cpu"
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        resolve_device("cuda:0")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    from app import parse_args
    from restoration.evaluate import parse_args as evaluate_args

    assert parse_args([]).device == "cpu"
    assert evaluate_args(["--degradation", "noise:25", "--images", "."])[0].device == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
