"""Blind post-deconvolution: a Wiener step after the network, its blur chosen from the two images' spectra.

The shipped networks do not learn to deblur (assets/MODEL_CARD.md, *Twelfth session*), yet on their output a
Wiener filter told the blur undoes most of it: validation `noise:15+blur:1.5` 28.41 dB -> 30.29 dB, past the
classical method told the spec (29.22). The network removes the noise, so the filter no longer amplifies it.
What is missing is the blur, and whether there is one. `PostDeconvolver` predicts, for each filter of a small
grid of Gaussian blur widths, the PSNR change the filter would make to the restored image, from the radial power
spectra of the degraded input and of the restored image (`spectrum_features`: blur is a fall-off of high
frequencies, noise a flat floor); it applies the best filter only when the predicted gain is above a margin.
Trained on restored training crops against their clean originals (`python -m restoration.train_post_deconvolution`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from restoration.backbones.deconv_bank import deconvolve_bank
from restoration.metrics import psnr

#: Images smaller than this (either side) have too few frequencies to judge; the step leaves them alone.
MIN_SIZE = 16


@dataclass(frozen=True)
class PostDeconvolutionConfig:
    """The filter grid (px), the spectrum's bands (cycles per pixel), the Laplacian weight of the filters, the
    smallest predicted gain (dB) worth applying a filter for, and the width of the predictor."""

    sigmas: tuple[float, ...] = (0.6, 0.8, 1.0, 1.3, 1.6, 2.0, 2.5)
    bands: int = 24
    low: float = 0.02
    high: float = 0.5
    balance: float = 0.003
    margin: float = 0.1
    hidden: int = 64

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PostDeconvolutionConfig:
        d = dict(d)
        d["sigmas"] = tuple(float(s) for s in d.get("sigmas", cls.sigmas))
        return cls(**d)


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
    if min(degraded.shape[-2:]) < MIN_SIZE:
        raise ValueError(f"post-deconvolution needs images of at least {MIN_SIZE} x {MIN_SIZE} px, "
                         f"got {tuple(degraded.shape[-2:])}")
    return torch.cat([radial_log_power(v, config.bands, config.low, config.high) for v in (degraded, restored)], 1)


def psnr_gains(restored: torch.Tensor, clean: torch.Tensor, config: PostDeconvolutionConfig) -> torch.Tensor:
    """(B, len(sigmas)): the PSNR change (dB) each filter of the grid makes to `restored` against `clean`:
    the training target."""
    bank = deconvolve_bank(restored, config.sigmas, config.balance).clamp(0, 1)  # (B, n, 3, H, W)
    base = psnr(restored, clean)
    return torch.stack([psnr(bank[:, i], clean) - base for i in range(bank.shape[1])], 1)


class PostDeconvolver(nn.Module):
    """Predicts each filter's PSNR gain from `spectrum_features`; `forward(degraded, restored)` applies the best
    one per image where its predicted gain exceeds `config.margin`, and returns the rest (and images under
    `MIN_SIZE`) unchanged."""

    def __init__(self, config: PostDeconvolutionConfig = PostDeconvolutionConfig()):
        super().__init__()
        self.config = config
        n = 2 * config.bands
        self.register_buffer("feature_mean", torch.zeros(n))
        self.register_buffer("feature_std", torch.ones(n))
        self.predictor = nn.Sequential(nn.Linear(n, config.hidden), nn.ReLU(), nn.Linear(config.hidden, config.hidden),
                                       nn.ReLU(), nn.Linear(config.hidden, len(config.sigmas)))

    def predict_gains(self, features: torch.Tensor) -> torch.Tensor:
        return self.predictor((features - self.feature_mean) / self.feature_std)

    def choose(self, degraded: torch.Tensor, restored: torch.Tensor) -> list[float | None]:
        """Per image, the blur width (px) to deconvolve by, or None for none."""
        gains = self.predict_gains(spectrum_features(degraded, restored, self.config))
        best, index = gains.max(dim=1)
        return [self.config.sigmas[i] if g > self.config.margin else None
                for g, i in zip(best.tolist(), index.tolist())]

    def forward(self, degraded: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
        if min(degraded.shape[-2:]) < MIN_SIZE:
            return restored
        out = []
        for i, sigma in enumerate(self.choose(degraded, restored)):
            y = restored[i:i + 1]
            out.append(y if sigma is None else deconvolve_bank(y, (sigma,), self.config.balance)[:, 0].clamp(0, 1))
        return torch.cat(out)


def save_post_deconvolver(model: PostDeconvolver, path: str | Path, facts: dict | None = None) -> None:
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"arch": "post_deconvolution", "config": json.dumps(model.config.to_dict()),
                                          "facts": json.dumps(facts or {})})


def load_post_deconvolver(path: str | Path) -> PostDeconvolver:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"post-deconvolution weights not found: {path} "
                                "(train them with `python -m restoration.train_post_deconvolution`)")
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("arch") != "post_deconvolution":
        raise ValueError(f"{path} is not a post-deconvolution file (arch={meta.get('arch')!r})")
    model = PostDeconvolver(PostDeconvolutionConfig.from_dict(json.loads(meta["config"])))
    model.load_state_dict(load_file(str(path)))
    return model.eval()
