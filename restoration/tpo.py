"""One round of Test-Time Preference Optimization (arXiv 2511.19169): restore -> candidates -> select -> refine.

The four stages are plain functions over tensors (`restore`, `candidates`, `select`, `refine`), each returning its
result and seconds: the app's compute layer, study preparation, bench and the commands all call them, so what bench
times is what the app runs. `TPOEngine` holds a loaded backbone and prior for the commands and keeps a round's
lineage: a `Round`'s `start` is the restoration (round 0) or the previous round's refined image, with its parent
round id, the selection that guided its refinement, seeds and configs.

Headless:
    python -m restoration.tpo --input IMG [--degradation SPEC] [--gt IMG] [--backbone NAME] [--hint SPEC]
        [--prior NAME_OR_PATH] [--selector METRIC[,METRIC...]] [--candidates N] [--rounds R] [--size N]
        [--seed S] [--upscale] [--device auto] --out DIR [--sheet FILE.png] --json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from restoration.backbones import create_restorer, get_restorer
from restoration.backbones.base import Restorer
from restoration.diffusion.candidates import (
    CandidateConfig,
    CandidateMeta,
    plan_candidates,
    sample_candidates_many,
)
from restoration.diffusion.priors import (
    COMPILE_MODES,
    DiffusionPrior,
    load_prior,
    resolve_precision,
)
from restoration.diffusion.refine import RefineConfig, reward_guided_denoise
from restoration.runtime import (
    DEVICE_CHOICES,
    resolve_device,
    synchronize,
    tune_allocator,
)
from restoration.selection import (
    DEFAULT_SELECTOR,
    Selection,
    fuse_zscores,
    metric_info,
    score_images,
    select_from_scores,
)

RESTORED_ID = "restored"
#: The two uses of a backbone, recorded with every round: `same_size` (a super-resolution model of scale s first
#: resamples its input by 1/s, what a synthesized `sr:s` undoes) and `upscale` (s times the input's size).
SCALE_MODES = ("same_size", "upscale")
#: The largest side (px) an upscaled round may have in the headless command (the same bound as `--size`).
MAX_UPSCALED_SIDE = 4096


@dataclass(frozen=True)
class TPOConfig:
    """Everything that decides a round's output besides the input image and the choices."""

    backbone: str = "sipl"
    prior: str = "default"
    selector: tuple[str, ...] = DEFAULT_SELECTOR
    candidates: CandidateConfig = CandidateConfig()
    refine: RefineConfig = RefineConfig()
    device: str = "cpu"
    precision: str = "fp32"  # the prior's compute precision: fp32, bf16 or fp16 (autocast)

    def to_dict(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "prior": self.prior, "selector": list(self.selector),
                "candidates": {**self.candidates.__dict__, "strengths": list(self.candidates.strengths)},
                "refine": self.refine.to_dict(), "device": self.device, "precision": self.precision}


@dataclass
class RoundCandidate:
    """A candidate shown for a choice: id unique within its round; image (1, 3, H, W) in [0, 1]."""

    id: str
    image: torch.Tensor
    meta: CandidateMeta | None  # None for the start image itself
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def is_start(self) -> bool:
        return self.id == RESTORED_ID


@dataclass
class Round:
    """One TTPO round with its lineage. `start` is what candidates and refinement start from."""

    id: str
    index: int
    parent_id: str | None
    start: torch.Tensor
    candidates: list[RoundCandidate]
    seconds: dict[str, float]
    selection: Selection | None = None
    refined: torch.Tensor | None = None

    def candidate(self, cid: str) -> RoundCandidate:
        for c in self.candidates:
            if c.id == cid:
                return c
        raise KeyError(f"round {self.id} has no candidate {cid!r}; ids: {[c.id for c in self.candidates]}")

    def images(self, ids: Sequence[str]) -> torch.Tensor | None:
        return torch.cat([self.candidate(i).image for i in ids]) if ids else None


def _new_id() -> str:
    return uuid.uuid4().hex


