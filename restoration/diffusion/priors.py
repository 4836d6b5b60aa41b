"""Diffusion priors behind one denoiser interface: the project's pixel U-Net, user pixel checkpoints,
and latent Stable-Diffusion-style checkpoints.

Every prior works in its own "z" space (pixels in [-1, 1] for pixel priors, scaled VAE latents for
latent priors) and exposes the same four things: `encode`, `decode`, `eps` and `alphas_cumprod`.
Samplers (`restoration.diffusion.sampling`) only ever see those.

Large images: `eps` evaluates the denoiser on overlapping tiles of z_t and blends the predictions with
raised-cosine weights (the averaging of MultiDiffusion, Bar-Tal et al. 2023), and latent priors use
the VAE's own tiled encode / decode, so candidates and refinement run at any size in bounded memory.
Tiles start on the U-Net's downsampling grid, so every tile sees the pixel-unshuffle phase the whole
image would.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from restoration.backbones.hashing import weights_sha256 as file_sha256
from restoration.backbones.tiling import tiled_apply

#: where `load_prior("default")` looks (the prior trained by `python -m restoration.training.prior`).
DEFAULT_PRIOR_DIR = Path(__file__).resolve().parents[2] / "assets" / "prior"
#: extra facts saved beside a pixel prior's unet (pixel-unshuffle factor, training facts).
PRIOR_CONFIG_NAME = "prior_config.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
_SCHEDULER_NAMES = ("scheduler_config.json",)
#: Reflected border (pixels) a pixel prior's denoiser sees around the image (`DiffusionPrior.edge_pad`), chosen on
#: validation photos, where it removed the band of larger error along the candidates' borders.
PIXEL_EDGE_PAD = 8
#: image sides (pixels) above which the denoiser runs on tiles, and the tiles' overlap. One 1024 px tile
#: of a batch of 8 raised the peak RSS by 1.4 GB on the shipped prior; nothing changes below 1024 px.
DEFAULT_TILE = 1024
DEFAULT_TILE_OVERLAP = 128
#: the denoiser's compute precision: float32, or autocast to bfloat16 / float16 (weights stay float32).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: torch.compile modes for the U-Net ("none": eager). "reduce-overhead" adds CUDA graphs on a GPU, where per-launch
#: overhead matters; "max-autotune" also searches kernels (slow to compile). Each new input shape compiles once.
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


class PriorNotFoundError(FileNotFoundError):
    """No usable diffusion prior at the place that was looked at."""


def weights_sha256(folder: str | Path) -> str:
    """sha256 over every weight file under `folder`: sorted relative paths and each file's (cached) sha256."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(folder)).encode())
        h.update(file_sha256(p).encode())
    return h.hexdigest()


