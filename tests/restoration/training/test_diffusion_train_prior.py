"""The prior training command runs end to end, writes a loadable prior with a model card, and resumes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from restoration.diffusion.priors import load_prior
from restoration.training import prior as train_prior


def test_train_prior_end_to_end_and_resume(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "photos").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (300, 340, 3), dtype=np.uint8)).save(tmp_path / "photos" / f"{i}.png")
    args = ["--images", str(tmp_path / "photos"), "--out", str(tmp_path / "prior"), "--state",
            str(tmp_path / "state.pt"), "--batch-size", "2", "--crop", "32", "--channels", "16,32",
            "--unshuffle", "2", "--threads", "1", "--save-every", "2"]
    train_prior.main(args + ["--steps", "3"])
    prior = load_prior(str(tmp_path / "prior"))
    card = json.loads((tmp_path / "prior" / "card.json").read_text())
    assert card["training"]["steps"] == 3 and len(card["training"]["data"]) == 2
    assert prior.pixel_unshuffle == 2 and "## Training facts" in (tmp_path / "prior" / "README.md").read_text()
    train_prior.main(args + ["--steps", "5", "--resume"])
    card = json.loads((tmp_path / "prior" / "card.json").read_text())
    assert card["training"]["steps"] == 5
    assert load_prior(str(tmp_path / "prior")).weights_hash != prior.weights_hash


def _photos(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "photos").mkdir(exist_ok=True)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (300, 340, 3), dtype=np.uint8)).save(tmp_path / "photos" / f"{i}.png")
    return tmp_path / "photos"


def _args(tmp_path, photos, name):
    return ["--images", str(photos), "--out", str(tmp_path / name / "prior"), "--state", str(tmp_path / name / "s.pt"),
            "--batch-size", "2", "--crop", "32", "--channels", "16,32", "--unshuffle", "2", "--threads", "1",
            "--warmup", "2", "--steps", "6"]


def _ema(tmp_path, name):
    import torch

    return torch.load(tmp_path / name / "s.pt", weights_only=False)["ema"]


def _assert_same(a, b):
    import torch

    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_a_signalled_run_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    import os
    import signal

    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs in the background, else the default
    photos = _photos(tmp_path)
    train_prior.main(_args(tmp_path, photos, "whole"))
    lr_at = train_prior.lr_at

    def interrupt_at_3(step, total, cfg):  # SIGINT while step 3 runs: the step finishes, the state is saved
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return lr_at(step, total, cfg)

    monkeypatch.setattr(train_prior, "lr_at", interrupt_at_3)
    train_prior.main(_args(tmp_path, photos, "cut"))
    import torch

    assert torch.load(tmp_path / "cut" / "s.pt", weights_only=False)["step"] == 4
    monkeypatch.setattr(train_prior, "lr_at", lr_at)
    train_prior.main(_args(tmp_path, photos, "cut") + ["--resume"])
    _assert_same(_ema(tmp_path, "cut"), _ema(tmp_path, "whole"))
    assert signal.getsignal(signal.SIGINT) is before  # the trainer put the handler back


def test_a_killed_run_resumes_from_its_checkpoint_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    photos = _photos(tmp_path)
    train_prior.main(_args(tmp_path, photos, "whole"))
    save_pixel_prior = train_prior.save_pixel_prior

    def die_after_save(*args, **kwargs):  # the process dies right after its checkpoint at step 3
        save_pixel_prior(*args, **kwargs)
        raise SystemExit(137)

    monkeypatch.setattr(train_prior, "save_pixel_prior", die_after_save)
    try:
        train_prior.main(_args(tmp_path, photos, "cut") + ["--save-every", "3"])
    except SystemExit:
        pass
    monkeypatch.setattr(train_prior, "save_pixel_prior", save_pixel_prior)
    train_prior.main(_args(tmp_path, photos, "cut") + ["--resume"])
    _assert_same(_ema(tmp_path, "cut"), _ema(tmp_path, "whole"))


def test_the_schedule_warms_up_then_decays_to_its_floor():
    cfg = train_prior.TrainConfig(lr=1e-3, warmup=10, final_lr_fraction=0.1)
    lrs = [train_prior.lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and max(lrs) == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert train_prior.lr_at(100, 100, cfg) == pytest.approx(1e-4)


def test_min_snr_weights_put_x0_errors_at_min_snr_gamma():
    import torch

    a = torch.tensor([0.999, 0.9, 0.5, 0.1])
    snr = a / (1 - a)
    for prediction, to_x0 in (("v_prediction", 1 / (1 - a)), ("epsilon", a / (1 - a))):
        # MSE of v (of eps) = x0 MSE x (SNR + 1) (x SNR): the weight makes the x0 error count min(SNR, 5)
        w = train_prior.loss_weight(a, prediction, 5.0)
        torch.testing.assert_close(w * to_x0, snr.clamp(max=5.0))
    assert torch.equal(train_prior.loss_weight(a, "v_prediction", 0.0), torch.ones(4))


def test_a_finished_budgeted_run_given_more_time_trains_on(tmp_path):
    import torch

    photos = _photos(tmp_path)
    args = [a for a in _args(tmp_path, photos, "budget") if a not in ("--steps", "6")]
    train_prior.main(args + ["--time-budget", "2"])
    first = torch.load(tmp_path / "budget" / "s.pt", weights_only=False)
    assert first["step"] >= 1
    train_prior.main(args + ["--time-budget", str(first["elapsed_s"] + 2), "--resume"])
    second = torch.load(tmp_path / "budget" / "s.pt", weights_only=False)
    assert second["step"] > first["step"] and second["total_steps"] >= second["step"]
    assert second["elapsed_s"] > first["elapsed_s"]
