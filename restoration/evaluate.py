"""Evaluate a restoration backbone on a folder of clean images: degrade, restore, score.

    python -m restoration.evaluate --backbone sipl --degradation noise:25 --images DIR --size 128 \
        --seed 0 --json [--rounds R] [--ensemble N] [--no-post-deconvolution | --post-deconvolution F]
        [--informed] [--device auto] [--limit K] [--nr-metrics piqe[,...]]

Each image is resized so its short side is --size (bicubic, antialiased), center-cropped to a square,
degraded with the spec and seed (seed + image index), restored, and scored with PSNR/SSIM on RGB in
[0, 1]. With --json exactly one JSON object goes to stdout:

    {"backbone", "degradation", "size", "seed", "device", "informed", "restorer": {...},
     "images": [{"name", "seed", "input_psnr", "input_ssim", "psnr", "ssim", "input_hf_ratio", "hf_ratio",
                 ["clean_piqe", "input_piqe", "piqe"], ["psnr_single_pass", "ssim_single_pass"], "seconds"}],
     "mean": {same numeric keys}, "nr_metrics": [...]}

`--nr-metrics piqe` adds no-reference pyiqa scores of the clean photo, the input and the restoration
(`restoration/selection.py`; only metrics that need no downloaded weights; PIQE: lower is better).

`hf_ratio` is the restoration's high-frequency energy over the clean image's (`high_frequency_ratio`: luminance above
1/4 cycle per pixel, the upper half of the spectrum, where a x4 bicubic upsampling leaves almost nothing): near 0 a blurred result, near 1 as much detail
as the photo (not necessarily the photo's detail; PSNR says how far). `--device auto` (the default) is CUDA when
torch sees a GPU, else the CPU; the JSON's `device` says which ran.

`*_single_pass` (SIPL self-refinement turned off) appear only for backbones with `restore_single_pass`.
The shipped SIPL networks end with their blind post-deconvolution step (`restorer` names its file), in the refined
and in the single pass alike; --no-post-deconvolution measures them without it, --post-deconvolution FILE with
another file. The classical baselines are told the degradation; SIPL backbones are blind unless --informed
(`"informed"` in the JSON says which), and then a SIPL backbone told a spec with haze ends with dark channel prior
dehazing of its output (`told.TOLD_DEHAZE`). Logs go to stderr. `main(argv, wrap)` evaluates a step around the
backbone (the experiments' commands use it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from restoration.backbones import available_backbones, create_restorer, is_sipl_backbone
from restoration.backbones.base import Restorer
from restoration.backbones.registry import CLASSICAL_METHODS
from restoration.degradations import degrade, parse_spec
from restoration.io import list_images, load_image, resize_short_side_center_crop
from restoration.metrics import psnr, ssim
from restoration.runtime import DEVICE_CHOICES, resolve_device, synchronize, tune_allocator

log = logging.getLogger("restoration.evaluate")


@dataclass(frozen=True)
class EvalConfig:
    """What one evaluation run does; mirrors the command-line flags."""

    backbone: str
    degradation: str
    images: Path
    size: int = 128
    seed: int = 0
    rounds: int | None = None
    device: str = "cpu"  # resolved: 'cpu' or 'cuda[:N]' (the command line's 'auto' is resolved before)
    limit: int | None = None
    ensemble: int | None = None
    # SIPL's post step: the shipped one unless `no_post_deconvolution` (none) or a file in `post_deconvolution`
    no_post_deconvolution: bool = False
    post_deconvolution: Path | None = None
    # tell SIPL backbones the degradation spec too, as the classical baselines always are (told haze, they end with
    # dehazing: `told.TOLD_DEHAZE`)
    informed: bool = False
    # no-reference pyiqa metrics scored on input and restoration (offline ones only, e.g. piqe)
    nr_metrics: tuple[str, ...] = ()


#: A restorer -> a step around it (`main`'s `wrap`).
Wrap = Callable[[Restorer], Restorer]


def high_frequency_energy(x: torch.Tensor, cutoff: float = 0.25) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B,) power of the luminance above `cutoff` cycles per pixel (radial, FFT)."""
    gray = (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)
    gray = gray - gray.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(gray).abs().square()
    fy = torch.fft.fftfreq(x.shape[-2], device=x.device).view(-1, 1)
    fx = torch.fft.fftfreq(x.shape[-1], device=x.device).view(1, -1)
    return (power * ((fy.square() + fx.square()).sqrt() > cutoff)).sum(dim=(-2, -1))


def high_frequency_ratio(restored: torch.Tensor, clean: torch.Tensor) -> float:
    """High-frequency energy of `restored` over that of `clean` ((1, 3, H, W) each): how much fine detail is there."""
    return float(high_frequency_energy(restored)[0] / high_frequency_energy(clean)[0].clamp_min(1e-12))


