import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from restoration.evaluate import main

ROOT = Path(__file__).resolve().parents[2]


def _write_images(folder: Path) -> None:
    folder.mkdir()
    yy, xx = np.mgrid[0:40, 0:48] / 48.0
    for i in range(2):
        img = np.stack([xx, yy, 0.5 + 0.3 * np.sin(6 * (xx + yy) + i)], -1)
        img[10:25, 12 + i * 5 : 30 + i * 5] = [0.9, 0.2, 0.1]
        Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")


def test_command_prints_one_json_object(tmp_path):
    _write_images(tmp_path / "imgs")
    cmd = [
        sys.executable,
        "-m",
        "restoration.evaluate",
        "--backbone",
        "nlm",
        "--degradation",
        "noise:25",
        "--images",
        str(tmp_path / "imgs"),
        "--size",
        "32",
        "--seed",
        "7",
        "--json",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # stdout holds exactly one JSON object
    assert report["backbone"] == "nlm" and report["degradation"] == "noise:25"
    assert [r["name"] for r in report["images"]] == ["img0.png", "img1.png"]
    assert [r["seed"] for r in report["images"]] == [7, 8]
    for row in report["images"] + [report["mean"]]:
        for key in ("input_psnr", "psnr", "ssim", "seconds"):
            assert isinstance(row[key], float)
        assert "psnr_single_pass" not in row  # only SIPL backbones have a single-pass score
        assert row["psnr"] > row["input_psnr"]
    assert report["mean"]["psnr"] == pytest.approx(sum(r["psnr"] for r in report["images"]) / 2)
    assert "img0.png" in proc.stderr  # logs go to stderr


def test_single_pass_reported_for_refining_backbones(tmp_path, monkeypatch, capsys):
    from restoration import evaluate
    from restoration.backbones.base import Restorer

    class Refiner(Restorer):
        name = "fake_sipl"

        def restore(self, x):
            return x

        def restore_single_pass(self, x):
            return x * 0.5

    monkeypatch.setattr(evaluate, "build_restorer", lambda config: Refiner())
    _write_images(tmp_path / "imgs")
    assert (
        main(
            [
                "--backbone",
                "x",
                "--degradation",
                "blur:1",
                "--images",
                str(tmp_path / "imgs"),
                "--size",
                "24",
                "--json",
                "--limit",
                "1",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert len(report["images"]) == 1
    row = report["images"][0]
    assert row["psnr_single_pass"] < row["psnr"] == pytest.approx(row["input_psnr"])
    assert "psnr_single_pass" in report["mean"]


def test_clear_errors(tmp_path, capsys):
    assert main(["--backbone", "nlm", "--degradation", "noise:25", "--images", str(tmp_path / "nope")]) == 2
    assert "image directory not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["--backbone", "nlm", "--degradation", "noise:25", "--images", str(tmp_path / "empty")]) == 2
    assert "no images in" in capsys.readouterr().err
    _write_images(tmp_path / "imgs")
    args = ["--degradation", "noise:25", "--images", str(tmp_path / "imgs"), "--size", "32"]
    assert main(["--backbone", "nlm", "--rounds", "2", *args]) == 2
    assert "--rounds applies only to SIPL" in capsys.readouterr().err
    assert main(["--backbone", "nlm", "--no-post-deconvolution", *args]) == 2
    assert "--no-post-deconvolution / --post-deconvolution applies only to SIPL" in capsys.readouterr().err
    assert main(["--backbone", "nlm", "--post-deconvolution", "missing.safetensors", *args]) == 2
    assert "--no-post-deconvolution / --post-deconvolution applies only to SIPL" in capsys.readouterr().err
    assert main(["--backbone", "nlm", "--degradation", "nosie:25", "--images", str(tmp_path / "imgs")]) == 2
    assert "did you mean 'noise'" in capsys.readouterr().err


def test_ensemble_option(tmp_path, capsys):
    from restoration.backbones.sipl import save_weights
    from tests.restoration.backbones.test_sipl import tiny_net

    save_weights(tiny_net(), tmp_path / "tiny.safetensors")
    _write_images(tmp_path / "imgs")
    args = ["--degradation", "noise:25", "--images", str(tmp_path / "imgs"), "--size", "32", "--limit", "1", "--json"]
    assert main(["--backbone", str(tmp_path / "tiny.safetensors"), "--ensemble", "2", *args]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["restorer"]["ensemble"] == 2
    assert main(["--backbone", "nlm", "--ensemble", "2", *args]) == 2
    assert "--ensemble applies only to SIPL" in capsys.readouterr().err
    assert main(["--backbone", str(tmp_path / "tiny.safetensors"), "--ensemble", "3", *args]) == 2
    assert "ensemble must be one of 1, 2, 4, 8" in capsys.readouterr().err


def test_cuda_evaluation_runs_in_full_float32_and_restores_the_settings(monkeypatch):
    import torch

    from restoration import evaluate

    seen = []
    monkeypatch.setattr(evaluate, "_run_evaluation", lambda config, wrap=None: seen.append(
        (config.device, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)) or {})
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True  # as training on a GPU leaves them
    try:
        for device in ("cuda:0", "cpu"):
            evaluate.run_evaluation(evaluate.EvalConfig("sipl", "noise:25", Path("."), 32, 0, device=device))
        assert seen == [("cuda:0", False, False), ("cpu", True, True)]
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_post_step_flags(tmp_path):
    from restoration.backbones.post_step import PostStepRestorer
    from restoration.backbones.sipl import SIPLRestorer
    from restoration.evaluate import EvalConfig, build_restorer, parse_args

    base = ["--degradation", "noise:25", "--images", "x"]
    config, _ = parse_args([*base, "--post-deconvolution", "f.safetensors"])
    assert config.post_deconvolution == Path("f.safetensors") and not config.no_post_deconvolution
    assert parse_args([*base, "--no-post-deconvolution"])[0].no_post_deconvolution
    assert parse_args(base)[0] == EvalConfig("sipl", "noise:25", Path("x"))
    with pytest.raises(SystemExit):
        parse_args([*base, "--no-post-deconvolution", "--post-deconvolution", "f.safetensors"])
    shipped = build_restorer(EvalConfig("sipl", "noise:25", Path("x")))
    assert isinstance(shipped, PostStepRestorer)
    assert isinstance(build_restorer(EvalConfig("sipl", "noise:25", Path("x"), no_post_deconvolution=True)),
                      SIPLRestorer)
    with pytest.raises(FileNotFoundError, match="restoration.training.post_deconvolution"):
        build_restorer(EvalConfig("sipl", "noise:25", Path("x"), post_deconvolution=tmp_path / "f.safetensors"))


def test_informed_tells_sipl_the_degradation(tmp_path, monkeypatch, capsys):
    """--informed: a SIPL backbone is told the spec, as the classical baselines always are, and ends with dehazing
    where the spec has haze; the JSON says whether the backbone was told."""
    from restoration.backbones.sipl import save_weights
    from tests.restoration.backbones.test_sipl import tiny_net

    path = tmp_path / "tiny.safetensors"
    save_weights(tiny_net(), path)
    _write_images(tmp_path / "imgs")
    args = ["--backbone", str(path), "--images", str(tmp_path / "imgs"), "--size", "32", "--limit", "1", "--json"]

    def report(*extra):
        assert main([*args, *extra]) == 0
        return json.loads(capsys.readouterr().out)

    told = report("--degradation", "rain+haze", "--informed")
    assert told["informed"] is True and told["restorer"]["told"] == "rain+haze"
    assert told["restorer"]["told_dehaze"] == {"omega": 0.75, "t0": 0.4}
    blind = report("--degradation", "rain+haze")
    assert blind["informed"] is False and blind["restorer"]["told"] is None and blind["restorer"]["told_dehaze"] is None
    assert told["mean"]["psnr"] != blind["mean"]["psnr"]
    noise = report("--degradation", "noise:25", "--informed")  # told, but nothing to do for noise
    assert noise["informed"] is True and noise["restorer"]["told_dehaze"] is None
    classical = ["--backbone", "classical", "--degradation", "noise:25", *args[2:]]
    assert main([*classical, "--informed"]) == 0 and json.loads(capsys.readouterr().out)["informed"] is True
    assert main(classical) == 0 and json.loads(capsys.readouterr().out)["informed"] is True  # always told
    spandrel_file = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(spandrel_file))
    assert main(["--backbone", str(spandrel_file), "--degradation", "haze", *args[2:], "--informed"]) == 2
    assert "--informed applies only to SIPL" in capsys.readouterr().err
