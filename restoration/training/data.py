"""Training photos: load a folder of clean images at several scales and sample random crops.

Photos are downscaled so their short side matches the scales the app and the evaluation see (a large
wallpaper resized to 256-768 px), then cropped at random with flips and 90-degree rotations.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from restoration.io import list_images, load_image

#: scikit-image's bundled colour photographs (no download needed).
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
                  "cat", "retina", "colorwheel")


def load_photo(path: str | Path) -> torch.Tensor:
    """A photo file -> uint8 (3, H, W) (EXIF orientation and alpha handled by `restoration.io.load_image`)."""
    return (load_image(path)[0] * 255).round().to(torch.uint8)


def skimage_photos(names: tuple[str, ...] = SKIMAGE_PHOTOS) -> list[tuple[str, torch.Tensor]]:
    """scikit-image's bundled colour photos as (name, uint8 (3, H, W))."""
    import skimage.data

    out = []
    for name in names:
        try:
            arr = getattr(skimage.data, name)()
        except Exception:  # some need optional downloads (pooch); skip those
            continue
        if arr.ndim == 3 and arr.shape[2] >= 3:
            out.append((name, torch.from_numpy(np.ascontiguousarray(arr[..., :3])).permute(2, 0, 1).contiguous()))
    return out


@dataclass(frozen=True)
class CropConfig:
    """Crop size (px), the short sides the photos are held at, and whether crops are also rotated by multiples
    of 90 degrees (off for steps that read an upright scene, such as haze growing toward the horizon)."""

    crop: int = 64
    short_sides: tuple[int, ...] = (256, 384, 512, 768)
    rotate: bool = True


class CropSampler:
    """Random crops (B, 3, crop, crop) float32 in [0, 1] from photos held in memory at several scales."""

    def __init__(self, photos: list[torch.Tensor], config: CropConfig = CropConfig()):
        self.config = config
        self.images: list[torch.Tensor] = []
        for img in photos:
            h, w = img.shape[-2:]
            for side in config.short_sides:
                s = side / min(h, w)
                if s > 1.0:
                    continue
                size = (max(config.crop, round(h * s)), max(config.crop, round(w * s)))
                x = F.interpolate(img[None].float(), size=size, mode="bicubic", antialias=True, align_corners=False)
                self.images.append(x[0].clamp(0, 255).round().to(torch.uint8))
            if min(h, w) >= config.crop and min(h, w) <= min(config.short_sides):
                self.images.append(img)
        if not self.images:
            raise ValueError(f"no photo is at least {config.crop} px on its short side")

    @classmethod
    def from_sources(cls, folders: list[str | Path], use_skimage: bool, config: CropConfig = CropConfig(),
                     exclude: tuple[str, ...] = ()) -> "CropSampler":
        photos = []
        for folder in folders:
            photos += [load_photo(p) for p in list_images(folder) if p.stem not in exclude]
        if use_skimage:
            photos += [img for _, img in skimage_photos()]
        if not photos:
            raise ValueError("no training photos: give --images DIR and/or --skimage")
        return cls(photos, config)

    def sample(self, batch: int, rng: random.Random) -> torch.Tensor:
        c = self.config.crop
        crops = []
        for _ in range(batch):
            img = self.images[rng.randrange(len(self.images))]
            h, w = img.shape[-2:]
            top, left = rng.randint(0, h - c), rng.randint(0, w - c)
            x = img[:, top:top + c, left:left + c]
            if rng.random() < 0.5:
                x = x.flip(-1)
            if self.config.rotate:
                x = torch.rot90(x, rng.randrange(4), dims=(-2, -1))
            crops.append(x)
        return torch.stack(crops).float() / 255.0
