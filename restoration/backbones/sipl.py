"""SIPL restorer: the shipped network behind the `Restorer` interface, with self-refinement at inference.

Weights are safetensors with metadata `arch=sipl` and the `SIPLConfig` as JSON, so a file alone says how
to build its network; loading never executes pickled code. What may run around it (self-ensemble, the post
step, being told the degradation) are steps that wrap it (`registry.create_restorer` puts them together).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from restoration.backbones.base import Restorer
from restoration.backbones.hashing import weights_sha256
from restoration.backbones.sipl_net import SIPLConfig, SIPLNet, self_refine
from restoration.backbones.tiling import tiled_apply

#: Self-refinement rounds used when none is given. Chosen by measurement on held-out photos
#: (see docs/history/sipl_model_card_2026-12-06.md: rounds 0/1/2 compared with `python -m restoration.evaluate --rounds R`).
DEFAULT_ROUNDS = 1
#: Images larger than this (either side) are restored tile by tile.
DEFAULT_TILE = 512
DEFAULT_OVERLAP = 32
#: What the steps that may wrap a SIPL restorer record when absent (each step fills in its own), so that every SIPL
#: restorer's `describe()` has the same keys: `ensemble.SelfEnsemble`, `post_step.PostStepRestorer`,
#: `told.ToldDegradation`.
NO_STEPS = {"ensemble": 1, "post_deconvolution": None, "post_deconvolution_hash": None, "told": None,
            "told_dehaze": None}


def save_weights(net: SIPLNet, path: str | Path, facts: dict[str, Any] | None = None,
                 half: bool = True) -> None:
    """Write the network's weights (float16 by default, a few MB) with its config in the metadata."""
    path = Path(path)
    tensors = {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu().contiguous()
               for k, v in net.state_dict().items()}
    meta = {"arch": "sipl", "config": json.dumps(net.config.to_dict()),
            "facts": json.dumps(facts or {})}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def read_metadata(path: str | Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_network(path: str | Path, device: str | torch.device = "cpu") -> SIPLNet:
    """Build a `SIPLNet` from a safetensors file written by `save_weights`; clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SIPL weights not found: {path} (train them with `python -m restoration.training.sipl`)")
    meta = read_metadata(path)
    if meta.get("arch") != "sipl" or "config" not in meta:
        raise ValueError(f"{path} is not a SIPL weights file (metadata arch={meta.get('arch')!r}, expected 'sipl')")
    net = SIPLNet(SIPLConfig.from_dict(json.loads(meta["config"])))
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return net.eval().to(device)


class SIPLRestorer(Restorer):
    """PromptIR + SIPL Proxy Fusion; `rounds` self-refinement rounds (0 = single pass; the ablation has none);
    images over `tile` px a side restored tile by tile with `overlap`; `facts` the training facts of its file."""

    def __init__(self, net: SIPLNet, name: str = "sipl", weights_hash: str | None = None,
                 rounds: int | None = None, tile: int | None = None, overlap: int = DEFAULT_OVERLAP,
                 facts: dict[str, Any] | None = None):
        rounds = DEFAULT_ROUNDS if rounds is None else rounds
        if not isinstance(rounds, int) or not 0 <= rounds <= 4:
            raise ValueError(f"rounds must be an integer in 0..4, got {rounds!r}")
        tile = DEFAULT_TILE if tile is None else tile
        if tile < 64 or tile % 8:
            raise ValueError(f"tile must be a multiple of 8, at least 64 px, got {tile}")
        self.net = net.eval()
        self.name = name
        self.weights_hash = weights_hash
        self.rounds = rounds if net.proxy_fusion is not None else 0
        self.tile, self.overlap = tile, overlap
        self.facts = facts or {}

    @classmethod
    def from_file(cls, path: str | Path, device: str = "cpu", rounds: int | None = None,
                  tile: int | None = None, name: str | None = None) -> SIPLRestorer:
        facts = json.loads(read_metadata(path).get("facts", "{}")) if Path(path).is_file() else {}
        net = load_network(path, device)
        return cls(net, name=name or Path(path).stem, weights_hash=weights_sha256(path), rounds=rounds,
                   tile=tile, facts=facts)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: str | torch.device) -> SIPLRestorer:
        self.net.to(device)
        return self

    def _run(self, x: torch.Tensor, rounds: int) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) image tensor, got shape {tuple(x.shape)}")
        x = x.to(self.device, torch.float32)
        with torch.no_grad():  # not inference_mode: callers may use the result in autograd (guidance)
            y = tiled_apply(lambda t: self_refine(self.net, t, rounds), x, self.tile, self.overlap,
                            multiple=SIPLNet.multiple)
            return y.clamp(0, 1)

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> restored, with `self.rounds` self-refinement rounds."""
        return self._run(x, self.rounds)

    def restore_single_pass(self, x: torch.Tensor) -> torch.Tensor:
        """The plain first pass (dictionary only), i.e. self-refinement turned off."""
        return self._run(x, 0)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "weights_hash": self.weights_hash, "rounds": self.rounds,
                "proxy_fusion": self.net.proxy_fusion is not None, "tile": self.tile,
                "config": self.net.config.to_dict(), "training": self.facts, **NO_STEPS}
