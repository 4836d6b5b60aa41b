"""Blind post-deconvolution: a Wiener step after the network, its blur chosen from the two images' spectra.

The shipped networks do not learn to deblur, yet on their output a Wiener filter told the blur undoes most of it:
validation `noise:15+blur:1.5` 28.41 dB -> 30.29 dB, past the classical method told the spec (29.22; the history's
*blind post-deconvolution step*, docs/history/sipl_model_card_2026-12-06.md). The network removes the noise, so the
filter no longer amplifies it. What is missing is the blur, and whether there is one. `PostDeconvolver` predicts,
for each filter of a small grid of Gaussian blur widths, the PSNR change the filter would make to the restored
image, from the radial power spectra of the degraded input and of the restored image (`spectrum_features`: blur is
a fall-off of high frequencies, noise a flat floor); it applies the best filter only when the predicted gain is
above a margin. Trained on restored training crops against their clean originals
(`python -m restoration.training.post_deconvolution`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from restoration.backbones.deconv_bank import deconvolve_bank
from restoration.backbones.post_step import (
    GainStep,
    check_min_size,
    save_gain_step,
)
from restoration.metrics import psnr


@dataclass(frozen=True)
class PostDeconvolutionConfig:
    """The filter grid: blur widths (px) times Laplacian weights (`balances`), every pair one option; the
    spectrum's bands (cycles per pixel); the smallest predicted gain (dB) worth applying a filter for, and the
    width of the predictor."""

    sigmas: tuple[float, ...] = (0.6, 0.8, 1.0, 1.3, 1.6, 2.0, 2.5)
    bands: int = 24
    low: float = 0.02
    high: float = 0.5
    balances: tuple[float, ...] = (0.003,)
    margin: float = 0.1
    hidden: int = 64

    @property
    def options(self) -> tuple[tuple[float, float], ...]:
        """(sigma, balance) of each filter, balances outer: the predictor's output order."""
        return tuple((s, b) for b in self.balances for s in self.sigmas)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PostDeconvolutionConfig:
        d = dict(d)
        d["sigmas"] = tuple(float(s) for s in d.get("sigmas", cls.sigmas))
        if "balance" in d:  # files of the first version: one balance
            d["balances"] = (d.pop("balance"),)
        d["balances"] = tuple(float(b) for b in d.get("balances", cls.balances))
        return cls(**d)


#: The finer grid (`restoration.training.post_deconvolution --grid fine`): 9 widths, each at two Laplacian weights.
FINE_GRID = PostDeconvolutionConfig(sigmas=(0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5), balances=(0.001, 0.003))


def radial_log_power(x: torch.Tensor, bands: int, low: float, high: float) -> torch.Tensor:
    """(B, 3, H, W) -> (B, bands): the log mean power of the grey, Hann-windowed image in `bands` equal rings
    of radial frequency between `low` and `high`, relative to the first two rings (so contrast cancels)."""
    g = x.float().mean(1)
    g = g - g.mean(dim=(-2, -1), keepdim=True)
    h, w = g.shape[-2:]
    window = torch.hann_window(h, periodic=False, device=g.device)[:, None] * \
        torch.hann_window(w, periodic=False, device=g.device)[None]
    power = torch.fft.rfft2(g * window).abs().pow(2)
    fy = torch.fft.fftfreq(h, device=g.device)[:, None]
    fx = torch.fft.rfftfreq(w, device=g.device)[None]
    ring = ((fy**2 + fx**2).sqrt() - low) / (high - low) * bands
    ring = ring.floor().long()
    inside = (ring >= 0) & (ring < bands)
    index = ring[inside]
    counts = torch.bincount(index, minlength=bands).clamp(min=1).to(power.dtype)
    sums = torch.zeros(power.shape[0], bands, dtype=power.dtype, device=g.device)
    sums.index_add_(1, index, power[:, inside])
    logp = (sums / counts).add(1e-12).log()
    return logp - logp[:, :2].mean(-1, keepdim=True)


def spectrum_features(degraded: torch.Tensor, restored: torch.Tensor, config: PostDeconvolutionConfig) -> torch.Tensor:
    """(B, 2 * bands): the radial log power of the degraded input and of the restored image."""
    check_min_size(degraded, "post-deconvolution")
    return torch.cat([radial_log_power(v, config.bands, config.low, config.high) for v in (degraded, restored)], 1)


def filter_bank(restored: torch.Tensor, config: PostDeconvolutionConfig) -> torch.Tensor:
    """(B, len(options), 3, H, W): `restored` through every filter of the grid, clamped to [0, 1]."""
    return torch.cat([deconvolve_bank(restored, config.sigmas, b) for b in config.balances], 1).clamp(0, 1)


def psnr_gains(restored: torch.Tensor, clean: torch.Tensor, config: PostDeconvolutionConfig) -> torch.Tensor:
    """(B, len(options)): the PSNR change (dB) each filter of the grid makes to `restored` against `clean`:
    the training target."""
    bank = filter_bank(restored, config)
    base = psnr(restored, clean)
    return torch.stack([psnr(bank[:, i], clean) - base for i in range(bank.shape[1])], 1)


class PostDeconvolver(GainStep):
    """Predicts each filter's PSNR gain from `spectrum_features`; `forward(degraded, restored)` applies the best
    one per image where its predicted gain exceeds `config.margin`, and returns the rest (and images under
    `post_step.MIN_SIZE`) unchanged."""

    arch = "post_deconvolution"
    trainer = "python -m restoration.training.post_deconvolution"
    config_class = PostDeconvolutionConfig

    def __init__(self, config: PostDeconvolutionConfig = PostDeconvolutionConfig()):
        super().__init__(config, 2 * config.bands, len(config.options))

    def features(self, degraded: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
        return spectrum_features(degraded, restored, self.config)

    def apply_option(self, restored: torch.Tensor, index: int) -> torch.Tensor:
        sigma, balance = self.config.options[index]
        return deconvolve_bank(restored, (sigma,), balance)[:, 0].clamp(0, 1)

    @property
    def option_values(self) -> tuple[tuple[float, float], ...]:
        """(blur width in px, Laplacian weight) of each filter."""
        return self.config.options


def save_post_deconvolver(model: PostDeconvolver, path: str | Path, facts: dict | None = None) -> None:
    save_gain_step(model, path, facts)


def load_post_deconvolver(path: str | Path) -> PostDeconvolver:
    return PostDeconvolver.load(path)
