"""TTPO stage (ii): choose preferred / rejected candidates, by pyiqa metrics or by a person.

Metric rule (TTPO): score every candidate with each metric, z-score each metric across the
candidates (sign flipped where lower is better), average; best = preferred, worst = rejected.
The restored image is passed in as one of the candidates by the caller.

Metrics that need weights are only built when their weight file is already cached (pyiqa's cache
dir or the torch hub dir), and construction runs with downloads blocked, so nothing is fetched.
"""
from __future__ import annotations

import difflib
import functools
import inspect
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

#: the offline default selector: PIQE needs no downloaded weights.
DEFAULT_SELECTOR = ("piqe",)


_WEIGHT_SUFFIXES = (".pth", ".pt", ".pkl", ".mat", ".ckpt", ".bin", ".safetensors", ".npz", ".npy", ".onnx")


class MetricUnavailableError(RuntimeError):
    """A metric's weights are not on this machine (and will not be downloaded)."""


@dataclass(frozen=True)
class MetricInfo:
    """One row of the metric table (pyiqa's facts)."""

    name: str
    kind: str  # "NR" (no-reference) or "FR" (full-reference)
    lower_better: bool
    needs_weights: bool
    weight_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class Selection:
    """Which candidates are preferred and rejected, by whom.

    selector: "human" or the metric names joined by "+"; scores: fused score per candidate id (metrics
    only); tie: no preference could be expressed (all equal, or a person said so).
    """

    preferred_ids: tuple[str, ...]
    rejected_ids: tuple[str, ...]
    tie: bool
    selector: str
    scores: dict[str, float] = field(default_factory=dict)
    raw_scores: dict[str, dict[str, float]] = field(default_factory=dict)


def human_selection(preferred_ids: Sequence[str], rejected_ids: Sequence[str] = (), tie: bool = False) -> Selection:
    """A person's choice as explicit ids (a tie may have no preferred or rejected ids)."""
    overlap = set(preferred_ids) & set(rejected_ids)
    if overlap:
        raise ValueError(f"ids cannot be both preferred and rejected: {sorted(overlap)}")
    if not tie and not preferred_ids:
        raise ValueError("a human selection needs at least one preferred id (or tie=True)")
    return Selection(tuple(preferred_ids), tuple(rejected_ids), bool(tie), "human")


# ---- the metric table ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _pyiqa_configs() -> dict:
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    return DEFAULT_CONFIGS


def weight_dirs() -> list[Path]:
    """Where cached metric weights are looked for: pyiqa's cache dir and the torch hub dirs."""
    hub = Path(torch.hub.get_dir())
    dirs = [hub / "pyiqa", hub / "checkpoints", hub]
    try:
        from pyiqa.utils.download_util import DEFAULT_CACHE_DIR

        dirs.insert(0, Path(DEFAULT_CACHE_DIR))
    except ImportError:
        pass
    return list(dict.fromkeys(dirs))


def _weight_files(name: str) -> tuple[str, ...]:
    """File names the metric's pyiqa arch would download (from its `default_model_urls` / URLs in source)."""
    from pyiqa.archs import (
        _lazy_import_arch,  # pyiqa imports (and registers) archs lazily
    )
    from pyiqa.utils.registry import ARCH_REGISTRY

    opts = _pyiqa_configs()[name]["metric_opts"]
    if opts["type"] not in ARCH_REGISTRY:
        _lazy_import_arch(opts["type"])
    module = inspect.getmodule(ARCH_REGISTRY.get(opts["type"]))
    urls = getattr(module, "default_model_urls", None)
    if isinstance(urls, dict) and urls:
        wanted = [str(v) for v in opts.values()]
        chosen = [u for k, u in urls.items() if any(str(k) == w or str(k) in w for w in wanted)]
        urls = chosen or list(urls.values())
    else:
        urls = re.findall(r"https?://[^\s'\"]+", inspect.getsource(module))
    names = (u.rstrip(")").split("/")[-1].split("?")[0] for u in urls if isinstance(u, str))
    return tuple(dict.fromkeys(n for n in names if n.endswith(_WEIGHT_SUFFIXES)))


