"""Classical restoration baselines that need no weights, one per degradation.

Pure functions over (B, 3, H, W) float32 in [0, 1] (each returns the same shape), and
`ClassicalRestorer`, which picks and chains them from a degradation-spec hint
(`restoration.degradations` syntax): steps are undone in reverse order of application.

  noise, jpeg        -> non-local means (skimage), sigma known or estimated
  blur, motion       -> Wiener (or Richardson-Lucy) deconvolution with the Gaussian / line PSF
  sr                 -> iterative back-projection through the bicubic down/up model ("bicubic")
  haze               -> dark channel prior (He et al. 2009) with a guided-filter-refined transmission
  lowlight           -> percentile stretch + gamma to a target mean (NLM first if the hint has noise)
  rain, snow         -> median filter applied to bright outliers only
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from skimage.restoration import (
    denoise_nl_means,
    estimate_sigma,
    richardson_lucy,
    wiener,
)

from restoration.backbones.base import Restorer
from restoration.degradations import (
    bicubic_downsample,
    bicubic_upsample,
    parse_spec,
)
from restoration.kernels import gaussian_kernel, motion_kernel

#: Methods `ClassicalRestorer` accepts; 'auto' chooses from the degradation hint or the image.
METHODS = ("auto", "nlm", "wiener", "richardson_lucy", "bicubic", "dehaze", "brighten", "median")
#: Noise std (in [0, 1] units) above which the hint-free 'auto' treats an image as noisy.
NOISY_SIGMA = 0.015


# ----------------------------------------------------------------------------------------------
# numpy <-> tensor helpers
# ----------------------------------------------------------------------------------------------


def _per_image(x: torch.Tensor, fn) -> torch.Tensor:
    """Apply fn(HWC float64 array) -> HWC array to each image of a (B, 3, H, W) batch."""
    out = []
    for img in x.detach().cpu().double().permute(0, 2, 3, 1).numpy():
        out.append(torch.from_numpy(np.ascontiguousarray(fn(img))).permute(2, 0, 1))
    return torch.stack(out).to(device=x.device, dtype=x.dtype).clamp(0, 1)


def estimate_noise_sigma(x: torch.Tensor) -> list[float]:
    """Per-image Gaussian noise std in [0, 1] units (wavelet MAD estimate, averaged over channels)."""
    imgs = x.detach().cpu().double().permute(0, 2, 3, 1).numpy()
    return [float(np.mean(estimate_sigma(img, channel_axis=-1))) for img in imgs]


# ----------------------------------------------------------------------------------------------
# The baselines
# ----------------------------------------------------------------------------------------------


def nlm_denoise(x: torch.Tensor, sigma: float | None = None, h_factor: float = 0.8) -> torch.Tensor:
    """Non-local means (Buades et al. 2005), patch 5, search distance 6, fast mode.

    sigma: noise std in [0, 1] units; estimated per image when None. Filter strength h = h_factor * sigma.
    """

    def run(img: np.ndarray) -> np.ndarray:
        s = float(np.mean(estimate_sigma(img, channel_axis=-1))) if sigma is None else float(sigma)
        s = max(s, 1e-4)
        return denoise_nl_means(
            img, h=h_factor * s, sigma=s, patch_size=5, patch_distance=6, fast_mode=True, channel_axis=-1
        )

    return _per_image(x, run)


def _deconv_pad(psf: np.ndarray) -> int:
    # Reflect-pad by more than the PSF so the FFT's circular wrap-around lands outside the crop.
    return 2 * max(psf.shape)


def wiener_deconvolve(
    x: torch.Tensor, psf: torch.Tensor, balance: float | None = None, base_balance: float = 0.002
) -> torch.Tensor:
    """Wiener deconvolution with a known (k, k) PSF summing to 1, per channel, reflect-padded.

    balance: regularisation (noise-to-signal ratio, Laplacian prior); None uses base_balance plus a
    term growing with the estimated noise. PSFs with spectral zeros (motion) need a larger base.
    """
    k = psf.detach().cpu().double().numpy()
    pad = _deconv_pad(k)

    def run(img: np.ndarray) -> np.ndarray:
        b = balance
        if b is None:
            s = float(np.mean(estimate_sigma(img, channel_axis=-1)))
            b = base_balance + 4.0 * s
        padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        chans = [wiener(padded[..., c], k, b, clip=False) for c in range(img.shape[-1])]
        return np.stack(chans, -1)[pad:-pad, pad:-pad]

    return _per_image(x, run)


def richardson_lucy_deconvolve(x: torch.Tensor, psf: torch.Tensor, num_iter: int = 20) -> torch.Tensor:
    """Richardson-Lucy deconvolution (maximum likelihood under Poisson noise), per channel, reflect-padded."""
    k = psf.detach().cpu().double().numpy()
    pad = _deconv_pad(k)

    def run(img: np.ndarray) -> np.ndarray:
        padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        chans = [
            richardson_lucy(padded[..., c], k, num_iter=num_iter, clip=False) for c in range(img.shape[-1])
        ]
        return np.stack(chans, -1)[pad:-pad, pad:-pad]

    return _per_image(x, run)


def bicubic_back_projection(
    x: torch.Tensor, scale: int, iterations: int = 10, step: float = 1.0
) -> torch.Tensor:
    """Refine a bicubic-upsampled image by iterative back-projection (Irani and Peleg 1991).

    The degraded image y = up(down(J)); iterate x <- x + step * (y - up(down(x))) from x = y, so the
    result stays consistent with the observed low-resolution content while sharpening.
    """
    if scale < 1:
        raise ValueError(f"super-resolution scale must be >= 1, got {scale}")
    if scale == 1:
        return x.clone()
    size = (x.shape[-2], x.shape[-1])
    y = x.clamp(0, 1)
    est = y.clone()
    for _ in range(iterations):
        est = (est + step * (y - bicubic_upsample(bicubic_downsample(est, scale), size))).clamp(0, 1)
    return est


def min_filter(x: torch.Tensor, size: int) -> torch.Tensor:
    """Minimum over size x size windows (odd size), same shape."""
    return -F.max_pool2d(-x, size, stride=1, padding=size // 2)


def dark_channel_patch(h: int, w: int) -> int:
    """The dark channel's odd window for an h x w image: 15 px at >= 240 px, less for smaller images, at least 3."""
    patch = max(3, min(15, min(h, w) // 16))
    return patch + 1 - patch % 2


def _box_1d(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    # Mean over the window [i - r, i + r] clipped to the image, along `dim`, from a running sum: O(1) per pixel.
    n = x.shape[dim]
    c = F.pad(x.float().cumsum(dim).movedim(dim, -1), (1, 0)).movedim(-1, dim)  # c[k] = sum of x[:k]
    i = torch.arange(n, device=x.device)
    hi, lo = (i + r + 1).clamp(max=n), (i - r).clamp(min=0)
    sums = c.index_select(dim, hi) - c.index_select(dim, lo)
    shape = [1] * x.dim()
    shape[dim] = n
    return (sums / (hi - lo).to(sums.dtype).view(shape)).to(x.dtype)


def _box(x: torch.Tensor, r: int) -> torch.Tensor:
    # Separable mean over the (2r+1)^2 window clipped to the image, radius capped at half the image.
    r_h, r_w = min(r, x.shape[-2] // 2), min(r, x.shape[-1] // 2)
    return _box_1d(_box_1d(x, r_h, -2), r_w, -1)


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """Edge-preserving guided filter (He et al. 2010), single-channel guide (B, 1, H, W)."""
    mean_i, mean_p = _box(guide, radius), _box(src, radius)
    cov_ip = _box(guide * src, radius) - mean_i * mean_p
    var_i = _box(guide * guide, radius) - mean_i**2
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return _box(a, radius) * guide + _box(b, radius)


@dataclass(frozen=True)
class HazeEstimate:
    """The dark channel prior's estimate for (B, 3, H, W) images: the atmospheric light (B, 3, 1, 1) and the
    guided-filter-refined normalised dark channel (B, 1, H, W); the transmission at strength omega is
    1 - omega * haze (the guided filter is linear and keeps constants, so refining once serves every omega)."""

    airlight: torch.Tensor
    haze: torch.Tensor

    def dehaze(self, x: torch.Tensor, omega: float = 0.95, t0: float = 0.1) -> torch.Tensor:
        transmission = (1 - omega * self.haze).clamp_min(t0)
        return ((x - self.airlight) / transmission + self.airlight).clamp(0, 1)


def estimate_haze(x: torch.Tensor, patch: int | None = None) -> HazeEstimate:
    """Atmospheric light and refined dark channel of `x` (see `HazeEstimate`); patch: odd min-filter size in px
    (default scales with the image, 15 at >= 240 px)."""
    if patch is None:
        patch = dark_channel_patch(*x.shape[-2:])
    patch = patch + 1 - patch % 2
    dark = min_filter(x.amin(dim=1, keepdim=True), patch)
    # Atmospheric light: mean colour of the 0.1% haziest (brightest dark-channel) pixels.
    flat_dark = dark.flatten(1)
    n_top = max(1, flat_dark.shape[1] // 1000)
    idx = flat_dark.topk(n_top, dim=1).indices
    colours = x.flatten(2).gather(2, idx[:, None, :].expand(-1, x.shape[1], -1))
    airlight = colours.mean(2).clamp_min(0.05)[:, :, None, None]
    haze = min_filter((x / airlight).amin(dim=1, keepdim=True), patch)
    gray = x.mean(dim=1, keepdim=True)
    return HazeEstimate(airlight, guided_filter(gray, haze, radius=max(2, 3 * patch), eps=1e-3))


def dark_channel_dehaze(
    x: torch.Tensor, patch: int | None = None, omega: float = 0.95, t0: float = 0.1
) -> torch.Tensor:
    """Dark channel prior dehazing (He, Sun and Tang 2009): I = J t + A (1 - t) solved for J.

    patch: odd min-filter size in px (default scales with the image, 15 at >= 240 px);
    omega keeps a little haze for depth cues; t0 bounds the transmission from below.
    """
    return estimate_haze(x, patch).dehaze(x, omega, t0)


def brighten(x: torch.Tensor, target_mean: float = 0.45) -> torch.Tensor:
    """Blind low-light enhancement: stretch each image so its 99.5th percentile is white, then
    gamma-correct so its mean becomes `target_mean`."""
    out = []
    for img in x:
        hi = torch.quantile(img.amax(0).flatten().float(), 0.995).clamp_min(1e-3)
        img = (img / hi).clamp(0, 1)
        mean = float(img.mean().clamp(1e-3, 0.999))
        g = min(1.0, max(0.1, math.log(target_mean) / math.log(mean)))
        out.append(img**g)
    return torch.stack(out).clamp(0, 1)


def median_filter(x: torch.Tensor, size: int = 3) -> torch.Tensor:
    """Per-channel median over size x size windows (reflect padding)."""
    r = size // 2
    padded = F.pad(x, (r, r, r, r), mode="reflect" if r < min(x.shape[-2:]) else "replicate")
    patches = padded.unfold(2, size, 1).unfold(3, size, 1)
    return patches.reshape(*x.shape, size * size).median(dim=-1).values


def remove_bright_streaks(x: torch.Tensor, size: int = 3, threshold: float = 0.02) -> torch.Tensor:
    """Rain / snow removal: replace pixels brighter than their local median by more than `threshold`
    with that median; darker detail is left alone, since streaks and flakes only add light."""
    med = median_filter(x, size)
    return torch.where(x - med > threshold, med, x)


# ----------------------------------------------------------------------------------------------
# Planning: degradation steps -> restoration operations
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """One restoration operation: a method name and its keyword parameters."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)


#: The method each degradation name is undone by in 'auto' mode.
AUTO_METHOD = {
    "noise": "nlm",
    "jpeg": "nlm",
    "blur": "wiener",
    "motion": "wiener",
    "sr": "bicubic",
    "haze": "dehaze",
    "lowlight": "brighten",
    "rain": "median",
    "snow": "median",
}
#: Degradations whose parameters a method can use when it is forced ('wiener' on a blur hint, ...).
METHOD_INPUTS = {
    "nlm": ("noise", "jpeg"),
    "wiener": ("blur", "motion"),
    "richardson_lucy": ("blur", "motion"),
    "bicubic": ("sr",),
    "dehaze": (),
    "brighten": ("lowlight",),
    "median": (),
}


def _params_for(method: str, step_name: str | None, args: tuple[float, ...]) -> dict[str, Any]:
    if method in ("wiener", "richardson_lucy"):
        if step_name == "motion":
            return {"psf": ("motion", float(args[0]), float(args[1]))}
        if step_name == "blur":
            return {"psf": ("gaussian", float(args[0]))}
        return {}
    if method == "nlm" and step_name == "noise":
        return {"sigma": float(args[0]) / 255.0}
    if method == "bicubic" and step_name == "sr":
        return {"scale": int(args[0])}
    if method == "nlm" and step_name == "jpeg":
        # JPEG error is not white noise; an equivalent sigma that shrinks with quality works for NLM.
        return {"sigma": 0.035 * math.sqrt(max(0.0, 1.0 - float(args[0]) / 100.0))}
    if method == "brighten" and step_name == "lowlight":
        # Only the noise level is taken from the hint; the curve is estimated blind (knowing scale and
        # gamma would make inverting the synthetic model exact, which is no baseline).
        return {"sigma": float(args[2]) / 255.0}
    return {}


def plan_restoration(method: str, degradation: str | None) -> list[Operation]:
    """Operations to run, in order. With a hint, 'auto' undoes each step in reverse order; a forced
    method takes its parameters (PSF, sigma, scale) from the matching hint step if there is one."""
    if method not in METHODS:
        raise ValueError(f"unknown classical method {method!r}; allowed: {', '.join(METHODS)}")
    steps = parse_spec(degradation) if degradation else []
    if method == "auto":
        return [
            Operation(AUTO_METHOD[s.name], _params_for(AUTO_METHOD[s.name], s.name, s.args))
            for s in reversed(steps)
        ]
    for s in reversed(steps):
        if s.name in METHOD_INPUTS[method]:
            return [Operation(method, _params_for(method, s.name, s.args))]
    return [Operation(method, {})]


def _auto_operation(img: torch.Tensor) -> Operation:
    """Hint-free choice for one (1, 3, H, W) image: noisy -> NLM, dark -> brighten, hazy -> dehaze."""
    sigma = estimate_noise_sigma(img)[0]
    if sigma > NOISY_SIGMA:
        return Operation("nlm", {"sigma": sigma})
    if float(img.mean()) < 0.2:
        return Operation("brighten", {})
    dark = min_filter(img.amin(dim=1, keepdim=True), 5)
    if float(dark.mean()) > 0.35:
        return Operation("dehaze", {})
    return Operation("nlm", {"sigma": sigma})


# ----------------------------------------------------------------------------------------------
# Running an operation
# ----------------------------------------------------------------------------------------------


def _psf(spec: tuple | None, default_sigma: float) -> tuple[torch.Tensor, float]:
    """PSF kernel and its Wiener base balance (tuned on 256 px natural images)."""
    if spec is None:
        return gaussian_kernel(default_sigma), 0.002
    if spec[0] == "motion":
        # A line PSF has zeros in its spectrum, more the longer it is: 0.03 at 9 px, 0.09 at 15 px.
        return motion_kernel(spec[1], spec[2]), 4e-4 * spec[1] ** 2
    return gaussian_kernel(spec[1]), 0.002


def run_operation(
    x: torch.Tensor, op: Operation, default_blur_sigma: float = 1.5, default_sr_scale: int = 2
) -> torch.Tensor:
    """Apply one planned operation to (B, 3, H, W) in [0, 1]."""
    p = op.params
    if op.method == "nlm":
        return nlm_denoise(x, p.get("sigma"))
    if op.method == "wiener":
        psf, base_balance = _psf(p.get("psf"), default_blur_sigma)
        return wiener_deconvolve(x, psf, base_balance=base_balance)
    if op.method == "richardson_lucy":
        return richardson_lucy_deconvolve(x, _psf(p.get("psf"), default_blur_sigma)[0])
    if op.method == "bicubic":
        return bicubic_back_projection(x, int(p.get("scale", default_sr_scale)))
    if op.method == "dehaze":
        return dark_channel_dehaze(x)
    if op.method == "brighten":
        if p.get("sigma", 0.0) > 0:
            # lowlight adds its noise after darkening, so denoise before inverting the curve.
            x = nlm_denoise(x, p["sigma"])
        return brighten(x)
    if op.method == "median":
        return remove_bright_streaks(x)
    raise ValueError(f"unknown classical method {op.method!r}; allowed: {', '.join(METHODS[1:])}")


class ClassicalRestorer(Restorer):
    """Weight-free baselines behind the `Restorer` interface.

    method: one of METHODS; degradation: optional spec hint (e.g. 'noise:15+blur:1.5') that 'auto'
    undoes step by step and forced methods take parameters from; default_blur_sigma (px) and
    default_sr_scale apply when the hint does not give them.
    """

    def __init__(
        self,
        method: str = "auto",
        degradation: str | None = None,
        default_blur_sigma: float = 1.5,
        default_sr_scale: int = 2,
    ) -> None:
        self.method = method
        self.degradation = degradation or None
        self.default_blur_sigma = float(default_blur_sigma)
        self.default_sr_scale = int(default_sr_scale)
        self.plan = plan_restoration(method, self.degradation)  # validates method and spec early
        self.name = "classical" if method == "auto" else method
        self.weights_hash = None

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
        with torch.no_grad():
            x = x.float().clamp(0, 1)
            if self._blind_auto:
                return torch.cat([self._run(img[None], [_auto_operation(img[None])]) for img in x])
            return self._run(x, self.plan)

    @property
    def _blind_auto(self) -> bool:
        return self.method == "auto" and self.degradation is None

    def _run(self, x: torch.Tensor, plan: list[Operation]) -> torch.Tensor:
        for op in plan:
            x = run_operation(x, op, self.default_blur_sigma, self.default_sr_scale)
        return x

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "method": self.method,
            "degradation_hint": self.degradation,
            "plan": "estimated per image" if self._blind_auto else [op.method for op in self.plan],
        }