@dataclass
class DiffusionPrior:
    """A denoiser eps(z_t, t) with its noise schedule; holds weights, so it is a class.

    kind: "pixel" (z = 2 * img - 1, optionally pixel-unshuffled inside `eps`) or "latent"
    (z = vae latent * scaling_factor). `alphas_cumprod` is (T,) float32 on the prior's device.
    tile / tile_overlap: in image pixels; sides above `tile` are denoised tile by tile (0: never).
    precision: the U-Net's compute precision ("fp32", or "bf16" / "fp16" autocast; see PRECISIONS).
    channels_last: the U-Net's inputs (and, through `set_inference_format`, its weights) in NHWC, which
    oneDNN / cuDNN convolutions may run faster (1.1x measured for the shipped prior on one CPU thread); same math.
    compile_mode: a torch.compile mode for the U-Net (see COMPILE_MODES; "none" runs it eagerly). Same math up to
    floating-point reassociation; the first call per input shape pays the compilation.
    edge_pad: z pixels of reflection added on every side before the denoiser and cropped after, so the image's
    border is denoised with context as its interior is (the U-Net's zero padding otherwise leaves a band of larger
    error there: for the shipped prior's candidates on 6 validation photos, 256 px, RMSE in the outer 4 px 7.9 vs
    6.1 inside; with 8 px 6.0 vs 6.1, for 13% more U-Net work at 256 px).
    """

    kind: str
    unet: torch.nn.Module
    alphas_cumprod: torch.Tensor
    prior_id: str
    weights_hash: str
    prediction_type: str = "epsilon"
    pixel_unshuffle: int = 1
    vae: torch.nn.Module | None = None
    scaling_factor: float = 1.0
    prompt_embeds: torch.Tensor | None = None
    card: dict[str, Any] = field(default_factory=dict)
    tile: int = DEFAULT_TILE
    tile_overlap: int = DEFAULT_TILE_OVERLAP
    precision: str = "fp32"
    channels_last: bool = False
    compile_mode: str = "none"
    edge_pad: int = 0
    _compiled: torch.nn.Module | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.check_tiling()
        check_precision(self.precision)
        self.set_inference_format(compile_mode=self.compile_mode)

    def set_inference_format(self, precision: str | None = None, channels_last: bool | None = None,
                             compile_mode: str | None = None) -> None:
        """Change the compute precision, memory format (of the U-Net and VAE) and/or compile mode in place."""
        if precision is not None:
            self.precision = check_precision(precision)
        if compile_mode is not None:
            self.compile_mode = check_compile_mode(compile_mode)
            self._compiled = None if compile_mode == "none" else torch.compile(
                self.unet, mode=None if compile_mode == "default" else compile_mode)
        if channels_last is not None:
            self.channels_last = bool(channels_last)
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            for module in (self.unet, self.vae):
                if module is not None:
                    module.to(memory_format=fmt)

    def check_tiling(self) -> None:
        """Raise ValueError unless tile is 0 (off) or tile > tile_overlap >= 0."""
        if self.tile < 0 or (self.tile and not 0 <= self.tile_overlap < self.tile):
            raise ValueError(f"tile must be 0 (off) or > tile_overlap >= 0, got tile={self.tile}, "
                             f"tile_overlap={self.tile_overlap}")

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def clip_x0(self) -> bool:
        """Pixel priors clamp predicted x0 to [-1, 1]; latents have no fixed range."""
        return self.kind == "pixel"

    def describe(self) -> dict[str, Any]:
        return {"prior_id": self.prior_id, "weights_hash": self.weights_hash, "kind": self.kind,
                "precision": self.precision}

    # ---- z space -----------------------------------------------------------------------------
    @property
    def image_multiple(self) -> int:
        """Image sides are padded to a multiple of this before encoding: the VAE's downsampling factor."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode(self, img01: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> z. Latent priors reflect-pad H, W to `image_multiple` (8 for SD) first."""
        x = img01.to(self.device, torch.float32) * 2.0 - 1.0
        if self.kind == "pixel":
            return x
        x = _pad_to(x, self.image_multiple)
        with self._vae_tiling(x):
            return self.vae.encode(x).latent_dist.mean * self.scaling_factor

    @torch.no_grad()
    def decode(self, z: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """z -> (B, 3, H, W) in [0, 1], cropped to `size` (H, W) when given."""
        if self.kind == "pixel":
            x = z
        else:
            with self._vae_tiling(z, self.image_multiple):
                x = self.vae.decode(z / self.scaling_factor).sample
        if size is not None:
            x = x[..., : size[0], : size[1]]
        return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    # ---- the denoiser ------------------------------------------------------------------------
    def eps(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted noise for a batch: z_t (B, C, h, w), t (B,) integer timesteps in [0, T); tiled above `tile`."""
        b, _, h, w = z_t.shape
        t = t.to(self.device, non_blocking=True).long().reshape(-1)
        if t.numel() not in (1, b):
            raise ValueError(f"t has {t.numel()} timesteps; expected 1 or {b} to match the batch of z_t")
        t = t.expand(b)
        p = self.edge_pad
        x = F.pad(z_t, (p, p, p, p), mode="reflect" if p < min(h, w) else "replicate") if p else z_t
        tile, overlap = self.z_tiling()
        if tile and max(h, w) > tile:
            x = _pad_to(x, self._unet_multiple())  # tiles then start on the U-Net's grid, as untiled
            out = tiled_apply(lambda zt: self._eps_untiled(zt, t), x, tile, overlap, multiple=1,
                              accumulate=torch.float32, align=self._unet_multiple())
        else:
            out = self._eps_untiled(x, t)
        return out[..., p : p + h, p : p + w]

    def z_tiling(self) -> tuple[int, int]:
        """(tile, overlap) in z pixels, rounded down to multiples of the U-Net's size multiple; (0, 0) when off."""
        if not self.tile:
            return 0, 0
        self.check_tiling()
        m = self._unet_multiple()
        tile = max(self.tile // self.image_multiple // m, 1) * m
        overlap = min(self.tile_overlap // self.image_multiple // m * m, tile - m)
        return tile, overlap

    def _eps_untiled(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b, _, h, w = z_t.shape
        multiple = self._unet_multiple()
        x = _pad_to(z_t, multiple)
        if self.pixel_unshuffle > 1:
            x = F.pixel_unshuffle(x, self.pixel_unshuffle)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = PRECISIONS[self.precision]
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            unet = self._compiled if self._compiled is not None else self.unet
            if self.kind == "latent":
                cond = self.prompt_embeds.expand(b, -1, -1)
                out = unet(x, t, encoder_hidden_states=cond).sample
            else:
                out = unet(x, t).sample
        if self.pixel_unshuffle > 1:
            out = F.pixel_shuffle(out, self.pixel_unshuffle)
        out = out[..., :h, :w].float()
        if out.shape[1] != z_t.shape[1]:  # learned-variance models output 2C channels
            out = out[:, : z_t.shape[1]]
        return self._to_eps(out, z_t, t)

    @contextmanager
    def _vae_tiling(self, x: torch.Tensor, scale: int = 1):
        """The VAE's own tiled encode / decode while x (in image pixels: its sides * scale) is above `tile`."""
        big = bool(self.tile) and max(x.shape[-2:]) * scale > self.tile and hasattr(self.vae, "enable_tiling")
        if big:
            self.vae.enable_tiling()
        try:
            yield
        finally:
            if big:
                self.vae.disable_tiling()

    def _to_eps(self, out: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return out
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        if self.prediction_type == "v_prediction":
            return a.sqrt() * out + (1 - a).sqrt() * z_t
        if self.prediction_type == "sample":
            return (z_t - a.sqrt() * out) / (1 - a).sqrt()
        raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")

    def _unet_multiple(self) -> int:
        n_down = max(len(getattr(self.unet.config, "block_out_channels", (1,))) - 1, 0)
        return self.pixel_unshuffle * (2**n_down)


def check_precision(precision: str) -> str:
    """`precision` when it is a key of PRECISIONS, else ValueError listing them."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def check_compile_mode(mode: str) -> str:
    """`mode` if it is one of COMPILE_MODES, else ValueError listing them."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    return mode


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """'auto' -> 'bf16' where the device computes bfloat16 natively (a CUDA GPU that supports it, a CPU
    with AVX512-BF16 or AMX), else 'fp32'; any other value is checked and returned.

    On a CPU with AVX512-BF16 bf16 autocast made the shipped prior's U-Net about 2x faster (candidates about 57 dB
    PSNR from float32 ones); on one without (AVX2 only, AMD EPYC) it made the candidate stage 6.8x slower
    (docs/history/benchmarks.md), so 'auto' asks for the native instructions, not for bf16 support in torch."""
    if precision != "auto":
        return check_precision(precision)
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if _cpu_has_native_bf16() else "fp32"
    return "fp32"


def _cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad the bottom/right of (B, C, H, W) so H and W are multiples of `multiple`."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


# ---- loading -------------------------------------------------------------------------------------


def _alphas_cumprod_from(scheduler_dir: Path) -> tuple[torch.Tensor, str]:
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_pretrained(scheduler_dir, local_files_only=True)
    return sched.alphas_cumprod.float(), sched.config.get("prediction_type", "epsilon")


def _find_scheduler_dir(folder: Path) -> Path | None:
    for cand in (folder / "scheduler", folder):
        if any((cand / n).is_file() for n in _SCHEDULER_NAMES):
            return cand
    return None


def _has_weights(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix in _WEIGHT_SUFFIXES for p in folder.iterdir())


def _resolve(name_or_path: str) -> tuple[Path, str]:
    """Map a name to a local folder: `default`/`pixel` -> assets/prior; a path; or a HF cache repo id."""
    if name_or_path in ("default", "pixel"):
        return DEFAULT_PRIOR_DIR, "pixel:default"
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path, f"local:{path.resolve().name}"
    if "/" in name_or_path and not name_or_path.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(name_or_path, local_files_only=True)), f"hf:{name_or_path}"
        except Exception as exc:
            raise PriorNotFoundError(
                f"diffusion prior {name_or_path!r} is not a local folder and is not in the Hugging Face "
                f"cache (looked up with local_files_only=True; nothing is downloaded): {exc}"
            ) from exc
    raise PriorNotFoundError(
        f"diffusion prior {name_or_path!r} not found: expected 'default', 'pixel', a local folder "
        "(with unet/ + scheduler/, or a latent model with vae/ + unet/ + scheduler/), or a cached "
        "Hugging Face repo id"
    )


def load_prior(name_or_path: str = "default", device: str | torch.device = "cpu", precision: str = "fp32",
               channels_last: bool = True, compile_mode: str = "none") -> DiffusionPrior:
    """Load a prior by name (`default`/`pixel` = assets/prior), local folder, or HF cache repo id, with the
    U-Net set to `precision`, (by default) channels-last memory format, and the torch.compile mode `compile_mode`.

    Raises PriorNotFoundError naming the folder and the files that were expected.
    """
    check_precision(precision)
    check_compile_mode(compile_mode)
    folder, prior_id = _resolve(str(name_or_path))
    expected = (
        f"expected in {folder}: unet/ (config.json + diffusion_pytorch_model.safetensors) and "
        "scheduler/scheduler_config.json; latent models also vae/; or a single-folder pixel model "
        "(config.json + weights + scheduler_config.json)"
    )
    if not folder.is_dir():
        hint = " (train one with `python -m restoration.training.prior`)" if prior_id == "pixel:default" else ""
        raise PriorNotFoundError(f"no diffusion prior at {folder}{hint}; {expected}")
    sched_dir = _find_scheduler_dir(folder)
    unet_dir = folder / "unet" if _has_weights(folder / "unet") else (folder if _has_weights(folder) else None)
    if sched_dir is None or unet_dir is None:
        missing = [n for n, v in (("scheduler config", sched_dir), ("unet weights", unet_dir)) if v is None]
        raise PriorNotFoundError(f"diffusion prior at {folder} is missing {' and '.join(missing)}; {expected}")
    try:
        alphas, prediction_type = _alphas_cumprod_from(sched_dir)
        if (folder / "vae").is_dir():
            prior = _load_latent(folder, unet_dir, alphas, prediction_type, prior_id, device)
        else:
            prior = _load_pixel(folder, unet_dir, alphas, prediction_type, prior_id, device)
    except PriorNotFoundError:
        raise
    except Exception as exc:
        raise PriorNotFoundError(f"could not read diffusion prior at {folder}: {exc}; {expected}") from exc
    prior.set_inference_format(precision, channels_last, compile_mode)
    return prior


def _load_pixel(folder, unet_dir, alphas, prediction_type, prior_id, device) -> DiffusionPrior:
    from diffusers import UNet2DModel

    card: dict[str, Any] = {}
    cfg_path = folder / PRIOR_CONFIG_NAME
    if cfg_path.is_file():
        card = json.loads(cfg_path.read_text())
    unet = UNet2DModel.from_pretrained(unet_dir, local_files_only=True, torch_dtype=torch.float32)
    unet = unet.to(device).eval().requires_grad_(False)
    return DiffusionPrior(
        kind="pixel",
        unet=unet,
        alphas_cumprod=alphas.to(device),
        prior_id=prior_id,
        weights_hash=weights_sha256(folder),
        prediction_type=prediction_type,
        pixel_unshuffle=int(card.get("pixel_unshuffle", 1)),
        card=card,
        edge_pad=PIXEL_EDGE_PAD,
    )


def _load_latent(folder, unet_dir, alphas, prediction_type, prior_id, device) -> DiffusionPrior:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    vae = AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True, torch_dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(unet_dir, local_files_only=True, torch_dtype=torch.float32)
    vae = vae.to(device).eval().requires_grad_(False)
    unet = unet.to(device).eval().requires_grad_(False)
    prompt_embeds = _empty_prompt_embeds(folder, unet, device)
    return DiffusionPrior(
        kind="latent",
        unet=unet,
        vae=vae,
        alphas_cumprod=alphas.to(device),
        prior_id=prior_id,
        weights_hash=weights_sha256(folder),
        prediction_type=prediction_type,
        scaling_factor=float(getattr(vae.config, "scaling_factor", 0.18215)),
        prompt_embeds=prompt_embeds,
    )


@torch.no_grad()
def _empty_prompt_embeds(folder: Path, unet, device) -> torch.Tensor:
    """Embedding of the empty prompt from text_encoder/ + tokenizer/ when present, else zeros (1, 77, D)."""
    dim = int(unet.config.cross_attention_dim)
    if (folder / "text_encoder").is_dir() and (folder / "tokenizer").is_dir():
        from transformers import CLIPTextModel, CLIPTokenizer

        tok = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        enc = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True).to(device).eval()
        ids = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
        return enc(ids.to(device))[0].float()
    return torch.zeros(1, 77, dim, device=device)
