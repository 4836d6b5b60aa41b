"""Stage (iii): the losses, the published schedule, and guidance moving x0_hat toward preferred."""
from __future__ import annotations

import pytest
import torch

from restoration.diffusion.guidance import (
    GuidanceConfig,
    fidelity_loss,
    gaussian_lowpass,
    high_pass,
    make_guided_model_fn,
    preference_loss,
    ttpo_schedule,
)
from restoration.diffusion.refine import RefineConfig, reward_guided_denoise
from restoration.diffusion.sampling import make_model_fn


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 32, 32, generator=g) * 0.5 + 0.25
    pref = (x + 0.2 * torch.randn(1, 3, 32, 32, generator=g)).clamp(0, 1)
    rej = (x + 0.2 * torch.randn(1, 3, 32, 32, generator=g)).clamp(0, 1)
    return x, pref, rej


def _hp_dist(a, b, cutoff=0.1):
    return float((high_pass(a, cutoff) - high_pass(b, cutoff)).abs().mean())


def test_bands_split_the_image():
    x = torch.rand(2, 3, 17, 24, generator=torch.Generator().manual_seed(0))
    low = gaussian_lowpass(x, 0.1)
    assert torch.allclose(low + high_pass(x, 0.1), x, atol=1e-5)
    assert torch.allclose(low.mean((-2, -1)), x.mean((-2, -1)), atol=1e-5)  # DC passes the low band
    assert low.std() < x.std()  # and the low band is smoother


def test_preference_loss_prefers_preferred_and_averages_pairs(images):
    _, pref, rej = images
    near_pref, near_rej = 0.9 * pref + 0.1 * rej, 0.1 * pref + 0.9 * rej
    both = torch.cat([near_pref, near_rej])
    loss = preference_loss(both * 2 - 1, pref * 2 - 1, rej * 2 - 1, 0.1)
    assert loss.shape == (2,) and loss[0] < loss[1]
    # two identical preferred images: averaging over pairs gives the same loss
    loss2 = preference_loss(both, torch.cat([pref, pref]), rej, 0.1)
    assert torch.allclose(loss2, preference_loss(both, pref, rej, 0.1))
    # no rejected: a preferred-only pull, zero at the preferred image
    assert float(preference_loss(pref, pref, None, 0.1)) == pytest.approx(0.0, abs=1e-6)


def test_schedule_matches_published_bands():
    w_pref, w_fid, full = ttpo_schedule(torch.tensor([900, 701, 700, 101, 100, 0]), 1000)
    assert w_pref.tolist() == [0.0, 0.0, 0.5, 0.5, 0.5, 0.5]
    assert w_fid.tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert full.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    x, ref = torch.ones(2, 1, 8, 8), torch.zeros(2, 1, 8, 8)
    assert fidelity_loss(x, ref, 0.1, torch.tensor([1.0, 0.0])).tolist() == pytest.approx([32.0, 32.0], rel=1e-4)


@pytest.mark.parametrize("backprop", [False, True])
def test_guidance_moves_toward_preferred_and_away_from_rejected(prior, images, backprop):
    x, pref, rej = images
    cfg = RefineConfig(steps=4, guidance=GuidanceConfig(scale=0.05, backprop=backprop))
    plain = reward_guided_denoise(x, pref, rej, prior, RefineConfig(steps=4, guided=False))
    guided = reward_guided_denoise(x, pref, rej, prior, cfg)
    assert _hp_dist(guided, pref) < _hp_dist(plain, pref) - 0.01
    assert _hp_dist(guided, rej) > _hp_dist(plain, rej) + 0.01
    # swapping the roles swaps the direction
    swapped = reward_guided_denoise(x, rej, pref, prior, cfg)
    assert _hp_dist(swapped, rej) < _hp_dist(plain, rej) - 0.01


def test_no_rejected_pulls_and_tie_is_fidelity_only(prior, images):
    x, pref, _ = images
    plain = reward_guided_denoise(x, None, None, prior, RefineConfig(steps=4, strength=0.35, guided=False))
    pull = reward_guided_denoise(x, pref, None, prior, RefineConfig(steps=4, strength=0.35, guidance=GuidanceConfig(scale=0.05)))
    assert _hp_dist(pull, pref) < _hp_dist(plain, pref) - 0.01
    tie = reward_guided_denoise(x, None, None, prior, RefineConfig(steps=4, strength=0.35))
    assert (tie - x).abs().mean() <= (plain - x).abs().mean() + 1e-6  # fidelity can only pull back


def test_wrapper_only_changes_x0(prior, images):
    x, pref, rej = images
    z = prior.encode(x)
    t = torch.tensor([300])
    base = make_model_fn(prior)
    guided = make_guided_model_fn(base, prior.alphas_cumprod, z, pref * 2 - 1, rej * 2 - 1, GuidanceConfig())
    (x0, eps), (gx0, geps) = base(z, t), guided(z, t)
    assert torch.equal(eps, geps) and (gx0 - x0).abs().mean() > 1e-3


def test_config_validation():
    with pytest.raises(ValueError, match="cutoff must be in"):
        GuidanceConfig(cutoff=0.0)
    with pytest.raises(ValueError, match="strength must be in"):
        RefineConfig(strength=1.5)
    with pytest.raises(ValueError, match="preferred must be"):
        reward_guided_denoise(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 4, 4), None, None)
