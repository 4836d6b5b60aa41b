"""SIPL network, self-refinement, weight files, training steps, and the shipped weights."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from restoration.backbones.sipl import SIPLRestorer, load_network, save_weights
from restoration.backbones.sipl_net import SIPLConfig, SIPLNet, self_refine
from restoration.degradations import degrade
from restoration.metrics import psnr
from restoration.training.data import CropConfig, CropSampler
from restoration.training.sipl import TrainConfig, training_loss

TINY = SIPLConfig(dim=8, num_blocks=(1, 1, 1, 1), heads=(1, 2, 2, 4), prompt_len=2, prompt_size=4,
                  dictionary_tokens=4)
ASSETS = Path(__file__).resolve().parents[3] / "assets"


def tiny_net(proxy_fusion: bool = True, seed: int = 0) -> SIPLNet:
    torch.manual_seed(seed)
    net = SIPLNet(SIPLConfig(**{**TINY.to_dict(), "proxy_fusion": proxy_fusion})).eval()
    if proxy_fusion:  # a trained dictionary is non-zero; make the test see the privileged path
        for pf in net.proxy_fusion:
            torch.nn.init.normal_(pf.privileged_dictionary, std=0.5)
    return net


@pytest.mark.parametrize("size", [(32, 32), (37, 45), (64, 24)])
def test_restorer_any_size_and_range(size):
    r = SIPLRestorer(tiny_net(), rounds=1)
    x = torch.rand(2, 3, *size)
    y = r.restore(x)
    assert y.shape == x.shape
    assert y.min() >= 0 and y.max() <= 1
    assert not y.requires_grad


def test_privileged_features_change_the_output():
    net = tiny_net()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        plain = net(x)
        priv = net(x, net.privileged_features(torch.rand(1, 3, 32, 32)))
    assert (plain - priv).abs().max() > 1e-4


def test_self_refine_rounds():
    net = tiny_net()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        single = net(x)
        r0 = self_refine(net, x, 0)
        r1 = self_refine(net, x, 1)
        y0 = net(x)
        manual = net(x, net.privileged_features(y0.clamp(0, 1)))
    torch.testing.assert_close(r0, single)
    torch.testing.assert_close(r1, manual)
    assert (r1 - r0).abs().max() > 1e-5


def test_ablation_has_no_proxy_fusion_and_ignores_rounds():
    net = tiny_net(proxy_fusion=False)
    assert net.proxy_fusion is None
    r = SIPLRestorer(net, rounds=2)
    assert r.rounds == 0
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(r.restore(x), r.restore_single_pass(x))
    n_sipl = sum(p.numel() for p in tiny_net().parameters())
    assert sum(p.numel() for p in net.parameters()) < n_sipl


def test_save_load_roundtrip(tmp_path):
    net = tiny_net()
    path = tmp_path / "w.safetensors"
    save_weights(net, path, {"steps": 3})
    loaded = load_network(path)
    assert loaded.config == net.config
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), atol=5e-2, rtol=0)  # float16 storage
    r = SIPLRestorer.from_file(path)
    assert r.weights_hash and len(r.weights_hash) == 64
    assert r.describe()["training"] == {"steps": 3}


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="SIPL weights not found"):
        load_network(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match="not a SIPL weights file"):
        load_network(other)
    with pytest.raises(ValueError, match="rounds must be"):
        SIPLRestorer(tiny_net(), rounds=9)
    with pytest.raises(ValueError, match="unknown SIPLConfig keys"):
        SIPLConfig.from_dict({"dim": 8, "bogus": 1})


def test_files_of_retired_variants_load_when_the_variant_is_off():
    old = {**TINY.to_dict(), "wide_level1": False, "deconv_bank": [], "affine_output": False}
    assert SIPLConfig.from_dict(old) == TINY
    for key, on in (("wide_level1", True), ("deconv_bank", [1.0, 2.0]), ("affine_output", True)):
        with pytest.raises(ValueError, match=f"{key}.*never shipped"):
            SIPLConfig.from_dict({**TINY.to_dict(), key: on})


def test_tiled_equals_untiled_when_one_tile():
    r_tiled = SIPLRestorer(tiny_net(), rounds=1, tile=64)
    x = torch.rand(1, 3, 64, 56)
    with torch.no_grad():
        direct = self_refine(r_tiled.net, x, 1).clamp(0, 1)
    torch.testing.assert_close(r_tiled.restore(x), direct, atol=1e-6, rtol=0)


def test_tiled_large_image_runs_without_seams():
    r = SIPLRestorer(tiny_net(), rounds=0, tile=64)
    x = torch.rand(1, 3, 150, 130)
    y = r.restore(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.parametrize("proxy_fusion", [True, False])
def test_a_few_training_steps_lower_the_loss(proxy_fusion):
    torch.manual_seed(0)
    net = SIPLNet(SIPLConfig(**{**TINY.to_dict(), "proxy_fusion": proxy_fusion})).train()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    sampler = CropSampler([torch.randint(0, 256, (3, 80, 80), dtype=torch.uint8).sort(dim=-1).values],
                          CropConfig(crop=32, short_sides=(80,)))
    clean = sampler.sample(4, random.Random(0))
    noisy, _ = degrade(clean, "noise:25", seed=1)
    with torch.no_grad():
        first = training_loss(net, noisy, clean, TrainConfig().aux).item()
    for _ in range(15):
        loss = training_loss(net, noisy, clean, TrainConfig().aux)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = training_loss(net, noisy, clean, TrainConfig().aux).item()
    assert last < 0.85 * first


@pytest.mark.skipif(not (ASSETS / "sipl.safetensors").exists(), reason="shipped weights not trained yet")
def test_shipped_weights_denoise():
    import skimage.data

    from restoration.backbones import create_restorer

    img = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)[None].float() / 255
    clean = F.interpolate(img, size=(256, 256), mode="bicubic", antialias=True).clamp(0, 1)
    noisy, _ = degrade(clean, "noise:25", seed=0)
    restored = create_restorer("sipl").restore(noisy)
    assert psnr(restored, clean) > psnr(noisy, clean) + 3.0


def test_reexposed_crops_keep_their_look_as_the_target():
    """darken_some / fade_some change a share of the clean crops, which then are the targets as well."""
    from restoration.training.sipl import darken_some, fade_some

    clean = torch.rand(200, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fade_some(clean, random.Random(0), 0.0), clean)
    faded = fade_some(clean, random.Random(0), 0.5)
    changed = [i for i in range(200) if not torch.equal(faded[i], clean[i])]
    assert 70 < len(changed) < 130  # about half
    for i in changed:  # brighter on average, less contrast, still in [0, 1]
        assert faded[i].std() < 0.9 * clean[i].std() and faded[i].min() >= clean[i].min() - 1e-6
    assert faded.max() <= 1 and faded.min() >= 0
    dark = darken_some(clean, random.Random(1), 1.0)
    assert (dark <= clean + 1e-7).all() and dark.mean() < 0.7 * clean.mean()
