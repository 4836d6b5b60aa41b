"""How good a diffusion prior is at the job the candidates give it: denoising at the candidates' noise levels.

    python -m restoration.evaluate_prior --prior NAME_OR_PATH --images DIR --size N --strengths 0.1,0.2,0.3 \
        --seed S --json

Each photo is resized so its short side is N and center-cropped to N x N. For every strength s the photo is
noised to t = s * T with seeded Gaussian noise, z_t = sqrt(a_t) z0 + sqrt(1 - a_t) n, and the prior's one-step
estimate x0 = (z_t - sqrt(1 - a_t) eps(z_t, t)) / sqrt(a_t) (unclipped noise prediction) is compared with the
photo. Printed per strength (means over the photos):

- t, and sigma: the noise standard deviation of z_t / sqrt(a_t), in 0-255 units of the [0, 1] image (pixel
  priors), or in latent units (latent priors; `sigma_units` says which);
- noisy_psnr: PSNR of z_t / sqrt(a_t) (clipped to the image range), x0_psnr: PSNR of the one-step estimate;
- candidate_psnr: PSNR of candidates made by the default candidate sampler (`CandidateConfig`) from the clean
  photo itself, as if the restoration were perfect: what the candidate process alone does to an image.

`--dump-noisy DIR` writes each noisy image (float32 .npy, HWC, unclipped, image units) with its sigma, so a
classical denoiser can be measured on exactly the same noise (scripts/cbm3d_anchor.py). Logs go to stderr.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from restoration.diffusion.candidates import CandidateConfig, plan_candidates, sample_candidates
from restoration.diffusion.priors import DiffusionPrior, PriorNotFoundError, load_prior
from restoration.diffusion.sampling import start_timestep
from restoration.io import list_images, load_image, resize_short_side_center_crop
from restoration.metrics import psnr
from restoration.runtime import resolve_device


def noise_sigma(prior: DiffusionPrior, t: int) -> float:
    """Std of z_t / sqrt(a_t) around z0: 255/2 x sqrt((1 - a) / a) for pixel priors (z = 2 img - 1), else latent."""
    a = float(prior.alphas_cumprod[t])
    sigma_z = math.sqrt((1 - a) / a)
    return sigma_z * 127.5 if prior.kind == "pixel" else sigma_z


@torch.no_grad()
def one_step_estimates(prior: DiffusionPrior, photo: torch.Tensor, timesteps: list[int], gen: torch.Generator
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """photo (1, 3, H, W) in [0, 1] -> (noisy, x0) images (S, 3, H, W), one row per timestep, both unclipped in
    image units: noisy = decode(z_t / sqrt(a_t)), x0 = decode(one-step estimate)."""
    z0 = prior.encode(photo)
    t = torch.tensor(timesteps)
    a = prior.alphas_cumprod[t.to(prior.device)].view(-1, 1, 1, 1)
    noise = torch.randn((len(timesteps), *z0.shape[1:]), generator=gen).to(prior.device)
    z_t = a.sqrt() * z0 + (1 - a).sqrt() * noise
    eps = prior.eps(z_t, t)
    x0 = (z_t - (1 - a).sqrt() * eps) / a.sqrt()
    return _to_image(prior, z_t / a.sqrt(), photo), _to_image(prior, x0, photo)


def _to_image(prior: DiffusionPrior, z: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if prior.kind == "pixel":
        return (z.float().cpu() + 1) / 2
    size = tuple(like.shape[-2:])
    return torch.cat([prior.decode(z[i : i + 1], size).cpu() for i in range(z.shape[0])])


def evaluate_prior(prior: DiffusionPrior, photos: list[tuple[str, torch.Tensor]], strengths: list[float], seed: int,
                   candidates: CandidateConfig, dump_noisy: Path | None = None, log=print) -> dict[str, Any]:
    """The JSON described in the module docstring, for photos [(name, (1, 3, N, N) in [0, 1])]."""
    T = prior.num_train_timesteps
    ts = [start_timestep(s, T) for s in strengths]
    keys = [f"{s:g}" for s in strengths]
    per_image: dict[str, dict[str, dict[str, float]]] = {}
    for i, (name, photo) in enumerate(photos):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
        noisy, x0 = one_step_estimates(prior, photo, ts, gen)
        cfg = replace(candidates, strengths=tuple(strengths), num_candidates=candidates.num_candidates * len(ts),
                      seed=seed * 1000 + i * 100)
        metas = plan_candidates(cfg, prior)
        made = sample_candidates(photo.to(prior.device), prior, metas, cfg.max_batch).cpu()
        rows = {}
        for j, (key, t) in enumerate(zip(keys, ts)):
            cand = [float(psnr(made[k : k + 1], photo)) for k, m in enumerate(metas) if m.strength == strengths[j]]
            rows[key] = {"noisy_psnr": float(psnr(noisy[j : j + 1].clamp(0, 1), photo)),
                         "x0_psnr": float(psnr(x0[j : j + 1].clamp(0, 1), photo)),
                         "candidate_psnr": float(np.mean(cand))}
            if dump_noisy is not None:
                dump_noisy.mkdir(parents=True, exist_ok=True)
                stem = f"{Path(name).stem}_s{key}"
                np.save(dump_noisy / f"{stem}.npy", noisy[j].permute(1, 2, 0).numpy().astype(np.float32))
                np.save(dump_noisy / f"{stem}_clean.npy", photo[0].permute(1, 2, 0).numpy().astype(np.float32))
                (dump_noisy / f"{stem}.json").write_text(json.dumps({"sigma": noise_sigma(prior, t), "t": t}))
        per_image[name] = rows
        log(f"{name}: " + ", ".join(f"s={k} x0 {v['x0_psnr']:.2f} cand {v['candidate_psnr']:.2f}"
                                    for k, v in rows.items()))
    out_strengths = {}
    for key, t in zip(keys, ts):
        mean = lambda field: float(np.mean([per_image[n][key][field] for n in per_image]))  # noqa: E731
        out_strengths[key] = {"t": t, "sigma": noise_sigma(prior, t), "noisy_psnr": mean("noisy_psnr"),
                              "x0_psnr": mean("x0_psnr"), "candidate_psnr": mean("candidate_psnr")}
    return {
        "prior": prior.prior_id,
        "weights_hash": prior.weights_hash,
        "kind": prior.kind,
        "prediction_type": prior.prediction_type,
        "sigma_units": "0-255 of the [0, 1] image" if prior.kind == "pixel" else "latent (z = vae latent x scaling)",
        "images": len(photos),
        "size": int(photos[0][1].shape[-1]) if photos else None,
        "seed": seed,
        "candidate_sampler": {"steps": candidates.steps, "method": candidates.method, "eta": candidates.eta,
                              "per_strength": candidates.num_candidates},
        "strengths": out_strengths,
        "per_image": per_image,
    }


def _parse_strengths(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ValueError(f"--strengths must be comma-separated numbers in (0, 1), got {text!r}") from exc
    if not values or any(not 0 < v < 1 for v in values):
        raise ValueError(f"--strengths must be comma-separated numbers in (0, 1), got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m restoration.evaluate_prior", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior", default="default", help="prior name or folder")
    p.add_argument("--images", required=True, type=Path, help="folder of photos")
    p.add_argument("--size", type=int, default=256, help="short side, then an N x N center crop (16..2048)")
    p.add_argument("--strengths", default="0.1,0.2,0.3")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="use the first N photos only (0: all)")
    p.add_argument("--candidates", type=int, default=2, help="candidates per strength for candidate_psnr")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--dump-noisy", type=Path, default=None, help="write the noisy images here (see the docstring)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    a = p.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    try:
        strengths = _parse_strengths(a.strengths)
        if not 16 <= a.size <= 2048:
            raise ValueError(f"--size must be in 16..2048, got {a.size}")
        if a.candidates < 1:
            raise ValueError(f"--candidates must be >= 1, got {a.candidates}")
        files = list_images(a.images)[: a.limit or None]
        if a.threads:
            torch.set_num_threads(a.threads)
        prior = load_prior(a.prior, resolve_device(a.device))
        photos = [(f.name, resize_short_side_center_crop(load_image(f), a.size)) for f in files]
    except (ValueError, FileNotFoundError, PriorNotFoundError) as exc:
        log(f"error: {exc}")
        return 2
    result = evaluate_prior(prior, photos, strengths, a.seed, replace(CandidateConfig(), num_candidates=a.candidates),
                            a.dump_noisy, log)
    result["device"] = str(prior.device)
    if a.json:
        print(json.dumps(result))
    else:
        for key, row in result["strengths"].items():
            print(f"strength {key}: t {row['t']}, sigma {row['sigma']:.1f}, noisy {row['noisy_psnr']:.2f} dB, "
                  f"x0 {row['x0_psnr']:.2f} dB, candidates {row['candidate_psnr']:.2f} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
