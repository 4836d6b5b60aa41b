"""`python -m restoration.evaluate_prior`: the JSON contract on a tiny prior, the noise levels, the dumps."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from restoration import evaluate_prior
from restoration.diffusion.pixel import PixelPriorConfig, build_pixel_unet, save_pixel_prior
from restoration.diffusion.priors import load_prior

TINY = PixelPriorConfig(block_out_channels=(16, 32), norm_num_groups=8, pixel_unshuffle=2,
                        prediction_type="v_prediction")


@pytest.fixture(scope="module")
def tiny_prior_dir(tmp_path_factory):
    torch.manual_seed(0)
    return save_pixel_prior(tmp_path_factory.mktemp("prior") / "prior", build_pixel_unet(TINY), TINY, half=False)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    yy, xx = np.mgrid[0:48, 0:40]
    for i in range(2):
        img = np.stack([(xx * 5 + 40 * i) % 256, (yy * 4) % 256, (xx + yy) * 2 % 256], -1).astype(np.uint8)
        Image.fromarray(img).save(folder / f"p{i}.png")
    return folder


def test_json_contract_and_noise_levels(tiny_prior_dir, photos, capsys, tmp_path):
    rc = evaluate_prior.main(["--prior", str(tiny_prior_dir), "--images", str(photos), "--size", "32",
                              "--strengths", "0.1,0.2", "--seed", "3", "--candidates", "1", "--threads", "1",
                              "--dump-noisy", str(tmp_path / "noisy"), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prior"].startswith("local:") and out["sigma_units"].startswith("0-255")
    assert out["images"] == 2 and out["size"] == 32 and out["prediction_type"] == "v_prediction"
    assert set(out["strengths"]) == {"0.1", "0.2"}
    alphas = load_prior(str(tiny_prior_dir)).alphas_cumprod
    for key, t in (("0.1", 100), ("0.2", 200)):
        row = out["strengths"][key]
        assert row["t"] == t
        a = float(alphas[t])
        assert row["sigma"] == pytest.approx(127.5 * math.sqrt((1 - a) / a), rel=1e-5)
        for field in ("noisy_psnr", "x0_psnr", "candidate_psnr"):
            assert math.isfinite(row[field])
    # more noise, lower noisy PSNR (the noisy image is the photo plus the noise, clipped)
    assert out["strengths"]["0.1"]["noisy_psnr"] > out["strengths"]["0.2"]["noisy_psnr"] + 3
    # the dumped noisy image has the stated sigma around the clean one
    noisy = np.load(tmp_path / "noisy" / "p0_s0.2.npy")
    clean = np.load(tmp_path / "noisy" / "p0_s0.2_clean.npy")
    sigma = json.loads((tmp_path / "noisy" / "p0_s0.2.json").read_text())["sigma"]
    assert noisy.shape == clean.shape == (32, 32, 3)
    assert float((noisy - clean).std()) * 255 == pytest.approx(sigma, rel=0.1)


def test_same_seed_same_figures(tiny_prior_dir, photos, capsys):
    args = ["--prior", str(tiny_prior_dir), "--images", str(photos), "--size", "32", "--strengths", "0.3",
            "--seed", "1", "--candidates", "1", "--limit", "1", "--json"]
    evaluate_prior.main(args)
    first = json.loads(capsys.readouterr().out)
    evaluate_prior.main(args)
    assert json.loads(capsys.readouterr().out)["strengths"] == first["strengths"]
    args[args.index("--seed") + 1] = "2"
    evaluate_prior.main(args)
    assert json.loads(capsys.readouterr().out)["strengths"] != first["strengths"]


@pytest.mark.parametrize("bad", [["--strengths", "0.1,x"], ["--strengths", "1.5"], ["--size", "8"],
                                 ["--prior", "/no/such/prior"]])
def test_bad_arguments_are_refused(tiny_prior_dir, photos, capsys, bad):
    args = ["--prior", str(tiny_prior_dir), "--images", str(photos), "--json"]
    for i in range(0, len(bad), 2):
        if bad[i] in args:
            args[args.index(bad[i]) + 1] = bad[i + 1]
        else:
            args += bad[i : i + 2]
    assert evaluate_prior.main(args) == 2
    assert "error:" in capsys.readouterr().err
