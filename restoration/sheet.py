"""A contact sheet of one round: is there anything worth choosing between?

Top rows: every image of the round (input, restored, each candidate labelled with its strength and seed, the
refined result) side by side at one scale. Bottom rows: the same region of each, cut from the full-resolution
images and shown at 1:1, or enlarged by an integer factor with nearest-neighbour sampling (no smoothing that
would hide blotches or grids). The region is the window where the restored image has the most fine detail,
where a candidate's artefacts and gains are easiest to see.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from restoration.io import tensor_to_pil

BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
LABEL_HEIGHT = 16
GAP = 6


@dataclass(frozen=True)
class SheetTile:
    """One labelled cell of the sheet: `box` is (left, top, right, bottom) of the image in the sheet."""

    label: str
    box: tuple[int, int, int, int]
    row: str  # "overview" or "detail"


def detail_window(image: torch.Tensor, side: int) -> tuple[int, int]:
    """(top, left) of the side x side window of `image` (1, 3, H, W) with the most high-frequency energy
    (squared Laplacian of the luminance, box-summed), on a grid of side / 4 steps."""
    h, w = image.shape[-2:]
    side = min(side, h, w)
    lum = image[0].float().mean(0, keepdim=True)[None]
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    energy = F.conv2d(F.pad(lum, (1, 1, 1, 1), mode="replicate"), kernel).square()
    stride = max(side // 4, 1)
    sums = F.avg_pool2d(energy, side, stride=stride)[0, 0]
    k = int(torch.argmax(sums))
    top, left = (k // sums.shape[1]) * stride, (k % sums.shape[1]) * stride
    return min(top, h - side), min(left, w - side)


def contact_sheet(images: Sequence[tuple[str, torch.Tensor]], columns: int = 6, thumb: int = 256,
                  detail: int = 0, zoom: int = 0, detail_from: int = 1) -> tuple[Image.Image, list[SheetTile]]:
    """images: [(label, (1, 3, H, W) in [0, 1])], all of one size -> (sheet, layout).

    thumb: the overview's longer side per image (never enlarged); detail: the region's side in image pixels
    (0: a quarter of the shorter side, 32..128); zoom: its enlargement (0: 2 when the region is at most 128 px,
    else 1); detail_from: the index of the image whose fine detail places the region (the restored one).
    """
    if not images:
        raise ValueError("a contact sheet needs at least one image")
    size = tuple(images[0][1].shape[-2:])
    for label, img in images:
        if img.ndim != 4 or img.shape[0] != 1 or img.shape[1] != 3 or tuple(img.shape[-2:]) != size:
            raise ValueError(f"image {label!r} must be (1, 3, {size[0]}, {size[1]}), got {tuple(img.shape)}")
    if columns < 1 or thumb < 16:
        raise ValueError(f"columns must be >= 1 and thumb >= 16, got {columns}, {thumb}")
    h, w = size
    scale = min(1.0, thumb / max(h, w))
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    side = detail or max(32, min(128, min(h, w) // 4))
    side = min(side, h, w)
    zoom = zoom or (2 if side <= 128 else 1)
    top, left = detail_window(images[min(detail_from, len(images) - 1)][1], side)
    cell_w = max(tw, side * zoom)
    cols = min(columns, len(images))
    rows = -(-len(images) // cols)
    row_h = (th + LABEL_HEIGHT + GAP, side * zoom + LABEL_HEIGHT + GAP)
    title_h = LABEL_HEIGHT + GAP
    sheet = Image.new("RGB", (GAP + cols * (cell_w + GAP), title_h * 2 + rows * (row_h[0] + row_h[1]) + GAP),
                      BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    layout: list[SheetTile] = []
    y = GAP
    draw.text((GAP, y), f"{h} x {w} px, shown at {scale:.2f}x", fill=TEXT, font=font)
    y += title_h
    for i, (label, img) in enumerate(images):
        r, c = divmod(i, cols)
        x0, y0 = GAP + c * (cell_w + GAP), y + r * row_h[0]
        pil = tensor_to_pil(img)
        if scale < 1:
            pil = pil.resize((tw, th), Image.LANCZOS)
        sheet.paste(pil, (x0, y0))
        draw.text((x0, y0 + th + 2), label, fill=TEXT, font=font)
        layout.append(SheetTile(label, (x0, y0, x0 + tw, y0 + th), "overview"))
    y += rows * row_h[0]
    draw.text((GAP, y), f"detail: rows {top}-{top + side}, columns {left}-{left + side}, "
                        f"{'1:1' if zoom == 1 else f'{zoom}x nearest'}", fill=TEXT, font=font)
    y += title_h
    for i, (label, img) in enumerate(images):
        r, c = divmod(i, cols)
        x0, y0 = GAP + c * (cell_w + GAP), y + r * row_h[1]
        crop = tensor_to_pil(img[..., top : top + side, left : left + side])
        if zoom > 1:
            crop = crop.resize((side * zoom, side * zoom), Image.NEAREST)
        sheet.paste(crop, (x0, y0))
        draw.text((x0, y0 + side * zoom + 2), label, fill=TEXT, font=font)
        layout.append(SheetTile(label, (x0, y0, x0 + side * zoom, y0 + side * zoom), "detail"))
    return sheet, layout


def round_sheet(input_image: torch.Tensor, start: torch.Tensor, candidates: Sequence[tuple[str, torch.Tensor]],
                refined: torch.Tensor | None, start_label: str = "restored") -> Image.Image:
    """The sheet of one round: input, start image, labelled candidates, refined (when there is one). The input is
    shown resampled (nearest) to the round's size when they differ, as after an upscaling backbone."""
    size = tuple(start.shape[-2:])
    if tuple(input_image.shape[-2:]) != size:
        input_image = F.interpolate(input_image.float(), size=size, mode="nearest")
    tiles = [("input", input_image.cpu()), (start_label, start.cpu())]
    tiles += [(label, img.cpu()) for label, img in candidates]
    if refined is not None:
        tiles.append(("refined", refined.cpu()))
    return contact_sheet(tiles)[0]


def save_png_atomically(image: Image.Image, path) -> None:
    """Write a PIL image as PNG through a temporary sibling, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)


def candidate_label(cid: str, strength: float | None, seed: int | None) -> str:
    """'c3 s=0.20 seed 3' for a candidate; the id alone for the start image."""
    if strength is None:
        return cid
    return f"{cid} s={strength:.2f} seed {seed}"
