"""Train the blind post-dehazing step (`experiments.post_dehaze.post_dehaze`) for a restoration backbone.

    python -m experiments.post_dehaze.train --images data/photos/train --skimage --exclude Storm,Wood \
        --backbone sipl --samples 1200 --out runs/post_dehaze/sipl_post_dehaze.safetensors

Makes `--samples` training examples: an upright random crop (a `--fade-share` of them first faded toward a
bright grey, `restoration.training.sipl.fade_some`: misty photos whose target stays misty), degraded (a `--haze-share` of
them by haze, alone or with rain, noise or snow; the rest by the post-deconvolution step's sample mixture),
restored by the backbone with everything that runs before this step (its post-deconvolution step included); each
gives `haze_features` and, against the clean crop, the PSNR change of dehazing at each omega of the grid
(`dehaze_gains`, for the step's omegas and `--t0`). Then fits the gain predictor as `train_post_deconvolution.fit`
does (80 % / 20 % held out; `--hidden`, `--steps`, `--weight-decay`, `--target-clip`). `--samples-cache` keeps the
clean, degraded and restored crops, so another `--t0` or fit needs no new restorations. `--short-sides` sets the
scales the photos are held at: at the crop size, a crop is nearly the whole scene, as evaluation sees it.
Logs go to stderr; the summary is one JSON line on stdout.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from experiments.post_dehaze.post_dehaze import (
    PostDehazeConfig,
    PostDehazer,
    dehaze_gains,
    haze_features,
)
from restoration.backbones import create_restorer
from restoration.backbones.base import Restorer
from restoration.degradations import degrade, format_spec
from restoration.training.data import CropConfig, CropSampler
from restoration.training.mixture import random_spec, random_step
from restoration.training.post_deconvolution import (
    SAMPLE_MIXTURE,
    PostTrainConfig,
    add_common_arguments,
    check_common_arguments,
    fit,
    save_atomically,
    save_step,
    start_process,
)
from restoration.training.sipl import fade_some

log = logging.getLogger("experiments.post_dehaze.train")

#: Haze alone and in the composites it forms (scene effects first, sensor noise last; rain in front or behind).
HAZE_COMBOS: tuple[tuple[str, ...], ...] = (
    ("haze",), ("haze", "rain"), ("rain", "haze"), ("haze", "noise"), ("haze", "rain", "noise"), ("haze", "snow"))


@dataclass(frozen=True)
class DehazeTrainConfig:
    samples: int = 1200
    crop: int = 256
    batch: int = 8
    haze_share: float = 0.5
    fade_share: float = 0.25
    sample_seed: int = 1
    # the photos are held at these short sides (px) before cropping: at the crop size a crop is nearly the whole
    # scene, as evaluation sees it (sky and horizon in view)
    short_sides: tuple[int, ...] = (256, 320)


def sample_spec(rng: random.Random, haze_share: float) -> str:
    """A haze combination (`HAZE_COMBOS`, training ranges) a `haze_share` of the time, else a spec from
    `SAMPLE_MIXTURE`."""
    if rng.random() < haze_share:
        return format_spec([random_step(n, rng) for n in rng.choice(HAZE_COMBOS)])
    return random_spec(rng, SAMPLE_MIXTURE)


def make_samples(restorer: Restorer, sampler: CropSampler, cfg: DehazeTrainConfig) -> dict[str, torch.Tensor]:
    """{"clean", "degraded", "restored"}: (N, 3, crop, crop) float16 each, for `cfg.samples` crops."""
    rng = random.Random(cfg.sample_seed)
    clean_all, degraded_all, restored_all = [], [], []
    done = 0
    while done < cfg.samples:
        n = min(cfg.batch, cfg.samples - done)
        clean = fade_some(sampler.sample(n, rng), rng, cfg.fade_share)
        degraded = torch.cat([degrade(clean[i:i + 1], sample_spec(rng, cfg.haze_share), rng.randrange(2**31))[0]
                              for i in range(n)])
        with torch.inference_mode():
            restored = restorer.restore(degraded).cpu()
        clean_all.append(clean.half())
        degraded_all.append(degraded.half())
        restored_all.append(restored.half())
        done += n
        log.info("samples %d / %d", done, cfg.samples)
    return {"clean": torch.cat(clean_all), "degraded": torch.cat(degraded_all), "restored": torch.cat(restored_all)}


def features_and_gains(samples: dict[str, torch.Tensor], post: PostDehazeConfig, chunk: int = 64
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """`haze_features` and `dehaze_gains` of every example (the gains for `post`'s omegas and t0)."""
    features, gains = [], []
    for i in range(0, len(samples["clean"]), chunk):
        degraded, restored, clean = (samples[k][i:i + chunk].float() for k in ("degraded", "restored", "clean"))
        features.append(haze_features(degraded, restored, post))
        gains.append(dehaze_gains(restored, clean, post))
    return torch.cat(features), torch.cat(gains)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(p, DehazeTrainConfig.samples, DehazeTrainConfig.crop, DehazeTrainConfig.batch,
                         DehazeTrainConfig.sample_seed)
    p.add_argument("--haze-share", type=float, default=DehazeTrainConfig.haze_share)
    p.add_argument("--fade-share", type=float, default=DehazeTrainConfig.fade_share)
    p.add_argument("--short-sides", default=",".join(map(str, DehazeTrainConfig.short_sides)),
                   help="comma-separated short sides (px) the photos are held at before cropping")
    p.add_argument("--t0", type=float, default=PostDehazeConfig.t0, help="the dehazing's lower bound on transmission")
    p.add_argument("--margin", type=float, default=PostDehazeConfig.margin,
                   help="smallest predicted gain (dB) acted on")
    p.add_argument("--hidden", type=int, default=PostDehazeConfig.hidden, help="width of the predictor")
    p.add_argument("--weight-decay", type=float, default=PostTrainConfig.weight_decay)
    p.add_argument("--target-clip", type=float, default=PostTrainConfig.target_clip,
                   help="clip the fit's targets to +- this many dB")
    args = p.parse_args(argv)
    check_common_arguments(p, args)
    if args.hidden < 1:
        p.error(f"--hidden must be >= 1, got {args.hidden}")
    try:
        args.short_sides = tuple(int(v) for v in args.short_sides.split(","))
    except ValueError:
        p.error(f"--short-sides must be comma-separated integers, got {args.short_sides!r}")
    if any(side < args.crop for side in args.short_sides):
        p.error(f"--short-sides must each be at least --crop ({args.crop}), got {args.short_sides}")
    if not 0.01 <= args.t0 <= 1.0 or args.target_clip <= 0 or args.weight_decay < 0:
        p.error("--t0 must be in [0.01, 1], --target-clip > 0, --weight-decay >= 0")
    for flag in ("haze_share", "fade_share"):
        if not 0.0 <= getattr(args, flag) <= 1.0:
            p.error(f"--{flag.replace('_', '-')} must be in [0, 1], got {getattr(args, flag)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start_process(args)
    cfg = DehazeTrainConfig(samples=args.samples, crop=args.crop, batch=args.batch, haze_share=args.haze_share,
                            fade_share=args.fade_share, sample_seed=args.sample_seed, short_sides=args.short_sides)
    fit_cfg = PostTrainConfig(steps=args.steps, seed=args.seed, weight_decay=args.weight_decay,
                              target_clip=args.target_clip)
    post = PostDehazeConfig(t0=args.t0, margin=args.margin, hidden=args.hidden)
    cache = Path(args.samples_cache) if args.samples_cache else None
    if cache is not None and cache.is_file():
        samples = torch.load(cache, weights_only=True)
        log.info("reusing %d examples from %s", len(samples["clean"]), cache)
    else:
        exclude = tuple(s for s in args.exclude.split(",") if s)
        sampler = CropSampler.from_sources(args.images, args.skimage,
                                           CropConfig(crop=cfg.crop, short_sides=cfg.short_sides, rotate=False),
                                           exclude=exclude)
        # the step follows everything the backbone runs, its post-deconvolution step included
        restorer = create_restorer(args.backbone)
        samples = make_samples(restorer, sampler, cfg)
        if cache is not None:
            save_atomically(samples, cache)
    features, gains = features_and_gains(samples, post)
    model, report = fit(features, gains, fit_cfg, post, step=PostDehazer)
    facts = {"backbone": args.backbone, "images": args.images, "skimage": args.skimage, "exclude": args.exclude,
             **asdict(cfg), **{k: v for k, v in asdict(fit_cfg).items() if k not in asdict(cfg)}, **report}
    save_step(model, args.out, facts)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
