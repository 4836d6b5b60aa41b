"""Stage (i): DDIM inversion (grid and shared ladder), candidate count, seed determinism, batched == looped,
shared work, regeneration."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from restoration.diffusion.candidates import (
    CandidateConfig,
    CandidateMeta,
    generate_candidates,
    regenerate,
    sample_candidates,
)
from restoration.diffusion.inversion import (
    ddim_invert,
    ddim_ladder_invert,
    forward_noise,
    invert,
    ladder_path,
    ladder_stride,
)
from restoration.diffusion.pixel import PixelPriorConfig, build_pixel_unet, pixel_prior_from_unet
from restoration.diffusion.sampling import (
    ddim_sample,
    identical_row_groups,
    make_model_fn,
    share_identical_rows,
    timestep_grid,
)

TINY = PixelPriorConfig(block_out_channels=(16, 32), norm_num_groups=8, pixel_unshuffle=2)


@pytest.fixture(scope="module")
def restored():
    g = torch.Generator().manual_seed(3)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 9, 10, generator=g), size=(36, 40), mode="bilinear")
    return (0.2 + 0.6 * smooth).clamp(0, 1)


def test_timestep_grid_per_strength():
    grid = timestep_grid([0.1, 0.4], 4, 1000)
    assert grid.tolist() == [[100, 75, 50, 25], [400, 300, 200, 100]]
    with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
        timestep_grid([0.0], 4, 1000)


def test_ddim_inversion_then_denoising_reconstructs(prior, restored):
    # the inversion's own error: the random prior's border (edge_pad, tested in test_diffusion_tiling) left out
    prior = dataclasses.replace(prior, edge_pad=0)
    z0 = prior.encode(restored)
    model_fn = make_model_fn(prior)
    for strength, tol in ((0.1, 0.01), (0.2, 0.04)):
        grid = timestep_grid([strength], 4, prior.num_train_timesteps)
        z_t = ddim_invert(prior.eps, z0, grid, prior.alphas_cumprod)
        a = prior.alphas_cumprod[grid[0, 0]]
        assert (z_t - a.sqrt() * z0).abs().mean() > 0.01  # it really went somewhere noisy
        back = prior.decode(ddim_sample(model_fn, z_t, grid, prior.alphas_cumprod), restored.shape[-2:])
        assert (back - restored).abs().mean() < tol, strength
    # plain forward noising with eta = 0 cannot reconstruct: it is a real alternative, not a no-op
    grid = timestep_grid([0.3], 4, prior.num_train_timesteps)
    z_t = forward_noise(z0, grid, prior.alphas_cumprod, [torch.Generator().manual_seed(0)])
    back = prior.decode(ddim_sample(model_fn, z_t, grid, prior.alphas_cumprod), restored.shape[-2:])
    assert (back - restored).abs().mean() > 0.05
    with pytest.raises(ValueError, match="unknown inversion method 'sdedit'"):
        invert("sdedit", prior.eps, z0, grid, prior.alphas_cumprod)


def test_ladder_path_and_stride():
    assert ladder_stride(1000) == 50 and ladder_stride(10) == 1
    assert ladder_path(200, 50) == [50, 100, 150, 200]
    assert ladder_path(230, 50) == [50, 100, 150, 200, 230]  # off the ladder: one last partial step
    assert ladder_path(30, 50) == [30]
    with pytest.raises(ValueError, match="t0 and stride must be >= 1"):
        ladder_path(0, 50)


def _unet_samples(prior):
    """A list that fills with the batch size of every UNet call, and the hook's handle."""
    seen: list[int] = []
    return seen, prior.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))


