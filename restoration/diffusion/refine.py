"""TTPO stage (iii): reward-guided denoising of the restored image towards the preferred candidates.

The restored image is inverted to `strength` (deterministic DDIM by default) and denoised back with
DDIM, the model wrapped by `guidance.make_guided_model_fn`. Preferred / rejected images are encoded
into the prior's z space once and compared there (pixels in [-1, 1] for pixel priors, latents for
latent priors, which avoids a VAE decode per step).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from restoration.diffusion.guidance import GuidanceConfig, make_guided_model_fn
from restoration.diffusion.inversion import INVERSION_METHODS, invert
from restoration.diffusion.priors import DiffusionPrior
from restoration.diffusion.sampling import ddim_sample, make_model_fn, timestep_grid


@dataclass(frozen=True)
class RefineConfig:
    """strength in (0, 1]: how far (t = strength * T) the restored image is inverted; steps: DDIM steps
    (the same number inverts and denoises); eta / seed: optional stochastic denoising; guidance: see
    GuidanceConfig. guided=False gives the unguided baseline with everything else equal.
    """

    strength: float = 0.05  # with GuidanceConfig's scale / fidelity: tuned by scripts/tune_refine.py
    steps: int = 8
    method: str = "ddim_inversion"
    eta: float = 0.0
    seed: int = 0
    guided: bool = True
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)

    def __post_init__(self) -> None:
        if not 0 < self.strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.method not in INVERSION_METHODS:
            raise ValueError(f"method must be one of {INVERSION_METHODS}, got {self.method!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(name: str, x: torch.Tensor | None, size: tuple[int, int]) -> None:
    if x is None:
        return
    if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != size:
        raise ValueError(f"{name} must be (N, 3, {size[0]}, {size[1]}) like the restored image, got {tuple(x.shape)}")


@torch.no_grad()
def reward_guided_denoise(
    restored: torch.Tensor,
    preferred: torch.Tensor | None,
    rejected: torch.Tensor | None,
    prior: DiffusionPrior,
    config: RefineConfig = RefineConfig(),
) -> torch.Tensor:
    """restored (1, 3, H, W) in [0, 1]; preferred (P, 3, H, W), rejected (R, 3, H, W) or None
    -> refined (1, 3, H, W) in [0, 1].

    Tie / nothing rejected: see guidance's module docstring (preferred-only pull, or fidelity only).
    """
    if restored.ndim != 4 or restored.shape[:2] != (1, 3):
        raise ValueError(f"restored must be (1, 3, H, W), got {tuple(restored.shape)}")
    size = tuple(restored.shape[-2:])
    _check("preferred", preferred, size)
    _check("rejected", rejected, size)
    z0 = prior.encode(restored)
    z_pref = prior.encode(preferred) if preferred is not None and preferred.shape[0] else None
    z_rej = prior.encode(rejected) if rejected is not None and rejected.shape[0] else None
    grid = timestep_grid([config.strength], config.steps, prior.num_train_timesteps)
    gens = [torch.Generator().manual_seed(int(config.seed))]
    z_t = invert(config.method, prior.eps, z0, grid, prior.alphas_cumprod, gens)
    model_fn = make_model_fn(prior)
    if config.guided:
        model_fn = make_guided_model_fn(model_fn, prior.alphas_cumprod, z0, z_pref, z_rej, config.guidance)
    z = ddim_sample(model_fn, z_t, grid, prior.alphas_cumprod, eta=config.eta, generators=gens)
    return prior.decode(z, size)
