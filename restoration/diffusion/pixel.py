"""The project's own pixel prior: a small diffusers UNet2DModel (optionally behind a pixel-unshuffle) on a DDPM
schedule, its configuration, how to build, wrap and save one (with its model card). Loading any prior, this one
included, is `restoration.diffusion.priors.load_prior`."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from restoration.diffusion.priors import PIXEL_EDGE_PAD, PRIOR_CONFIG_NAME, DiffusionPrior


@dataclass(frozen=True)
class PixelPriorConfig:
    """Architecture of the project's pixel prior: a small all-convolutional diffusers UNet2DModel.

    The image is pixel-unshuffled by `pixel_unshuffle` first (3 -> 3 * r^2 channels at 1/r size),
    which makes a 256x256 batch of 8 cheap on a CPU; sides are padded to r * 2^(levels-1).
    """

    block_out_channels: tuple[int, ...] = (48, 96, 96)
    layers_per_block: int = 1
    pixel_unshuffle: int = 4
    norm_num_groups: int = 16
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"  # or "v_prediction" (Salimans & Ho 2022): what the U-Net outputs


def build_pixel_unet(config: PixelPriorConfig = PixelPriorConfig()) -> torch.nn.Module:
    """A fresh randomly initialised UNet2DModel (DownBlock2D/UpBlock2D only: no attention)."""
    from diffusers import UNet2DModel

    ch = 3 * config.pixel_unshuffle**2
    n = len(config.block_out_channels)
    return UNet2DModel(
        sample_size=64 // config.pixel_unshuffle,
        in_channels=ch,
        out_channels=ch,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        down_block_types=("DownBlock2D",) * n,
        up_block_types=("UpBlock2D",) * n,
        norm_num_groups=config.norm_num_groups,
    )


def build_scheduler(config: PixelPriorConfig = PixelPriorConfig()):
    """The DDPM noise schedule the pixel prior is trained with (DDIM sampling reuses its alphas)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        clip_sample=True,
    )


def save_pixel_prior(
    folder: str | Path, unet: torch.nn.Module, config: PixelPriorConfig, card: dict[str, Any] | None = None,
    half: bool = True,
) -> Path:
    """Write unet/ (fp16 safetensors when `half`), scheduler/, prior_config.json and card.json, all at once: into
    a sibling folder that then replaces `folder`, so a reader never sees half a prior. A README.md already in
    `folder` (the hand-written model card) is kept."""
    import copy
    import shutil

    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    to_save = copy.deepcopy(unet).to("cpu")
    if half:
        to_save = to_save.half()
    to_save.save_pretrained(tmp / "unet", safe_serialization=True)
    build_scheduler(config).save_pretrained(tmp / "scheduler")
    facts = {"kind": "pixel", "pixel_unshuffle": config.pixel_unshuffle, "architecture": _asdict(config)}
    facts.update(card or {})
    (tmp / PRIOR_CONFIG_NAME).write_text(json.dumps(facts, indent=2))
    (tmp / "card.json").write_text(json.dumps(facts, indent=2))
    readme = folder / "README.md"
    (tmp / "README.md").write_text(readme.read_text() if readme.is_file() else _model_card(facts))
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def pixel_prior_from_unet(
    unet: torch.nn.Module, config: PixelPriorConfig = PixelPriorConfig(), prior_id: str = "pixel:untrained"
) -> DiffusionPrior:
    """Wrap an in-memory UNet2DModel (e.g. a tiny random one in a test) as a DiffusionPrior."""
    device = next(unet.parameters()).device
    h = hashlib.sha256()
    for k, v in sorted(unet.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return DiffusionPrior(
        kind="pixel",
        unet=unet.eval().requires_grad_(False),
        alphas_cumprod=build_scheduler(config).alphas_cumprod.float().to(device),
        prior_id=prior_id,
        weights_hash=h.hexdigest(),
        prediction_type=config.prediction_type,
        pixel_unshuffle=config.pixel_unshuffle,
        edge_pad=PIXEL_EDGE_PAD,
    )


def _asdict(config: PixelPriorConfig) -> dict[str, Any]:
    from dataclasses import asdict

    d = asdict(config)
    d["block_out_channels"] = list(d["block_out_channels"])
    return d


def _model_card(facts: dict[str, Any]) -> str:
    """A model card for a freshly trained prior folder: what it is, intended use, how to load it, its training
    facts. The shipped prior's card (assets/prior/README.md) is written by hand with its evaluation table."""
    arch = facts.get("architecture", {})
    training = facts.get("training", {})
    lines = [
        "# ttpo-lab pixel diffusion prior",
        "",
        "## What it is",
        f"A diffusers `UNet2DModel` ({arch.get('prediction_type', 'epsilon')} prediction, DDPM "
        f"{arch.get('beta_schedule', 'linear')} schedule, {arch.get('num_train_timesteps', 1000)} steps, channels "
        f"{arch.get('block_out_channels')}, pixel-unshuffle x{facts.get('pixel_unshuffle', 1)}) trained from scratch "
        "on random crops of photos.",
        "",
        "## Intended use",
        "Image-to-image from a restored image at low to moderate noise (strengths up to about 0.4): TTPO's candidates",
        "and reward-guided refinement. Not for generation from pure noise.",
        "",
        "## How to load",
        "`restoration.diffusion.priors.load_prior(FOLDER)`; measure it with",
        "`python -m restoration.evaluate_prior --prior FOLDER --images DIR --size 256 --json`.",
        "",
        "## Training facts",
        "",
        "```json",
        json.dumps(training, indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)
