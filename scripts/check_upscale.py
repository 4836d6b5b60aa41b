"""Real upscaling by a super-resolution backbone on photos: each photo at SIZE px is the ground truth, its bicubic
(antialiased) downscale by the backbone's scale the input, `Restorer.upscale` the restoration. Prints mean PSNR, SSIM,
hf_ratio (`restoration.evaluate.high_frequency_ratio`) and seconds per image, beside plain bicubic upsampling.

    OMP_NUM_THREADS=1 python scripts/check_upscale.py data/photos/eval [--backbone realesrgan] [--size 256]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from restoration.backbones import create_restorer
from restoration.evaluate import high_frequency_ratio
from restoration.io import list_images, load_image, resize_short_side_center_crop
from restoration.metrics import psnr, ssim


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("images")
    p.add_argument("--backbone", default="realesrgan")
    p.add_argument("--size", type=int, default=256)
    a = p.parse_args(argv)
    restorer = create_restorer(a.backbone)
    s = restorer.scale
    if s <= 1 or a.size % s:
        p.error(f"--backbone {a.backbone} has scale {s}: need a scale > 1 that divides --size {a.size}")
    rows = []
    for path in list_images(a.images):
        gt = resize_short_side_center_crop(load_image(path), a.size)
        small = F.interpolate(gt, size=(a.size // s,) * 2, mode="bicubic", align_corners=False, antialias=True)
        small = small.clamp(0, 1)
        bicubic = F.interpolate(small, size=(a.size,) * 2, mode="bicubic", align_corners=False).clamp(0, 1)
        t0 = time.perf_counter()
        out = restorer.upscale(small)
        seconds = time.perf_counter() - t0
        rows.append((float(psnr(bicubic, gt)[0]), float(psnr(out, gt)[0]), float(ssim(out, gt)[0]),
                     high_frequency_ratio(out, gt), seconds))
    mean = [sum(col) / len(rows) for col in zip(*rows)]
    print(f"{a.backbone} x{s}, {len(rows)} photos, {a.size // s} -> {a.size} px: bicubic {mean[0]:.2f} dB; upscale "
          f"{mean[1]:.2f} dB, SSIM {mean[2]:.4f}, hf_ratio {mean[3]:.3f}, {mean[4]:.2f} s/image "
          f"(max {max(r[4] for r in rows):.2f} s, {torch.get_num_threads()} thread(s))")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
