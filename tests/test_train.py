"""The training command's start points: from scratch, resumed from a checkpoint, or fine-tuned from weights."""
from __future__ import annotations

import json
import random

import pytest
import torch
from PIL import Image

from restoration.backbones.sipl import load_network, read_metadata, save_weights
from restoration.backbones.sipl_net import SIPLConfig, SIPLNet
from restoration.data import CropConfig, CropSampler
from restoration.degradations import MixtureShares
from restoration.train import (
    BatchStream,
    TrainConfig,
    degrade_batch,
    initial_weights,
    learning_rate,
    main,
    make_batch,
    train,
    windows,
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


def test_init_from_a_narrower_file_trains_the_fresh_modules_faster_and_resumes(tmp_path):
    start = saved_net(tmp_path / "start.safetensors", seed=4)
    wide = SIPLConfig(**{**TINY.to_dict(), "deconv_bank": (1.0, 2.0), "affine_output": True})
    state, fresh = initial_weights(tmp_path / "start.safetensors", wide)
    assert {k.split(".")[0] for k in fresh} == {"bank_embed", "blend_head", "gain_head"}
    assert all(not state[k].any() for k in fresh)  # zero: the widened network starts as the file's
    base = dict(batch=2, crop=32, warmup=1, lr=1e-3, min_lr=1e-3, grad_clip=1e9, weight_decay=0.0, model=wide,
                init=str(tmp_path / "start.safetensors"), fresh_lr_scale=10.0, checkpoint_every=1)
    messages: list[str] = []
    net = train(TrainConfig(steps=1, **base), sampler(), tmp_path / "run", resume=False,
                device=torch.device("cpu"), log=messages.append)
    assert messages == [f"fine-tuning from {tmp_path / 'start.safetensors'} (5 fresh tensors at 10 x lr)"]
    after = net.state_dict()
    old_step = max((after[k] - v).abs().max().item() for k, v in start.state_dict().items())
    fresh_step = max(after[k].abs().max().item() for k in fresh)
    # Adam's first step moves each weight by about lr: 1e-3 for the file's weights, 1e-2 for the fresh ones
    assert old_step == pytest.approx(1e-3, rel=0.05) and fresh_step == pytest.approx(1e-2, rel=0.05)
    messages.clear()
    resumed = train(TrainConfig(steps=2, **base), sampler(), tmp_path / "run", resume=True,
                    device=torch.device("cpu"), log=messages.append)
    assert messages == [f"resumed from {tmp_path / 'run' / 'checkpoint.pt'} at step 1"]
    assert load_network(tmp_path / "run" / "weights.safetensors").config == resumed.config == wide


def test_weight_average_is_what_the_run_saves_and_resumes(tmp_path):
    base = dict(batch=2, crop=32, warmup=1, lr=1e-2, min_lr=1e-2, model=TINY, checkpoint_every=1)
    raw = train(TrainConfig(steps=3, **base), sampler(), tmp_path / "raw", resume=False,
                device=torch.device("cpu"), log=quiet)
    averaged = train(TrainConfig(steps=3, ema=0.9, **base), sampler(), tmp_path / "ema", resume=False,
                     device=torch.device("cpu"), log=quiet)
    torch.manual_seed(0)  # the seeded start both runs share (train seeds torch before building the network)
    start = SIPLNet(TINY)
    k = "patch_embed.weight"
    moved_raw = (raw.state_dict()[k] - start.state_dict()[k]).abs().mean()
    moved_avg = (averaged.state_dict()[k] - start.state_dict()[k]).abs().mean()
    assert 0 < moved_avg < moved_raw  # the average lags behind the last step's weights
    saved = load_network(tmp_path / "ema" / "weights.safetensors")
    torch.testing.assert_close(saved.state_dict()[k], averaged.state_dict()[k], atol=1e-3, rtol=0)
    assert json.loads(read_metadata(tmp_path / "ema" / "weights.safetensors")["facts"])["ema"] == 0.9
    resumed = train(TrainConfig(steps=4, ema=0.9, **base), sampler(), tmp_path / "ema", resume=True,
                    device=torch.device("cpu"), log=quiet)
    assert not torch.equal(resumed.state_dict()[k], averaged.state_dict()[k])
    with pytest.raises(ValueError, match="no weight average to resume"):
        train(TrainConfig(steps=4, ema=0.9, **base), sampler(), tmp_path / "raw", resume=True,
              device=torch.device("cpu"), log=quiet)
    with pytest.raises(SystemExit):
        main(["--images", str(tmp_path), "--out", str(tmp_path / "bad"), "--steps", "1", "--ema", "1"])


def test_upright_crops_are_never_rotated():
    # a 32 x 64 photo whose crops of 32 px keep their rows: rows differ, columns repeat
    photo = torch.arange(32, dtype=torch.uint8).mul(8)[:, None].expand(32, 64)[None].expand(3, 32, 64).contiguous()
    rng = random.Random(0)
    upright = CropSampler([photo], CropConfig(crop=32, short_sides=(32,), rotate=False)).sample(16, rng)
    assert all(torch.equal(c[:, :, 0], upright[0][:, :, 0]) for c in upright)  # every crop: the same column profile
    turned = CropSampler([photo], CropConfig(crop=32, short_sides=(32,))).sample(16, random.Random(0))
    assert any(not torch.equal(c[:, :, 0], upright[0][:, :, 0]) for c in turned)


def test_degrade_context_degrades_a_wider_region_then_keeps_a_window(tmp_path, capsys):
    """--degrade-context K: the haze's depth map spans K crops (an evaluation scene), the network sees one window."""
    photo = torch.randint(0, 256, (3, 128, 128), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    wide = CropSampler([photo], CropConfig(crop=64, short_sides=(128,)))
    singles = MixtureShares(clean=0.0, noise=0.0, noise_combo=0.0, single=1.0, composite=0.0)  # haze among them
    cfg = TrainConfig(batch=6, crop=16, degrade_context=4, dark_share=0.0, fade_share=0.0, mixture=singles)
    clean, degraded = make_batch(wide, random.Random(0), cfg)
    assert clean.shape == degraded.shape == (6, 3, 16, 16)
    same = TrainConfig(batch=6, crop=16, degrade_context=4, dark_share=0.0, fade_share=0.0,
                       mixture=MixtureShares(clean=1.0, noise=0.0, noise_combo=0.0, single=0.0, composite=0.0))
    clean, degraded = make_batch(wide, random.Random(0), same)
    assert torch.equal(clean, degraded)  # the identity: both tensors cut at the same window
    with pytest.raises(ValueError, match="sampler's crops are 64 px; degrade_context 2 x crop 16 needs 32"):
        make_batch(wide, random.Random(0), TrainConfig(batch=2, crop=16, degrade_context=2))
    # the windows: one position per example, shared by every tensor
    a = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    w1, w2 = windows((a, a + 1000), 3, random.Random(5))
    assert w1.shape == (2, 1, 3, 3) and torch.equal(w2, w1 + 1000)
    for i in range(2):  # each window is a contiguous 3 x 3 block of its own example
        y, x = divmod(int(w1[i, 0, 0, 0]) - 64 * i, 8)
        assert torch.equal(w1[i, 0], a[i, 0, y:y + 3, x:x + 3])
    with pytest.raises(ValueError, match="a 9 px window does not fit 8 x 8 crops"):
        windows((a,), 9, random.Random(0))
    # training records it; the command refuses a context outside 1..8
    train(TrainConfig(steps=1, batch=2, crop=16, warmup=1, model=TINY, degrade_context=2),
          CropSampler([photo], CropConfig(crop=32, short_sides=(128,))), tmp_path / "run", resume=False,
          device=torch.device("cpu"), log=quiet)
    assert json.loads(read_metadata(tmp_path / "run" / "weights.safetensors")["facts"])["degrade_context"] == 2
    with pytest.raises(SystemExit) as e:
        main(["--images", str(tmp_path), "--out", str(tmp_path / "bad"), "--steps", "1", "--degrade-context", "0"])
    assert e.value.code == 2 and "--degrade-context must be in 1..8" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_require_trains_a_specialist_on_the_specs_that_have_it(tmp_path, capsys):
    """--require haze: every example's spec contains haze (the haze specialist's training); recorded in the facts."""
    clean = torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    _, specs = degrade_batch(clean, random.Random(0), require="haze")
    assert all("haze" in [step.split(":")[0] for step in spec.split("+")] for spec in specs)
    _, blind = degrade_batch(clean, random.Random(0))
    assert any("haze" not in spec for spec in blind)
    photo = torch.randint(0, 256, (3, 48, 48), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    train(TrainConfig(steps=1, batch=2, crop=16, warmup=1, model=TINY, require="haze"),
          CropSampler([photo], CropConfig(crop=16, short_sides=(48,))), tmp_path / "run", resume=False,
          device=torch.device("cpu"), log=quiet)
    assert json.loads(read_metadata(tmp_path / "run" / "weights.safetensors")["facts"])["require"] == "haze"
    with pytest.raises(SystemExit) as e:
        main(["--images", str(tmp_path), "--out", str(tmp_path / "bad"), "--steps", "1", "--require", "lowlight"])
    assert e.value.code == 2 and "--require: the mixture never draws 'lowlight'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
