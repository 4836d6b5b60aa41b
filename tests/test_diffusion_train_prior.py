"""The prior training command runs end to end, writes a loadable prior with a model card, and resumes."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from restoration import train_prior
from restoration.diffusion.priors import load_prior


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
    assert prior.pixel_unshuffle == 2 and "Facts" in (tmp_path / "prior" / "README.md").read_text()
    train_prior.main(args + ["--steps", "5", "--resume"])
    card = json.loads((tmp_path / "prior" / "card.json").read_text())
    assert card["training"]["steps"] == 5
    assert load_prior(str(tmp_path / "prior")).weights_hash != prior.weights_hash
