"""Train the blind post-deconvolution step (`restoration.backbones.post_deconvolution`) for a restoration backbone.

    python -m restoration.training.post_deconvolution --images data/photos/train --skimage --exclude Storm,Wood \
        --backbone sipl --samples 2400 --grid fine --out assets/sipl_post_deconvolution.safetensors

Makes `--samples` training examples: a random crop, degraded (a `--blur-share` of them by a Gaussian blur, with
noise half of the time; the rest by the all-in-one training mixture), restored by the backbone; each gives the
two spectra (`spectrum_features`) and, against the clean crop, the PSNR change of each filter of the grid
(`psnr_gains`). Then fits the gain predictor (Huber loss, full batch) on 80 % of them and reports, on the other
20 %, the mean PSNR change its choices make against the best choice in hindsight. Logs go to stderr; the
summary is one JSON line on stdout.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from restoration.backbones import create_restorer, is_sipl_backbone
from restoration.backbones.base import Restorer
from restoration.backbones.post_deconvolution import (
    FINE_GRID,
    PostDeconvolutionConfig,
    PostDeconvolver,
    psnr_gains,
    spectrum_features,
)
from restoration.backbones.post_step import GainStep, save_gain_step
from restoration.degradations import degrade
from restoration.runtime import tune_allocator
from restoration.training.data import CropConfig, CropSampler
from restoration.training.mixture import MixtureShares, random_spec

log = logging.getLogger("restoration.training.post_deconvolution")

#: The filter grids `--grid` names.
GRIDS = {"first": PostDeconvolutionConfig(), "fine": FINE_GRID}

#: The mixture for the crops that are not blurred on purpose: more noise combinations than training uses.
SAMPLE_MIXTURE = MixtureShares(0.1, 0.3, 0.3, 0.2, 0.1)


@dataclass(frozen=True)
class PostTrainConfig:
    samples: int = 2400
    crop: int = 128
    batch: int = 16
    blur_share: float = 0.5
    steps: int = 3000
    lr: float = 3e-3
    weight_decay: float = 1e-3
    sample_seed: int = 1
    seed: int = 0
    target_clip: float = 5.0  # the fit's targets are clipped to +-this many dB


def sample_spec(rng: random.Random, blur_share: float) -> str:
    """A blur (0.5-3 px) with noise (sigma 5-50) half of the time, or a spec from `SAMPLE_MIXTURE`."""
    if rng.random() < blur_share:
        sigma = round(rng.uniform(0.5, 3.0), 2)
        noise = rng.choice([0, round(rng.uniform(5, 50), 1)])
        return f"blur:{sigma}" + (f"+noise:{noise}" if noise else "")
    return random_spec(rng, SAMPLE_MIXTURE)


def make_samples(restorer: Restorer, sampler: CropSampler, cfg: PostTrainConfig, post: PostDeconvolutionConfig
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, 2 * bands), gains (N, len(sigmas))) for `cfg.samples` restored crops."""
    rng = random.Random(cfg.sample_seed)
    features, gains = [], []
    done = 0
    while done < cfg.samples:
        n = min(cfg.batch, cfg.samples - done)
        clean = sampler.sample(n, rng)
        degraded = torch.cat([degrade(clean[i:i + 1], sample_spec(rng, cfg.blur_share), rng.randrange(2**31))[0]
                              for i in range(n)])
        with torch.inference_mode():
            restored = restorer.restore(degraded).cpu()
        features.append(spectrum_features(degraded, restored, post))
        gains.append(psnr_gains(restored, clean, post))
        done += n
        log.info("samples %d / %d", done, cfg.samples)
    return torch.cat(features), torch.cat(gains)


def realised_gain(model: GainStep, features: torch.Tensor, gains: torch.Tensor) -> float:
    """The mean PSNR change (dB) the model's choices make on examples with known `gains` (no filter: 0)."""
    with torch.no_grad():
        predicted = model.predict_gains(features)
    best, index = predicted.max(dim=1)
    chosen = gains.gather(1, index[:, None])[:, 0]
    return float(torch.where(best > model.config.margin, chosen, torch.zeros_like(chosen)).mean())


