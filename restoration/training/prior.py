"""Train the project's pixel diffusion prior (a small diffusers UNet2DModel) on random crops of photos.

    python -m restoration.training.prior --images DIR [--images DIR2] [--skimage] --out assets/prior \
        --time-budget 7200 --threads 1 [--resume]

v-prediction (or epsilon) on the DDPM linear schedule; timesteps are drawn mostly from [0, --max-t) because
the prior only ever starts from a restored image at low to moderate noise. Large photos are randomly
downscaled (short side ~256-768 px) before cropping so crops match the scale the app sees.
The training state (weights, EMA, optimiser, random generators, step, fitted schedule, loss log) is saved
atomically every --checkpoint-minutes and on SIGTERM / SIGINT, so a killed run resumes (--resume) to the
weights an uninterrupted one reaches.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from restoration.diffusion.pixel import PixelPriorConfig, _asdict, build_pixel_unet, build_scheduler, save_pixel_prior
from restoration.io import list_images
from restoration.runtime import resolve_device, tune_allocator
from restoration.training.data import load_photo, skimage_photos

#: scikit-image's bundled colour photographs (no downloads needed).
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 20000
    batch_size: int = 8
    crop: int = 96
    lr: float = 4e-4
    weight_decay: float = 1e-4
    max_t: int = 500
    full_range_fraction: float = 0.1
    min_short_side: int = 256
    max_short_side: int = 768
    ema_decay: float = 0.999
    seed: int = 0
    warmup: int = 200
    final_lr_fraction: float = 0.05
    prediction: str = "v_prediction"
    min_snr: float = 5.0  # Min-SNR-gamma loss weighting (0: off)


def load_photos(dirs: list[str], use_skimage: bool) -> tuple[list[torch.Tensor], list[str]]:
    """RGB photos as uint8 (3, H, W) tensors, and their names."""
    photos, names = [], []
    for d in dirs:
        for p in list_images(Path(d).expanduser()):
            photos.append(load_photo(p))
            names.append(str(p))
    if use_skimage:
        for name, photo in skimage_photos(SKIMAGE_PHOTOS):
            photos.append(photo)
            names.append(f"skimage.data.{name}")
    if not photos:
        raise ValueError("no training photos: pass --images DIR and/or --skimage")
    return photos, names


def random_crop(photo: torch.Tensor, cfg: TrainConfig, rng: random.Random) -> torch.Tensor:
    """One (3, crop, crop) float crop in [-1, 1] after a random downscale (short side ~256-768 px)."""
    _, h, w = photo.shape
    short = min(h, w)
    target = rng.uniform(cfg.min_short_side, cfg.max_short_side)
    scale = min(1.0, target / short)  # only downscale: upscaled crops would teach blur
    src = max(cfg.crop, round(cfg.crop / scale))
    src = min(src, h, w)
    y, x = rng.randint(0, h - src), rng.randint(0, w - src)
    patch = photo[:, y : y + src, x : x + src].float().unsqueeze(0) / 255.0
    if src != cfg.crop:
        patch = F.interpolate(patch, size=(cfg.crop, cfg.crop), mode="bilinear", antialias=True, align_corners=False)
    patch = patch[0]
    if rng.random() < 0.5:
        patch = patch.flip(-1)
    patch = torch.rot90(patch, rng.randint(0, 3), dims=(-2, -1))
    return (patch.clamp(0, 1) * 2 - 1).contiguous()


def sample_timesteps(n: int, cfg: TrainConfig, num_train_timesteps: int, gen: torch.Generator) -> torch.Tensor:
    """Mostly uniform on [0, max_t); a `full_range_fraction` uniform on [0, T) keeps high t sane."""
    low = torch.randint(0, cfg.max_t, (n,), generator=gen)
    full = torch.randint(0, num_train_timesteps, (n,), generator=gen)
    pick_full = torch.rand(n, generator=gen) < cfg.full_range_fraction
    return torch.where(pick_full, full, low)


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to `final_lr_fraction` of the peak at `total`."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, total - cfg.warmup))
    floor = cfg.final_lr_fraction
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def training_target(x0: torch.Tensor, noise: torch.Tensor, a: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """What the U-Net learns to output: eps, or v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022, eq. 9)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return a.sqrt() * noise - (1 - a).sqrt() * x0
    raise ValueError(f"prediction must be epsilon or v_prediction, got {prediction_type!r}")


