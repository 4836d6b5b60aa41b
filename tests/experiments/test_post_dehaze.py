"""The post-dehazing experiment (`experiments/post_dehaze`): features, training target, decision, file, commands."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.post_dehaze.evaluate import main as evaluate_main
from experiments.post_dehaze.post_dehaze import (
    PostDehazeConfig,
    PostDehazer,
    dehaze_gains,
    haze_features,
    load_post_dehazer,
)
from experiments.post_dehaze.train import main as train_main
from experiments.post_dehaze.train import sample_spec
from restoration.backbones import create_restorer
from restoration.backbones.classical import dark_channel_dehaze
from restoration.backbones.post_deconvolution import (
    PostDeconvolver,
    save_post_deconvolver,
)
from restoration.backbones.post_step import PostStep, PostStepRestorer, save_gain_step
from restoration.backbones.sipl import SIPLRestorer, save_weights
from restoration.degradations import add_haze, parse_spec
from restoration.training.post_deconvolution import PostTrainConfig, fit
from tests.restoration.backbones.test_deconv_bank import smooth_image
from tests.restoration.backbones.test_post_deconvolution import constant_decider
from tests.restoration.backbones.test_sipl import tiny_net

CFG = PostDehazeConfig()


def scene(size: int = 64, seed: int = 0) -> torch.Tensor:
    """A colourful scene with dark detail (a low dark channel, as in haze-free photos)."""
    g = torch.Generator().manual_seed(seed)
    x = smooth_image(size, seed) * (0.3 + 0.7 * torch.rand(1, 3, 1, 1, generator=g))
    return x.clamp(0, 1)


def hazed(x: torch.Tensor, beta: float = 1.5) -> torch.Tensor:
    return add_haze(x, beta, 0.9, torch.Generator().manual_seed(1))[0]


def test_features_see_haze_and_refuse_tiny_images():
    x = scene()
    f_clean = haze_features(x, x, CFG)
    f_hazy = haze_features(hazed(x), hazed(x), CFG)
    assert f_clean.shape == (1, CFG.n_features)
    cells = CFG.cells**2
    assert float(f_hazy[0, :cells].mean()) > float(f_clean[0, :cells].mean()) + 0.2  # the dark channel rises
    assert float(f_hazy[0, 2 * cells:3 * cells].mean()) < float(f_clean[0, 2 * cells:3 * cells].mean())  # contrast
    with pytest.raises(ValueError, match="at least 16 x 16"):
        haze_features(x[..., :8, :8], x[..., :8, :8], CFG)


def test_gains_reward_dehazing_a_hazed_image_more_than_a_clear_one():
    x = scene()
    g_hazy = dehaze_gains(hazed(x), x, CFG)[0]
    g_clear = dehaze_gains(x, x, CFG)[0]
    assert g_hazy.shape == (len(CFG.omegas),)
    assert float(g_hazy.max()) > 1.0  # some strength undoes much of the haze
    assert float(g_clear.max()) < 0.0  # a clear image only loses
    assert float(g_hazy[-1]) > float(g_hazy[0])  # strong haze wants a strong omega


def _decider(choice: int | None) -> PostDehazer:
    return constant_decider(PostDehazer(CFG), choice)


def test_the_step_dehazes_at_the_predicted_best_strength_or_not_at_all():
    x = scene(48)
    y = hazed(x)
    with torch.no_grad():
        applied = _decider(4)(y, y)
        kept = _decider(None)(y, y)
        small = _decider(4)(y[..., :8, :8], y[..., :8, :8])
    assert _decider(4).choose(y, y) == [CFG.omegas[4]]
    assert torch.allclose(applied, dark_channel_dehaze(y, omega=CFG.omegas[4]))
    assert torch.equal(kept, y) and torch.equal(small, y[..., :8, :8])


def test_file_round_trip_and_clear_errors(tmp_path):
    save_gain_step(_decider(2), tmp_path / "dehaze.safetensors", {"note": "test"})
    again = load_post_dehazer(tmp_path / "dehaze.safetensors")
    assert again.config == CFG
    x = scene(32)
    assert again.choose(x, x) == [CFG.omegas[2]]
    with pytest.raises(FileNotFoundError, match="experiments.post_dehaze.train"):
        load_post_dehazer(tmp_path / "missing.safetensors")
    save_post_deconvolver(PostDeconvolver(), tmp_path / "deconv.safetensors")
    with pytest.raises(ValueError, match="not a post-dehaze file"):
        load_post_dehazer(tmp_path / "deconv.safetensors")


def test_fit_learns_to_dehaze_only_where_it_pays():
    # synthetic examples: the dark-channel cells say "hazy" (omega 3 gains 3 dB) or "clear" (every omega loses)
    g = torch.Generator().manual_seed(0)
    hazy = torch.rand(400, generator=g) < 0.5
    features = torch.randn(400, CFG.n_features, generator=g) * 0.1
    features[:, :CFG.cells**2] += hazy.float()[:, None] * 0.3
    gains = torch.full((400, len(CFG.omegas)), -2.0)
    gains[hazy, 3] = 3.0
    model, report = fit(features, gains, PostTrainConfig(steps=300), CFG, step=PostDehazer)
    assert isinstance(model, PostDehazer)
    assert report["held_out_gain_db"] > 0.8 * report["held_out_best_gain_db"] > 0
    assert 0.3 < report["held_out_applied_share"] < 0.7


def test_sample_specs_haze_about_the_asked_share():
    rng = random.Random(0)
    specs = [sample_spec(rng, 0.5) for _ in range(400)]
    with_haze = [s for s in specs if any(step.name == "haze" for step in parse_spec(s))]
    assert 170 < len(with_haze) < 260  # the other half's mixture draws haze now and then too


def test_training_command_writes_a_file_the_restorer_loads(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        arr = (scene(64, seed=i)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(arr).save(photos / f"p{i}.png")
    net_path = tmp_path / "tiny.safetensors"
    save_weights(tiny_net(), net_path)
    out = tmp_path / "dehaze.safetensors"
    cache = tmp_path / "cache.pt"
    args = ["--images", str(photos), "--backbone", str(net_path), "--samples", "16", "--crop", "32", "--batch", "8",
            "--steps", "20", "--out", str(out), "--samples-cache", str(cache)]
    assert train_main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["examples"] == 16 and out.is_file() and cache.is_file()
    assert train_main(args) == 0  # the second run reuses the cached restorations
    assert json.loads(capsys.readouterr().out) == report
    restorer = PostStepRestorer(create_restorer(str(net_path)), PostStep.from_file(out, PostDehazer))
    assert restorer.describe()["post_dehaze"] == "dehaze.safetensors"
    assert len(restorer.describe()["post_dehaze_hash"]) == 64
    x = torch.rand(1, 3, 32, 32)
    assert restorer.restore(x).shape == x.shape and restorer.restore_single_pass(x).shape == x.shape
    with pytest.raises(SystemExit):
        train_main([*args[:-2], "--haze-share", "1.5"])
    assert "--haze-share must be in [0, 1]" in capsys.readouterr().err
    evaluate = ["--backbone", str(net_path), "--degradation", "haze", "--images", str(photos), "--size", "32",
                "--limit", "1", "--json"]
    assert evaluate_main(["--post-dehaze", str(out), *evaluate]) == 0
    assert json.loads(capsys.readouterr().out)["restorer"]["post_dehaze"] == "dehaze.safetensors"
    assert evaluate_main(["--post-dehaze", str(tmp_path / "missing.safetensors"), *evaluate]) == 2
    assert "experiments.post_dehaze.train" in capsys.readouterr().err


def test_a_restorer_with_the_step_dehazes_its_output(tmp_path):
    net = tiny_net()
    x = scene(32)
    plain = SIPLRestorer(net)
    stepped = PostStepRestorer(plain, PostStep(_decider(1), "d", "0" * 64))
    expected = dark_channel_dehaze(plain.restore(x), omega=CFG.omegas[1])
    assert torch.allclose(stepped.restore(x), expected, atol=1e-6)
    assert stepped.describe()["post_dehaze"] == "d"
