"""Post steps: a small predictor chooses one classical operation to apply to a network's restored image, or none.

A post step scores each option of a fixed grid (e.g. Wiener filters of several blur widths) by the PSNR change it
predicts the option would make, from features of the degraded input and of the restored image; it applies the best
option where that predicted gain is above a margin and otherwise leaves the image alone. Subclasses say what the
features are and what an option does (`post_deconvolution.PostDeconvolver`); the predictor, the decision and the
file format are shared here. The predictors are trained on restored training crops against their clean originals
(`restoration.training.post_deconvolution`), so their targets are measured PSNR changes.

A trained step and its file are one value, `PostStep`; `PostStepRestorer` runs it after a restorer.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from restoration.backbones.base import Restorer, RestorerStep
from restoration.backbones.hashing import weights_sha256

#: Images smaller than this (either side) give too little to judge; a post step leaves them alone.
MIN_SIZE = 16


def check_min_size(x: torch.Tensor, step: str) -> None:
    """A clear error when (B, C, H, W) `x` is under `MIN_SIZE` on either side (`step` names the step)."""
    if min(x.shape[-2:]) < MIN_SIZE:
        raise ValueError(f"{step} needs images of at least {MIN_SIZE} x {MIN_SIZE} px, got {tuple(x.shape[-2:])}")

Step = TypeVar("Step", bound="GainStep")


class GainStep(nn.Module):
    """Predicts each option's PSNR gain (dB) from `features(degraded, restored)`; `forward(degraded, restored)`
    applies the best option per image where its predicted gain exceeds `config.margin`, and returns the other
    images (and images under `MIN_SIZE`) unchanged. `config` is a frozen dataclass with `margin`, `hidden`,
    `to_dict()` and `from_dict()`."""

    #: The file's `arch` metadata; a file of another step is refused.
    arch = ""
    #: The command that trains this step (named in the error for a missing file).
    trainer = ""
    #: The config dataclass its files hold (each subclass sets it; `load` builds the step from it).
    config_class: type

    def __init__(self, config: Any, n_features: int, n_options: int):
        super().__init__()
        self.config = config
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        self.predictor = nn.Sequential(nn.Linear(n_features, config.hidden), nn.ReLU(),
                                       nn.Linear(config.hidden, config.hidden), nn.ReLU(),
                                       nn.Linear(config.hidden, n_options))

    @classmethod
    def load(cls: type[Step], path: str | Path) -> Step:
        """A step of this kind from its file (`load_gain_step`)."""
        return load_gain_step(path, cls, cls.config_class)

    def features(self, degraded: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
        """(B, n_features) from the degraded input and the restored image, both (B, 3, H, W) in [0, 1]."""
        raise NotImplementedError

    def apply_option(self, restored: torch.Tensor, index: int) -> torch.Tensor:
        """Option `index` applied to restored (1, 3, H, W) -> same shape in [0, 1]."""
        raise NotImplementedError

    @property
    def option_values(self) -> tuple:
        """What each option is (e.g. its blur width, its strength), in the predictor's output order."""
        raise NotImplementedError

    def predict_gains(self, features: torch.Tensor) -> torch.Tensor:
        return self.predictor((features - self.feature_mean) / self.feature_std)

    def choose_options(self, degraded: torch.Tensor, restored: torch.Tensor) -> list[int | None]:
        """Per image, the index of the option to apply, or None for none."""
        gains = self.predict_gains(self.features(degraded, restored))
        best, index = gains.max(dim=1)
        return [i if g > self.config.margin else None for g, i in zip(best.tolist(), index.tolist())]

    def choose(self, degraded: torch.Tensor, restored: torch.Tensor) -> list[Any]:
        """Per image, the `option_values` entry to apply, or None for none."""
        return [None if i is None else self.option_values[i] for i in self.choose_options(degraded, restored)]

    def forward(self, degraded: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
        if min(degraded.shape[-2:]) < MIN_SIZE:
            return restored
        out = []
        for i, choice in enumerate(self.choose_options(degraded, restored)):
            y = restored[i:i + 1]
            out.append(y if choice is None else self.apply_option(y, choice))
        return torch.cat(out)


def save_gain_step(model: GainStep, path: str | Path, facts: dict | None = None) -> None:
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"arch": model.arch, "config": json.dumps(model.config.to_dict()),
                                          "facts": json.dumps(facts or {})})


def load_gain_step(path: str | Path, cls: type[Step], config_cls: type) -> Step:
    """A `cls` step from its file; clear errors for a missing file or a file of another kind."""
    path = Path(path)
    what = cls.arch.replace("_", "-")
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights not found: {path} (train them with `{cls.trainer}`)")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("arch") != cls.arch:
        raise ValueError(f"{path} is not a {what} file (arch={meta.get('arch')!r})")
    model = cls(config_cls.from_dict(json.loads(meta["config"])))
    model.load_state_dict(load_file(str(path)))
    return model.eval()


@dataclass(frozen=True)
class PostStep:
    """A trained post step and its file, as one value: what runs after the network, and what records name (file name,
    sha256). Equal when the files are (so shared restorers are cached by it)."""

    module: GainStep = field(compare=False, repr=False)
    name: str
    sha256: str

    def __post_init__(self) -> None:
        self.module.eval()

    @classmethod
    def from_file(cls, path: str | Path, kind: type[GainStep]) -> PostStep:
        """The `kind` step in `path` (e.g. `post_deconvolution.PostDeconvolver`); clear errors as `load_gain_step`."""
        return cls(kind.load(path), Path(path).name, weights_sha256(path))


class PostStepRestorer(RestorerStep):
    """`inner` followed by a post step on its whole output (after the refined and the single pass alike). Records
    the step's file under its kind: `describe()["post_deconvolution"]` and `["post_deconvolution_hash"]`."""

    def __init__(self, inner: Restorer, step: PostStep):
        super().__init__(inner)
        self.step = step

    def apply(self, x: torch.Tensor, restore) -> torch.Tensor:
        y = restore(x)
        with torch.no_grad():
            return self.step.module.to(y.device)(x.to(y.device, y.dtype), y)

    def facts(self) -> dict[str, Any]:
        arch = self.step.module.arch
        return {arch: self.step.name, f"{arch}_hash": self.step.sha256}
