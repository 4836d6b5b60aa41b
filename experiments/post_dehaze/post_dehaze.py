"""Blind post-dehazing: a dark-channel-prior step after the network, its strength chosen from the two images.

The shipped networks leave much of a haze on (`rain+haze` 17.1 dB against 19.3 for the classical dehazer told the
spec), while dehazing their output by the dark channel prior (He, Sun and Tang 2009;
`classical.dark_channel_dehaze`) at a well-chosen strength omega would reach about 22 dB on the validation photos.
The hard part is the choice: a bright, misty photo looks hazed, and dehazing it costs several dB. `PostDehazer`
predicts, for each omega of a small grid, the PSNR change dehazing would make, from `haze_features` (the dark
channel, the brightness and the contrast of the input and of the restored image over a coarse grid of cells:
synthetic and real haze grow with depth, mist and overcast light are flatter), and applies the best omega only
when the predicted gain is above a margin. Trained on restored training crops against their clean originals,
misty ones among them (`python -m experiments.post_dehaze.train`); run after a restorer by
`post_step.PostStepRestorer(restorer, PostStep.from_file(FILE, PostDehazer))` or
`python -m experiments.post_dehaze.evaluate --post-dehaze FILE ...`. Neither try was admissible: it dehazed clean
and noisy photos with much sky (docs/history/sipl_model_card_2026-12-06.md, *a post-dehazing step*).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from restoration.backbones.classical import (
    dark_channel_dehaze,
    dark_channel_patch,
    estimate_haze,
    min_filter,
)
from restoration.backbones.post_step import (
    GainStep,
    check_min_size,
)
from restoration.metrics import psnr


@dataclass(frozen=True)
class PostDehazeConfig:
    """The dehazing strengths (omega of the dark channel prior) and its lower bound on the transmission (t0: at
    most 1 / t0 times the contrast), the cells per side of the feature grid, the smallest predicted gain (dB)
    worth dehazing for, and the width of the predictor."""

    omegas: tuple[float, ...] = (0.2, 0.35, 0.5, 0.65, 0.8, 0.95)
    t0: float = 0.1
    cells: int = 4
    margin: float = 0.1
    hidden: int = 64

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PostDehazeConfig:
        d = dict(d)
        d["omegas"] = tuple(float(s) for s in d.get("omegas", cls.omegas))
        return cls(**d)

    @property
    def n_features(self) -> int:
        return 2 * (3 * self.cells**2 + 3)


def _image_features(x: torch.Tensor, cells: int) -> torch.Tensor:
    """(B, 3 cells^2 + 3): per cell the mean dark channel, mean brightness and brightness std; globally the mean
    brightness, its std and the mean saturation (max - min over the colours)."""
    x = x.float()
    dark = min_filter(x.amin(dim=1, keepdim=True), dark_channel_patch(*x.shape[-2:]))
    grey = x.mean(dim=1, keepdim=True)
    cell_dark = F.adaptive_avg_pool2d(dark, cells).flatten(1)
    cell_mean = F.adaptive_avg_pool2d(grey, cells)
    cell_std = (F.adaptive_avg_pool2d(grey * grey, cells) - cell_mean**2).clamp_min(0).sqrt().flatten(1)
    saturation = (x.amax(dim=1) - x.amin(dim=1)).mean(dim=(-2, -1))
    overall = torch.stack([grey.mean(dim=(1, 2, 3)), grey.std(dim=(1, 2, 3)), saturation], 1)
    return torch.cat([cell_dark, cell_mean.flatten(1), cell_std, overall], 1)


def haze_features(degraded: torch.Tensor, restored: torch.Tensor, config: PostDehazeConfig) -> torch.Tensor:
    """(B, config.n_features): `_image_features` of the degraded input and of the restored image."""
    check_min_size(degraded, "post-dehazing")
    return torch.cat([_image_features(v, config.cells) for v in (degraded, restored)], 1)


def dehaze_gains(restored: torch.Tensor, clean: torch.Tensor, config: PostDehazeConfig) -> torch.Tensor:
    """(B, len(omegas)): the PSNR change (dB) dehazing at each omega makes to `restored` against `clean`: the
    training target."""
    base = psnr(restored, clean)
    estimate = estimate_haze(restored)
    return torch.stack([psnr(estimate.dehaze(restored, w, config.t0), clean) - base for w in config.omegas], 1)


class PostDehazer(GainStep):
    """Predicts each omega's PSNR gain from `haze_features`; `forward(degraded, restored)` dehazes each image at
    the best omega where its predicted gain exceeds `config.margin`, and returns the rest (and images under
    `post_step.MIN_SIZE`) unchanged."""

    arch = "post_dehaze"
    trainer = "python -m experiments.post_dehaze.train"
    config_class = PostDehazeConfig

    def __init__(self, config: PostDehazeConfig = PostDehazeConfig()):
        super().__init__(config, config.n_features, len(config.omegas))

    def features(self, degraded: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
        return haze_features(degraded, restored, self.config)

    def apply_option(self, restored: torch.Tensor, index: int) -> torch.Tensor:
        return dark_channel_dehaze(restored, omega=self.config.omegas[index], t0=self.config.t0)

    @property
    def option_values(self) -> tuple[float, ...]:
        """The dehazing strength omega of each option."""
        return self.config.omegas


def load_post_dehazer(path: str | Path) -> PostDehazer:
    return PostDehazer.load(path)
