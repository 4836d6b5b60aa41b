"""The one small interface every restoration backbone implements."""
from __future__ import annotations

import abc
from typing import Any

import torch


class Restorer(abc.ABC):
    """A restoration backbone: degraded (B, 3, H, W) in [0, 1] -> restored, same shape, in [0, 1].

    Subclasses hold weights (or none, for classical baselines). `restore` must accept any H, W
    (pad and crop back internally) and must not keep autograd history.
    """

    #: registry name (`sipl`, `sipl_ablation`, `classical`, or a checkpoint path).
    name: str = "restorer"
    #: sha256 of the weights file, or None for methods without weights.
    weights_hash: str | None = None
    #: the model's own output / input size ratio (a x4 super-resolution model: 4); `restore` keeps the size anyway.
    scale: int = 1

    @abc.abstractmethod
    def restore(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float32 in [0, 1] -> (B, 3, H, W) float32 in [0, 1]."""

    def upscale(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float32 in [0, 1] -> (B, 3, H * scale, W * scale): real super-resolution of an input smaller
        than what the model outputs. Only models with scale > 1 upscale; the others raise ValueError."""
        raise ValueError(f"backbone {self.name!r} restores at scale {self.scale} and cannot upscale; choose a "
                         "super-resolution backbone (scale > 1, e.g. realesrgan)")

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable facts recorded with every result (name, weights hash, options)."""
        return {"name": self.name, "weights_hash": self.weights_hash, "scale": self.scale}

    def to(self, device: str | torch.device) -> "Restorer":
        return self
