"""The training command's start points: from scratch, resumed from a checkpoint, or fine-tuned from weights."""
from __future__ import annotations

import json
import random

import pytest
import torch
from PIL import Image

from restoration.backbones.sipl import load_network, read_metadata, save_weights
from restoration.backbones.sipl_net import SIPLConfig, SIPLNet
from restoration.training.data import CropConfig, CropSampler
from restoration.training.mixture import MixtureShares
from restoration.training.sipl import (
    BatchStream,
    TrainConfig,
    initial_weights,
    learning_rate,
    main,
    train,
)

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


def test_time_budget_ends_the_run_and_drives_the_schedule(tmp_path):
    cfg = TrainConfig(steps=10_000, batch=2, crop=32, warmup=1, lr=1e-3, min_lr=1e-5, model=TINY,
                      time_budget=0.5, checkpoint_every=10_000)
    assert learning_rate(5, cfg, elapsed=0.0) > 0.99e-3  # early in both the steps and the budget
    assert learning_rate(5, cfg, elapsed=0.25) == pytest.approx(learning_rate(5_000, TrainConfig(
        steps=10_000, warmup=1, lr=1e-3, min_lr=1e-5)), rel=1e-3)  # half the budget: half-way down the cosine
    assert learning_rate(5, cfg, elapsed=1.0) == pytest.approx(1e-5)  # budget spent: the floor
    messages: list[str] = []
    train(cfg, sampler(), tmp_path / "run", resume=False, device=torch.device("cpu"), log=messages.append)
    facts = json.loads(read_metadata(tmp_path / "run" / "weights.safetensors")["facts"])
    assert 0 < facts["steps"] < 10_000 and facts["seconds"] >= 0.5 and facts["time_budget"] == 0.5
    assert messages and messages[-1].startswith("time budget of 0.5 s reached at step")


def test_background_workers_make_the_batches(tmp_path):
    cfg = TrainConfig(steps=3, batch=2, crop=32, warmup=1, model=TINY, workers=2)
    net = train(cfg, sampler(), tmp_path / "run", resume=False, device=torch.device("cpu"), log=quiet)
    facts = json.loads(read_metadata(tmp_path / "run" / "weights.safetensors")["facts"])
    assert facts["steps"] == 3 and facts["workers"] == 2
    inline = train(TrainConfig(steps=3, batch=2, crop=32, warmup=1, model=TINY), sampler(), tmp_path / "inline",
                   resume=False, device=torch.device("cpu"), log=quiet)
    assert any(not torch.equal(a, b) for a, b in zip(net.state_dict().values(), inline.state_dict().values()))
    # each worker draws from its own seeded stream: two workers give two different, reproducible streams
    stream = iter(BatchStream(sampler(), cfg, seed="0:0"))
    again = iter(BatchStream(sampler(), cfg, seed="0:0"))
    for _ in range(2):
        (clean, degraded), (clean2, degraded2) = next(stream), next(again)
        assert clean.shape == degraded.shape == (2, 3, 32, 32)
        assert torch.equal(clean, clean2) and torch.equal(degraded, degraded2)


def test_cli_refuses_a_negative_budget_or_worker_count(tmp_path, capsys):
    for flag, value in (("--time-budget", "-1"), ("--workers", "-2"), ("--time-budget", "nan")):
        with pytest.raises(SystemExit) as e:
            main(["--images", str(tmp_path), "--out", str(tmp_path / "bad"), "--steps", "1", flag, value])
        assert e.value.code == 2 and "--workers and --time-budget must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_upright_crops_are_never_rotated():
    # a 32 x 64 photo whose crops of 32 px keep their rows: rows differ, columns repeat
    photo = torch.arange(32, dtype=torch.uint8).mul(8)[:, None].expand(32, 64)[None].expand(3, 32, 64).contiguous()
    rng = random.Random(0)
    upright = CropSampler([photo], CropConfig(crop=32, short_sides=(32,), rotate=False)).sample(16, rng)
    assert all(torch.equal(c[:, :, 0], upright[0][:, :, 0]) for c in upright)  # every crop: the same column profile
    turned = CropSampler([photo], CropConfig(crop=32, short_sides=(32,))).sample(16, random.Random(0))
    assert any(not torch.equal(c[:, :, 0], upright[0][:, :, 0]) for c in turned)