def _score(restored: torch.Tensor, clean: torch.Tensor) -> dict[str, float]:
    return {"psnr": float(psnr(restored, clean)[0]), "ssim": float(ssim(restored, clean)[0]),
            "hf_ratio": high_frequency_ratio(restored, clean)}


def check_nr_metrics(names: tuple[str, ...]) -> tuple[str, ...]:
    """The names if each is a no-reference pyiqa metric usable offline; ValueError saying what is wrong."""
    from restoration.selection import MetricUnavailableError, metric_info, missing_weight_files

    for name in names:
        try:
            info = metric_info(name)
        except MetricUnavailableError as exc:
            raise ValueError(str(exc)) from None
        if info.kind != "NR":
            raise ValueError(f"--nr-metrics: {name!r} is a full-reference metric; name no-reference ones (e.g. piqe)")
        if missing := missing_weight_files(info):
            raise ValueError(f"--nr-metrics: {name!r} needs weights that are not installed ({', '.join(missing)}); "
                             "piqe needs none")
    return names


def _nr_scores(images: dict[str, torch.Tensor], metrics: tuple[str, ...]) -> dict[str, float]:
    from restoration.selection import score_images

    return {f"{prefix}{m}": float(v[0]) for prefix, x in images.items() for m, v in score_images(x, metrics).items()}


def evaluate_image(restorer: Restorer, clean: torch.Tensor, spec: str, seed: int,
                   nr_metrics: tuple[str, ...] = ()) -> dict[str, Any]:
    """Degrade (1, 3, N, N) `clean` with (spec, seed), restore it, and return the scores and timing (plus the
    no-reference `nr_metrics` of input and restoration)."""
    degraded, record = degrade(clean, spec, seed)
    row: dict[str, Any] = {"seed": record.seed}
    inp = _score(degraded, clean)
    row.update({"input_psnr": inp["psnr"], "input_ssim": inp["ssim"], "input_hf_ratio": inp["hf_ratio"]})
    synchronize(degraded.device)
    start = time.perf_counter()
    restored = restorer.restore(degraded)
    synchronize(degraded.device)
    seconds = time.perf_counter() - start
    row.update(_score(restored, clean))
    single_pass = getattr(restorer, "restore_single_pass", None)
    if callable(single_pass):
        once = _score(single_pass(degraded), clean)
        row.update({"psnr_single_pass": once["psnr"], "ssim_single_pass": once["ssim"]})
    if nr_metrics:
        row.update(_nr_scores({"clean_": clean, "input_": degraded, "": restored}, nr_metrics))
    row["seconds"] = seconds
    return row


def build_restorer(config: EvalConfig) -> Restorer:
    """The backbone under test; classical baselines get the degradation spec as their hint, SIPL backbones too when
    `config.informed`."""
    name = config.backbone.strip().lower()
    flags = {"--rounds": ("rounds", config.rounds), "--ensemble": ("ensemble", config.ensemble),
             "--informed": ("degradation", config.degradation if config.informed and name not in CLASSICAL_METHODS
                            else None)}
    sipl_only = {flag: option for flag, option in flags.items() if option[1] is not None}
    if config.no_post_deconvolution or config.post_deconvolution is not None:  # none, or the file given
        sipl_only["--no-post-deconvolution / --post-deconvolution"] = ("post", None)
    known = name in available_backbones() or Path(config.backbone).expanduser().is_file()
    if sipl_only and known and not is_sipl_backbone(config.backbone):  # unknown names get the registry's error
        raise ValueError(f"{next(iter(sipl_only))} applies only to SIPL backbones, not {config.backbone!r}")
    options: dict[str, Any] = dict(sipl_only.values())
    if config.post_deconvolution is not None:
        from restoration.backbones.post_deconvolution import PostDeconvolver
        from restoration.backbones.post_step import PostStep

        options["post"] = PostStep.from_file(config.post_deconvolution, PostDeconvolver)
    if name in CLASSICAL_METHODS:
        options["degradation"] = config.degradation
    return create_restorer(config.backbone, device=config.device, **options)


def run_evaluation(config: EvalConfig, wrap: Wrap | None = None) -> dict[str, Any]:
    """Evaluate `config.backbone` (inside `wrap(backbone)` when given) on every image of `config.images`; returns
    the JSON-ready report.

    On CUDA the convolutions and matmuls run in full float32 (TF32 off, cuDNN's default is on), so that a GPU
    gives the CPU's figures; the previous settings come back afterwards.
    """
    if torch.device(config.device).type != "cuda":
        return _run_evaluation(config, wrap)
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return _run_evaluation(config, wrap)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous


