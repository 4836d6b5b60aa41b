"""Write the bundled sample images of the app: assets/samples/*.png, ~256 px, from scikit-image's photos.

    .venv/bin/python scripts/make_samples.py [--size 256] [--out assets/samples]

The photos ship with scikit-image (public domain / CC0, see skimage.data); each is resized so its short
side is `size` and center-cropped to size x size.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

PHOTOS = {"astronaut": data.astronaut, "coffee": data.coffee, "chelsea": data.chelsea, "rocket": data.rocket}


def square(array: np.ndarray, size: int) -> Image.Image:
    """RGB uint8 (H, W, 3) -> size x size PIL image (short side resized with Lanczos, then center crop)."""
    img = Image.fromarray(array).convert("RGB")
    scale = size / min(img.size)
    w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    img = img.resize((w, h), Image.Resampling.LANCZOS)
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "assets" / "samples")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    for name, load in PHOTOS.items():
        path = a.out / f"{name}.png"
        square(load(), a.size).save(path, optimize=True)
        print(path)


if __name__ == "__main__":
    main()
