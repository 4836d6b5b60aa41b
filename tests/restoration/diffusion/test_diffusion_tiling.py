"""Tiled diffusion: the denoiser on overlapping, blended tiles of z_t agrees with the whole-image denoiser."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from restoration.bench import bench_input
from restoration.diffusion.candidates import CandidateConfig, generate_candidates
from restoration.diffusion.guidance import GuidanceConfig
from restoration.diffusion.priors import DEFAULT_PRIOR_DIR, load_prior
from restoration.diffusion.refine import RefineConfig, reward_guided_denoise
from restoration.metrics import psnr


def _with_tiles(prior, tile, overlap, edge_pad=None):
    return dataclasses.replace(prior, tile=tile, tile_overlap=overlap,
                               edge_pad=prior.edge_pad if edge_pad is None else edge_pad)


def test_edge_pad_denoises_the_reflected_image_and_crops(prior):
    """eps with edge_pad p is the denoiser on the image reflected by p px on every side, cropped back; tiled (one
    tile) or not alike; 0 turns it off."""
    assert prior.edge_pad == 8  # pixel priors reflect their border (PIXEL_EDGE_PAD)
    z = torch.rand(2, 3, 40, 36, generator=torch.Generator().manual_seed(1)) * 2 - 1
    t = torch.tensor([50, 200])
    off = _with_tiles(prior, 0, 0, edge_pad=0)
    reflected = torch.nn.functional.pad(z, (8, 8, 8, 8), mode="reflect")
    expected = off.eps(reflected, t)[..., 8:48, 8:44]
    torch.testing.assert_close(_with_tiles(prior, 0, 0).eps(z, t), expected, atol=1e-6, rtol=0)
    assert torch.equal(_with_tiles(prior, 96, 16).eps(z, t), _with_tiles(prior, 0, 0).eps(z, t))
    assert not torch.allclose(off.eps(z, t), expected, atol=1e-3)  # the border really changes
    tiny = torch.rand(1, 3, 6, 5) * 2 - 1  # sides under the pad: replicated instead of reflected
    assert _with_tiles(prior, 0, 0).eps(tiny, t[:1]).shape == tiny.shape


def test_tiled_eps_runs_the_unet_on_tiles_and_keeps_the_shape(prior):
    z = torch.rand(2, 3, 70, 53, generator=torch.Generator().manual_seed(0)) * 2 - 1  # odd sides
    t = torch.tensor([100, 300])
    seen: list[tuple[int, ...]] = []
    tiled = _with_tiles(prior, 32, 8, edge_pad=0)  # the tile geometry of z itself
    hook = tiled.unet.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    try:
        out = tiled.eps(z, t)
    finally:
        hook.remove()
    assert out.shape == z.shape and torch.isfinite(out).all()
    # padded to 72 x 56 (the U-Net multiple, 4), then 32 px tiles with 8 px overlap: 3 x 2 tiles,
    # each pixel-unshuffled by 2 before the U-Net
    assert seen == [(2, 12, 16, 16)] * 6
    assert tiled.z_tiling() == (32, 8)
    whole = _with_tiles(prior, 0, 0, edge_pad=0).eps(z, t)
    assert not torch.equal(out, whole)  # really tiled
    assert torch.equal(_with_tiles(prior, 96, 16, edge_pad=0).eps(z, t), whole)  # one tile: the untiled computation


def test_tile_settings_are_checked(prior):
    with pytest.raises(ValueError, match="tile must be 0 \\(off\\) or > tile_overlap"):
        _with_tiles(prior, 32, 32)
    with pytest.raises(ValueError, match="tile must be 0"):
        _with_tiles(prior, -1, 0)


@pytest.mark.skipif(not (DEFAULT_PRIOR_DIR / "unet").is_dir(), reason="the shipped prior is missing")
def test_tiled_candidates_and_refinement_agree_with_untiled():
    """96 px image, 48 px tiles (16 px overlap): every pixel is near a tile border, the hardest case."""
    shipped = load_prior("default")
    x = bench_input(96)
    cfg = CandidateConfig(num_candidates=2, strengths=(0.1, 0.2), steps=2)

    def run(p):
        cands = torch.cat([c.image for c in generate_candidates(x, p, cfg)])
        refined = reward_guided_denoise(x, cands[:1], cands[1:], p, RefineConfig(  # the settings measured below
            steps=2, strength=0.2, guidance=GuidanceConfig(scale=0.01, fidelity_weight=0.3)))
        return cands, refined

    whole, whole_refined = run(_with_tiles(shipped, 0, 0))
    blended, blended_refined = run(_with_tiles(shipped, 48, 16))
    agree = psnr(blended, whole)
    # measured with the shipped prior (4 levels, its deepest at 1/16 of the image: a wide receptive field that a
    # 48 px tile cuts) and its 8 px reflected border (the 112 px it denoises has more seams): 38.5 / 35.7 dB for
    # strengths 0.1 / 0.2 and 35.5 dB after refinement (39.8 / 36.3 / 36.1 without the border); 64 px tiles give
    # 41.8 / 39.8 dB (the app's tiles are 1024 px)
    assert float(agree.min()) > 33.0 and float(agree.max()) > 38.0
    assert float(psnr(blended_refined, whole_refined)) > 33.0
    # smooth blending is what makes it agree: abutting tiles (no overlap) predict the noise worse
    # (relative error measured 0.16 with 16 px of blended overlap, 0.26 without)
    z, t = shipped.encode(x), torch.tensor([300])
    eps = _with_tiles(shipped, 0, 0).eps(z, t)
    err = {ov: float((_with_tiles(shipped, 48, ov).eps(z, t) - eps).norm() / eps.norm()) for ov in (16, 0)}
    assert err[16] < 0.8 * err[0]
