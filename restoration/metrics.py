"""Full-reference image quality: PSNR and SSIM on RGB tensors in [0, 1].

Pure functions over (B, C, H, W) float tensors; each returns a (B,) tensor (one value per image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: SSIM constants from Wang et al. 2004 (K1, K2) and the Gaussian window (11 taps, sigma 1.5).
SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
#: MSE floor so identical images give a finite PSNR (100 dB at data_range 1) that JSON can hold.
MSE_FLOOR = 1e-10


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"images must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.ndim != 4:
        raise ValueError(f"expected (B, C, H, W) tensors, got shape {tuple(x.shape)}")


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, (B, C, H, W) x2 -> (B,); MSE over all channels and pixels."""
    _check_pair(x, y)
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1).clamp_min(MSE_FLOOR * data_range**2)
    return (10.0 * torch.log10(data_range**2 / mse)).float()


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    r = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004), (B, C, H, W) x2 -> (B,).

    Gaussian window of 11 taps, sigma 1.5, population covariances, evaluated where the window
    fits inside the image ("valid"), averaged over pixels and channels. Matches skimage's
    structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False).
    Images must be at least 11 x 11.
    """
    _check_pair(x, y)
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(x.shape[-2:])}"
        )
    x, y = x.double(), y.double()
    c = x.shape[1]
    g = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA, x.dtype, x.device)
    kh = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    kw = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1).float()
