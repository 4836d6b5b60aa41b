"""CBM3D told the noise sigma, on the noisy images `python -m restoration.evaluate_prior --dump-noisy DIR` wrote:
the classical anchor for the prior's one-step estimate (same photos, same noise).

Runs in a separate environment that has PyPI's `bm3d` (not a project dependency):
    python3 -m venv /tmp/bm3d-venv && /tmp/bm3d-venv/bin/pip install --isolated bm3d numpy
    /tmp/bm3d-venv/bin/python scripts/cbm3d_anchor.py DIR [--strengths 0.1,0.2] > cbm3d.json
Prints {"method": "CBM3D", "strengths": {"0.1": {"sigma": .., "psnr": .., "images": n}}, "per_image": {...}}.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import bm3d
import numpy as np


def psnr(x: np.ndarray, y: np.ndarray) -> float:
    return 10 * math.log10(1.0 / max(float(np.mean((x.astype(np.float64) - y) ** 2)), 1e-10))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    p.add_argument("--strengths", default="", help="only these (comma-separated); default: every one dumped")
    a = p.parse_args()
    wanted = {s.strip() for s in a.strengths.split(",") if s.strip()}
    per_image: dict[str, dict[str, float]] = {}
    sigmas: dict[str, float] = {}
    for meta in sorted(a.folder.glob("*_s*.json")):
        stem = meta.stem
        name, key = stem.rsplit("_s", 1)
        if wanted and key not in wanted:
            continue
        sigma = json.loads(meta.read_text())["sigma"]
        noisy = np.load(a.folder / f"{stem}.npy")
        clean = np.load(a.folder / f"{stem}_clean.npy")
        est = np.clip(bm3d.bm3d_rgb(noisy, sigma / 255.0), 0, 1)
        per_image.setdefault(key, {})[name] = psnr(est, clean)
        sigmas[key] = sigma
        print(f"{name} s={key} sigma {sigma:.1f}: {per_image[key][name]:.2f} dB", file=sys.stderr, flush=True)
    out = {"method": "CBM3D (PyPI bm3d, bm3d_rgb told sigma)", "bm3d_version": getattr(bm3d, "__version__", None),
           "strengths": {k: {"sigma": sigmas[k], "psnr": float(np.mean(list(v.values()))), "images": len(v)}
                         for k, v in sorted(per_image.items())},
           "per_image": per_image}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
