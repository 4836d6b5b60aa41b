"""A bank of fixed Wiener deconvolutions: the filters the blind post-deconvolution step chooses among.

Each filter is W = K / (K^2 + lambda |L|^2) in the frequency domain: K the Gaussian's transfer function
exp(-2 pi^2 sigma^2 |f|^2), L the discrete Laplacian, so the mean (DC) passes unchanged and the gain at high
frequencies is bounded. Pure functions over (B, C, H, W) float tensors; any H and W (reflect padding keeps the
FFT's wrap-around outside the image). `post_deconvolution.py` says which filter, if any, applies.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

#: Default Laplacian-regularisation weight. The largest gain it allows grows with the blur: 1.9 / 2.8 / 3.9 / 5.7 /
#: 8.7 for sigma 0.8 / 1.2 / 1.6 / 2.2 / 3.0 px. (The post step's grids choose their own weights.)
DEFAULT_BALANCE = 0.01


@lru_cache(maxsize=32)  # one entry per (bank, padded size, device): tiles and training crops repeat their sizes
def wiener_filters(sigmas: tuple[float, ...], height: int, width: int, balance: float = DEFAULT_BALANCE,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """(n, height, width // 2 + 1) real frequency responses of the bank's Wiener filters (for `torch.fft.rfft2`).
    Cached: treat the result as read-only."""
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(width, dtype=torch.float64)[None, :]
    laplacian = (4 - 2 * torch.cos(2 * math.pi * fy) - 2 * torch.cos(2 * math.pi * fx)) ** 2
    filters = []
    for sigma in sigmas:
        k = torch.exp(-2 * math.pi**2 * sigma**2 * (fy**2 + fx**2))
        filters.append(k / (k * k + balance * laplacian))
    return torch.stack(filters).float().to(device)


def fast_length(n: int) -> int:
    """The smallest m >= n whose only prime factors are 2, 3 and 5 (FFTs of such lengths are fastest)."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def deconvolve_bank(x: torch.Tensor, sigmas: tuple[float, ...], balance: float = DEFAULT_BALANCE) -> torch.Tensor:
    """(B, C, H, W) -> (B, n, C, H, W): x deconvolved by each Gaussian PSF of `sigmas` (px), unclamped.

    Computed in float32 whatever the input's dtype; no gradient flows to the filters (they are fixed)."""
    if not sigmas:
        return x.new_zeros((x.shape[0], 0, *x.shape[1:]))
    b, c, h, w = x.shape
    pad = math.ceil(3 * max(sigmas)) * 2
    hp, wp = fast_length(h + 2 * pad), fast_length(w + 2 * pad)
    right, bottom = wp - w - pad, hp - h - pad  # the extra length to a fast size goes on the far side
    mode = "reflect" if max(pad, right, bottom) < min(h, w) else "replicate"
    padded = F.pad(x.float(), (pad, right, pad, bottom), mode=mode)
    spectrum = torch.fft.rfft2(padded)  # (B, C, hp, wp//2+1)
    filters = wiener_filters(tuple(sigmas), hp, wp, balance, x.device)  # (n, hp, wp//2+1)
    out = torch.fft.irfft2(spectrum[:, None] * filters[None, :, None], s=(hp, wp))
    return out[..., pad:pad + h, pad:pad + w].to(x.dtype)
