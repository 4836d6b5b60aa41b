import pytest
import torch
from skimage import data

from restoration.backbones.classical import (
    ClassicalRestorer,
    _box,
    dark_channel_dehaze,
    estimate_haze,
    plan_restoration,
)
from restoration.degradations import degrade
from restoration.io import resize_short_side_center_crop
from restoration.metrics import psnr


@pytest.fixture(scope="module")
def clean():
    imgs = [
        torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255 for im in (data.astronaut(), data.coffee())
    ]
    return torch.cat([resize_short_side_center_crop(im, 64) for im in imgs])


@pytest.mark.parametrize(
    "method, spec, min_gain",
    [
        ("nlm", "noise:25", 3.0),
        ("wiener", "blur:1.5", 2.0),
        ("richardson_lucy", "blur:1.5", 2.0),
        ("wiener", "motion:9,30", 1.0),
        ("wiener", "motion:15,0", 1.0),
        ("bicubic", "sr:2", 0.5),
        ("dehaze", "haze", 5.0),
        ("brighten", "lowlight", 5.0),
        ("median", "rain", 0.5),
        ("nlm", "jpeg:20", 0.1),
        ("auto", "noise:15+blur:1.5", 1.0),
    ],
)
def test_baseline_improves_psnr_on_its_degradation(clean, method, spec, min_gain):
    degraded, _ = degrade(clean, spec, seed=3)
    restorer = ClassicalRestorer(method, degradation=spec)
    out = restorer.restore(degraded)
    assert out.shape == clean.shape and out.dtype == torch.float32
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    gain = float(psnr(out, clean).mean() - psnr(degraded, clean).mean())
    assert gain > min_gain, f"{method} on {spec}: {gain:.2f} dB"


def test_auto_without_hint_denoises(clean):
    degraded, _ = degrade(clean, "noise:25", seed=0)
    out = ClassicalRestorer("auto").restore(degraded)
    assert float(psnr(out, clean).mean()) > float(psnr(degraded, clean).mean()) + 2


def test_auto_plan_undoes_steps_in_reverse_order():
    plan = plan_restoration("auto", "noise:15+blur:1.5")
    assert [op.method for op in plan] == ["wiener", "nlm"]
    assert plan[0].params["psf"] == ("gaussian", 1.5)
    assert plan[1].params["sigma"] == pytest.approx(15 / 255)
    assert plan_restoration("wiener", "motion:9,30")[0].params["psf"] == ("motion", 9.0, 30.0)


def test_errors_name_what_is_allowed():
    with pytest.raises(ValueError, match="allowed: auto, nlm"):
        ClassicalRestorer("bm3d")
    with pytest.raises(ValueError, match="unknown degradation"):
        ClassicalRestorer("auto", degradation="fog:2")
    with pytest.raises(ValueError, match="B, 3, H, W"):
        ClassicalRestorer("nlm").restore(torch.rand(1, 1, 16, 16))


def test_box_filter_is_the_mean_over_the_clipped_window():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 9, 7, generator=g)
    out = _box(x, 2)
    for i, j in ((0, 0), (4, 3), (8, 6), (1, 5)):
        window = x[0, 0, max(0, i - 2):i + 3, max(0, j - 2):j + 3]
        assert float(out[0, 0, i, j]) == pytest.approx(float(window.mean()), abs=1e-6)
    # a radius past the image is capped at half of it: the centre's window is then the whole image
    assert float(_box(x, 50)[0, 0, 4, 3]) == pytest.approx(float(x.mean()), abs=1e-6)


def test_one_haze_estimate_serves_every_strength():
    g = torch.Generator().manual_seed(1)
    x = (0.4 + 0.5 * torch.rand(2, 3, 48, 40, generator=g)).clamp(0, 1)
    estimate = estimate_haze(x)
    assert estimate.airlight.shape == (2, 3, 1, 1) and estimate.haze.shape == (2, 1, 48, 40)
    for omega, t0 in ((0.5, 0.1), (0.95, 0.4)):
        assert torch.allclose(estimate.dehaze(x, omega, t0), dark_channel_dehaze(x, omega=omega, t0=t0), atol=1e-6)
