"""Blur kernels and filtering: Gaussian and motion kernels, and 2-D filtering of (B, C, H, W) tensors with
reflect padding (separable where the kernel is). Used by the degradations and the classical restorers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """(k, k) float32 Gaussian kernel summing to 1, k = 2*ceil(3*sigma)+1; sigma in px (> 0)."""
    k1 = _gaussian_kernel1d(sigma)
    return torch.outer(k1, k1)


def _gaussian_kernel1d(sigma: float) -> torch.Tensor:
    if not sigma > 0:
        raise ValueError(f"gaussian sigma must be > 0 px, got {sigma}")
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).float()


def motion_kernel(length: float, angle: float) -> torch.Tensor:
    """(k, k) float32 line kernel summing to 1: a segment `length` px long at `angle` degrees (0 = horizontal,
    counter-clockwise), anti-aliased by bilinear splatting of points sampled along it."""
    if not length >= 1:
        raise ValueError(f"motion kernel length must be >= 1 px, got {length}")
    half = (length - 1) / 2
    radius = math.ceil(half) + 1
    size = 2 * radius + 1
    n = max(2, math.ceil(4 * length))
    t = torch.linspace(-half, half, n, dtype=torch.float64)
    a = math.radians(angle)
    xs = radius + t * math.cos(a)
    ys = radius - t * math.sin(a)  # image rows grow downwards
    x0, y0 = xs.floor(), ys.floor()
    fx, fy = xs - x0, ys - y0
    kernel = torch.zeros(size * size, dtype=torch.float64)
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        idx = (y0 + dy).long().clamp(0, size - 1) * size + (x0 + dx).long().clamp(0, size - 1)
        kernel.index_add_(0, idx, w)
    kernel = kernel.view(size, size)
    return (kernel / kernel.sum()).float()


def _pad(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    # Reflect padding needs pad < size; tiny images fall back to replicate so any H, W works.
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (pw, pw, ph, ph), mode=mode)


def filter2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve each channel of (B, C, H, W) with an odd (kh, kw) kernel, reflect padding; same shape out."""
    kh, kw = kernel.shape
    c = x.shape[1]
    weight = kernel.to(dtype=x.dtype, device=x.device).expand(c, 1, kh, kw)
    return F.conv2d(_pad(x, kh // 2, kw // 2), weight, groups=c)


def _separable(x: torch.Tensor, k1: torch.Tensor) -> torch.Tensor:
    n, c = k1.numel(), x.shape[1]
    k1 = k1.to(dtype=x.dtype, device=x.device)
    x = F.conv2d(_pad(x, n // 2, 0), k1.view(1, 1, n, 1).expand(c, 1, n, 1), groups=c)
    return F.conv2d(_pad(x, 0, n // 2), k1.view(1, 1, 1, n).expand(c, 1, 1, n), groups=c)
