"""User-supplied checkpoints of any architecture spandrel recognises, loaded without running pickled code.

Safetensors files are read with `safetensors.torch.load_file`; .pth/.pt/.ckpt pickles with
`torch.load(weights_only=True)`, which refuses any pickle that would import or call code. The state
dict then goes to spandrel, which detects the architecture and its hyper-parameters.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import spandrel
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from restoration.backbones.base import Restorer
from restoration.backbones.hashing import weights_sha256
from restoration.backbones.tiling import tiled_apply

#: File suffixes a checkpoint may have.
SUPPORTED_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")


def _supported_text() -> str:
    return (
        f"supported: {', '.join(SUPPORTED_SUFFIXES)} files holding a plain state dict (tensors only) of an "
        f"architecture spandrel {spandrel.__version__} detects ({len(spandrel.MAIN_REGISTRY)} architectures, "
        "e.g. ESRGAN, SwinIR, HAT, NAFNet, SCUNet, DnCNN, Compact)"
    )


def supported_architectures() -> list[str]:
    """Ids of the architectures spandrel can detect from a state dict."""
    return [str(a.architecture.id) for a in spandrel.MAIN_REGISTRY.architectures()]


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.split("/", 2)[1:2] == ["code"] for n in zf.namelist() if n.count("/") >= 2)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint into a canonical {name: tensor} dict on the CPU, never executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} ({_supported_text()})")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(f"cannot load {path}: unsupported file type {suffix!r}; {_supported_text()}")
    if suffix == ".safetensors":
        try:
            raw: Any = load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"cannot read {path} as safetensors: {e}") from e
    else:
        if _is_torchscript(path):
            raise ValueError(
                f"refusing to load {path}: it is a TorchScript archive, which carries code; {_supported_text()}"
            )
        try:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
            what = f" (it references {found.group(1)})" if found else ""
            raise ValueError(
                f"refusing to load {path}: the pickle needs to import or run code{what}, and only tensors and "
                "plain containers are allowed (torch.load weights_only=True). Re-save it as a state dict "
                "(torch.save(model.state_dict(), ...)) or as .safetensors"
            ) from e
        except (RuntimeError, EOFError, OSError) as e:
            raise ValueError(f"cannot read {path} as a PyTorch checkpoint: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path} holds a {type(raw).__name__}, not a state dict; {_supported_text()}")
    state = spandrel.canonicalize_state_dict(raw)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(
            f"{path} contains no tensors at the top level of its state dict; {_supported_text()}"
        )
    return tensors


def load_model(path: str | Path, device: str | torch.device = "cpu") -> spandrel.ImageModelDescriptor:
    """Checkpoint -> spandrel image model descriptor (eval mode, float32, on `device`)."""
    state = load_state_dict(path)
    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_state_dict(state)
    except spandrel.UnsupportedModelError as e:
        raise ValueError(f"unrecognised architecture in {path}; {_supported_text()}") from e
    except Exception as e:  # detection matched but the weights do not fit the architecture
        raise ValueError(f"cannot build a model from {path}: {type(e).__name__}: {e}") from e
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise ValueError(
            f"{path} is a {descriptor.architecture.name} {descriptor.purpose} model; only image-to-image "
            "models (restoration or super-resolution) are supported, not inpainting"
        )
    return descriptor.to(torch.device(device)).float().eval()


class SpandrelRestorer(Restorer):
    """A spandrel-loaded model behind the `Restorer` interface.

    Super-resolution models (scale s > 1) serve two uses. `restore` treats them as restorers of a bicubic-upsampled
    image (what the `sr` degradation produces): the input is first downscaled by s (bicubic, antialiased), the model
    upscales it back, and the result is resized to the exact input size if rounding left it off by a pixel.
    `upscale` runs the model on the input as it is: real super-resolution, s times the input's size.
    Grayscale models run on each RGB channel separately. Large images are tiled (`tile`, `overlap` in the
    model's input pixels) unless the architecture does its own tiling; tile=0 disables tiling.
    """

    def __init__(
        self,
        descriptor: spandrel.ImageModelDescriptor,
        path: str | Path,
        tile: int = 256,
        overlap: int = 16,
    ) -> None:
        self.model = descriptor
        self.path = Path(path)
        self.name = str(path)
        self.weights_hash = weights_sha256(self.path)
        if descriptor.input_channels not in (1, 3, 4) or descriptor.output_channels not in (1, 3, 4):
            raise ValueError(
                f"{path}: {descriptor.input_channels}->{descriptor.output_channels} channel models are not "
                "supported (need 1, 3 or 4 channels in and out)"
            )
        if tile < 0 or (tile and not 0 <= overlap < tile):
            raise ValueError(f"tile must be 0 (off) or > overlap >= 0, got tile={tile}, overlap={overlap}")
        internal = descriptor.tiling in (spandrel.ModelTiling.INTERNAL, spandrel.ModelTiling.DISCOURAGED)
        self.tile = 0 if internal else tile
        self.overlap = overlap

    @classmethod
    def from_file(
        cls, path: str | Path, device: str | torch.device = "cpu", tile: int = 256, overlap: int = 16
    ) -> SpandrelRestorer:
        return cls(load_model(path, device), path, tile=tile, overlap=overlap)

    @property
    def scale(self) -> int:
        return int(self.model.scale)

    def to(self, device: str | torch.device) -> SpandrelRestorer:
        self.model.to(torch.device(device))
        return self

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) -> (B, 3, h*s, w*s): adapts channels around the model call."""
        b, _, h, w = x.shape
        cin, cout = self.model.input_channels, self.model.output_channels
        if cin == 1:
            x = x.reshape(b * 3, 1, h, w)
        elif cin == 4:
            x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        y = self.model(x)
        if cin == 1 and cout == 1:
            y = y.reshape(b, 3, *y.shape[-2:])
        elif cout == 1:
            y = y.expand(-1, 3, -1, -1)
        return y[:, :3]

    def _run(self, x: torch.Tensor, resample: bool) -> torch.Tensor:
        """The model over `x` (tiled): at x's size when `resample` (the input first resampled by 1/scale), else at
        scale x its size."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        s = self.scale
        device = self.model.device
        with torch.inference_mode():
            inp = x.to(device=device, dtype=torch.float32).clamp(0, 1)
            if resample and s > 1:
                size = (max(1, round(h / s)), max(1, round(w / s)))
                inp = F.interpolate(
                    inp, size=size, mode="bicubic", align_corners=False, antialias=True
                ).clamp(0, 1)
            multiple = self.model.size_requirements.multiple_of
            if self.tile:
                out = tiled_apply(self._forward, inp, self.tile, self.overlap, multiple=multiple, scale=s)
            else:
                out = self._forward(inp)
            target = (h, w) if resample else (h * s, w * s)
            if tuple(out.shape[-2:]) != target:
                out = F.interpolate(out, size=target, mode="bicubic", align_corners=False)
            out = out.clamp(0, 1).to(device=x.device, dtype=torch.float32)
        # Cloned outside inference mode so callers may use the result in autograd (e.g. guidance).
        return out.clone()

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, resample=True)

    def upscale(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 3, H * scale, W * scale): the model on the input as it is (tiled by `tile` input px)."""
        if self.scale == 1:
            return super().upscale(x)
        return self._run(x, resample=False)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "architecture": str(self.model.architecture.id),
            "purpose": self.model.purpose,
            "scale": self.scale,
            "tile": self.tile,
            "overlap": self.overlap,
        }
