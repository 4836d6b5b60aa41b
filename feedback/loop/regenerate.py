"""Recompute a recorded round from what the database holds and compare it with the stored images.

    ttpo regenerate --db sqlite:///data/ttpo.sqlite3 --round ROUND_ID --json

Round 0's restoration is recomputed from the stored upload (degraded again with the recorded spec and seed when the
degradation was synthesized), with the recorded backbone, hint and scale mode; the diffusion candidates from the
round's stored start image with the recorded candidate settings, seeds and prior; each refinement from the stored
start, preferred and rejected images with its recorded settings. A later round's start image is the refinement of
its parent (regenerate the parent to check it).

Prints `{"round_id", "images": [{"kind": "restored|candidate|refined", "id", "image_id", "match", "identical",
"psnr"}], "all_match", "rule", ...}`. `match`: identical pixels where this run has the recorded device and dtype
(rule `identical`); where either differs, PSNR >= 60 dB (rule `psnr>=60`). PSNR is over the stored 8-bit images,
100.0 for identical ones. Exit status 0 when all match, 1 when not, 2 for an error (unknown round, weights that
differ from the recorded hashes, missing images).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from feedback.record.errors import FeedbackError, InputError, NotFound
from feedback.record.images import ImageStore

MATCH_DB = 60.0  # where the device or precision differs, recomputed images must reach this PSNR (dB)
PSNR_CAP = 100.0  # what identical images report


@dataclass(frozen=True)
class ImageCheck:
    """One recomputed image against the stored one."""

    kind: str  # restored | candidate | refined
    id: str  # restored: the round id; candidate: the candidate id; refined: the refinement id
    image_id: str  # the stored image's id
    match: bool
    identical: bool
    psnr: float


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two uint8 (H, W, 3) images, capped at PSNR_CAP; -inf-free: a size mismatch raises InputError."""
    if a.shape != b.shape:
        raise InputError(f"recomputed image is {a.shape[1]}x{a.shape[0]}, the stored one {b.shape[1]}x{b.shape[0]}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(255.0**2 / mse))


@dataclass(frozen=True)
class RecordedRound:
    """What the database says about a round, read in one transaction (plain values, no ORM objects)."""

    round_id: str
    round_index: int
    parent_round_id: str | None
    backbone: str
    backbone_weights_hash: str | None
    prior: str
    prior_weights_hash: str | None
    params: dict[str, Any]
    device: str
    dtype: str
    start_image: str | None
    upload_image: str
    degraded_image: str | None
    degradation_spec: str | None
    degradation_seed: int | None
    candidates: list[dict[str, Any]]  # {"id", "image", "seed", "strength", "is_restored"}
    refinements: list[dict[str, Any]]  # {"id", "image", "params"}


def read_round(s: Any, round_id: str) -> RecordedRound:
    from feedback.loop.engine import DEFAULT_PRIOR
    from feedback.record import store
    from feedback.record.models import Refinement

    rnd = store.get_round(s, round_id)
    src = rnd.source_image
    refinements = s.query(Refinement).filter(Refinement.round_id == round_id).order_by(Refinement.created_at).all()
    return RecordedRound(
        round_id=rnd.id, round_index=rnd.round_index, parent_round_id=rnd.parent_round_id,
        backbone=rnd.backbone_name, backbone_weights_hash=rnd.backbone_weights_hash,
        prior=rnd.params.get("prior", DEFAULT_PRIOR), prior_weights_hash=rnd.prior_weights_hash,
        params=dict(rnd.params), device=rnd.device, dtype=rnd.dtype, start_image=rnd.restored_image_hash,
        upload_image=src.image_hash, degraded_image=src.degraded_image_hash, degradation_spec=src.degradation_spec,
        degradation_seed=src.degradation_seed,
        candidates=[{"id": c.id, "image": c.image_hash, "seed": c.seed, "strength": c.strength,
                     "is_restored": c.is_restored} for c in rnd.candidates],
        refinements=[{"id": r.id, "image": r.result_image_hash, "params": dict(r.params)} for r in refinements])


class Regenerator:
    """Recomputes rounds with one worker (`feedback.loop.engine.TTPOWorker`) over one image store."""

    def __init__(self, worker: Any, images: ImageStore) -> None:
        self.worker = worker
        self.images = images

    def same_setup(self, rec: RecordedRound) -> bool:
        """Whether this run computes on the recorded device and dtype (then images must be identical)."""
        return (rec.device, rec.dtype) == (self.worker.settings.device, self.worker.settings.dtype)

    def _array(self, image_id: str) -> np.ndarray:
        try:
            return self.images.get_array(image_id)
        except NotFound:
            raise InputError(f"image {image_id} is missing from {self.images.root}; "
                             "pass the app's --data-dir") from None

    def _check(self, rec: RecordedRound, kind: str, record_id: str, stored: str, made: Any) -> ImageCheck:
        from feedback.loop.service import _to_uint8

        made = _to_uint8(made)
        old = self._array(stored)
        identical = made.shape == old.shape and bool(np.array_equal(made, old))
        psnr = psnr_uint8(made, old)
        match = identical or (not self.same_setup(rec) and psnr >= MATCH_DB)
        return ImageCheck(kind, record_id, stored, match, identical, round(psnr, 3))

    def _check_weights(self, rec: RecordedRound) -> None:
        facts = self.worker.prior_facts(rec.prior)
        if rec.prior_weights_hash and facts["weights_hash"] != rec.prior_weights_hash:
            raise InputError(f"the round used prior {rec.prior!r} with weights {rec.prior_weights_hash[:12]}..., this "
                             f"run's has {facts['weights_hash'][:12]}...; pass the app's --prior / --extra-prior")

    def restoration(self, rec: RecordedRound) -> list[ImageCheck]:
        """Round 0: the upload, degraded again when the degradation was synthesized, restored again."""
        from feedback.loop.engine import RestoreRequest
        from feedback.loop.service import _to_tensor, _to_uint8

        if rec.round_index != 0 or rec.params.get("start") != "restored" or rec.start_image is None:
            return []
        try:
            self.worker.check_backbone(rec.backbone)
        except InputError as exc:
            raise InputError(f"{exc}; register the app's backbone with --backbone {rec.backbone}=SOURCE") from None
        request = RestoreRequest(rec.backbone, prior=None, spec=rec.degradation_spec or "",
                                 seed=rec.degradation_seed or 0, hint=rec.params.get("hint", ""),
                                 upscale=rec.params.get("scale_mode") == "upscale")
        made = self.worker.restore(_to_tensor(self._array(rec.upload_image)), request)
        if rec.degradation_spec and rec.degraded_image and not np.array_equal(_to_uint8(made.degraded),
                                                                              self._array(rec.degraded_image)):
            raise InputError(f"the degradation {rec.degradation_spec!r} with seed {rec.degradation_seed} does not "
                             "give the stored degraded image; the degradation code changed since")
        facts, restored = made.backbone, made.image
        if rec.backbone_weights_hash and facts.get("weights_hash") != rec.backbone_weights_hash:
            raise InputError(f"backbone {rec.backbone!r} now has weights {str(facts.get('weights_hash'))[:12]}..., the "
                             f"round used {rec.backbone_weights_hash[:12]}...")
        return [self._check(rec, "restored", rec.round_id, rec.start_image, restored)]

    def candidates(self, rec: RecordedRound) -> list[ImageCheck]:
        """The diffusion candidates from the stored start image, by the recorded settings (seed i = seed + i)."""
        from feedback.loop.engine import RoundSettings
        from feedback.loop.service import _to_tensor

        diffusion = [c for c in rec.candidates if not c["is_restored"]]
        if not diffusion:
            return []
        settings = RoundSettings.from_dict(rec.params["candidates"])
        made, _seconds = self.worker.candidates(_to_tensor(self._array(rec.start_image)), settings, rec.prior)
        by_seed = {meta.seed: (image, meta) for image, meta in made}
        checks = []
        for cand in diffusion:
            if cand["seed"] not in by_seed:
                raise InputError(f"candidate {cand['id']} has seed {cand['seed']}, which the recorded settings "
                                 f"(seeds {settings.seeds()}) do not make")
            image, meta = by_seed[cand["seed"]]
            if cand["strength"] is not None and not math.isclose(meta.strength, cand["strength"], abs_tol=1e-9):
                raise InputError(f"candidate {cand['id']}: recorded strength {cand['strength']}, the settings give "
                                 f"{meta.strength}")
            checks.append(self._check(rec, "candidate", cand["id"], cand["image"], image))
        return checks

    def refinements(self, rec: RecordedRound) -> list[ImageCheck]:
        """Each refinement from the stored start, preferred and rejected images with its recorded settings."""
        import torch

        from feedback.loop.engine import RefineSettings
        from feedback.loop.service import _to_tensor

        by_id = {c["id"]: c["image"] for c in rec.candidates}
        names = {f.name for f in fields(RefineSettings)}
        checks = []
        for ref in rec.refinements:
            settings = RefineSettings(**{k: v for k, v in ref["params"].items() if k in names})
            load = lambda ids: torch.cat([_to_tensor(self._array(by_id[i])) for i in ids]) if ids else None  # noqa: E731
            start = _to_tensor(self._array(rec.start_image))
            refined, _seconds = self.worker.refine(start, load(ref["params"].get("preferred", [])),
                                                   load(ref["params"].get("rejected", [])), settings, rec.prior)
            checks.append(self._check(rec, "refined", ref["id"], ref["image"], refined))
        return checks

    def regenerate(self, rec: RecordedRound) -> dict[str, Any]:
        """The report of one round (the `--json` contract)."""
        self._check_weights(rec)
        checks = self.restoration(rec) + self.candidates(rec) + self.refinements(rec)
        here = {"device": self.worker.settings.device, "dtype": self.worker.settings.dtype}
        report = {
            "round_id": rec.round_id, "images": [asdict(c) for c in checks],
            "all_match": bool(checks) and all(c.match for c in checks),
            "rule": "identical" if self.same_setup(rec) else f"psnr>={MATCH_DB:g}",
            "recorded": {"device": rec.device, "dtype": rec.dtype}, "here": here,
        }
        if rec.round_index > 0:
            report["start"] = (f"the refined image of round {rec.parent_round_id}; regenerate that round to check it")
        return report


def main(argv: Sequence[str] | None = None) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from feedback.analysis.export import default_data_dir
    from feedback.analysis.report import open_existing_database
    from feedback.loop.engine import (
        DTYPE_OF_PRECISION,
        PRECISION_OF_DTYPE,
        EngineSettings,
        TTPOWorker,
    )
    from feedback.record.db import DB_URL_ENV

    parser = argparse.ArgumentParser(prog="ttpo regenerate", description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=None, help=f"database URL (default: ${DB_URL_ENV} or DATA_DIR's SQLite)")
    parser.add_argument("--data-dir", default=None, help="the app's data folder (default: the SQLite file's folder)")
    parser.add_argument("--round", required=True, help="the round id")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--prior", default="default", help="the app's --prior (the prior named 'default')")
    parser.add_argument("--extra-prior", action="append", default=[], metavar="NAME=FOLDER",
                        help="the app's other priors (repeatable)")
    parser.add_argument("--backbone", action="append", default=[], metavar="NAME=SOURCE",
                        help="the app's registered backbones (repeatable)")
    parser.add_argument("--device", default="recorded", help="recorded (default), auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="recorded", choices=("recorded", *DTYPE_OF_PRECISION),
                        help="the prior's compute precision (default: the recorded one)")
    args = parser.parse_args(argv)

    def pairs(values: list[str], what: str) -> tuple[tuple[str, str], ...]:
        out = []
        for value in values:
            name, sep, source = value.partition("=")
            if not sep or not name.strip() or not source.strip():
                raise InputError(f"{what} takes NAME=SOURCE, got {value[:80]!r}")
            out.append((name.strip(), source.strip()))
        return tuple(out)

    try:
        from restoration.runtime import resolve_device

        data_dir = args.data_dir if args.data_dir is not None else default_data_dir(args.db)
        database = open_existing_database(args.db, data_dir)
        try:
            with database.sessions() as s:
                rec = read_round(s, args.round)
        finally:
            database.engine.dispose()
        device = rec.device if args.device == "recorded" else args.device
        try:
            device = resolve_device(device)
        except ValueError as exc:
            if args.device != "recorded":
                raise InputError(str(exc)) from None
            device = "cpu"  # recorded on a GPU this machine lacks: compare by PSNR on the CPU
        dtype = rec.dtype if args.precision == "recorded" else DTYPE_OF_PRECISION[args.precision]
        if dtype not in PRECISION_OF_DTYPE:
            raise InputError(f"the round records dtype {dtype!r}; pass --precision fp32|bf16|fp16")
        extra_backbones = pairs(args.backbone, "--backbone")
        settings = EngineSettings(backbone=rec.backbone, prior=args.prior, extra_priors=pairs(args.extra_prior,
                                  "--extra-prior"), extra_backbones=extra_backbones, device=device, dtype=dtype)
        report = Regenerator(TTPOWorker(settings), ImageStore(data_dir)).regenerate(rec)
    except (FeedbackError, FileNotFoundError) as exc:
        parser.exit(2, f"error: {getattr(exc, 'message', exc)}\n")
    except SQLAlchemyError as exc:
        parser.exit(2, f"error: cannot read the preference database ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0]}); is it migrated? ttpo db upgrade --db URL\n")
    if args.json:
        json.dump(report, sys.stdout, allow_nan=False)
        sys.stdout.write("\n")
    else:
        for item in report["images"]:
            how = "identical" if item["identical"] else f"{item['psnr']:.2f} dB"
            print(f"{item['kind']:<9} {item['id']}  {'match' if item['match'] else 'DIFFERS'}  {how}")
        print(f"all match ({report['rule']}): {report['all_match']}")
    return 0 if report["all_match"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