# ---- the stages: plain functions over tensors (1, 3, H, W) in [0, 1] ------------------------------------
# The app's compute layer (feedback.loop.engine), study preparation, bench, the batch and the headless commands
# all run a round through these four; nothing else calls a backbone, the candidate sampler, the selector or the
# reward-guided denoiser for a round. Each returns its result and the seconds it took (device synchronised).


def restore(restorer: Restorer, degraded: torch.Tensor, upscale: bool = False) -> tuple[torch.Tensor, float]:
    """Restored image in [0, 1] and seconds. `upscale=True`: real super-resolution to (1, 3, H * s, W * s) by a
    backbone of scale s > 1 (ValueError for others); the round continues at that size."""
    t0 = time.perf_counter()
    restored = restorer.upscale(degraded) if upscale else restorer.restore(degraded)
    synchronize(restored.device)
    return restored.clamp(0, 1), time.perf_counter() - t0


def candidates(prior: DiffusionPrior, starts: Sequence[torch.Tensor], configs: Sequence[CandidateConfig]
               ) -> tuple[list[list[tuple[torch.Tensor, CandidateMeta]]], float]:
    """Stage (i): the candidates of one or more start images of one size (one config each; concurrent sessions'
    requests share the denoising batches) -> ([[(image (1, 3, H, W), meta)] per start], seconds for all)."""
    metas = [plan_candidates(c, prior) for c in configs]
    t0 = time.perf_counter()
    images = sample_candidates_many(starts, prior, metas, max_batch=sum(c.max_batch for c in configs))
    synchronize(prior.device)
    made = [[(imgs[i : i + 1], m) for i, m in enumerate(ms)] for imgs, ms in zip(images, metas)]
    return made, time.perf_counter() - t0


def select(start: torch.Tensor, images: Mapping[str, torch.Tensor], metrics: Sequence[str], top_k: int = 1,
           bottom_k: int = 1) -> tuple[Selection, float]:
    """Stage (ii), automated: z-score fusion of the metrics over the named images (the start image among them when
    it is a candidate; full-reference metrics compare with `start`) -> (Selection with raw and fused scores,
    seconds)."""
    metrics = tuple(metrics)
    t0 = time.perf_counter()
    ids = list(images)
    raw, fused = _score_and_fuse(torch.cat(list(images.values())), metrics, start)
    selection = select_from_scores(ids, fused, "+".join(metrics), top_k, bottom_k, raw)
    return selection, time.perf_counter() - t0


def refine(prior: DiffusionPrior, start: torch.Tensor, preferred: torch.Tensor | None,
           rejected: torch.Tensor | None, config: RefineConfig) -> tuple[torch.Tensor, float]:
    """Stage (iii): reward-guided denoising of `start` toward `preferred` (N, 3, H, W), away from `rejected`
    -> (refined in [0, 1], seconds)."""
    t0 = time.perf_counter()
    refined = reward_guided_denoise(start, preferred, rejected, prior, config)
    synchronize(refined.device)
    return refined.clamp(0, 1), time.perf_counter() - t0