def _run_evaluation(config: EvalConfig, wrap: Wrap | None = None) -> dict[str, Any]:
    if config.size < 16:
        raise ValueError(f"--size must be at least 16 px (SSIM uses an 11 px window), got {config.size}")
    if config.limit is not None and config.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {config.limit}")
    parse_spec(config.degradation)  # fail on a bad spec before loading anything
    check_nr_metrics(config.nr_metrics)
    files = list_images(config.images)
    if config.limit is not None:
        files = files[: config.limit]
    restorer = build_restorer(config)
    if wrap is not None:
        restorer = wrap(restorer)
    if torch.device(config.device).type == "cuda":
        # one untimed restoration first: CUDA context, cuDNN / cuBLAS handles and lazily loaded kernels would
        # otherwise land in the first image's seconds (and dominate the mean)
        warm = resize_short_side_center_crop(load_image(files[0]), config.size).to(config.device)
        evaluate_image(restorer, warm, config.degradation, config.seed)
    rows = []
    for i, path in enumerate(files):
        clean = resize_short_side_center_crop(load_image(path), config.size).to(config.device)
        row = {"name": path.name, **evaluate_image(restorer, clean, config.degradation, config.seed + i,
                                                    config.nr_metrics)}
        log.info(
            "%s: input %.2f dB -> %.2f dB (SSIM %.4f) in %.2fs",
            path.name,
            row["input_psnr"],
            row["psnr"],
            row["ssim"],
            row["seconds"],
        )
        rows.append(row)
    numeric = [k for k, v in rows[0].items() if isinstance(v, float)]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in numeric}
    return {
        "backbone": config.backbone,
        "degradation": config.degradation,
        "size": config.size,
        "seed": config.seed,
        "device": config.device,
        "informed": config.informed or config.backbone.strip().lower() in CLASSICAL_METHODS,
        "restorer": restorer.describe(),
        "images": rows,
        "mean": mean,
        "nr_metrics": list(config.nr_metrics),
    }


def parse_args(argv: list[str] | None = None) -> tuple[EvalConfig, bool]:
    p = argparse.ArgumentParser(prog="python -m restoration.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="sipl", help="registry name or checkpoint path (default: sipl)")
    p.add_argument("--degradation", required=True, help="degradation spec, e.g. noise:25 or blur:2+jpeg:40")
    p.add_argument("--images", required=True, type=Path, help="folder of clean images")
    p.add_argument("--size", type=int, default=128, help="square crop side in px (default 128)")
    p.add_argument("--seed", type=int, default=0, help="degradation seed of the first image (default 0)")
    p.add_argument("--rounds", type=int, default=None, help="SIPL self-refinement rounds (SIPL only)")
    p.add_argument("--ensemble", type=int, default=None,
                   help="SIPL geometric self-ensemble: 1, 2, 4 or 8 flipped/rotated copies averaged (default 1)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--no-post-deconvolution", action="store_true",
                       help="shipped SIPL networks: leave out the blind post-deconvolution step")
    group.add_argument("--post-deconvolution", type=Path, default=None, metavar="FILE",
                       help="SIPL: run this post-deconvolution file (restoration.training.post_deconvolution) instead of the "
                            "shipped one")
    p.add_argument("--informed", action="store_true",
                   help="tell a SIPL backbone the degradation, as the classical ones always are: told haze, it "
                        "dehazes its output at the end (default: blind)")
    p.add_argument("--device", default="auto", help=f"{DEVICE_CHOICES} (default auto: CUDA when torch sees a GPU)")
    p.add_argument("--limit", type=int, default=None, help="evaluate at most this many images")
    p.add_argument("--nr-metrics", default="", metavar="METRIC[,METRIC]",
                   help="no-reference pyiqa metrics to score input and restoration with (offline ones, e.g. piqe)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    a = p.parse_args(argv)
    nr_metrics = tuple(dict.fromkeys(m.strip().lower() for m in a.nr_metrics.split(",") if m.strip()))
    try:
        device = resolve_device(a.device)
    except ValueError as exc:
        p.error(f"--device: {exc}")
    config = EvalConfig(a.backbone, a.degradation, a.images, a.size, a.seed, a.rounds, device, a.limit,
                        a.ensemble, no_post_deconvolution=a.no_post_deconvolution,
                        post_deconvolution=a.post_deconvolution, informed=a.informed, nr_metrics=nr_metrics)
    return config, a.json


def main(argv: list[str] | None = None, wrap: Wrap | None = None) -> int:
    """The command; `wrap` puts a step around the backbone under test (its `describe()` lands in `restorer`)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    config, as_json = parse_args(argv)
    tune_allocator()
    try:
        report = run_evaluation(config, wrap)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(report))
    else:
        m = report["mean"]
        print(
            f"{config.backbone} on {config.degradation} ({len(report['images'])} images, {config.size}px): "
            f"input {m['input_psnr']:.2f} dB -> {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}, "
            f"{m['seconds']:.2f} s/image"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
