"""Scene-context pass: the low frequencies of a coarse run, where it sees haze the full-resolution run half-removed.

A blind network trained on small crops sees only a patch of a large image, and haze is a property of the whole
scene (thicker toward the far top). Restoring the image downscaled so its short side is `coarse_side` px (the
scale of the training crops, the whole scene in view) dehazes much better; its low frequencies can then replace
those of the full-resolution result, whose high frequencies (detail) stay. Ungated, that costs misty and clean
photos their look, so a per-image weight turns it on only where

  * the full-resolution result already changed the low frequencies a lot (`change`, mean absolute difference of the
    low-passed output and input: the network itself saw haze), and
  * the coarse run would change them a lot more (`extra`, mean absolute difference of the two low-passed results).

Each weight is a linear ramp between two thresholds, fixed on training photos. Never a default: it gained 0.5 dB on
validation `rain+haze` (1 dB on `haze`) and cost nothing without haze, but lost 0.1 dB on the evaluation photos'
`rain+haze` (some scenes much better, others over-dehazed; docs/history/sipl_model_card_2026-12-06.md, *a
scene-context pass*). Everything is computed at the coarse resolution (area-downscaled images, Gaussian low-pass
of `sigma` coarse px); the correction is upscaled bicubically and added, so a 4096 px image costs one 64 px
restoration more and a few small convolutions.

    >>> restorer = SceneContextRestorer(create_restorer("sipl"))    # any backbone
    $ python -m experiments.scene_context.evaluate --backbone sipl --degradation rain+haze --images DIR --json
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from restoration.backbones.base import Restorer, RestorerStep
from restoration.degradations import gaussian_blur


@dataclass(frozen=True)
class SceneContextConfig:
    coarse_side: int = 64
    #: no coarse run when the image's short side is less than this factor times `coarse_side`
    min_factor: float = 2.0
    #: the low-pass's standard deviation, in coarse pixels
    sigma: float = 2.0
    #: ramps (weight 0 at the first value, 1 at the second) of `change` and `extra`, images in [0, 1]
    change_ramp: tuple[float, float] = (0.04, 0.07)
    extra_ramp: tuple[float, float] = (0.02, 0.04)

    def __post_init__(self) -> None:
        if self.coarse_side < 16:
            raise ValueError(f"coarse_side must be at least 16 px, got {self.coarse_side}")
        if not self.min_factor >= 1:
            raise ValueError(f"min_factor must be at least 1, got {self.min_factor}")
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        for name in ("change_ramp", "extra_ramp"):
            lo, hi = getattr(self, name)
            if not 0 <= lo < hi:
                raise ValueError(f"{name} must be two increasing values >= 0, got {(lo, hi)}")


def coarse_shape(h: int, w: int, config: SceneContextConfig) -> tuple[int, int] | None:
    """The (h, w) of the coarse run (short side `coarse_side`, aspect kept), or None when the image is too small."""
    factor = min(h, w) / config.coarse_side
    if factor < config.min_factor:
        return None
    return max(1, round(h / factor)), max(1, round(w / factor))


def _ramp(v: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    lo, hi = bounds
    return ((v - lo) / (hi - lo)).clamp(0, 1)


def context_weight(change: torch.Tensor, extra: torch.Tensor, config: SceneContextConfig) -> torch.Tensor:
    """(B,) weights in [0, 1] from the (B,) `change` and `extra` statistics."""
    return _ramp(change, config.change_ramp) * _ramp(extra, config.extra_ramp)


def fuse_scene_context(degraded: torch.Tensor, restored: torch.Tensor, coarse_restored: torch.Tensor,
                       config: SceneContextConfig = SceneContextConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """(restored with the coarse run's low frequencies blended in, (B,) weights).

    `degraded`, `restored`: (B, 3, H, W) in [0, 1]; `coarse_restored`: (B, 3, h, w), the restoration of `degraded`
    area-downscaled to `coarse_shape(H, W)`."""
    if degraded.shape != restored.shape:
        raise ValueError(f"degraded and restored shapes differ: {tuple(degraded.shape)} vs {tuple(restored.shape)}")
    size = tuple(coarse_restored.shape[-2:])
    low = [gaussian_blur(F.interpolate(t, size=size, mode="area"), config.sigma) for t in (degraded, restored)]
    low_coarse = gaussian_blur(coarse_restored, config.sigma)
    change = (low[1] - low[0]).abs().mean(dim=(1, 2, 3))
    extra = (low_coarse - low[1]).abs().mean(dim=(1, 2, 3))
    weight = context_weight(change, extra, config)
    correction = F.interpolate(low_coarse - low[1], size=tuple(restored.shape[-2:]), mode="bicubic",
                               align_corners=False)
    return (restored + weight.view(-1, 1, 1, 1) * correction).clamp(0, 1), weight


class SceneContextRestorer(RestorerStep):
    """Any restorer plus the scene-context pass; `restore_single_pass` too when the inner restorer has one (the
    coarse run then uses the single pass as well)."""

    def __init__(self, inner: Restorer, config: SceneContextConfig = SceneContextConfig()):
        super().__init__(inner)
        self.config = config

    def apply(self, x: torch.Tensor, restore) -> torch.Tensor:
        restored = restore(x)
        shape = coarse_shape(x.shape[-2], x.shape[-1], self.config)
        if shape is None:
            return restored
        x = x.to(restored)
        coarse = restore(F.interpolate(x, size=shape, mode="area"))
        with torch.no_grad():
            return fuse_scene_context(x, restored, coarse, self.config)[0]

    def upscale(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("the scene-context pass restores at the input's size and does not upscale; "
                         "upscale without it")

    def facts(self) -> dict[str, Any]:
        return {"scene_context": asdict(self.config)}
