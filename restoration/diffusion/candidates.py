"""TTPO stage (i): candidates by inverting the restored image to a strength and denoising it back.

Work is shared wherever the math makes it identical: every "ddim_ladder_inversion" candidate starts
from one shared deterministic inversion trajectory (see `inversion`), "ddim_inversion" candidates of
equal strength and steps share one inversion, and the denoiser runs once for identical rows of a
batch (the first step of equal-strength candidates). All candidates then denoise as one batch per
step: each sample carries its own timestep grid (its strength) and its own seeded generator (its
noise), so batched and one-at-a-time give the same images.
Pure DDIM inversion + eta = 0 denoising would ignore the seed; the default eta > 0 re-noises at each
step from the candidate's seed, which is what makes seeds differ. The defaults (strengths 0.05-0.2, 3 steps, the
shared ladder inversion, eta 0.5) were chosen on validation restorations by a rule written before the figures
(docs/results/candidates/RULE.md): forward noising, larger strengths and fewer steps all left the candidates more
than 1.5 dB below the restoration.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import groupby
from typing import Any

import torch

from restoration.diffusion.inversion import INVERSION_METHODS, ddim_invert, ddim_ladder_invert, invert
from restoration.diffusion.priors import DiffusionPrior
from restoration.diffusion.sampling import (
    ddim_sample,
    make_model_fn,
    share_identical_rows,
    start_timestep,
    timestep_grid,
)


#: at most this many z pixels (summed over the batch) denoise together: large images go in smaller
#: chunks, which bounds memory; their tiles are large enough that batching would not speed them up.
MAX_CHUNK_PIXELS = 8 * 1024 * 1024


@dataclass(frozen=True)
class CandidateMeta:
    """Everything needed to regenerate one candidate exactly from the restored image."""

    seed: int
    strength: float
    steps: int
    method: str
    eta: float
    prior_id: str
    weights_hash: str
    precision: str = "fp32"  # the denoiser's compute precision (records from before it existed: fp32)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CandidateMeta:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d or k != "precision"})


@dataclass
class Candidate:
    """image: (1, 3, H, W) float32 in [0, 1]; meta: how it was made."""

    image: torch.Tensor
    meta: CandidateMeta


@dataclass(frozen=True)
class CandidateConfig:
    """num_candidates images; candidate i uses strengths[i % len(strengths)] and seed + i."""

    num_candidates: int = 8
    # chosen with the shipped prior by the rule in docs/results/candidates/RULE.md (search.json there)
    strengths: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2)
    steps: int = 3
    method: str = "ddim_ladder_inversion"
    eta: float = 0.5
    seed: int = 0
    max_batch: int = 8

    def __post_init__(self) -> None:
        if self.num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {self.num_candidates}")
        if not self.strengths or any(not 0 < s <= 1 for s in self.strengths):
            raise ValueError(f"strengths must be a non-empty tuple of values in (0, 1], got {self.strengths}")
        if self.method not in INVERSION_METHODS:
            raise ValueError(f"method must be one of {INVERSION_METHODS}, got {self.method!r}")
        if self.steps < 1 or self.max_batch < 1 or self.eta < 0:
            raise ValueError("steps and max_batch must be >= 1 and eta >= 0")


def plan_candidates(config: CandidateConfig, prior: DiffusionPrior) -> list[CandidateMeta]:
    """The metadata of every candidate the config asks for, in order."""
    return [
        CandidateMeta(
            seed=config.seed + i,
            strength=float(config.strengths[i % len(config.strengths)]),
            steps=config.steps,
            method=config.method,
            eta=float(config.eta),
            prior_id=prior.prior_id,
            weights_hash=prior.weights_hash,
            precision=prior.precision,
        )
        for i in range(config.num_candidates)
    ]


def start_latents(
    z0: torch.Tensor, prior: DiffusionPrior, metas: Sequence[CandidateMeta], generators: Sequence[torch.Generator]
) -> torch.Tensor:
    """z_t (N, C, h, w) of every candidate at its start timestep, from z0 (1, C, h, w).

    Deterministic inversions are computed once and shared: one ladder trajectory for all
    "ddim_ladder_inversion" metas, one grid inversion per (strength, steps) for "ddim_inversion".
    "forward_noise" draws the first noise from the candidate's generator.
    """
    T = prior.num_train_timesteps
    t0 = [start_timestep(m.strength, T) for m in metas]
    ladder = [t for t, m in zip(t0, metas) if m.method == "ddim_ladder_inversion"]
    reached = ddim_ladder_invert(prior.eps, z0, ladder, prior.alphas_cumprod) if ladder else {}
    by_pair: dict[tuple[float, int], torch.Tensor] = {}
    pairs = sorted({(m.strength, m.steps) for m in metas if m.method == "ddim_inversion"})
    for steps in sorted({st for _, st in pairs}):  # one batch per grid width
        strengths = [s for s, st in pairs if st == steps]
        z_t = ddim_invert(prior.eps, z0.expand(len(strengths), -1, -1, -1), timestep_grid(strengths, steps, T),
                          prior.alphas_cumprod)
        by_pair.update({(s, steps): z_t[j : j + 1] for j, s in enumerate(strengths)})
    rows = []
    for i, m in enumerate(metas):
        if m.method == "ddim_ladder_inversion":
            rows.append(reached[t0[i]])
        elif m.method == "ddim_inversion":
            rows.append(by_pair[(m.strength, m.steps)])
        else:
            grid = timestep_grid([m.strength], m.steps, T)
            rows.append(invert(m.method, prior.eps, z0, grid, prior.alphas_cumprod, [generators[i]]))
    return torch.cat(rows)


@torch.no_grad()
def sample_candidates(
    restored: torch.Tensor, prior: DiffusionPrior, metas: Sequence[CandidateMeta], max_batch: int = 8
) -> torch.Tensor:
    """restored (1, 3, H, W) in [0, 1] -> (N, 3, H, W) in [0, 1], one image per meta, batched.

    Start latents come from `start_latents` (shared inversions); then metas are grouped by
    (steps, eta) and each group denoises in chunks of `max_batch` (fewer when the chunk would exceed
    MAX_CHUNK_PIXELS): per step one forward pass over the chunk's distinct rows, strengths as
    per-sample timesteps.
    """
    return sample_candidates_many([restored], prior, [metas], max_batch)[0]


@torch.no_grad()
def sample_candidates_many(
    starts: Sequence[torch.Tensor], prior: DiffusionPrior, metas: Sequence[Sequence[CandidateMeta]],
    max_batch: int = 8,
) -> list[torch.Tensor]:
    """The candidates of several start images of one size (e.g. from concurrent sessions) in shared batches:
    starts[b] (1, 3, H, W) -> (len(metas[b]), 3, H, W). Each image keeps its own inversion; the denoising
    steps of all images' candidates run together, so each candidate is what `sample_candidates` makes of
    its image alone (up to float rounding of a different batch)."""
    if len(starts) != len(metas) or not starts:
        raise ValueError(f"need one list of metas per start image, got {len(starts)} images, {len(metas)} lists")
    for restored in starts:
        if restored.ndim != 4 or restored.shape[0] != 1 or restored.shape[1] != 3:
            raise ValueError(f"restored must be (1, 3, H, W), got {tuple(restored.shape)}")
    if len({tuple(r.shape) for r in starts}) != 1:
        raise ValueError(f"start images batched together must have one size, got {[tuple(r.shape) for r in starts]}")
    size = tuple(starts[0].shape[-2:])
    rows, gens, flat = [], [], []
    for restored, image_metas in zip(starts, metas):
        z0 = prior.encode(restored)
        image_gens = [torch.Generator().manual_seed(int(m.seed)) for m in image_metas]
        rows.append(start_latents(z0, prior, image_metas, image_gens))
        gens += image_gens
        flat += list(image_metas)
    z_start = torch.cat(rows)
    max_batch = max(1, min(max_batch, MAX_CHUNK_PIXELS // (z_start.shape[-2] * z_start.shape[-1])))
    out: list[torch.Tensor | None] = [None] * len(flat)
    model_fn = share_identical_rows(make_model_fn(prior))
    key = lambda i: (flat[i].steps, flat[i].eta)
    order = sorted(range(len(flat)), key=lambda i: (*key(i), flat[i].strength))  # equal starts share chunks
    for (steps, eta), group in groupby(order, key=key):
        idx = list(group)
        for begin in range(0, len(idx), max_batch):
            chunk = idx[begin : begin + max_batch]
            grid = timestep_grid([flat[i].strength for i in chunk], steps, prior.num_train_timesteps)
            z_0 = ddim_sample(model_fn, z_start[chunk], grid, prior.alphas_cumprod, eta=eta,
                              generators=[gens[i] for i in chunk])
            images = prior.decode(z_0, size)
            for j, i in enumerate(chunk):
                out[i] = images[j : j + 1]
    result, begin = [], 0
    for image_metas in metas:
        result.append(torch.cat(out[begin : begin + len(image_metas)], dim=0))  # type: ignore[arg-type]
        begin += len(image_metas)
    return result


def generate_candidates(
    restored: torch.Tensor, prior: DiffusionPrior, config: CandidateConfig = CandidateConfig()
) -> list[Candidate]:
    """TTPO stage (i): `config.num_candidates` candidates from the restored image (1, 3, H, W) in [0, 1]."""
    metas = plan_candidates(config, prior)
    images = sample_candidates(restored, prior, metas, config.max_batch)
    return [Candidate(image=images[i : i + 1], meta=m) for i, m in enumerate(metas)]


def regenerate(meta: CandidateMeta, restored: torch.Tensor, prior: DiffusionPrior) -> torch.Tensor:
    """Recompute one candidate (1, 3, H, W) from its metadata; the prior must be the one recorded."""
    if (meta.prior_id, meta.weights_hash) != (prior.prior_id, prior.weights_hash):
        raise ValueError(
            f"candidate was made with prior {meta.prior_id!r} (weights {meta.weights_hash[:12]}), "
            f"but the loaded prior is {prior.prior_id!r} (weights {prior.weights_hash[:12]})"
        )
    previous = prior.precision
    prior.set_inference_format(precision=meta.precision)
    try:
        return sample_candidates(restored, prior, [meta], max_batch=1)
    finally:
        prior.set_inference_format(precision=previous)