def loss_weight(a: torch.Tensor, prediction_type: str, min_snr: float) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023, eq. 6) for the per-sample MSE of eps or v: the x0 error is then
    weighted by min(SNR, gamma), so the near-clean timesteps stop dominating the gradient. 0: no reweighting."""
    if min_snr <= 0:
        return torch.ones_like(a)
    snr = a / (1 - a)
    return snr.clamp(max=min_snr) / (snr + 1 if prediction_type == "v_prediction" else snr)


def _save_atomically(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", action="append", default=[], help="folder of training photos (repeatable)")
    ap.add_argument("--skimage", action="store_true", help="also use scikit-image's bundled colour photos")
    ap.add_argument("--out", default="assets/prior")
    ap.add_argument("--state", default=None, help="training state file (default: runs/train_prior/state.pt)")
    ap.add_argument("--steps", type=int, default=TrainConfig.steps,
                    help="total optimiser steps (the schedule's length) unless --time-budget fits it")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds of training in all (over every resumed run): the step count is fitted to it "
                         "from the measured speed of the first steps, re-fitted at every checkpoint, and kept in "
                         "the state")
    ap.add_argument("--checkpoint-minutes", type=float, default=5.0,
                    help="save the state and the EMA prior at least this often (minutes)")
    ap.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    ap.add_argument("--crop", type=int, default=TrainConfig.crop)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--warmup", type=int, default=TrainConfig.warmup)
    ap.add_argument("--max-t", type=int, default=TrainConfig.max_t)
    ap.add_argument("--prediction", default=TrainConfig.prediction, choices=("epsilon", "v_prediction"))
    ap.add_argument("--min-snr", type=float, default=TrainConfig.min_snr,
                    help="Min-SNR-gamma loss weighting: x0 errors weighted by min(SNR, gamma) (0: plain MSE)")
    ap.add_argument("--channels", default="32,64,128,128", help="UNet block_out_channels")
    ap.add_argument("--unshuffle", type=int, default=2, help="pixel-unshuffle factor before the U-Net")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--save-every", type=int, default=0, help="also save every N steps (0: by time only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="continue from --state if it exists")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    tune_allocator()
    device = torch.device(resolve_device(args.device))
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, crop=args.crop, lr=args.lr, warmup=args.warmup,
                      max_t=args.max_t, seed=args.seed, prediction=args.prediction,
                      min_snr=args.min_snr)
    pcfg = PixelPriorConfig(block_out_channels=tuple(int(c) for c in args.channels.split(",")),
                            pixel_unshuffle=args.unshuffle, prediction_type=cfg.prediction,
                            norm_num_groups=min(16, int(args.channels.split(",")[0])))
    if cfg.crop % (pcfg.pixel_unshuffle * 2 ** (len(pcfg.block_out_channels) - 1)):
        raise ValueError("--crop must be a multiple of unshuffle * 2^(levels-1)")
    state_path = Path(args.state or "runs/train_prior/state.pt")
    photos, names = load_photos(args.images, args.skimage)
    print(f"{len(photos)} photos, device {device}, threads {torch.get_num_threads()}", file=sys.stderr)

    torch.manual_seed(cfg.seed)
    unet = build_pixel_unet(pcfg).to(device).train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    alphas = build_scheduler(pcfg).alphas_cumprod.float().to(device)
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, losses, elapsed_before, total = 0, [], 0.0, (None if args.time_budget else cfg.steps)
    if args.resume and state_path.is_file():
        st = torch.load(state_path, map_location=device, weights_only=False)
        unet.load_state_dict(st["unet"]); ema.load_state_dict(st["ema"]); opt.load_state_dict(st["opt"])
        step, losses, elapsed_before = st["step"], st["losses"], st.get("elapsed_s", 0.0)
        if args.time_budget:  # the fitted length; an explicit --steps may lengthen a run instead
            total = st.get("total_steps", total)
            if total is not None and step >= total and elapsed_before < args.time_budget:
                total = None  # a finished run given a larger budget: re-fit its schedule on this machine's speed
        rng.setstate(st["py_rng"]); gen.set_state(st["torch_rng"])
        print(f"resumed at step {step} of {total}", file=sys.stderr)
    r = pcfg.pixel_unshuffle
    stop = {"signal": None}

    def on_signal(signum, _frame):  # finish the current step, save, and leave
        stop["signal"] = signum

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    t0 = time.time()
    elapsed = lambda: elapsed_before + time.time() - t0

    def save() -> None:
        _save_atomically({"unet": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                          "step": step, "total_steps": total, "losses": losses, "elapsed_s": elapsed(),
                          "py_rng": rng.getstate(), "torch_rng": gen.get_state(), "prior_config": _asdict(pcfg)},
                         state_path)
        save_pixel_prior(args.out, ema, pcfg, card=_card(cfg, names, step, total, losses, elapsed(), device))

    try:
        last_save, last_save_step, probe_from, first_step = time.time(), step, None, step
        bar = tqdm(total=total, initial=step, desc="train_prior", mininterval=10, file=sys.stderr)
        running = None
        while total is None or step < total:
            x0 = torch.stack([random_crop(photos[rng.randrange(len(photos))], cfg, rng) for _ in range(cfg.batch_size)])
            x0 = x0.to(device)
            t = sample_timesteps(cfg.batch_size, cfg, alphas.shape[0], gen).to(device)
            noise = torch.randn(x0.shape, generator=gen).to(device)
            a = alphas[t].view(-1, 1, 1, 1)
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
            pred = F.pixel_shuffle(unet(F.pixel_unshuffle(x_t, r), t).sample, r)
            per_sample = (pred - training_target(x0, noise, a, cfg.prediction)).square().mean(dim=(1, 2, 3))
            loss = (loss_weight(a.view(-1), cfg.prediction, cfg.min_snr) * per_sample).mean()
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total or cfg.steps, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), unet.parameters()):
                    pe.lerp_(p, 1 - decay)
            step += 1
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            losses.append(round(loss.item(), 5))
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}")
            if total is None:  # fit the schedule to the time budget from the speed of steps 5..25
                if step == first_step + 5:
                    probe_from = (time.time(), step)
                elif probe_from and step == probe_from[1] + 20:
                    per_step = (time.time() - probe_from[0]) / 20
                    total = step + max(1, int((args.time_budget - elapsed()) / per_step))
                    bar.total = total
                    print(f"{per_step:.3f} s per step: {total} steps fit {args.time_budget:.0f} s", file=sys.stderr)
            due = time.time() - last_save > args.checkpoint_minutes * 60
            if due and args.time_budget and total is not None:  # re-fit to the speed since the last save
                per_step = (time.time() - last_save) / max(1, step - last_save_step)
                total = max(step + 1, step + int((args.time_budget - elapsed()) / per_step))
                bar.total = total
            if due or (args.save_every and step % args.save_every == 0) or stop["signal"] or step == total:
                save()
                last_save, last_save_step = time.time(), step
            if stop["signal"]:
                print(f"stopped by signal {stop['signal']} at step {step}; resume with --resume", file=sys.stderr)
                break
            if args.time_budget and elapsed() >= args.time_budget and step != total:  # slower than fitted
                save()
                print(f"time budget spent at step {step} of {total}", file=sys.stderr)
                break
        bar.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"saved prior to {args.out} (step {step} of {total})", file=sys.stderr)


def _card(cfg: TrainConfig, names: list[str], step: int, total: int | None, losses: list[float], elapsed: float,
          device) -> dict:
    """Training facts for the model card: data, steps, wall time, loss curve summary (windowed means)."""
    window = max(1, min(500, len(losses) // 10 or 1))
    curve = [
        {"step": i + window, "mean_loss": round(float(np.mean(losses[i : i + window])), 5)}
        for i in range(0, len(losses) - window + 1, window)
    ]
    return {
        "training": {
            "steps": step,
            "schedule_steps": total,
            "prediction": cfg.prediction,
            "loss_weighting": f"min-SNR-{cfg.min_snr:g}" if cfg.min_snr > 0 else "none",
            "batch_size": cfg.batch_size,
            "crop": cfg.crop,
            "lr": cfg.lr,
            "lr_schedule": f"linear warm-up {cfg.warmup} steps, cosine to {cfg.final_lr_fraction} x",
            "optimizer": "AdamW",
            "ema_decay": cfg.ema_decay,
            "timesteps": f"{1 - cfg.full_range_fraction:.0%} uniform [0, {cfg.max_t}), rest uniform [0, 1000)",
            "short_side_rescale": [cfg.min_short_side, cfg.max_short_side],
            "wall_time_s": round(elapsed, 1),
            "device": str(device),
            "threads": torch.get_num_threads(),
            "host": platform.machine(),
            "torch": torch.__version__,
            "data": names,
            "loss_curve": curve[-20:] if len(curve) > 20 else curve,
            "final_loss_mean_last_window": curve[-1]["mean_loss"] if curve else None,
            "weights_stored_as": "float16 (EMA weights)",
        }
    }


if __name__ == "__main__":
    main()
