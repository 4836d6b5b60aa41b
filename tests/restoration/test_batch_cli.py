"""The installed `ttpo` command and `ttpo batch`: a folder in, one complete folder per image out, re-runs skip."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import ttpo_cli
from restoration.diffusion.pixel import PixelPriorConfig, build_pixel_unet, save_pixel_prior

TINY = PixelPriorConfig(block_out_channels=(16, 32), norm_num_groups=8, pixel_unshuffle=2)


def _inputs(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(folder / name)
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    return folder


def test_batch_writes_each_image_and_a_rerun_skips_them(tmp_path, capsys):
    torch.manual_seed(0)
    prior = save_pixel_prior(tmp_path / "prior", build_pixel_unet(TINY), TINY, half=False)
    inputs, out = _inputs(tmp_path / "in"), tmp_path / "out"
    args = ["batch", "--input-dir", str(inputs), "--out-dir", str(out), "--backbone", "nlm", "--prior", str(prior),
            "--candidates", "2", "--size", "32", "--device", "cpu", "--seed", "5"]
    assert ttpo_cli.main(args) == 1  # the broken file failed, the batch went on
    for stem in ("a", "b"):
        files = {p.name for p in (out / stem).iterdir()}
        assert {"input.png", "restored.png", "c0.png", "c1.png", "refined.png", "sheet.png", "result.json"} <= files
        result = json.loads((out / stem / "result.json").read_text())
        assert result["size"] == [32, 32] and [c["seed"] for c in result["candidates"]] == [5, 6]
    assert not (out / "broken").exists() and not list(out.glob("*.tmp"))
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and "error" in rows[2] and rows[2]["input"].endswith("broken.png")
    assert "skipped broken.png" in capsys.readouterr().err
    before = (out / "a" / "refined.png").stat().st_mtime_ns
    assert ttpo_cli.main(args) == 1
    assert "2 already done" in capsys.readouterr().err
    assert (out / "a" / "refined.png").stat().st_mtime_ns == before
    assert len((out / "results.jsonl").read_text().splitlines()) == 4  # only the broken file again


def test_batch_refuses_bad_arguments(tmp_path, capsys):
    assert ttpo_cli.main(["batch", "--input-dir", str(tmp_path / "none"), "--out-dir", str(tmp_path / "o")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert ttpo_cli.main(["batch", "--input-dir", str(tmp_path / "empty"), "--out-dir", str(tmp_path / "o"),
                          "--backbone", "nlm"]) == 2
    assert "no images" in capsys.readouterr().err


def test_the_command_lists_and_dispatches_subcommands(capsys):
    assert ttpo_cli.main(["--help"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("app", "batch", "tpo", "export", "evaluate-prior"))
    assert ttpo_cli.main(["batc"]) == 2 and "did you mean batch" in capsys.readouterr().err
    script = Path(sys.executable).parent / "ttpo"  # installed by the README's set-up command ([project.scripts])
    res = subprocess.run([str(script), "evaluate-prior", "--help"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "--strengths" in res.stdout
