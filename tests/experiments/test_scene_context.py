"""The scene-context experiment (`experiments/scene_context`): the fusion, its gate, the wrapper, its command."""
import json

import pytest
import torch
import torch.nn.functional as F

from experiments.scene_context.scene_context import (
    SceneContextConfig,
    SceneContextRestorer,
    coarse_shape,
    context_weight,
    fuse_scene_context,
)
from restoration.backbones import create_restorer
from restoration.backbones.base import Restorer
from restoration.metrics import psnr


def _scene(size: int = 128) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    img = torch.stack([0.2 + 0.5 * xx, 0.1 + 0.6 * yy, 0.4 + 0.3 * torch.sin(5 * (xx + yy))])
    img[:, size // 4: size // 2, size // 3: 2 * size // 3] = torch.tensor([0.8, 0.15, 0.1]).view(3, 1, 1)
    return img.unsqueeze(0)


def _haze(x: torch.Tensor, t: float, airlight: float = 0.9) -> torch.Tensor:
    return x * t + airlight * (1 - t)


def test_coarse_shape_keeps_the_aspect_and_skips_small_images():
    cfg = SceneContextConfig()
    assert coarse_shape(256, 256, cfg) == (64, 64)
    assert coarse_shape(128, 300, cfg) == (64, 150)
    assert coarse_shape(127, 500, cfg) is None  # factor below 2
    assert coarse_shape(100, 100, SceneContextConfig(coarse_side=32)) == (32, 32)


@pytest.mark.parametrize("kwargs, message", [
    ({"coarse_side": 8}, "coarse_side"), ({"min_factor": 0.5}, "min_factor"), ({"sigma": 0}, "sigma"),
    ({"change_ramp": (0.07, 0.04)}, "change_ramp"), ({"extra_ramp": (-0.1, 0.1)}, "extra_ramp"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SceneContextConfig(**kwargs)


def test_weight_is_the_product_of_two_ramps():
    cfg = SceneContextConfig(change_ramp=(0.04, 0.07), extra_ramp=(0.02, 0.04))
    change = torch.tensor([0.0, 0.055, 0.1, 0.1, 0.1])
    extra = torch.tensor([0.1, 0.1, 0.03, 0.01, 0.5])
    assert torch.allclose(context_weight(change, extra, cfg), torch.tensor([0.0, 0.5, 0.5, 0.0, 1.0]), atol=1e-6)


def test_no_change_at_full_resolution_means_no_correction():
    """A restorer that left the low frequencies alone (a clean or misty photo) keeps its result exactly, whatever
    the coarse run says."""
    x = _haze(_scene(), 0.6)
    coarse_dehazed = F.interpolate(_scene(), size=(64, 64), mode="area")
    fused, weight = fuse_scene_context(x, x.clone(), coarse_dehazed)
    assert weight.item() == 0
    assert torch.equal(fused, x)


def test_coarse_dehazing_completes_a_half_dehazed_result():
    clean = _scene()
    hazy = _haze(clean, 0.4)
    half = _haze(clean, 0.7)  # the full-resolution run removed part of the haze
    coarse = F.interpolate(clean, size=(64, 64), mode="area")  # the coarse run removed all of it
    fused, weight = fuse_scene_context(hazy, half, coarse)
    assert weight.item() == 1
    assert float(psnr(fused, clean)) > float(psnr(half, clean)) + 6
    # the detail (high frequencies) still comes from the full-resolution result
    assert fused.shape == half.shape and fused.min() >= 0 and fused.max() <= 1


def test_weights_are_per_image():
    clean = _scene()
    hazy = torch.cat([_haze(clean, 0.4), clean])
    restored = torch.cat([_haze(clean, 0.7), clean])
    coarse = F.interpolate(torch.cat([clean, _haze(clean, 0.5)]), size=(64, 64), mode="area")
    fused, weight = fuse_scene_context(hazy, restored, coarse)
    assert weight.tolist() == [1.0, 0.0]
    assert torch.equal(fused[1], restored[1])


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes differ"):
        fuse_scene_context(torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 120), torch.rand(1, 3, 64, 64))


class _Recorder(Restorer):
    """Returns its input; records the shapes it was called with."""

    name = "recorder"

    def __init__(self):
        self.calls: list[tuple[int, ...]] = []

    def restore(self, x):
        self.calls.append(tuple(x.shape))
        return x.clone()

    def restore_single_pass(self, x):
        return self.restore(x)


def test_the_wrapper_runs_the_inner_restorer_at_both_scales():
    inner = _Recorder()
    wrapped = SceneContextRestorer(inner)
    x = _haze(_scene(), 0.5)
    assert torch.equal(wrapped.restore(x), x)  # nothing changed at full resolution: no correction
    assert inner.calls == [(1, 3, 128, 128), (1, 3, 64, 64)]
    assert callable(wrapped.restore_single_pass)
    assert wrapped.describe()["scene_context"]["coarse_side"] == 64
    small = torch.rand(1, 3, 64, 64)
    inner.calls.clear()
    assert torch.equal(wrapped.restore(small), inner.restore(small))  # too small for a coarse run
    assert inner.calls == [(1, 3, 64, 64)] * 2


def test_any_backbone_and_no_upscaling():
    wrapped = SceneContextRestorer(create_restorer("nlm"))
    assert wrapped.name == "nlm" and not hasattr(wrapped, "restore_single_pass")
    with pytest.raises(ValueError, match="do not take option.*scene_context"):
        create_restorer("nlm", scene_context=True)  # an experiment: not a registry option

    class _X4(_Recorder):
        scale = 4

    sr = SceneContextRestorer(_X4())
    assert sr.scale == 4
    with pytest.raises(ValueError, match="scene-context pass"):
        sr.upscale(_scene(16))


def test_evaluate_command(tmp_path, capsys):
    from experiments.scene_context.evaluate import main
    from restoration.evaluate import main as plain_main
    from tests.restoration.test_evaluate import _write_images

    _write_images(tmp_path / "imgs")
    args = ["--backbone", "nlm", "--degradation", "noise:25", "--images", str(tmp_path / "imgs"), "--size", "32",
            "--limit", "1", "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["restorer"]["scene_context"]["coarse_side"] == 64
    assert plain_main(args) == 0
    assert "scene_context" not in json.loads(capsys.readouterr().out)["restorer"]
