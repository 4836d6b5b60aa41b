"""The naive reference the benchmark compares with: one candidate at a time through diffusers' stock DDIM
schedulers on the prior's U-Net, re-spaced to the same timesteps (`restoration.bench` times it beside the batched
sampler and reports the largest difference)."""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from restoration.diffusion.candidates import CandidateMeta
from restoration.diffusion.inversion import ladder_path, ladder_stride
from restoration.diffusion.priors import DiffusionPrior
from restoration.diffusion.sampling import start_timestep, timestep_grid


def respaced_betas(alphas_cumprod: torch.Tensor, timesteps_ascending: torch.Tensor) -> torch.Tensor:
    """betas (S,) float64 whose cumulative product of (1 - beta) is alpha_bar at each timestep, ascending."""
    a = alphas_cumprod.detach().double().cpu()[timesteps_ascending.cpu()]
    prev = torch.cat([a.new_ones(1), a[:-1]])
    return 1.0 - a / prev


def stock_unet(prior: DiffusionPrior) -> torch.nn.Module:
    """The prior's U-Net as diffusers loads it: same weights, float32, contiguous memory format."""
    unet = copy.deepcopy(prior.unet).float()
    return unet.to(memory_format=torch.contiguous_format)


def unet_eps(prior: DiffusionPrior, z_t: torch.Tensor, t: int, unet: torch.nn.Module | None = None) -> torch.Tensor:
    """The raw output of `unet` (default: the prior's) for one sample z_t (1, C, h, w) at integer timestep t
    (an unbatched call, no autocast)."""
    unet = unet if unet is not None else prior.unet
    _, c, h0, w0 = z_t.shape
    e = prior.edge_pad  # the border reflected as `DiffusionPrior.eps` does
    if e:
        z_t = F.pad(z_t, (e, e, e, e), mode="reflect" if e < min(h0, w0) else "replicate")
    h, w = z_t.shape[-2:]
    r = prior.pixel_unshuffle
    multiple = r * 2 ** max(len(getattr(prior.unet.config, "block_out_channels", (1,))) - 1, 0)
    ph, pw = (-h) % multiple, (-w) % multiple
    x = F.pad(z_t, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate") if ph or pw else z_t
    if r > 1:
        x = F.pixel_unshuffle(x, r)
    t_in = torch.tensor([t], device=z_t.device, dtype=torch.long)
    if prior.kind == "latent":
        out = unet(x, t_in, encoder_hidden_states=prior.prompt_embeds).sample
    else:
        out = unet(x, t_in).sample
    if r > 1:
        out = F.pixel_shuffle(out, r)
    return out[:, :c, e : e + h0, e : e + w0].float()


def _respaced(prior: DiffusionPrior, timesteps_ascending: list[int]) -> dict[str, Any]:
    """Scheduler arguments whose index j has alpha_bar of timesteps_ascending[j]."""
    betas = respaced_betas(prior.alphas_cumprod, torch.tensor(timesteps_ascending)).numpy()
    return {"num_train_timesteps": len(timesteps_ascending), "trained_betas": betas, "set_alpha_to_one": True,
            "prediction_type": prior.prediction_type, "timestep_spacing": "leading", "steps_offset": 0}


def naive_candidate(restored: torch.Tensor, prior: DiffusionPrior, meta: CandidateMeta,
                    unet: torch.nn.Module | None = None) -> torch.Tensor:
    """One candidate (1, 3, H, W) in [0, 1] from restored (1, 3, H, W): diffusers DDIM(Inverse)Scheduler loop
    calling `unet` (default: the prior's)."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    T = prior.num_train_timesteps
    t_of = timestep_grid([meta.strength], meta.steps, T)[0].flip(0).tolist()  # scheduler index j -> timestep
    scheduler = DDIMScheduler(clip_sample=prior.clip_x0, **_respaced(prior, t_of))
    scheduler.set_timesteps(len(t_of))
    gen = torch.Generator().manual_seed(int(meta.seed))
    z = prior.encode(restored)
    if meta.method in ("ddim_inversion", "ddim_ladder_inversion"):
        path = t_of if meta.method == "ddim_inversion" else ladder_path(start_timestep(meta.strength, T),
                                                                        ladder_stride(T))
        inverse = DDIMInverseScheduler(clip_sample=False, **_respaced(prior, path))
        inverse.set_timesteps(len(path))
        for j in inverse.timesteps:
            z = inverse.step(unet_eps(prior, z, path[int(j)], unet), j, z).prev_sample
    elif meta.method == "forward_noise":
        noise = torch.randn(tuple(z.shape[1:]), generator=gen)[None].to(z.device)
        z = scheduler.add_noise(z, noise, torch.tensor([len(t_of) - 1]))
    else:
        raise ValueError(f"naive reference has no inversion method {meta.method!r}")
    for j in scheduler.timesteps:
        noise = torch.randn(tuple(z.shape[1:]), generator=gen)[None].to(z.device) if meta.eta > 0 else None
        z = scheduler.step(unet_eps(prior, z, t_of[int(j)], unet), j, z, eta=meta.eta,
                           use_clipped_model_output=True, variance_noise=noise).prev_sample
    return prior.decode(z, tuple(restored.shape[-2:]))


def naive_candidates(restored: torch.Tensor, prior: DiffusionPrior, metas: Sequence[CandidateMeta],
                     unet: torch.nn.Module | None = None) -> torch.Tensor:
    """(N, 3, H, W): a Python loop over candidates, each its own unbatched scheduler loop."""
    return torch.cat([naive_candidate(restored, prior, m, unet) for m in metas])
