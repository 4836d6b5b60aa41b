"""The blind post-deconvolution step: its features, its training target, its decision, its file, its wiring."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from restoration.backbones import create_restorer
from restoration.backbones.deconv_bank import deconvolve_bank
from restoration.backbones.post_deconvolution import (
    FINE_GRID,
    PostDeconvolutionConfig,
    PostDeconvolver,
    load_post_deconvolver,
    psnr_gains,
    radial_log_power,
    save_post_deconvolver,
    spectrum_features,
)
from restoration.backbones.post_step import GainStep, PostStep, PostStepRestorer
from restoration.backbones.sipl import SIPLRestorer, save_weights
from restoration.degradations import gaussian_blur
from restoration.metrics import psnr
from restoration.training.post_deconvolution import PostTrainConfig, fit, sample_spec
from restoration.training.post_deconvolution import main as train_main
from tests.restoration.backbones.test_deconv_bank import smooth_image
from tests.restoration.backbones.test_sipl import tiny_net

CFG = PostDeconvolutionConfig()


def textured(size: int = 64, seed: int = 0) -> torch.Tensor:
    """Blobs plus fine random texture: an image with power at every frequency."""
    g = torch.Generator().manual_seed(seed)
    return (0.7 * smooth_image(size, seed) + 0.3 * torch.rand(1, 3, size, size, generator=g)).clamp(0, 1)


def test_blur_lowers_the_high_bands_and_contrast_cancels():
    x = textured()
    sharp = radial_log_power(x, CFG.bands, CFG.low, CFG.high)
    blurred = radial_log_power(gaussian_blur(x, 1.5), CFG.bands, CFG.low, CFG.high)
    assert sharp.shape == (1, CFG.bands)
    assert float(blurred[0, -6:].mean()) < float(sharp[0, -6:].mean()) - 3  # e-fold drops at the top bands
    rescaled = radial_log_power(0.5 * x + 0.2, CFG.bands, CFG.low, CFG.high)
    assert torch.allclose(rescaled, sharp, atol=1e-3)
    assert spectrum_features(x, x, CFG).shape == (1, 2 * CFG.bands)
    with pytest.raises(ValueError, match="at least 16 x 16"):
        spectrum_features(x[..., :8, :8], x[..., :8, :8], CFG)


def test_gains_favour_the_filter_near_the_true_blur_and_are_zero_for_identity():
    clean = textured()
    gains = psnr_gains(gaussian_blur(clean, 1.3), clean, CFG)[0]
    assert gains.shape == (len(CFG.sigmas),)
    best = CFG.sigmas[int(gains.argmax())]
    assert best == 1.3 and float(gains.max()) > 0.5  # the matching filter wins
    assert float(psnr_gains(clean, clean, CFG).max()) < 0  # a sharp image only loses by deconvolution


def constant_decider(model: GainStep, choice: int | None) -> GainStep:
    """`model` with a predictor that ignores its input: gain 1 dB for option `choice`, -1 dB for the others (none:
    every gain -1 dB)."""
    with torch.no_grad():
        for p in model.predictor.parameters():
            p.zero_()
        bias = torch.full((model.predictor[-1].out_features,), -1.0)
        if choice is not None:
            bias[choice] = 1.0
        model.predictor[-1].bias.copy_(bias)
    return model.eval()


def _decider(choice: int | None, config: PostDeconvolutionConfig = CFG) -> PostDeconvolver:
    return constant_decider(PostDeconvolver(config), choice)


def test_the_step_applies_the_predicted_best_filter_or_nothing():
    x = textured(48)
    y = gaussian_blur(x, 1.3)
    with torch.no_grad():
        applied = _decider(3)(x, y)
        kept = _decider(None)(x, y)
    assert _decider(3).choose(x, y) == [(CFG.sigmas[3], CFG.balances[0])]
    assert torch.allclose(applied, deconvolve_bank(y, (CFG.sigmas[3],), CFG.balances[0])[:, 0].clamp(0, 1))
    assert torch.equal(kept, y)


def test_a_grid_of_two_balances_orders_its_options_balance_outer():
    x = textured(48)
    y = gaussian_blur(x, 1.3)
    fine = FINE_GRID
    assert len(fine.options) == len(fine.sigmas) * 2 and fine.options[len(fine.sigmas)] == (fine.sigmas[0], 0.003)
    gains = psnr_gains(y, x, fine)
    assert gains.shape == (1, len(fine.options))
    index = len(fine.sigmas) + 4  # sigma 1.4 at balance 0.003
    with torch.no_grad():
        out = _decider(index, fine)(x, y)
    assert torch.allclose(out, deconvolve_bank(y, (1.4,), 0.003)[:, 0].clamp(0, 1))
    base = float(psnr(y, x))
    assert float(gains[0, index]) == pytest.approx(float(psnr(out, x)) - base, abs=1e-4)


def test_first_version_files_read_one_balance():
    old = {k: v for k, v in CFG.to_dict().items() if k != "balances"} | {"balance": 0.003}
    assert PostDeconvolutionConfig.from_dict(old) == CFG


def test_file_round_trip_and_clear_errors(tmp_path):
    model = _decider(2)
    save_post_deconvolver(model, tmp_path / "post.safetensors", {"note": "test"})
    again = load_post_deconvolver(tmp_path / "post.safetensors")
    assert again.config == CFG
    x = textured(32)
    assert again.choose(x, x) == [CFG.options[2]]
    with pytest.raises(FileNotFoundError, match="restoration.training.post_deconvolution"):
        load_post_deconvolver(tmp_path / "missing.safetensors")
    save_weights(tiny_net(), tmp_path / "net.safetensors")
    with pytest.raises(ValueError, match="not a post-deconvolution file"):
        load_post_deconvolver(tmp_path / "net.safetensors")


def test_fit_learns_to_apply_only_where_it_pays():
    # synthetic examples: feature 0 says "blurred" (filter 2 gains 2 dB) or "sharp" (every filter loses 1 dB)
    g = torch.Generator().manual_seed(0)
    blurred = torch.rand(200, generator=g) < 0.5
    features = torch.randn(200, 2 * CFG.bands, generator=g) * 0.1
    features[:, 0] += blurred.float() * 2
    gains = torch.full((200, len(CFG.sigmas)), -1.0)
    gains[blurred, 2] = 2.0
    model, report = fit(features, gains, PostTrainConfig(steps=300), CFG)
    assert report["held_out_gain_db"] > 0.8 * report["held_out_best_gain_db"] > 0
    assert 0.3 < report["held_out_applied_share"] < 0.7
    with pytest.raises(ValueError, match="at least 10 examples"):
        fit(features[:5], gains[:5], PostTrainConfig(steps=1), CFG)


def test_sample_specs_blur_about_the_asked_share():
    import random
    rng = random.Random(0)
    specs = [sample_spec(rng, 0.5) for _ in range(400)]
    blurred = [s for s in specs if s.startswith("blur:")]
    assert 150 < len(blurred) < 250 and any("+noise:" in s for s in blurred)


def test_training_command_writes_a_file_the_restorer_loads(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        arr = (textured(64, seed=i)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(arr).save(photos / f"p{i}.png")
    net_path = tmp_path / "tiny.safetensors"
    save_weights(tiny_net(), net_path)
    out = tmp_path / "post.safetensors"
    args = ["--images", str(photos), "--backbone", str(net_path), "--samples", "16", "--crop", "32", "--batch", "8",
            "--steps", "20", "--out", str(out), "--samples-cache", str(tmp_path / "cache.pt")]
    assert train_main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["examples"] == 16 and out.is_file() and (tmp_path / "cache.pt").is_file()
    restorer = create_restorer(str(net_path), post=PostStep.from_file(out, PostDeconvolver))
    assert isinstance(restorer, PostStepRestorer) and isinstance(restorer.inner, SIPLRestorer)
    assert restorer.describe()["post_deconvolution"] == "post.safetensors"
    x = torch.rand(1, 3, 32, 32)
    assert restorer.restore(x).shape == x.shape and restorer.restore_single_pass(x).shape == x.shape
    with pytest.raises(SystemExit):
        train_main([*args[:-2], "--out", str(tmp_path / "post.bin")])
    assert "--out must be a .safetensors file" in capsys.readouterr().err


def test_registry_wiring(tmp_path):
    shipped = create_restorer("sipl")
    assert isinstance(shipped, PostStepRestorer)
    assert shipped.describe()["post_deconvolution"] == "sipl_post_deconvolution.safetensors"
    assert len(shipped.describe()["post_deconvolution_hash"]) == 64  # lineage records which step ran
    assert isinstance(create_restorer("sipl_ablation"), PostStepRestorer)
    none = create_restorer("sipl", post=None)
    assert isinstance(none, SIPLRestorer) and none.describe()["post_deconvolution_hash"] is None
    save_weights(tiny_net(), tmp_path / "tiny.safetensors")
    assert isinstance(create_restorer(str(tmp_path / "tiny.safetensors")), SIPLRestorer)  # trained for another net
    from restoration.backbones.registry import SIPL_POST_DECONVOLUTION

    step = PostStep.from_file(SIPL_POST_DECONVOLUTION["sipl"], PostDeconvolver)
    assert step == shipped.step and hash(step) == hash(shipped.step)  # equal files: equal keys of the shared cache
    with pytest.raises(TypeError, match="post must be a post_step.PostStep or None"):
        create_restorer("sipl", post="sipl_post_deconvolution.safetensors")
    with pytest.raises(ValueError, match="do not take option.*post"):
        create_restorer("nlm", post=step)
    with pytest.raises(FileNotFoundError, match="restoration.training.post_deconvolution"):
        PostStep.from_file(tmp_path / "missing.safetensors", PostDeconvolver)


def test_restorer_applies_the_step_after_the_network(tmp_path):
    net = tiny_net()
    x = textured(32)
    plain = SIPLRestorer(net)
    stepped = PostStepRestorer(plain, PostStep(_decider(1), "p", "0" * 64))
    assert stepped.describe()["post_deconvolution"] == "p" and callable(stepped.restore_single_pass)
    expected = deconvolve_bank(plain.restore(x), (CFG.sigmas[1],), CFG.balances[0])[:, 0].clamp(0, 1)
    assert torch.allclose(stepped.restore(x), expected, atol=1e-6)
    small = torch.rand(1, 3, 8, 8)
    assert torch.equal(stepped.restore(small), plain.restore(small))  # too small to judge: left alone
