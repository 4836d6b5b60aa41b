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


class RestorerStep(Restorer):
    """A step around another restorer with the same interface (the k-diffusion way, as guidance wraps a model
    function): self-ensemble, a post step, being told the degradation. `apply(x, restore)` says what the step does
    with the inner restoration function; `restore_single_pass` exists where the inner restorer has one and runs
    the step around it. Name, weights hash and scale are the inner restorer's; `describe()` adds `facts()`."""

    def __init__(self, inner: Restorer):
        self.inner = inner
        if callable(getattr(inner, "restore_single_pass", None)):
            self.restore_single_pass = lambda x: self.apply(x, inner.restore_single_pass)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @name.setter
    def name(self, value: str) -> None:
        self.inner.name = value

    @property
    def weights_hash(self) -> str | None:  # type: ignore[override]
        return self.inner.weights_hash

    @property
    def scale(self) -> int:  # type: ignore[override]
        return self.inner.scale

    @abc.abstractmethod
    def apply(self, x: torch.Tensor, restore) -> torch.Tensor:
        """The step around `restore` (the inner restorer's `restore` or `restore_single_pass`) for input x."""

    def facts(self) -> dict[str, Any]:
        """What the step adds to the inner restorer's `describe()`."""
        return {}

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x, self.inner.restore)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), **self.facts()}

    def to(self, device: str | torch.device) -> RestorerStep:
        self.inner.to(device)
        return self