class TPOEngine:
    """Holds a backbone, a prior and a config for the commands (headless, batch, bench); each method runs one stage
    function above and keeps the round's lineage."""

    def __init__(self, config: TPOConfig = TPOConfig(), restorer: Restorer | None = None,
                 prior: DiffusionPrior | None = None):
        self.config = config
        self.restorer = restorer if restorer is not None else get_restorer(config.backbone, config.device)
        self.prior = prior if prior is not None else load_prior(config.prior, config.device, config.precision)

    def describe(self) -> dict[str, Any]:
        return {"backbone": self.restorer.describe(), "prior": self.prior.describe(), "config": self.config.to_dict()}

    def restore(self, degraded: torch.Tensor, upscale: bool = False) -> tuple[torch.Tensor, float]:
        return restore(self.restorer, degraded, upscale)

    def start_round(self, start: torch.Tensor, parent_id: str | None = None, index: int = 0,
                    seed: int | None = None, num_candidates: int | None = None) -> Round:
        """Stage (i) as a `Round`: candidates around `start` (1, 3, H, W); the start image is itself a candidate."""
        cfg = self.config.candidates
        if seed is not None:
            cfg = replace(cfg, seed=int(seed))
        if num_candidates is not None:
            cfg = replace(cfg, num_candidates=int(num_candidates))
        (made,), seconds = candidates(self.prior, [start], [cfg])
        cands = [RoundCandidate(RESTORED_ID, start, None)]
        cands += [RoundCandidate(f"c{i}", image, meta) for i, (image, meta) in enumerate(made)]
        return Round(_new_id(), index, parent_id, start, cands, {"candidates": seconds})

    def select(self, rnd: Round, metrics: Sequence[str] | None = None, top_k: int = 1,
               bottom_k: int = 1) -> Selection:
        """Stage (ii), automated, over every candidate of the round; the scores are kept on its candidates."""
        metrics = tuple(metrics or self.config.selector)
        sel, rnd.seconds["select"] = select(rnd.start, {c.id: c.image for c in rnd.candidates}, metrics, top_k,
                                            bottom_k)
        for c in rnd.candidates:
            c.scores = {m: sel.raw_scores[m][c.id] for m in metrics} | {"fused": sel.scores[c.id]}
        return sel

    def refine(self, rnd: Round, selection: Selection, config: RefineConfig | None = None) -> torch.Tensor:
        """Stage (iii) toward the selection; the round keeps the selection and the refined image."""
        refined, rnd.seconds["refine"] = refine(self.prior, rnd.start, rnd.images(selection.preferred_ids),
                                                rnd.images(selection.rejected_ids), config or self.config.refine)
        rnd.selection, rnd.refined = selection, refined
        return refined

    def score(self, images: torch.Tensor, metrics: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        return score_images(images, tuple(metrics or self.config.selector))


def fused_scores(engine: TPOEngine, rnd: Round, extra: dict[str, torch.Tensor]) -> dict[str, float]:
    """Fused selector score (higher = better) of named images, z-scored together with the round's candidates."""
    names = [c.id for c in rnd.candidates] + list(extra)
    images = torch.cat([c.image for c in rnd.candidates] + list(extra.values()))
    _, fused = _score_and_fuse(images, engine.config.selector, rnd.start)
    return dict(zip(names, fused.tolist()))


def _score_and_fuse(images: torch.Tensor, metrics: Sequence[str], reference: torch.Tensor
                    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Raw metric scores of images (N, 3, H, W) and their TTPO z-score fusion (N,), higher = better."""
    raw = score_images(images, metrics, reference=reference)
    return raw, fuse_zscores(raw, {m: metric_info(m).lower_better for m in metrics})


def upscaled_size(restorer: Restorer, height: int, width: int, max_side: int = MAX_UPSCALED_SIDE) -> tuple[int, int]:
    """(height * s, width * s): the size an upscaling round by `restorer` (scale s) continues at. ValueError when the
    backbone cannot upscale (scale 1) or a side would pass `max_side` px."""
    s = restorer.scale
    if s <= 1:
        raise ValueError(f"backbone {restorer.name!r} restores at scale {s} and cannot upscale; choose a "
                         "super-resolution backbone (scale > 1, e.g. realesrgan)")
    out = (height * s, width * s)
    if max(out) > max_side:
        raise ValueError(f"upscaling {width}x{height} px by x{s} gives {out[1]}x{out[0]} px; sides of at most "
                         f"{max_side} px are allowed (input sides up to {max_side // s} px)")
    return out


# ---- the headless command -----------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m restoration.tpo", description="Run TTPO rounds headless.")
    p.add_argument("--input", required=True, type=Path, help="image to restore (ground truth with --degradation)")
    p.add_argument("--degradation", default="", help="degrade the input first, e.g. noise:25 (seeded)")
    p.add_argument("--gt", type=Path, help="ground-truth image for PSNR (implied by --degradation)")
    p.add_argument("--backbone", default="sipl")
    p.add_argument("--hint", default=None,
                   help="tell the restorer the degradation, e.g. haze (the classical baselines choose their method by "
                        "it; a SIPL backbone told haze dehazes its output at the end); default: blind")
    p.add_argument("--prior", default="default")
    p.add_argument("--selector", default=",".join(DEFAULT_SELECTOR), help="pyiqa metrics, comma-separated")
    p.add_argument("--candidates", type=int, default=CandidateConfig().num_candidates)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--size", type=int, default=0, help="resize short side to N and center-crop N x N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=0, help="override refine steps")
    p.add_argument("--strength", type=float, default=0.0, help="override refine strength")
    p.add_argument("--device", default="auto", help=f"{DEVICE_CHOICES} (default auto: CUDA when torch sees a GPU)")
    p.add_argument("--upscale", action="store_true",
                   help="real super-resolution: the backbone (scale s > 1, e.g. realesrgan) outputs s x the input's "
                        "size and the round continues there; default: restore at the input's size")
    p.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16", "fp16"),
                   help="the prior's compute precision ('auto': bf16 where the device has native bfloat16)")
    p.add_argument("--compile", default="none", choices=COMPILE_MODES,
                   help="torch.compile the prior's U-Net (each new image size compiles once)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    p.add_argument("--sheet", type=Path, default=None,
                   help="write a contact sheet PNG of the last round: input, start, candidates, refined, and one "
                        "region of each at 1:1 or 2x nearest")
    a = p.parse_args(argv)
    a.hint = (a.hint or "").strip() or None
    if not 1 <= a.candidates <= 64:
        p.error("--candidates must be in 1..64")
    if not 1 <= a.rounds <= 10:
        p.error("--rounds must be in 1..10")
    if a.size and not 16 <= a.size <= 4096:
        p.error("--size must be in 16..4096")
    if a.upscale and a.degradation:
        p.error("--upscale takes a real small input; --degradation makes a degraded image of the photo's own size, "
                "which the backbone restores at that size (leave out --upscale)")
    try:
        a.device = resolve_device(a.device)
    except ValueError as exc:
        p.error(f"--device: {exc}")
    return a


def main(argv: list[str] | None = None) -> int:
    from restoration.degradations import degrade
    from restoration.io import load_image, resize_short_side_center_crop, save_image
    from restoration.metrics import psnr

    a = _parse(argv)
    tune_allocator()
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    try:
        image = load_image(a.input)
        if a.size:
            image = resize_short_side_center_crop(image, a.size)
        restorer = create_restorer(a.backbone, a.device, degradation=a.hint)
        out_size = upscaled_size(restorer, *image.shape[-2:]) if a.upscale else tuple(image.shape[-2:])
        gt = None
        if a.degradation:
            gt = image
            image, record = degrade(gt, a.degradation, a.seed)
            log(f"degraded with {record.spec} (seed {record.seed})")
        elif a.gt:
            gt = load_image(a.gt)
            if a.size:
                gt = resize_short_side_center_crop(gt, a.size * (restorer.scale if a.upscale else 1))
            if tuple(gt.shape[-2:]) != out_size:
                what = f"the x{restorer.scale} output" if a.upscale else "the input"
                raise ValueError(f"--gt size {tuple(gt.shape[-2:])} differs from {what} {out_size}")
        selector = tuple(m.strip() for m in a.selector.split(",") if m.strip())
        for m in selector:
            metric_info(m)  # unknown metric names fail before any work
        refine = RefineConfig()
        if a.steps:
            refine = replace(refine, steps=a.steps)
        if a.strength:
            refine = replace(refine, strength=a.strength)
        config = TPOConfig(backbone=a.backbone, prior=a.prior, selector=selector,
                           candidates=replace(CandidateConfig(), num_candidates=a.candidates, seed=a.seed),
                           refine=replace(refine, seed=a.seed), device=a.device,
                           precision=resolve_precision(a.precision, a.device))
        engine = TPOEngine(config, restorer=restorer, prior=None)
        engine.prior.set_inference_format(compile_mode=a.compile)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        log(f"error: {exc}")
        return 2

    a.out.mkdir(parents=True, exist_ok=True)
    save_image(image, a.out / "input.png")
    restored, t_restore = engine.restore(image, upscale=a.upscale)
    mode = "upscale" if a.upscale else "same_size"
    log(f"{mode}: {restorer.name} (scale {restorer.scale}) {tuple(image.shape[-2:])} -> {tuple(restored.shape[-2:])}")
    save_image(restored, a.out / "restored.png")
    start, parent, rounds = restored, None, []
    for r in range(a.rounds):
        rnd = engine.start_round(start, parent_id=parent, index=r, seed=a.seed + 1000 * r)
        sel = engine.select(rnd)
        refined = engine.refine(rnd, sel)
        scores = fused_scores(engine, rnd, {"refined": refined})
        for c in rnd.candidates:
            if not c.is_start:
                save_image(c.image, a.out / f"round{r}_{c.id}.png")
        save_image(refined, a.out / f"round{r}_refined.png")
        row = {
            "round_id": rnd.id, "parent_id": parent,
            "candidates": [{"id": c.id, "seed": c.meta.seed if c.meta else None,
                            "strength": c.meta.strength if c.meta else 0.0, "scores": c.scores}
                           for c in rnd.candidates],
            "preferred": list(sel.preferred_ids), "rejected": list(sel.rejected_ids), "tie": sel.tie,
            "restored_score": scores[RESTORED_ID], "refined_score": scores["refined"],
            "seconds": {"restore": t_restore if r == 0 else 0.0, **{k: rnd.seconds.get(k, 0.0)
                                                                     for k in ("candidates", "select", "refine")}},
        }
        cand_images = torch.cat([c.image for c in rnd.candidates if not c.is_start])
        row["candidate_diversity_psnr"] = _mean_pairwise_psnr(cand_images)
        if gt is not None:
            row["restored_psnr"] = float(psnr(start, gt))
            row["refined_psnr"] = float(psnr(refined, gt))
        log(f"round {r}: preferred {row['preferred']} rejected {row['rejected']} "
            f"score {row['restored_score']:.3f} -> {row['refined_score']:.3f}")
        rounds.append(row)
        start, parent = refined, rnd.id
    save_image(start, a.out / "final.png")
    if a.sheet:
        label = "restored" if a.rounds == 1 else f"start of round {a.rounds - 1}"
        write_sheet(a.sheet, image, rnd, start, restored_label=label)
        log(f"contact sheet: {a.sheet}")
    result = {"rounds": rounds, "selector": "+".join(selector), "prior": engine.prior.describe(),
              "backbone": engine.restorer.describe(), "input": str(a.input), "degradation": a.degradation or None,
              "hint": a.hint, "device": a.device, "scale_mode": mode, "scale": engine.restorer.scale,
              "input_size": [image.shape[-1], image.shape[-2]], "output_size": [restored.shape[-1], restored.shape[-2]],
              "seed": a.seed}
    (a.out / "result.json").write_text(json.dumps(result, indent=2))
    if a.json:
        print(json.dumps(result))
    return 0


def write_sheet(path: Path, image: torch.Tensor, rnd: Round, refined: torch.Tensor,
                restored_label: str = "restored") -> Path:
    """The contact sheet of one round (restoration.sheet) as a PNG at `path`."""
    from restoration.sheet import candidate_label, round_sheet, save_png_atomically

    cands = [(candidate_label(c.id, c.meta.strength, c.meta.seed), c.image) for c in rnd.candidates if not c.is_start]
    save_png_atomically(round_sheet(image, rnd.start, cands, refined, restored_label), path)
    return Path(path)


def _mean_pairwise_psnr(images: torch.Tensor) -> float | None:
    from restoration.metrics import psnr

    n = images.shape[0]
    vals = [float(psnr(images[i:i + 1], images[j:j + 1])) for i in range(n) for j in range(i + 1, n)]
    return sum(vals) / len(vals) if vals else None


if __name__ == "__main__":
    raise SystemExit(main())
