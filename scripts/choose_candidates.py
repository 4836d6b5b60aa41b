"""Measure candidate settings on restorations of validation photos, by the rule in docs/results/candidates/RULE.md.

    python scripts/choose_candidates.py --prior runs/prior --images data/photos/val --limit 8 --size 256 \
        --out docs/results/candidates/search.json

Prints and writes one JSON object: per setting and degradation the figures the rule names, and which setting the
rule picks. Restorations are cached in --cache (they do not depend on the prior).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

from restoration.backbones import create_restorer
from restoration.degradations import degrade
from restoration.diffusion.candidates import CandidateConfig, plan_candidates, sample_candidates
from restoration.diffusion.priors import load_prior
from restoration.io import list_images, load_image, resize_short_side_center_crop
from restoration.metrics import psnr

#: (strengths, steps, method, eta) tried; the first is the setting shipped before this search.
SETTINGS = [
    ((0.1, 0.2, 0.3, 0.4), 4, "ddim_ladder_inversion", 0.5),
    ((0.1, 0.2, 0.3, 0.4), 3, "forward_noise", 0.5),
    ((0.05, 0.1, 0.15, 0.2), 3, "ddim_ladder_inversion", 0.5),
    ((0.05, 0.1, 0.15, 0.2), 3, "forward_noise", 0.5),
    ((0.05, 0.1, 0.15, 0.2), 3, "forward_noise", 1.0),
    ((0.1, 0.15, 0.2, 0.25), 3, "forward_noise", 0.5),
    ((0.1, 0.15, 0.2, 0.25), 2, "forward_noise", 1.0),
    ((0.03, 0.06, 0.1, 0.15), 2, "forward_noise", 1.0),
]
REFINE_EVALS = 16  # the refinement's inversion + denoising steps (RefineConfig: 8 + 8)
RULE = {"plausible_db": 1.5, "max_to_restored_psnr": 36.0, "max_diversity_psnr": 38.0, "tie_share": 0.05}


def restorations(files, specs, size, cache: Path) -> list[dict]:
    if cache.is_file():
        return torch.load(cache, weights_only=False)
    restorer = create_restorer("sipl")
    rows = []
    for f, spec in itertools.product(files, specs):
        gt = resize_short_side_center_crop(load_image(f), size)
        degraded, _ = degrade(gt, spec, 0)
        with torch.no_grad():
            restored = restorer.restore(degraded).clamp(0, 1)
        rows.append({"photo": f.stem, "spec": spec, "gt": gt, "restored": restored})
        print(f"restored {f.stem} {spec}: {float(psnr(restored, gt)):.2f} dB", file=sys.stderr, flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(rows, cache)
    return rows


def measure(prior, rows, setting) -> dict:
    strengths, steps, method, eta = setting
    cfg = CandidateConfig(num_candidates=8, strengths=strengths, steps=steps, method=method, eta=eta, seed=0)
    evals = {"n": 0}
    eps = prior.eps

    def counting(z_t, t):
        evals["n"] += z_t.shape[0]
        return eps(z_t, t)

    prior.eps = counting
    per_spec: dict[str, list[dict]] = {}
    try:
        for row in rows:
            evals["n"] = 0
            cands = sample_candidates(row["restored"], prior, plan_candidates(cfg, prior))
            gt, restored = row["gt"], row["restored"]
            r_psnr = float(psnr(restored, gt))
            c_psnr = [float(psnr(cands[i : i + 1], gt)) for i in range(len(cands))]
            pairs = [float(psnr(cands[i : i + 1], cands[j : j + 1]))
                     for i in range(len(cands)) for j in range(i + 1, len(cands))]
            per_spec.setdefault(row["spec"], []).append({
                "photo": row["photo"], "restored_psnr": r_psnr, "candidate_psnr": sum(c_psnr) / len(c_psnr),
                "to_restored_psnr": sum(float(psnr(cands[i : i + 1], restored)) for i in range(len(cands))) / len(cands),
                "diversity_psnr": sum(pairs) / len(pairs), "closer": sum(c > r_psnr for c in c_psnr),
                "n": len(c_psnr), "unet_evals": evals["n"] + REFINE_EVALS})
    finally:
        del prior.eps
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    out = {"strengths": list(strengths), "steps": steps, "method": method, "eta": eta, "by_degradation": {}}
    for spec, rs in per_spec.items():
        out["by_degradation"][spec] = {k: mean(rs, k) for k in ("restored_psnr", "candidate_psnr", "to_restored_psnr",
                                                                 "diversity_psnr", "unet_evals")}
        out["by_degradation"][spec]["closer_share"] = sum(r["closer"] for r in rs) / sum(r["n"] for r in rs)
    every = [r for rs in per_spec.values() for r in rs]
    out["closer_share"] = sum(r["closer"] for r in every) / sum(r["n"] for r in every)
    out["candidate_psnr"] = mean(every, "candidate_psnr")
    out["unet_evals"] = mean(every, "unet_evals")
    by = out["by_degradation"].values()
    out["admissible"] = all(d["candidate_psnr"] >= d["restored_psnr"] - RULE["plausible_db"] for d in by) and all(
        d["to_restored_psnr"] <= RULE["max_to_restored_psnr"] and d["diversity_psnr"] <= RULE["max_diversity_psnr"]
        for d in by)
    return out


def pick(results: list[dict]) -> dict:
    ok = [r for r in results if r["admissible"]]
    if not ok:
        return min(results, key=lambda r: max(d["restored_psnr"] - RULE["plausible_db"] - d["candidate_psnr"]
                                              for d in r["by_degradation"].values()))
    best = max(r["closer_share"] for r in ok)
    return max((r for r in ok if r["closer_share"] >= best - RULE["tie_share"]), key=lambda r: r["candidate_psnr"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior", default="default")
    p.add_argument("--images", default="data/photos/val")
    p.add_argument("--limit", type=int, default=8)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--specs", default="noise:25,sr:4")
    p.add_argument("--settings", default="", help="indices into SETTINGS (comma-separated); default: all")
    p.add_argument("--cache", type=Path, default=Path("runs/candidate_search/restored.pt"))
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    files = list_images(a.images)[: a.limit]
    rows = restorations(files, a.specs.split(","), a.size, a.cache)
    prior = load_prior(a.prior)
    chosen = [SETTINGS[int(i)] for i in a.settings.split(",")] if a.settings else SETTINGS
    results = []
    for setting in chosen:
        results.append(measure(prior, rows, setting))
        r = results[-1]
        print(json.dumps({k: r[k] for k in ("strengths", "steps", "method", "eta", "closer_share", "candidate_psnr",
                                            "admissible")} | {"by": r["by_degradation"]}), file=sys.stderr, flush=True)
    out = {"prior": prior.describe(), "photos": [f.name for f in files], "size": a.size, "rule": RULE,
           "results": results, "chosen": pick(results)}
    text = json.dumps(out, indent=1)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