def test_shared_ladder_equals_each_path_alone(prior, restored):
    z0 = prior.encode(restored)
    targets = [100, 230, 400, 50]  # 230 is off the ladder; 50 is the first rung
    seen, hook = _unet_samples(prior)
    try:
        shared = ddim_ladder_invert(prior.eps, z0, targets, prior.alphas_cumprod)
    finally:
        hook.remove()
    assert sorted(shared) == sorted(targets)
    # one trajectory: 8 rungs up to 400, the step to 230 rides along with the step to 250
    assert len(seen) == 8 and sum(seen) == 9
    for t0 in targets:  # each equals its own path inverted alone by the grid inverter
        path = torch.tensor(ladder_path(t0, 50)).flip(0)[None]
        alone = ddim_invert(prior.eps, z0, path, prior.alphas_cumprod)
        torch.testing.assert_close(shared[t0], alone, atol=1e-5, rtol=0)
    grid = timestep_grid([0.1, 0.4], 2, prior.num_train_timesteps)
    both = invert("ddim_ladder_inversion", prior.eps, z0, grid, prior.alphas_cumprod)
    torch.testing.assert_close(both, torch.cat([shared[100], shared[400]]), atol=1e-5, rtol=0)


def test_candidates_share_inversion_and_first_step(prior, restored):
    cfg = CandidateConfig(num_candidates=8, strengths=(0.1, 0.2, 0.3, 0.4), steps=3)
    seen, hook = _unet_samples(prior)
    try:
        cands = generate_candidates(restored, prior, cfg)
    finally:
        hook.remove()
    # 8 ladder rungs once (not 2 + 4 + 6 + 8 twice), 4 distinct first steps, then 8 rows for 2 steps
    assert seen == [1] * 8 + [4, 8, 8]
    looped = torch.cat([sample_candidates(restored, prior, [c.meta], max_batch=1) for c in cands])
    torch.testing.assert_close(torch.cat([c.image for c in cands]), looped, atol=1e-4, rtol=0)


def test_large_images_denoise_in_smaller_chunks(prior, restored, monkeypatch):
    import restoration.diffusion.candidates as candidates

    cfg = CandidateConfig(num_candidates=4, strengths=(0.1, 0.2), steps=2)
    whole = generate_candidates(restored, prior, cfg)
    monkeypatch.setattr(candidates, "MAX_CHUNK_PIXELS", 2 * 36 * 40)  # room for two images of this size
    seen, hook = _unet_samples(prior)
    try:
        chunked = generate_candidates(restored, prior, cfg)
    finally:
        hook.remove()
    # ladder to 0.2, then a chunk per strength: its two seeds share the first step, not the second
    assert seen == [1] * 4 + [1, 2, 1, 2]
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a.image, b.image, atol=1e-4, rtol=0)


def test_share_identical_rows_evaluates_each_distinct_row_once():
    calls = []

    def model_fn(z, t):
        calls.append(z.shape[0])
        return z * 2 + t.view(-1, 1, 1, 1), z - 1

    z = torch.rand(3, 2, 4, 4)
    batch = torch.cat([z[:1], z[1:2], z[:1], z[2:3], z[:1]])
    t = torch.tensor([5, 5, 5, 5, 7])  # the last row has row 0's z but another timestep
    x0, eps = share_identical_rows(model_fn)(batch, t)
    assert calls == [4]
    ref_x0, ref_eps = model_fn(batch, t)
    assert torch.equal(x0, ref_x0) and torch.equal(eps, ref_eps)
    share_identical_rows(model_fn)(z, torch.tensor([1, 2, 3]))
    assert calls[-1] == 3


def test_identical_row_groups_compare_whole_rows_not_only_the_probes():
    z = torch.rand(5, 3, 8, 8)
    z[1] = z[0]
    z[2] = z[0]
    flat_at = torch.arange(64) * 191 // 63  # the 64 probed elements of each row's 192
    z[2].view(-1)[next(i for i in range(192) if i not in flat_at.tolist())] += 1.0  # row 2 differs off the probes
    assert torch.equal(z[2].flatten()[flat_at], z[0].flatten()[flat_at]) and not torch.equal(z[2], z[0])
    z[4] = z[3]
    t = torch.tensor([9, 9, 9, 4, 5])  # row 4 repeats row 3 at another timestep
    assert identical_row_groups(z, t) == [[0, 1], [2], [3], [4]]
    assert identical_row_groups(z, torch.tensor([9, 9, 9, 4, 4])) == [[0, 1], [2], [3, 4]]
    nan = torch.full((2, 3, 8, 8), float("nan"))
    assert identical_row_groups(nan, torch.tensor([1, 1])) == [[0], [1]]  # as torch.equal: NaN is never equal