@functools.cache
def metric_info(name: str) -> MetricInfo:
    """The table row for a pyiqa metric name; unknown names get a "did you mean" error."""
    configs = _pyiqa_configs()
    if name not in configs:
        close = difflib.get_close_matches(name, list(configs), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown quality metric {name!r}{hint} (known: pyiqa.list_models())")
    cfg = configs[name]
    try:
        files = _weight_files(name)
    except (ImportError, KeyError) as exc:  # the metric's arch or its extra packages are missing
        raise MetricUnavailableError(f"metric {name!r} cannot be used on this machine: {exc}") from exc
    return MetricInfo(
        name=name,
        kind=cfg.get("metric_mode", "NR"),
        lower_better=bool(cfg.get("lower_better", False)),
        needs_weights=bool(files),
        weight_files=files,
    )


def missing_weight_files(info: MetricInfo) -> list[str]:
    """The metric's weight files not found in any of `weight_dirs()` (empty when usable offline)."""
    if not info.needs_weights:
        return []
    present = {f for d in weight_dirs() if d.is_dir() for f in os.listdir(d)}
    return [] if any(f in present for f in info.weight_files) else list(info.weight_files)


# ---- scoring ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def get_metric(name: str, device: str = "cpu"):
    """A pyiqa metric built once and cached; raises MetricUnavailableError instead of downloading."""
    info = metric_info(name)
    missing = missing_weight_files(info)
    if missing:
        raise MetricUnavailableError(
            f"metric {name!r} needs weights that are not cached: looked for {', '.join(missing)} in "
            f"{', '.join(str(d) for d in weight_dirs())}; downloads are disabled (use 'piqe' offline)"
        )
    import pyiqa
    import pyiqa.utils.download_util as dl

    def _no_download(url, dst, *args, **kwargs):
        raise MetricUnavailableError(f"metric {name!r} tried to download {url}; downloads are disabled")

    saved, dl.download_url_to_file = dl.download_url_to_file, _no_download
    try:
        return pyiqa.create_metric(name, device=torch.device(device), as_loss=False)
    finally:
        dl.download_url_to_file = saved


@torch.no_grad()
def score_images(
    images: torch.Tensor, metrics: Sequence[str], reference: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Raw metric scores (N,) per metric for images (N, 3, H, W) in [0, 1].

    Full-reference metrics compare against `reference` (1, 3, H, W), e.g. the restored image.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    out = {}
    for name in metrics:
        info = metric_info(name)
        if info.kind == "FR" and reference is None:
            raise ValueError(f"metric {name!r} is full-reference: pass reference=")
        metric = get_metric(name, str(images.device))
        rows = []
        for i in range(images.shape[0]):  # per image: some pyiqa metrics reduce over the batch
            x = images[i : i + 1].float().clamp(0, 1)
            s = metric(x, reference.expand_as(x)) if info.kind == "FR" else metric(x)
            rows.append(torch.as_tensor(s, dtype=torch.float64).reshape(-1)[0])
        out[name] = torch.stack(rows).cpu()
    return out


def fuse_zscores(scores: dict[str, torch.Tensor], lower_better: dict[str, bool]) -> torch.Tensor:
    """TTPO fusion: mean over metrics of z-scores across candidates, sign flipped where lower is better.

    A metric with zero spread contributes zeros. Returns (N,) float64, higher = better.
    """
    if not scores:
        raise ValueError("no metric scores to fuse")
    zs = []
    for name, s in scores.items():
        s = s.double()
        if torch.isnan(s).any():
            raise ValueError(f"metric {name!r} returned NaN scores")
        finite = s[torch.isfinite(s)]
        if finite.numel() < s.numel():  # e.g. PSNR of an identical image: rank infinities at the ends
            hi, lo = (finite.max(), finite.min()) if finite.numel() else (torch.tensor(0.0), torch.tensor(0.0))
            s = torch.nan_to_num(s, posinf=float(hi) + 1.0, neginf=float(lo) - 1.0)
        std = s.std(unbiased=False)
        z = (s - s.mean()) / std if std > 0 else torch.zeros_like(s)
        zs.append(-z if lower_better[name] else z)
    return torch.stack(zs).mean(0)


def select_from_scores(
    ids: Sequence[str], fused: torch.Tensor, selector: str, top_k: int = 1, bottom_k: int = 1,
    raw: dict[str, torch.Tensor] | None = None,
) -> Selection:
    """Best top_k ids preferred, worst bottom_k rejected (disjoint); all equal -> tie, nothing rejected."""
    if len(ids) != fused.numel():
        raise ValueError(f"{len(ids)} ids for {fused.numel()} scores")
    if top_k < 1 or bottom_k < 0:
        raise ValueError("top_k must be >= 1 and bottom_k >= 0")
    order = torch.argsort(fused, descending=True, stable=True).tolist()
    scores = {i: float(s) for i, s in zip(ids, fused.tolist())}
    raw_d = {m: {i: float(v) for i, v in zip(ids, s.tolist())} for m, s in (raw or {}).items()}
    tie = bool(fused.max() - fused.min() <= 1e-12) or len(ids) < 2
    preferred = [ids[i] for i in order[:top_k]]
    rejected = [] if tie else [ids[i] for i in order[::-1][:bottom_k] if ids[i] not in preferred]
    return Selection(tuple(preferred), tuple(rejected), tie, selector, scores, raw_d)


def select_by_metrics(
    images: torch.Tensor,
    ids: Sequence[str],
    metrics: Sequence[str] = DEFAULT_SELECTOR,
    reference: torch.Tensor | None = None,
    top_k: int = 1,
    bottom_k: int = 1,
) -> Selection:
    """Automated selection over candidates (N, 3, H, W) in [0, 1] with ids (N,) by z-score fusion."""
    if not metrics:
        raise ValueError("metrics must name at least one pyiqa metric, e.g. ('piqe',)")
    infos = {m: metric_info(m) for m in metrics}
    raw = score_images(images, metrics, reference)
    fused = fuse_zscores(raw, {m: i.lower_better for m, i in infos.items()})
    return select_from_scores(ids, fused, "+".join(metrics), top_k, bottom_k, raw)
