"""Run an image-to-image function over overlapping tiles and blend them without seams.

All tensors are (B, C, H, W) float; the function under tiling maps (B, C, h, w) to
(B, C, h * scale, w * scale). Tiles overlap and are blended with separable raised-cosine
weights that ramp only inside the overlap and stay flat (1) at the image border, so every
output pixel gets a strictly positive total weight; the sum is normalised by that weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

#: (top, left, height, width) of the original content inside a padded tensor.
CropBox = tuple[int, int, int, int]


def pad_to_multiple(x: torch.Tensor, m: int) -> tuple[torch.Tensor, CropBox]:
    """Pad H and W of (B, C, H, W) up to multiples of `m` by reflection, split evenly on both sides.

    Returns the padded tensor and the crop box (top, left, H, W) that `crop_back` undoes.
    Falls back to replicate padding where the image is too small to reflect.
    """
    if m < 1:
        raise ValueError(f"multiple must be >= 1, got {m}")
    if x.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    top, left = ph // 2, pw // 2
    box = (top, left, h, w)
    if ph == 0 and pw == 0:
        return x, box
    pad = (left, pw - left, top, ph - top)
    mode = "reflect" if max(pad[0], pad[1]) < w and max(pad[2], pad[3]) < h else "replicate"
    return F.pad(x, pad, mode=mode), box


def crop_back(y: torch.Tensor, box: CropBox, scale: int = 1) -> torch.Tensor:
    """Undo `pad_to_multiple` on a result that is `scale` times the padded input's size."""
    top, left, h, w = box
    return y[..., top * scale : (top + h) * scale, left * scale : (left + w) * scale]


def balanced_tile(length: int, tile: int, overlap: int, align: int = 1) -> int:
    """The window side to use along an axis of `length`: as many windows as `tile` would need, each as small as
    still covers the axis with `overlap` (rounded up to a multiple of `align`, at most `tile`).

    Windows of the full `tile` would leave the last one overlapping its neighbour by far more than `overlap`
    (a 1024 px side in 512 px tiles with 32 px overlap takes three windows, 1536 px of work); balanced, the
    three windows are 368 px (1104 px of work). `length` itself when it fits in one tile."""
    if length <= tile:
        return length
    n = math.ceil((length - overlap) / (tile - overlap))
    side = math.ceil((length - overlap) / n) + overlap
    return min(tile, math.ceil(side / align) * align)


def _tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets covering [0, length) with windows of `tile`; the last window ends at `length`."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _ramp_window(size: int, ramp: int, ramp_start: bool, ramp_end: bool) -> torch.Tensor:
    """1-D blending weight: raised-cosine ramps of `ramp` samples at the ends that meet another tile.

    Ramp samples are 0.5 - 0.5 cos(pi (i + 0.5) / (ramp + 1)), never exactly 0; ends at the image
    border stay 1 so border pixels keep full weight.
    """
    window = torch.ones(size, dtype=torch.float64)
    ramp = min(ramp, size // 2)
    if ramp > 0:
        i = torch.arange(ramp, dtype=torch.float64)
        rise = 0.5 - 0.5 * torch.cos(math.pi * (i + 0.5) / (ramp + 1))
        if ramp_start:
            window[:ramp] = rise
        if ramp_end:
            window[size - ramp :] = rise.flip(0)
    return window


def _apply_padded(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, multiple: int, scale: int
) -> torch.Tensor:
    padded, box = pad_to_multiple(x, multiple)
    y = fn(padded)
    expected = (padded.shape[-2] * scale, padded.shape[-1] * scale)
    if tuple(y.shape[-2:]) != expected:
        raise ValueError(
            f"tiled function returned spatial size {tuple(y.shape[-2:])}, expected {expected} "
            f"(input {tuple(padded.shape[-2:])} x scale {scale})"
        )
    return crop_back(y, box, scale)


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    overlap: int,
    multiple: int = 8,
    scale: int = 1,
    accumulate: torch.dtype = torch.float64,
    align: int | None = None,
) -> torch.Tensor:
    """Apply `fn` to (B, C, H, W) `x` tile by tile; returns (B, C_out, H * scale, W * scale).

    tile: the largest tile side in input pixels; overlap: pixels shared by neighbouring tiles (< tile);
    multiple: each tile is reflect-padded to a multiple of this before `fn` and cropped after;
    accumulate: dtype of the blending sums (float32 halves their memory for large batches);
    align: tile sides (and so, with an aligned overlap and image, tile starts) are multiples of this
    (default `multiple`). Along each axis the tiles are balanced (`balanced_tile`): as many as `tile` needs,
    each no larger than covering the axis takes. An image that fits in one tile is processed in a single
    call (identical to `fn` when H and W are already multiples of `multiple`).
    """
    if x.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if tile < 1:
        raise ValueError(f"tile must be >= 1 pixel, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile={tile}), got {overlap}")
    if scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale}")

    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return _apply_padded(fn, x, multiple, scale)

    align = multiple if align is None else align
    if align < 1:
        raise ValueError(f"align must be >= 1, got {align}")
    th, tw = balanced_tile(h, tile, overlap, align), balanced_tile(w, tile, overlap, align)
    ys, xs = _tile_starts(h, th, th - overlap), _tile_starts(w, tw, tw - overlap)
    out: torch.Tensor | None = None
    weight = torch.zeros(1, 1, h * scale, w * scale, dtype=accumulate, device=x.device)
    for y0 in ys:
        wy = _ramp_window(th * scale, overlap * scale, y0 > 0, y0 + th < h)
        for x0 in xs:
            wx = _ramp_window(tw * scale, overlap * scale, x0 > 0, x0 + tw < w)
            patch = _apply_padded(fn, x[..., y0 : y0 + th, x0 : x0 + tw], multiple, scale)
            if out is None:
                out = torch.zeros(
                    x.shape[0], patch.shape[1], h * scale, w * scale, dtype=accumulate, device=x.device
                )
            wt = (wy[:, None] * wx[None, :]).to(x.device, accumulate)
            sy, sx = slice(y0 * scale, (y0 + th) * scale), slice(x0 * scale, (x0 + tw) * scale)
            out[..., sy, sx] += patch.to(accumulate) * wt
            weight[..., sy, sx] += wt
    assert out is not None  # at least one tile always runs
    return out.div_(weight).to(x.dtype)
