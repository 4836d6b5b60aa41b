"""Image files <-> (1, 3, H, W) float32 tensors in [0, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

#: File suffixes `list_images` picks up (lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image -> (1, 3, H, W) float32 in [0, 1]; EXIF orientation applied, alpha composited on white."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_pil(t: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) or (3, H, W) float in [0, 1] -> 8-bit RGB PIL image (values clamped, rounded)."""
    if t.ndim == 4:
        if t.shape[0] != 1:
            raise ValueError(f"expected a single image (batch 1), got batch {t.shape[0]}")
        t = t[0]
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"expected a (1, 3, H, W) or (3, H, W) tensor, got shape {tuple(t.shape)}")
    arr = (t.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, mode="RGB")


def load_image(path: str | Path) -> torch.Tensor:
    """Read an image file -> (1, 3, H, W) float32 in [0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    with Image.open(path) as img:
        img.load()
        return pil_to_tensor(img)


def save_image(t: torch.Tensor, path: str | Path) -> Path:
    """Write a (1, 3, H, W) tensor in [0, 1] as an 8-bit image; the format follows the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensor_to_pil(t).save(path)
    return path


def resize_short_side_center_crop(t: torch.Tensor, n: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, n, n): bicubic resize (antialiased) so the short side is n, then center crop."""
    if n < 1:
        raise ValueError(f"size must be a positive number of pixels, got {n}")
    h, w = t.shape[-2:]
    s = n / min(h, w)
    nh, nw = max(n, round(h * s)), max(n, round(w * s))
    if (nh, nw) != (h, w):
        t = F.interpolate(t, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    top, left = (nh - n) // 2, (nw - n) // 2
    return t[..., top : top + n, left : left + n].clamp(0, 1).contiguous()


def list_images(directory: str | Path) -> list[Path]:
    """Image files directly inside `directory`, sorted by name; errors if missing or empty."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"image directory not found: {directory}")
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images in {directory} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files
