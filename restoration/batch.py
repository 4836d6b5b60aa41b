"""Automatic TTPO over every image of a folder: restore, candidates, metric selection, reward-guided refinement.

    ttpo batch --input-dir DIR --out-dir OUT [--backbone NAME] [--candidates N] [--seed S] [--prior NAME]
        [--selector piqe[,entropy]] [--size N] [--device auto] [--no-sheet]

Each image gets OUT/<stem>/ (input.png, restored.png, c0.png ..., refined.png, sheet.png, result.json), written
into a temporary folder and renamed into place, and one line in OUT/results.jsonl. A re-run skips every image whose
folder is complete; a file that cannot be read or restored is reported (stderr and a results.jsonl line with
"error") and skipped, never stopping the batch. The backbone and prior are loaded once.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from restoration.io import IMAGE_SUFFIXES, load_image, resize_short_side_center_crop, save_image

RESULT_NAME = "result.json"


def image_files(folder: Path) -> list[Path]:
    """Image files directly in `folder` (by suffix), sorted; an error when the folder is missing."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--input-dir {folder} is not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def output_name(path: Path, taken: set[str]) -> str:
    """The output folder's name: the file's stem, with its suffix added when two inputs share a stem."""
    return path.stem if path.stem not in taken else f"{path.stem}_{path.suffix.lstrip('.').lower()}"


def run_one(engine, path: Path, out: Path, size: int, seed: int, sheet: bool) -> dict[str, Any]:
    """Process one image into the folder `out` (created atomically); returns its result row."""
    from restoration.tpo import RESTORED_ID, fused_scores, write_sheet

    t0 = time.perf_counter()
    image = load_image(path)
    if size:
        image = resize_short_side_center_crop(image, size)
    restored, t_restore = engine.restore(image)
    rnd = engine.start_round(restored, seed=seed)
    sel = engine.select(rnd)
    refined = engine.refine(rnd, sel)
    scores = fused_scores(engine, rnd, {"refined": refined})
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_image(image, tmp / "input.png")
    save_image(restored, tmp / "restored.png")
    for c in rnd.candidates:
        if not c.is_start:
            save_image(c.image, tmp / f"{c.id}.png")
    save_image(refined, tmp / "refined.png")
    if sheet:
        write_sheet(tmp / "sheet.png", image, rnd, refined)
    row = {"input": str(path), "output": str(out), "size": list(image.shape[-2:]),
           "candidates": [{"id": c.id, "seed": c.meta.seed, "strength": c.meta.strength, "scores": c.scores}
                          for c in rnd.candidates if not c.is_start],
           "preferred": list(sel.preferred_ids), "rejected": list(sel.rejected_ids), "tie": sel.tie,
           "restored_score": scores[RESTORED_ID], "refined_score": scores["refined"],
           "seconds": {"restore": t_restore, **rnd.seconds, "total": time.perf_counter() - t0}}
    (tmp / RESULT_NAME).write_text(json.dumps(row, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ttpo batch", description=__doc__.split("\n")[0])
    p.add_argument("--input-dir", required=True, type=Path)
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("--backbone", default="sipl")
    p.add_argument("--prior", default="default")
    p.add_argument("--selector", default="piqe", help="pyiqa metrics, comma-separated")
    p.add_argument("--candidates", type=int, default=8, help="1..64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=0, help="resize short side to N and center-crop (0: keep the size)")
    p.add_argument("--device", default="auto", help="auto (CUDA when torch sees a GPU), cpu, cuda or cuda:N")
    p.add_argument("--no-sheet", action="store_true", help="do not write a contact sheet per image")
    a = p.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    from restoration.backbones import create_restorer
    from restoration.diffusion.candidates import CandidateConfig
    from restoration.diffusion.priors import resolve_precision
    from restoration.runtime import resolve_device, tune_allocator
    from restoration.selection import metric_info
    from restoration.tpo import TPOConfig, TPOEngine

    try:
        if not 1 <= a.candidates <= 64:
            raise ValueError(f"--candidates must be in 1..64, got {a.candidates}")
        if a.size and not 16 <= a.size <= 4096:
            raise ValueError(f"--size must be 0 or in 16..4096, got {a.size}")
        device = resolve_device(a.device)
        selector = tuple(m.strip() for m in a.selector.split(",") if m.strip())
        for m in selector:
            metric_info(m)
        files = image_files(a.input_dir)
        if not files:
            raise ValueError(f"no images in {a.input_dir} (looked for {', '.join(IMAGE_SUFFIXES)})")
        config = TPOConfig(backbone=a.backbone, prior=a.prior, selector=selector, device=device,
                           candidates=replace(CandidateConfig(), num_candidates=a.candidates, seed=a.seed),
                           precision=resolve_precision("auto", device))
        engine = TPOEngine(config, restorer=create_restorer(a.backbone, device))
    except (ValueError, FileNotFoundError, KeyError) as exc:
        log(f"error: {exc}")
        return 2
    tune_allocator()
    a.out_dir.mkdir(parents=True, exist_ok=True)
    results = a.out_dir / "results.jsonl"
    done = failed = skipped = 0
    taken: set[str] = set()
    for path in tqdm(files, desc="ttpo batch", unit="image", file=sys.stderr):
        name = output_name(path, taken)
        taken.add(name)
        out = a.out_dir / name
        if (out / RESULT_NAME).is_file():
            skipped += 1
            continue
        try:
            row = run_one(engine, path, out, a.size, a.seed, not a.no_sheet)
            done += 1
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch; it is reported
            log(f"skipped {path.name}: {type(exc).__name__}: {exc}")
            row = {"input": str(path), "error": f"{type(exc).__name__}: {exc}"}
            failed += 1
        with results.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
    log(f"{done} done, {skipped} already done, {failed} failed; results in {results}")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
