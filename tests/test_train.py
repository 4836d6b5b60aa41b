"""The training command's start points: from scratch, resumed from a checkpoint, or fine-tuned from weights."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from restoration.backbones.sipl import load_network, read_metadata, save_weights
from restoration.backbones.sipl_net import SIPLConfig, SIPLNet
from restoration.data import CropConfig, CropSampler
from restoration.degradations import MixtureShares
from restoration.train import TrainConfig, initial_weights, main, train

TINY = SIPLConfig(dim=8, num_blocks=(1, 1, 1, 1), heads=(1, 2, 2, 4), prompt_len=2, prompt_size=4,
                  dictionary_tokens=4)


def sampler() -> CropSampler:
    g = torch.Generator().manual_seed(0)
    return CropSampler([torch.randint(0, 256, (3, 48, 48), generator=g, dtype=torch.uint8)],
                       CropConfig(crop=32, short_sides=(48,)))


def saved_net(path, seed: int) -> SIPLNet:
    torch.manual_seed(seed)
    net = SIPLNet(TINY)
    save_weights(net, path)
    return load_network(path)  # float16-rounded, as a fine-tune sees it


def quiet(_msg: str) -> None:
    pass


def test_init_starts_from_the_given_weights(tmp_path):
    start = saved_net(tmp_path / "start.safetensors", seed=3)
    cfg = TrainConfig(steps=1, batch=2, crop=32, lr=0.0, min_lr=0.0, warmup=1, model=TINY,
                      init=str(tmp_path / "start.safetensors"))
    net = train(cfg, sampler(), tmp_path / "run", resume=False, device=torch.device("cpu"), log=quiet)
    for (name, a), b in zip(start.state_dict().items(), net.state_dict().values()):
        assert torch.equal(a, b), name  # lr 0: one step leaves the initial weights as they were
    scratch = train(TrainConfig(steps=1, batch=2, crop=32, lr=0.0, min_lr=0.0, warmup=1, model=TINY),
                    sampler(), tmp_path / "scratch", resume=False, device=torch.device("cpu"), log=quiet)
    assert any(not torch.equal(a, b) for a, b in zip(scratch.state_dict().values(), net.state_dict().values()))


def test_resume_wins_over_init(tmp_path):
    saved_net(tmp_path / "start.safetensors", seed=3)
    base = dict(batch=2, crop=32, warmup=1, model=TINY, checkpoint_every=1)
    first = train(TrainConfig(steps=2, **base), sampler(), tmp_path / "run", resume=False,
                  device=torch.device("cpu"), log=quiet)
    messages: list[str] = []
    resumed = train(TrainConfig(steps=2, init=str(tmp_path / "start.safetensors"), **base), sampler(),
                    tmp_path / "run", resume=True, device=torch.device("cpu"), log=messages.append)
    assert messages == [f"resumed from {tmp_path / 'run' / 'checkpoint.pt'} at step 2"]
    for a, b in zip(first.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_init_must_match_the_model_config(tmp_path):
    saved_net(tmp_path / "start.safetensors", seed=0)
    with pytest.raises(ValueError, match="different model config.*proxy_fusion"):
        initial_weights(tmp_path / "start.safetensors", SIPLConfig(**{**TINY.to_dict(), "proxy_fusion": False}))
    with pytest.raises(FileNotFoundError, match="SIPL weights not found"):
        initial_weights(tmp_path / "missing.safetensors", TINY)


def test_cli_refuses_a_bad_init_before_training(tmp_path, capsys):
    img = tmp_path / "photos"
    img.mkdir()
    Image.fromarray(torch.randint(0, 256, (40, 40, 3), dtype=torch.uint8).numpy()).save(img / "a.png")
    with pytest.raises(SystemExit) as e:
        main(["--images", str(img), "--out", str(tmp_path / "run"), "--steps", "1", "--crop", "32",
              "--init", str(tmp_path / "missing.safetensors")])
    assert e.value.code == 2 and "SIPL weights not found" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_fine_tune_records_its_start(tmp_path):
    saved_net(tmp_path / "start.safetensors", seed=1)
    cfg = TrainConfig(steps=1, batch=2, crop=32, warmup=1, model=TINY, init=str(tmp_path / "start.safetensors"))
    train(cfg, sampler(), tmp_path / "run", resume=False, device=torch.device("cpu"), log=quiet)
    facts = json.loads(read_metadata(tmp_path / "run" / "weights.safetensors")["facts"])
    assert facts["init"] == str(tmp_path / "start.safetensors") and facts["steps"] == 1


def test_mixture_is_recorded_and_a_bad_one_refused_before_training(tmp_path, capsys):
    shares = MixtureShares(clean=0.2, noise=0.3, noise_combo=0.15, single=0.25, composite=0.1)
    cfg = TrainConfig(steps=1, batch=2, crop=32, warmup=1, model=TINY, mixture=shares)
    train(cfg, sampler(), tmp_path / "run", resume=False, device=torch.device("cpu"), log=quiet)
    facts = json.loads(read_metadata(tmp_path / "run" / "weights.safetensors")["facts"])
    assert MixtureShares.parse(facts["mixture"]) == shares
    with pytest.raises(SystemExit) as e:
        main(["--images", str(tmp_path), "--out", str(tmp_path / "bad"), "--steps", "1", "--mixture", "1,1,1,1,1"])
    assert e.value.code == 2 and "--mixture: mixture shares must be >= 0 and sum to 1" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
