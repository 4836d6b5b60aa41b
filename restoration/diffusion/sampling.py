"""DDIM sampling with per-sample timestep grids (Song et al. 2021, eq. 12).

A sampler is a plain function of (model_fn, z, timesteps): `model_fn(z_t, t) -> (x0_hat, eps)`, so
guidance is a wrapper around the model (see `guidance.make_guided_model_fn`), never a branch here.
Timesteps are (B, S) integer tensors: every sample may start at its own strength, which is how
candidates of different strengths share one batched forward pass per step.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from restoration.diffusion.priors import DiffusionPrior

ModelFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def start_timestep(strength: float, num_train_timesteps: int) -> int:
    """The timestep an image-to-image strength in (0, 1] starts from (strength * T, at least 1)."""
    if not 0.0 < float(strength) <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    return int(min(max(round(float(strength) * num_train_timesteps), 1), num_train_timesteps - 1))


def timestep_grid(strengths: Sequence[float], steps: int, num_train_timesteps: int) -> torch.Tensor:
    """(B, S) long: for each strength, S evenly spaced timesteps from strength*T down towards 0.

    The step after the last one lands on the clean image (alpha_bar = 1).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    rows = []
    for s in strengths:
        t0 = start_timestep(s, num_train_timesteps)
        rows.append(torch.linspace(t0, 0, steps + 1)[:steps].round().long().clamp(min=0))
    return torch.stack(rows)


def alphas_at(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, k: int) -> torch.Tensor:
    """alpha_bar at column k of a (B, S) grid as (B, 1, 1, 1); column S means the clean image (1)."""
    if k >= timesteps.shape[1]:
        return torch.ones(timesteps.shape[0], 1, 1, 1, device=alphas_cumprod.device)
    return alphas_cumprod[timesteps[:, k].to(alphas_cumprod.device, non_blocking=True)].view(-1, 1, 1, 1)


def make_model_fn(prior: DiffusionPrior) -> ModelFn:
    """Wrap a prior's eps into (x0_hat, eps) (Tweedie / DDIM eq. 9); pixel priors clamp x0_hat to [-1, 1]."""

    def model_fn(z_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eps = prior.eps(z_t, t)
        a = prior.alphas_cumprod[t.to(prior.device, non_blocking=True)].view(-1, 1, 1, 1)
        x0 = (z_t - (1 - a).sqrt() * eps) / a.sqrt()
        if prior.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (z_t - a.sqrt() * x0) / (1 - a).sqrt()
        return x0, eps

    return model_fn


def share_identical_rows(model_fn: ModelFn) -> ModelFn:
    """Wrap model_fn so that rows of a batch with equal timestep and equal z_t are evaluated once.

    Candidates of one strength leave the shared inversion with the same z_t, so their first
    denoising step is the same computation; later steps differ (fresh noise per seed) and pass through.
    The test costs the host at most two reads of the device per call (`identical_row_groups`).
    """

    def shared(z_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = t.reshape(-1).expand(z_t.shape[0])
        groups = identical_row_groups(z_t, t)
        if len(groups) == z_t.shape[0]:
            return model_fn(z_t, t)
        where = [0] * z_t.shape[0]  # row i's position among the distinct rows
        for k, rows in enumerate(groups):
            for i in rows:
                where[i] = k
        first = [rows[0] for rows in groups]
        x0, eps = model_fn(z_t[first], t[first])
        index = torch.tensor(where, device=x0.device)
        return x0[index], eps[index]

    return shared


def identical_row_groups(z: torch.Tensor, t: torch.Tensor, probes: int = 64) -> list[list[int]]:
    """Rows of z (B, ...) with equal t (B,) and bit-equal z, as groups of row indices in order of first row.

    Rows are first keyed by t and `probes` evenly spaced elements, read to the host in one go; only rows whose
    keys match are then compared whole, all pairs in one more read. So a batch of distinct rows costs one read
    of the device, not one `torch.equal` (a GPU sync each) per pair of rows.
    """
    flat = z.reshape(z.shape[0], -1)
    n, k = flat.shape[1], min(probes, flat.shape[1])
    # integer arithmetic: float32 positions (linspace) round past the last element from 2**24 on (4096 px images)
    at = (torch.arange(k, device=flat.device) * (n - 1)) // max(k - 1, 1)
    keys: dict[tuple, list[int]] = {}
    for i, (step, probe) in enumerate(zip(t.tolist(), flat[:, at].tolist())):
        keys.setdefault((step, *probe), []).append(i)  # NaN probes never compare equal: such rows stay apart
    candidates = [rows for rows in keys.values() if len(rows) > 1]
    if not candidates:
        return list(keys.values())
    heads = [rows[0] for rows in candidates for _ in rows[1:]]
    others = [i for rows in candidates for i in rows[1:]]
    whole = (flat[heads] == flat[others]).all(1).tolist()
    if all(whole):
        return sorted(keys.values())
    groups: list[list[int]] = []  # some probes matched by chance: compare those rows exactly, pair by pair
    for rows in keys.values():
        for i in rows:
            home = next((g for g in groups if g[0] in rows and torch.equal(flat[g[0]], flat[i])), None)
            if home is None:
                groups.append([i])
            else:
                home.append(i)
    return sorted(groups)


def per_sample_noise(shape: Sequence[int], generators: Sequence[torch.Generator], device) -> torch.Tensor:
    """Gaussian noise of `shape` (B, ...), row i drawn on the CPU from generators[i] (device-independent); copied
    to a GPU from pinned memory without waiting for it."""
    if len(generators) != shape[0]:
        raise ValueError(f"need one generator per sample: {len(generators)} for batch {shape[0]}")
    noise = torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in generators])
    if torch.device(device).type == "cuda":
        return noise.pin_memory().to(device, non_blocking=True)
    return noise.to(device)


def ddim_step(
    x0: torch.Tensor, eps: torch.Tensor, a_t: torch.Tensor, a_prev: torch.Tensor, eta: float,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """One DDIM update z_t -> z_prev (eq. 12) with sigma = eta * sqrt((1-a_prev)/(1-a_t)) * sqrt(1-a_t/a_prev)."""
    sigma = eta * ((1 - a_prev) / (1 - a_t)).clamp(min=0).sqrt() * (1 - a_t / a_prev).clamp(min=0).sqrt()
    direction = (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
    z_prev = a_prev.sqrt() * x0 + direction
    if eta > 0 and noise is not None:
        z_prev = z_prev + sigma * noise
    return z_prev


def ddim_sample(
    model_fn: ModelFn,
    z_t: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    eta: float = 0.0,
    generators: Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """Denoise z_t (B, C, h, w), which sits at timesteps[:, 0], along the (B, S) grid to a clean z0.

    eta > 0 adds fresh noise each step from the per-sample `generators` (required then), except the last, whose
    sigma is 0 (a_prev = 1): the result is the same as drawing and adding 0 x noise, at less cost.
    """
    if eta > 0 and generators is None:
        raise ValueError("eta > 0 needs one torch.Generator per sample for reproducible noise")
    z = z_t
    for k in range(timesteps.shape[1]):
        x0, eps = model_fn(z, timesteps[:, k])  # t stays where the grid is (the host): wrappers read it freely
        a_t, a_prev = alphas_at(alphas_cumprod, timesteps, k), alphas_at(alphas_cumprod, timesteps, k + 1)
        last = k == timesteps.shape[1] - 1  # lands on the clean image: sigma = 0, so no noise is drawn
        noise = per_sample_noise(z.shape, generators, z.device) if eta > 0 and not last else None
        z = ddim_step(x0, eps, a_t, a_prev, eta, noise)
    return z
