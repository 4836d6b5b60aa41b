"""TTPO target check: run `python -m restoration.tpo` on photos and summarise the issue's figures.

    python scripts/evaluate_tpo.py --images data/photos/eval --limit 4 --backbone sipl --degradation noise:25 \
        --size 256 --candidates 8 --out docs/results/tpo
Prints one JSON object: per image restored/refined fused score and PSNR, wins, mean PSNR change, candidate
diversity (mean pairwise PSNR between candidates), seconds per stage and per round.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from restoration.io import list_images


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--images", required=True)
    p.add_argument("--limit", type=int, default=4)
    p.add_argument("--backbone", default="sipl")
    p.add_argument("--degradation", default="noise:25")
    p.add_argument("--selector", default="piqe")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prior", default="default", help="diffusion prior: a name or a folder (as restoration.tpo)")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    rows = []
    for path in list_images(a.images)[: a.limit]:
        out = a.out / path.stem
        cmd = [sys.executable, "-m", "restoration.tpo", "--input", str(path), "--degradation", a.degradation,
               "--backbone", a.backbone, "--selector", a.selector, "--candidates", str(a.candidates),
               "--rounds", "1", "--size", str(a.size), "--seed", str(a.seed), "--prior", a.prior, "--out", str(out), "--json"]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        r = json.loads(res.stdout)["rounds"][0]
        secs = r["seconds"]
        rows.append({"name": path.stem, "restored_score": r["restored_score"], "refined_score": r["refined_score"],
                     "restored_psnr": r["restored_psnr"], "refined_psnr": r["refined_psnr"],
                     "diversity_psnr": r["candidate_diversity_psnr"], "seconds": secs,
                     "round_seconds": sum(secs.values())})
        print(json.dumps(rows[-1]), file=sys.stderr)
    n = len(rows)
    summary = {
        "backbone": a.backbone, "prior": a.prior, "degradation": a.degradation, "selector": a.selector, "size": a.size,
        "candidates": a.candidates, "images": rows,
        "refined_beats_restored": sum(r["refined_score"] > r["restored_score"] for r in rows), "n": n,
        "mean_psnr_change": sum(r["refined_psnr"] - r["restored_psnr"] for r in rows) / n,
        "mean_diversity_psnr": sum(r["diversity_psnr"] for r in rows) / n,
        "mean_round_seconds": sum(r["round_seconds"] for r in rows) / n,
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
