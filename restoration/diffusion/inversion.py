"""Take a clean z0 to a noisy z_t: deterministic DDIM inversion, or plain seeded forward noising."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from restoration.diffusion.sampling import alphas_at, per_sample_noise

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: the ways an image can be taken to a noise level (recorded in every candidate's metadata).
INVERSION_METHODS = ("ddim_inversion", "forward_noise")


@torch.no_grad()
def ddim_invert(eps_fn: EpsFn, z0: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM inversion (eq. 12 with eta = 0, run backwards) of z0 (B, C, h, w).

    Walks the (B, S) grid from the clean end up to timesteps[:, 0]; eps at the next (higher) timestep
    is approximated by eps_fn(z_current, t_next), the usual inversion approximation.
    """
    z = z0
    for k in reversed(range(timesteps.shape[1])):
        t_next = timesteps[:, k].to(z.device)
        a_cur = alphas_at(alphas_cumprod, timesteps, k + 1)
        a_next = alphas_at(alphas_cumprod, timesteps, k)
        eps = eps_fn(z, t_next)
        x0 = (z - (1 - a_cur).sqrt() * eps) / a_cur.sqrt()
        z = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    return z


def forward_noise(
    z0: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, generators: Sequence[torch.Generator]
) -> torch.Tensor:
    """q(z_t | z0) = N(sqrt(a_t) z0, (1 - a_t) I) at timesteps[:, 0], noise from per-sample generators."""
    a = alphas_at(alphas_cumprod, timesteps, 0)
    return a.sqrt() * z0 + (1 - a).sqrt() * per_sample_noise(z0.shape, generators, z0.device)


def invert(
    method: str,
    eps_fn: EpsFn,
    z0: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    generators: Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """Dispatch on `method` (one of INVERSION_METHODS)."""
    if method == "ddim_inversion":
        return ddim_invert(eps_fn, z0, timesteps, alphas_cumprod)
    if method == "forward_noise":
        if generators is None:
            raise ValueError("forward_noise needs one torch.Generator per sample")
        return forward_noise(z0, timesteps, alphas_cumprod, generators)
    raise ValueError(f"unknown inversion method {method!r}; allowed: {', '.join(INVERSION_METHODS)}")
