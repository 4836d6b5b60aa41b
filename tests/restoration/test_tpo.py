"""One TTPO round end to end (tiny prior, weight-free backbone) and the headless command's JSON."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from restoration.backbones import create_restorer
from restoration.diffusion.candidates import CandidateConfig
from restoration.diffusion.pixel import PixelPriorConfig, build_pixel_unet, pixel_prior_from_unet, save_pixel_prior
from restoration.diffusion.refine import RefineConfig
from restoration.io import save_image
from restoration.selection import human_selection
from restoration.tpo import RESTORED_ID, TPOConfig, TPOEngine, fused_scores

TINY = PixelPriorConfig(block_out_channels=(16, 32), norm_num_groups=8, pixel_unshuffle=2)
ROOT = Path(__file__).resolve().parents[2]


def _image(size: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(size, size), mode="bilinear")
    return (0.15 + 0.7 * x).clamp(0, 1)


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(0)
    prior = pixel_prior_from_unet(build_pixel_unet(TINY), TINY, prior_id="pixel:test")
    cfg = TPOConfig(backbone="nlm", candidates=CandidateConfig(num_candidates=3, steps=2),
                    refine=RefineConfig(steps=2))
    return TPOEngine(cfg, restorer=create_restorer("nlm"), prior=prior)


def test_round_stages_and_lineage(engine):
    degraded = (_image() + 0.05 * torch.randn(1, 3, 40, 40, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    restored, seconds = engine.restore(degraded)
    assert restored.shape == degraded.shape and seconds >= 0
    rnd = engine.start_round(restored, seed=5)
    ids = [c.id for c in rnd.candidates]
    assert ids[0] == RESTORED_ID and len(ids) == 4 and len(set(ids)) == 4
    assert [c.meta.seed for c in rnd.candidates[1:]] == [5, 6, 7]
    sel = engine.select(rnd)
    assert sel.selector == "piqe" and len(sel.preferred_ids) == 1
    assert all("piqe" in c.scores and "fused" in c.scores for c in rnd.candidates)
    refined = engine.refine(rnd, sel)
    assert refined.shape == restored.shape and rnd.selection is sel
    nxt = engine.start_round(refined, parent_id=rnd.id, index=1, seed=9)
    assert nxt.parent_id == rnd.id and nxt.index == 1
    torch.testing.assert_close(nxt.start, refined)


def test_human_selection_guides_refinement(engine):
    rnd = engine.start_round(_image(seed=2), seed=0)
    a = engine.refine(rnd, human_selection(["c0"], ["c1"]))
    b = engine.refine(rnd, human_selection(["c1"], ["c0"]))
    assert (a - b).abs().max() > 1e-4  # the choice changes the result
    with pytest.raises(KeyError, match="no candidate"):
        rnd.candidate("nope")


def test_fused_scores_include_extra(engine):
    rnd = engine.start_round(_image(seed=3), seed=0)
    s = fused_scores(engine, rnd, {"refined": rnd.start})
    assert set(s) == {c.id for c in rnd.candidates} | {"refined"}
    assert s["refined"] == pytest.approx(s[RESTORED_ID])


def test_headless_command_json(tmp_path):
    prior_dir = save_pixel_prior(tmp_path / "prior", build_pixel_unet(TINY), TINY, {"steps": 0})
    img = tmp_path / "in.png"
    save_image(_image(48, seed=4), img)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "restoration.tpo", "--input", str(img), "--degradation", "noise:15",
           "--backbone", "nlm", "--prior", str(prior_dir), "--candidates", "2", "--rounds", "2", "--size", "32",
           "--seed", "3", "--steps", "2", "--hint", "noise:15", "--out", str(out), "--json",
           "--sheet", str(out / "sheet.png")]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["selector"] == "piqe" and len(data["rounds"]) == 2 and data["hint"] == "noise:15"
    r0 = data["rounds"][0]
    assert {c["id"] for c in r0["candidates"]} == {RESTORED_ID, "c0", "c1"}
    for key in ("preferred", "rejected", "restored_score", "refined_score", "restored_psnr", "refined_psnr"):
        assert key in r0
    assert set(r0["seconds"]) == {"restore", "candidates", "select", "refine"}
    assert data["rounds"][1]["parent_id"] == r0["round_id"]
    for name in ("restored.png", "final.png", "round0_c0.png", "round1_refined.png"):
        assert (out / name).is_file()
    # the contact sheet of the last round: 5 cells (input, start, c0, c1, refined) above their 2x details
    with Image.open(out / "sheet.png") as sheet:
        assert sheet.size == (6 + 5 * (64 + 6), 2 * 22 + (32 + 22) + (64 + 22) + 6)


def test_headless_command_errors(tmp_path):
    img = tmp_path / "in.png"
    save_image(_image(32), img)
    base = [sys.executable, "-m", "restoration.tpo", "--input", str(img), "--out", str(tmp_path / "o")]
    bad = subprocess.run(base + ["--backbone", "nope"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "unknown backbone" in bad.stderr
    bad = subprocess.run(base + ["--degradation", "noize:3"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "noise" in bad.stderr
    bad = subprocess.run(base + ["--selector", "piqee"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "piqe" in bad.stderr
    bad = subprocess.run(base + ["--backbone", "nlm", "--hint", "fog"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "unknown degradation 'fog'" in bad.stderr
