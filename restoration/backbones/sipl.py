"""SIPL restorer: the shipped network behind the `Restorer` interface, with self-refinement at inference.

Weights are safetensors with metadata `arch=sipl` and the `SIPLConfig` as JSON, so a file alone says how
to build its network; loading never executes pickled code.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from restoration.backbones.base import Restorer
from restoration.backbones.classical import estimate_haze
from restoration.backbones.ensemble import check_ensemble, self_ensemble
from restoration.backbones.hashing import weights_sha256
from restoration.backbones.post_deconvolution import PostDeconvolver, load_post_deconvolver
from restoration.backbones.post_dehaze import PostDehazer, load_post_dehazer
from restoration.backbones.sipl_net import SIPLConfig, SIPLNet, self_refine
from restoration.backbones.tiling import tiled_apply

#: Self-refinement rounds used when none is given. Chosen by measurement on held-out photos
#: (see docs/history/sipl_model_card_2026-12-06.md: rounds 0/1/2 compared with `python -m restoration.evaluate --rounds R`).
DEFAULT_ROUNDS = 1
#: Images larger than this (either side) are restored tile by tile.
DEFAULT_TILE = 512
DEFAULT_OVERLAP = 32


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
        raise FileNotFoundError(f"SIPL weights not found: {path} (train them with `python -m restoration.train`)")
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
    """PromptIR + SIPL Proxy Fusion; `rounds` self-refinement rounds (0 = single pass); `ensemble` geometric
    copies averaged (1, 2, 4 or 8; each costs one more restoration, see `ensemble.self_ensemble`); `post` the
    blind post-deconvolution step (`post_deconvolution.PostDeconvolver`, trained for this network) applied to
    the whole restored image, after the refined pass and after the single pass alike, or None; `post_dehaze` the
    blind post-dehazing step (`post_dehaze.PostDehazer`) applied after it, or None; `told_dehaze` (omega, t0) ends
    every restoration with dark channel prior dehazing, set by the registry when the restorer is told the degradation
    contains haze (`registry.TOLD_DEHAZE`), or None; `told` the spec it was told (None: blind). `*_name` and `*_hash` name their files in `describe()`."""

    def __init__(self, net: SIPLNet, name: str = "sipl", weights_hash: str | None = None,
                 rounds: int | None = None, tile: int | None = None, overlap: int = DEFAULT_OVERLAP,
                 facts: dict[str, Any] | None = None, ensemble: int | None = None,
                 post: PostDeconvolver | None = None, post_name: str | None = None, post_hash: str | None = None,
                 post_dehaze: PostDehazer | None = None, post_dehaze_name: str | None = None,
                 post_dehaze_hash: str | None = None, told: str | None = None,
                 told_dehaze: tuple[float, float] | None = None):
        self.ensemble = check_ensemble(1 if ensemble is None else ensemble)
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
        self.post = None if post is None else post.eval().to(self.device)
        self.post_name = post_name if post is not None else None
        self.post_hash = post_hash if post is not None else None
        self.post_dehaze = None if post_dehaze is None else post_dehaze.eval().to(self.device)
        self.post_dehaze_name = post_dehaze_name if post_dehaze is not None else None
        self.post_dehaze_hash = post_dehaze_hash if post_dehaze is not None else None
        # the degradation spec the restorer was told (None: blind), and the dehazing (omega, t0) that ends each
        # restoration when it said haze (`registry.TOLD_DEHAZE`), or None
        self.told, self.told_dehaze = told, told_dehaze

    @classmethod
    def from_file(cls, path: str | Path, device: str = "cpu", rounds: int | None = None,
                  tile: int | None = None, name: str | None = None,
                  ensemble: int | None = None, post_deconvolution: str | Path | None = None,
                  post_dehaze: str | Path | None = None, told: str | None = None,
                  told_dehaze: tuple[float, float] | None = None) -> SIPLRestorer:
        """`post_deconvolution`, `post_dehaze`: the paths of post-step files trained for this network, or None."""
        facts = json.loads(read_metadata(path).get("facts", "{}")) if Path(path).is_file() else {}
        net = load_network(path, device)
        post = post_name = post_hash = None
        if post_deconvolution is not None:
            post = load_post_deconvolver(post_deconvolution)
            post_name, post_hash = Path(post_deconvolution).name, weights_sha256(post_deconvolution)
        dehaze = dehaze_name = dehaze_hash = None
        if post_dehaze is not None:
            dehaze = load_post_dehazer(post_dehaze)
            dehaze_name, dehaze_hash = Path(post_dehaze).name, weights_sha256(post_dehaze)
        return cls(net, name=name or Path(path).stem, weights_hash=weights_sha256(path), rounds=rounds,
                   tile=tile, facts=facts, ensemble=ensemble, post=post, post_name=post_name, post_hash=post_hash,
                   post_dehaze=dehaze, post_dehaze_name=dehaze_name, post_dehaze_hash=dehaze_hash,
                   told=told, told_dehaze=told_dehaze)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: str | torch.device) -> SIPLRestorer:
        self.net.to(device)
        for step in (self.post, self.post_dehaze):
            if step is not None:
                step.to(device)
        return self

    def _run(self, x: torch.Tensor, rounds: int) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) image tensor, got shape {tuple(x.shape)}")
        x = x.to(self.device, torch.float32)
        with torch.no_grad():  # not inference_mode: callers may use the result in autograd (guidance)
            y = self_ensemble(lambda v: tiled_apply(lambda t: self_refine(self.net, t, rounds), v, self.tile,
                                                    self.overlap, multiple=SIPLNet.multiple), x, self.ensemble)
            y = y.clamp(0, 1)
            for step in (self.post, self.post_dehaze):
                if step is not None:
                    y = step(x, y)
            if self.told_dehaze is not None:
                omega, t0 = self.told_dehaze
                y = estimate_haze(y).dehaze(y, omega, t0)
        return y

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> restored, with `self.rounds` self-refinement rounds."""
        return self._run(x, self.rounds)

    def restore_single_pass(self, x: torch.Tensor) -> torch.Tensor:
        """The plain first pass (dictionary only), i.e. self-refinement turned off (same ensemble)."""
        return self._run(x, 0)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "weights_hash": self.weights_hash, "rounds": self.rounds,
                "ensemble": self.ensemble, "proxy_fusion": self.net.proxy_fusion is not None, "tile": self.tile,
                "config": self.net.config.to_dict(), "training": self.facts,
                "post_deconvolution": self.post_name, "post_deconvolution_hash": self.post_hash,
                "post_dehaze": self.post_dehaze_name, "post_dehaze_hash": self.post_dehaze_hash,
                "told": self.told,
                "told_dehaze": None if self.told_dehaze is None else dict(zip(("omega", "t0"), self.told_dehaze))}
