"""Take a clean z0 to a noisy z_t: deterministic DDIM inversion (on a per-sample grid or on the shared
ladder), or plain seeded forward noising.

"ddim_ladder_inversion" climbs one fixed ladder of timesteps, rungs `ladder_stride(T)` = T/20 apart,
up to the start timestep strength * T (one last partial step when that is not a rung). Every
strength's path is a prefix of the same deterministic trajectory, so any number of candidates of any
strengths from one image need one inversion, as long as the largest strength's; and each candidate
is still a function of its own (strength, method) only, so it regenerates exactly on its own.
"ddim_inversion" inverts along the candidate's own denoising grid (strength * T in `steps` steps), the
method of the first releases, kept so that their records regenerate.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from restoration.diffusion.sampling import alphas_at, per_sample_noise

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: the ways an image can be taken to a noise level (recorded in every candidate's metadata).
INVERSION_METHODS = ("ddim_ladder_inversion", "ddim_inversion", "forward_noise")
#: rungs of the shared inversion ladder per T train timesteps (T/20 = 50 of 1000: strength 0.1 in 2
#: steps, 0.4 in 8; eta = 0 reconstruction at 128 px on the shipped prior, 0.1 / 0.2 / 0.3 / 0.4:
#: 35.5 / 30.9 / 28.1 / 25.8 dB, against 38.5 / 30.9 / 26.9 / 24.1 dB for the 4-step per-strength grid).
LADDER_RUNGS = 20


def ladder_stride(num_train_timesteps: int) -> int:
    """Timesteps between two rungs of the shared inversion ladder (at least 1)."""
    return max(num_train_timesteps // LADDER_RUNGS, 1)


def ladder_path(t0: int, stride: int) -> list[int]:
    """The timesteps, ascending, that the ladder inversion visits on its way to t0 (t0 last)."""
    if t0 < 1 or stride < 1:
        raise ValueError(f"t0 and stride must be >= 1, got t0={t0}, stride={stride}")
    return list(range(stride, t0, stride)) + [t0]


def _alpha(alphas_cumprod: torch.Tensor, t: int) -> torch.Tensor:
    """alpha_bar at integer timestep t, with t = 0 meaning the clean image (alpha_bar = 1)."""
    return alphas_cumprod.new_ones(()) if t == 0 else alphas_cumprod[t]


def inversion_step(z: torch.Tensor, eps: torch.Tensor, a_cur: torch.Tensor, a_next: torch.Tensor) -> torch.Tensor:
    """DDIM eq. 12 with eta = 0 run upwards: z at alpha_bar a_cur -> z at the noisier a_next, eps held."""
    x0 = (z - (1 - a_cur).sqrt() * eps) / a_cur.sqrt()
    return a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps


@torch.no_grad()
def ddim_invert(eps_fn: EpsFn, z0: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM inversion (eq. 12 with eta = 0, run backwards) of z0 (B, C, h, w).

    Walks the (B, S) grid from the clean end up to timesteps[:, 0]; eps at the next (higher) timestep
    is approximated by eps_fn(z_current, t_next), the usual inversion approximation.
    """
    z = z0
    for k in reversed(range(timesteps.shape[1])):
        eps = eps_fn(z, timesteps[:, k])  # t_next, on the host
        z = inversion_step(z, eps, alphas_at(alphas_cumprod, timesteps, k + 1), alphas_at(alphas_cumprod, timesteps, k))
    return z


@torch.no_grad()
def ddim_ladder_invert(
    eps_fn: EpsFn, z0: torch.Tensor, targets: Sequence[int], alphas_cumprod: torch.Tensor, stride: int | None = None
) -> dict[int, torch.Tensor]:
    """z at every target timestep (each (1, C, h, w)) from one image z0 (1, C, h, w) on one shared trajectory.

    Per rung interval one eps_fn call: its batch holds the next rung (while higher targets remain) and
    the off-ladder targets inside the interval, each stepped from the same rung.
    """
    if z0.shape[0] != 1:
        raise ValueError(f"the ladder inverts one image at a time, got a batch of {z0.shape[0]}")
    stride = stride or ladder_stride(alphas_cumprod.shape[0])
    wanted = sorted({int(t) for t in targets})
    if not wanted or wanted[0] < 1:
        raise ValueError(f"targets must be timesteps >= 1, got {list(targets)}")
    out: dict[int, torch.Tensor] = {}
    z, rung = z0, 0
    while wanted and rung < wanted[-1]:
        nxt = rung + stride
        ts = [t for t in wanted if t < nxt] + ([nxt] if wanted[-1] >= nxt else [])
        t = torch.tensor(ts)  # on the host: eps_fn copies it over without waiting
        eps = eps_fn(z.expand(len(ts), -1, -1, -1), t)
        a_next = torch.stack([_alpha(alphas_cumprod, s) for s in ts]).view(-1, 1, 1, 1)
        stepped = inversion_step(z, eps, _alpha(alphas_cumprod, rung), a_next)
        for j, s in enumerate(ts):
            if s in wanted:
                out[s] = stepped[j : j + 1]
        wanted = [t for t in wanted if t >= nxt and t not in out]
        z, rung = stepped[-1:], nxt
    return out


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
    """Dispatch on `method` (one of INVERSION_METHODS): z0 (1 or B, C, h, w) to timesteps[:, 0] of the (B, S) grid."""
    if method == "ddim_ladder_inversion":
        t0 = timesteps[:, 0].tolist()
        if z0.shape[0] == 1:
            reached = ddim_ladder_invert(eps_fn, z0, t0, alphas_cumprod)
            return torch.cat([reached[t] for t in t0])
        return torch.cat([ddim_ladder_invert(eps_fn, z0[i : i + 1], [t], alphas_cumprod)[t] for i, t in enumerate(t0)])
    if method == "ddim_inversion":
        return ddim_invert(eps_fn, z0, timesteps, alphas_cumprod)
    if method == "forward_noise":
        if generators is None:
            raise ValueError("forward_noise needs one torch.Generator per sample")
        return forward_noise(z0, timesteps, alphas_cumprod, generators)
    raise ValueError(f"unknown inversion method {method!r}; allowed: {', '.join(INVERSION_METHODS)}")