def fit(features: torch.Tensor, gains: torch.Tensor, cfg: PostTrainConfig, post: Any,
        step: type[GainStep] = PostDeconvolver) -> tuple[GainStep, dict]:
    """Fit the predictor of a `step(post)` on 80 % of the examples; the report scores it on the held-out 20 %."""
    if len(features) < 10:
        raise ValueError(f"need at least 10 examples to fit and hold out, got {len(features)}")
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(features), generator=g)
    cut = int(0.8 * len(features))
    train, held = order[:cut], order[cut:]
    torch.manual_seed(cfg.seed)
    model = step(post)
    model.feature_mean.copy_(features[train].mean(0))
    model.feature_std.copy_(features[train].std(0).clamp(min=1e-6))
    target = gains.clamp(-cfg.target_clip, cfg.target_clip)
    opt = torch.optim.AdamW(model.predictor.parameters(), cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    for _ in range(cfg.steps):
        loss = F.huber_loss(model.predict_gains(features[train]), target[train], delta=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        held_loss = float(F.huber_loss(model.predict_gains(features[held]), target[held], delta=1.0))
    report = {"examples": len(features), "train_loss": float(loss.detach()), "held_out_loss": held_loss,
              "held_out_gain_db": realised_gain(model, features[held], gains[held]),
              "held_out_best_gain_db": float(gains[held].clamp(min=0).max(dim=1).values.mean()),
              "held_out_applied_share": float((model.predict_gains(features[held]).max(dim=1).values > post.margin)
                                              .float().mean())}
    return model, report


def add_common_arguments(p: argparse.ArgumentParser, samples: int, crop: int, batch: int, sample_seed: int) -> None:
    """The flags every post-step trainer takes (this one and the experiments'), with its own defaults."""
    p.add_argument("--images", action="append", default=[], help="folder of clean training photos (repeatable)")
    p.add_argument("--skimage", action="store_true", help="add scikit-image's bundled photos")
    p.add_argument("--exclude", default="", help="comma-separated photo stems to leave out")
    p.add_argument("--backbone", default="sipl", help="the restorer whose outputs the step follows")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--samples", type=int, default=samples)
    p.add_argument("--crop", type=int, default=crop)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--steps", type=int, default=PostTrainConfig.steps, help="optimiser steps of the fit")
    p.add_argument("--sample-seed", type=int, default=sample_seed, help="seed of the examples")
    p.add_argument("--seed", type=int, default=PostTrainConfig.seed, help="seed of the fit (split, init)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--samples-cache", default=None, help="save the examples here, or reuse them if it exists")


def start_process(args: argparse.Namespace) -> None:
    """What both trainers' commands set up first: logs on stderr, the allocator, `--threads`."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)


def check_common_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.samples < 10 or args.crop < 32 or args.batch < 1 or args.steps < 1:
        p.error("--samples must be >= 10, --crop >= 32, --batch >= 1, --steps >= 1")
    if not str(args.out).endswith(".safetensors"):
        p.error(f"--out must be a .safetensors file, got {args.out}")


def save_atomically(obj: Any, path: Path) -> None:
    """torch.save through a `.part` file, so an interrupted run leaves no half-written cache."""
    tmp = path.with_name(path.name + ".part")
    torch.save(obj, tmp)
    tmp.replace(path)


def save_step(model: GainStep, out: str | Path, facts: dict) -> None:
    """Write a trained step's file through a `.part` file (its folder made if missing)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    save_gain_step(model, tmp, facts)
    tmp.replace(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(p, PostTrainConfig.samples, PostTrainConfig.crop, PostTrainConfig.batch,
                         PostTrainConfig.sample_seed)
    p.add_argument("--blur-share", type=float, default=PostTrainConfig.blur_share)
    p.add_argument("--grid", choices=sorted(GRIDS), default="fine",
                   help="the filter grid: 'fine' (9 widths x 2 weights, the shipped step's) or 'first' (7 widths, "
                        "one weight: the step first shipped)")
    args = p.parse_args(argv)
    check_common_arguments(p, args)
    if not 0.0 <= args.blur_share <= 1.0:
        p.error(f"--blur-share must be in [0, 1], got {args.blur_share}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start_process(args)
    cfg = PostTrainConfig(samples=args.samples, crop=args.crop, batch=args.batch, blur_share=args.blur_share,
                          steps=args.steps, sample_seed=args.sample_seed, seed=args.seed)
    post = GRIDS[args.grid]
    cache = Path(args.samples_cache) if args.samples_cache else None
    if cache is not None and cache.is_file():
        data = torch.load(cache, weights_only=True)
        features, gains = data["features"], data["gains"]
        log.info("reusing %d examples from %s", len(features), cache)
        if gains.shape[1] != len(post.options):
            raise ValueError(f"{cache} holds gains for {gains.shape[1]} filters, the '{args.grid}' grid has "
                             f"{len(post.options)}: give another --samples-cache")
    else:
        exclude = tuple(s for s in args.exclude.split(",") if s)
        sampler = CropSampler.from_sources(args.images, args.skimage, CropConfig(crop=cfg.crop), exclude=exclude)
        # the step learns the network's own output: a shipped SIPL name must not bring its post step along
        restorer = create_restorer(args.backbone, **({"post": None} if is_sipl_backbone(args.backbone) else {}))
        features, gains = make_samples(restorer, sampler, cfg, post)
        if cache is not None:
            save_atomically({"features": features, "gains": gains}, cache)
    model, report = fit(features, gains, cfg, post)
    facts = {"backbone": args.backbone, "grid": args.grid, "images": args.images, "skimage": args.skimage,
             "exclude": args.exclude, **asdict(cfg), **report}
    save_step(model, args.out, facts)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
