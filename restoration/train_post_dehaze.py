"""Train the blind post-dehazing step (`restoration.backbones.post_dehaze`) for a restoration backbone.

    python -m restoration.train_post_dehaze --images data/photos/train --skimage --exclude Storm,Wood \
        --backbone sipl --samples 1600 --out assets/sipl_post_dehaze.safetensors

Makes `--samples` training examples: an upright random crop (a `--fade-share` of them first faded toward a
bright grey, `restoration.train.fade_some`: misty photos whose target stays misty), degraded (a `--haze-share` of
them by haze, alone or with rain, noise or snow; the rest by the post-deconvolution step's sample mixture),
restored by the backbone with everything that runs before this step (its post-deconvolution step included); each
gives `haze_features` and, against the clean crop, the PSNR change of dehazing at each omega of the grid
(`dehaze_gains`). Then fits the gain predictor as `train_post_deconvolution.fit` does (80 % / 20 % held out).
`--samples-cache` keeps the degraded and restored crops, so a change of features needs no new restorations.
Logs go to stderr; the summary is one JSON line on stdout.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from restoration.backbones import create_restorer, is_sipl_backbone
from restoration.backbones.base import Restorer
from restoration.backbones.post_dehaze import PostDehazeConfig, PostDehazer, dehaze_gains, haze_features, \
    save_post_dehazer
from restoration.data import CropConfig, CropSampler
from restoration.degradations import degrade, format_spec, random_spec, random_step
from restoration.runtime import tune_allocator
from restoration.train import fade_some
from restoration.train_post_deconvolution import SAMPLE_MIXTURE, PostTrainConfig, fit

log = logging.getLogger("restoration.train_post_dehaze")

#: Haze alone and in the composites it forms (scene effects first, sensor noise last; rain in front or behind).
HAZE_COMBOS: tuple[tuple[str, ...], ...] = (
    ("haze",), ("haze", "rain"), ("rain", "haze"), ("haze", "noise"), ("haze", "rain", "noise"), ("haze", "snow"))


@dataclass(frozen=True)
class DehazeTrainConfig:
    samples: int = 1600
    crop: int = 256
    batch: int = 8
    haze_share: float = 0.5
    fade_share: float = 0.25
    sample_seed: int = 1


def sample_spec(rng: random.Random, haze_share: float) -> str:
    """A haze combination (`HAZE_COMBOS`, training ranges) a `haze_share` of the time, else a spec from
    `SAMPLE_MIXTURE`."""
    if rng.random() < haze_share:
        return format_spec([random_step(n, rng) for n in rng.choice(HAZE_COMBOS)])
    return random_spec(rng, SAMPLE_MIXTURE)


def make_samples(restorer: Restorer, sampler: CropSampler, cfg: DehazeTrainConfig, post: PostDehazeConfig
                 ) -> dict[str, torch.Tensor]:
    """{"degraded", "restored" (N, 3, crop, crop) float16, "gains" (N, len(omegas))} for `cfg.samples` crops."""
    rng = random.Random(cfg.sample_seed)
    degraded_all, restored_all, gains = [], [], []
    done = 0
    while done < cfg.samples:
        n = min(cfg.batch, cfg.samples - done)
        clean = fade_some(sampler.sample(n, rng), rng, cfg.fade_share)
        degraded = torch.cat([degrade(clean[i:i + 1], sample_spec(rng, cfg.haze_share), rng.randrange(2**31))[0]
                              for i in range(n)])
        with torch.inference_mode():
            restored = restorer.restore(degraded).cpu()
        gains.append(dehaze_gains(restored, clean, post))
        degraded_all.append(degraded.half())
        restored_all.append(restored.half())
        done += n
        log.info("samples %d / %d", done, cfg.samples)
    return {"degraded": torch.cat(degraded_all), "restored": torch.cat(restored_all), "gains": torch.cat(gains)}


def features_of(samples: dict[str, torch.Tensor], post: PostDehazeConfig, chunk: int = 64) -> torch.Tensor:
    return torch.cat([haze_features(samples["degraded"][i:i + chunk].float(), samples["restored"][i:i + chunk].float(),
                                    post) for i in range(0, len(samples["gains"]), chunk)])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", action="append", default=[], help="folder of clean training photos (repeatable)")
    p.add_argument("--skimage", action="store_true", help="add scikit-image's bundled photos")
    p.add_argument("--exclude", default="", help="comma-separated photo stems to leave out")
    p.add_argument("--backbone", default="sipl", help="the restorer whose outputs the step follows")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--samples", type=int, default=DehazeTrainConfig.samples)
    p.add_argument("--crop", type=int, default=DehazeTrainConfig.crop)
    p.add_argument("--batch", type=int, default=DehazeTrainConfig.batch)
    p.add_argument("--haze-share", type=float, default=DehazeTrainConfig.haze_share)
    p.add_argument("--fade-share", type=float, default=DehazeTrainConfig.fade_share)
    p.add_argument("--steps", type=int, default=PostTrainConfig.steps, help="optimiser steps of the fit")
    p.add_argument("--sample-seed", type=int, default=DehazeTrainConfig.sample_seed, help="seed of the examples")
    p.add_argument("--seed", type=int, default=PostTrainConfig.seed, help="seed of the fit (split, init)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--samples-cache", default=None, help="save the examples here, or reuse them if it exists")
    args = p.parse_args(argv)
    if args.samples < 10 or args.crop < 32 or args.batch < 1 or args.steps < 1:
        p.error("--samples must be >= 10, --crop >= 32, --batch >= 1, --steps >= 1")
    for flag in ("haze_share", "fade_share"):
        if not 0.0 <= getattr(args, flag) <= 1.0:
            p.error(f"--{flag.replace('_', '-')} must be in [0, 1], got {getattr(args, flag)}")
    if not str(args.out).endswith(".safetensors"):
        p.error(f"--out must be a .safetensors file, got {args.out}")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    args = parse_args(argv)
    tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = DehazeTrainConfig(samples=args.samples, crop=args.crop, batch=args.batch, haze_share=args.haze_share,
                            fade_share=args.fade_share, sample_seed=args.sample_seed)
    fit_cfg = PostTrainConfig(steps=args.steps, seed=args.seed)
    post = PostDehazeConfig()
    cache = Path(args.samples_cache) if args.samples_cache else None
    if cache is not None and cache.is_file():
        samples = torch.load(cache, weights_only=True)
        log.info("reusing %d examples from %s", len(samples["gains"]), cache)
    else:
        exclude = tuple(s for s in args.exclude.split(",") if s)
        sampler = CropSampler.from_sources(args.images, args.skimage, CropConfig(crop=cfg.crop, rotate=False),
                                           exclude=exclude)
        # the step follows everything the backbone runs, its post-deconvolution step included, but not itself
        restorer = create_restorer(args.backbone, **({"post_dehaze": False} if is_sipl_backbone(args.backbone)
                                                      else {}))
        samples = make_samples(restorer, sampler, cfg, post)
        if cache is not None:
            tmp = cache.with_name(cache.name + ".part")
            torch.save(samples, tmp)
            tmp.replace(cache)
    model, report = fit(features_of(samples, post), samples["gains"], fit_cfg, post, step=PostDehazer)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    facts = {"backbone": args.backbone, "images": args.images, "skimage": args.skimage, "exclude": args.exclude,
             **asdict(cfg), "steps": fit_cfg.steps, "seed": fit_cfg.seed, **report}
    tmp = out.with_name(out.name + ".part")
    save_post_dehazer(model, tmp, facts)
    tmp.replace(out)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