def test_identical_row_groups_at_4096_px():
    """A 4096 x 4096 RGB row has 50331648 elements, past float32's exact integers: the probes' positions once came
    from a float32 linspace whose last position rounded to 50331648, one past the end (the 4096 px round failed)."""
    big = torch.zeros(1, 3, 4096, 4096).expand(2, -1, -1, -1)  # two equal rows, one row of memory
    assert identical_row_groups(big, torch.tensor([7, 7])) == [[0, 1]]
    assert identical_row_groups(big, torch.tensor([7, 8])) == [[0], [1]]


def test_candidate_count_and_seed_determinism(prior, restored):
    cfg = CandidateConfig(num_candidates=5, steps=2, strengths=(0.1, 0.3))
    a = generate_candidates(restored, prior, cfg)
    b = generate_candidates(restored, prior, cfg)
    assert len(a) == 5 and all(c.image.shape == restored.shape for c in a)
    assert [c.meta.seed for c in a] == [0, 1, 2, 3, 4]
    assert [c.meta.strength for c in a] == [0.1, 0.3, 0.1, 0.3, 0.1]
    for x, y in zip(a, b):
        assert torch.equal(x.image, y.image)
    # same strength, different seeds -> different images (eta > 0 re-noises from the seed)
    assert (a[0].image - a[2].image).abs().mean() > 1e-3
    # another base seed changes the images
    c = generate_candidates(restored, prior, CandidateConfig(num_candidates=5, steps=2, strengths=(0.1, 0.3), seed=7))
    assert (c[0].image - a[0].image).abs().mean() > 1e-3


def test_batched_equals_looped_and_mixed_groups(prior, restored):
    metas = [CandidateMeta(seed=s, strength=st, steps=steps, method=m, eta=1.0, prior_id=prior.prior_id,
                           weights_hash=prior.weights_hash)
             for s, st, steps, m in [(0, 0.1, 2, "ddim_inversion"), (1, 0.4, 2, "ddim_inversion"),
                                     (2, 0.2, 3, "forward_noise"), (3, 0.25, 2, "ddim_inversion"),
                                     (4, 0.25, 2, "ddim_ladder_inversion"), (5, 0.4, 3, "ddim_ladder_inversion"),
                                     (6, 0.1, 2, "ddim_inversion")]]
    batched = sample_candidates(restored, prior, metas, max_batch=3)
    looped = torch.cat([sample_candidates(restored, prior, [m], max_batch=1) for m in metas])
    assert batched.shape == (7, 3, 36, 40)
    assert torch.allclose(batched, looped, atol=1e-4)


def test_regenerate_reproduces_and_checks_prior(prior, restored):
    cands = generate_candidates(restored, prior, CandidateConfig(num_candidates=4, steps=2))
    meta = CandidateMeta.from_dict(cands[2].meta.to_dict())
    assert torch.allclose(regenerate(meta, restored, prior), cands[2].image, atol=1e-4)
    other = pixel_prior_from_unet(build_pixel_unet(TINY), TINY, prior_id="pixel:other")
    with pytest.raises(ValueError, match="was made with prior 'pixel:test'"):
        regenerate(meta, restored, other)


def test_config_validation():
    with pytest.raises(ValueError, match="method must be one of"):
        CandidateConfig(method="magic")
    with pytest.raises(ValueError, match="strengths must be"):
        CandidateConfig(strengths=(0.0, 0.5))
