"""Train the all-in-one SIPL network (or its ablation) from a folder of clean photos.

    python -m restoration.training.sipl --images DIR [--skimage] --out runs/sipl --steps 20000
    python -m restoration.training.sipl --images DIR --ablation --out runs/ablation --steps 20000

Each step: random crops, a blind on-the-fly degradation mixture (`training.mixture.random_spec`), L1 loss.
SIPL step (arXiv 2505.24207): privileged features P = Encoder(Net(gt)) under no_grad (dictionary-only
reconstruction of the ground truth); loss = L1(Net(x, P), gt) + aux * L1(Net(x), gt). The auxiliary
dictionary-only term (our addition, weight `--aux`) trains the first inference pass, whose output becomes
the pseudo-privileged input at test time. Checkpoints resume (`--resume`); `--init WEIGHTS` starts from a
weights file (the shipped ones, say) with a fresh optimizer and schedule, for fine-tuning; `--compile` runs the
training step through torch.compile; `--mixture` re-weights the blind mixture (`training.mixture.MixtureShares`).
For a GPU: `--workers N` makes the degraded batches in N background processes (`BatchStream`), so the GPU does
not wait on the per-crop degradations; `--time-budget S` ends the run after S seconds of training, its learning
rate schedule following whichever of `--steps` and the budget is nearer its end (a lent machine's fixed time).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from restoration.backbones.sipl import load_network, save_weights
from restoration.backbones.sipl_net import SIPLConfig, SIPLNet
from restoration.degradations import degrade
from restoration.runtime import tune_allocator
from restoration.training.data import CropConfig, CropSampler
from restoration.training.mixture import DEFAULT_MIXTURE, MixtureShares, random_spec


@dataclass
class TrainConfig:
    steps: int = 20000
    batch: int = 8
    crop: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup: int = 200
    weight_decay: float = 1e-4
    aux: float = 0.5
    grad_clip: float = 0.5
    seed: int = 0
    checkpoint_every: int = 250
    dark_share: float = 0.15
    fade_share: float = 0.3  # the shipped weights: 0.3 from the first step (docs/history/sipl_model_card_2026-12-06.md)
    time_budget: float = 0.0  # seconds of training (0 = none): the run ends at `steps` or here, whichever is first
    workers: int = 0  # background processes making the degraded batches (0 = in the training loop itself)
    init: str = ""  # a weights file to fine-tune from (fresh optimizer and schedule); "" = from scratch
    mixture: MixtureShares = field(default_factory=MixtureShares)  # the blind degradation mixture's shares
    model: SIPLConfig = field(default_factory=SIPLConfig)


#: How often (steps) the progress bar reads the running loss: each read waits for a GPU to finish its queue.
LOSS_READ_EVERY = 10


def learning_rate(step: int, cfg: TrainConfig, elapsed: float = 0.0) -> float:
    """Linear warm-up then cosine decay to `min_lr`; with a time budget the decay follows whichever of the
    steps and the budget (`elapsed` seconds of training so far) is further along."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    if cfg.time_budget > 0:
        progress = max(progress, min(1.0, elapsed / cfg.time_budget))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def darken_some(clean: torch.Tensor, rng: random.Random, share: float) -> torch.Tensor:
    """Scale a `share` of the crops by a random exposure in [0.15, 0.7]: dark scenes whose target stays dark,
    so the blind model learns that noise on a dark photo is not a call to brighten it."""
    out = clean.clone()
    for i in range(clean.shape[0]):
        if rng.random() < share:
            out[i] = clean[i] * rng.uniform(0.15, 0.7)
    return out


def fade_some(clean: torch.Tensor, rng: random.Random, share: float) -> torch.Tensor:
    """Blend a `share` of the crops toward a bright grey (J t + A (1 - t), t in [0.4, 0.85], A in [0.6, 1]):
    clean photos that look hazy (mist, overcast, low contrast) whose target stays so. Uniform haze is the same
    affine map, so without them the blind model "dehazes" every bright low-contrast photo (measured: -0.3 mean
    error on the validation photo Wood, 9.7 dB)."""
    out = clean.clone()
    for i in range(clean.shape[0]):
        if rng.random() < share:
            t, a = rng.uniform(0.4, 0.85), rng.uniform(0.6, 1.0)
            out[i] = clean[i] * t + a * (1 - t)
    return out


def degrade_batch(clean: torch.Tensor, rng: random.Random,
                  shares: MixtureShares = DEFAULT_MIXTURE) -> tuple[torch.Tensor, list[str]]:
    """Each crop gets its own random spec and seed (all-in-one, blind to the degradation type)."""
    out, specs = [], []
    for i in range(clean.shape[0]):
        spec = random_spec(rng, shares)
        y, _ = degrade(clean[i:i + 1], spec, rng.randrange(2**31))
        out.append(y)
        specs.append(spec)
    return torch.cat(out), specs


def make_batch(sampler: CropSampler, rng: random.Random, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch on the CPU: (clean, degraded), each (batch, 3, crop, crop) in [0, 1]."""
    clean = fade_some(darken_some(sampler.sample(cfg.batch, rng), rng, cfg.dark_share), rng, cfg.fade_share)
    degraded, _ = degrade_batch(clean, rng, cfg.mixture)
    return clean, degraded


class BatchStream(torch.utils.data.IterableDataset):
    """Endless `make_batch` batches for a DataLoader's worker processes; worker w draws from its own
    `random.Random(f"{seed}:{w}")`, so a run is reproducible for a given number of workers (a resumed run
    passes a seed that includes its step, so it does not replay the crops it has seen)."""

    def __init__(self, sampler: CropSampler, cfg: TrainConfig, seed: str):
        self.sampler, self.cfg, self.seed = sampler, cfg, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = random.Random(f"{self.seed}:{info.id if info else 0}")
        while True:
            yield make_batch(self.sampler, rng, self.cfg)


def training_loss(net: SIPLNet, degraded: torch.Tensor, clean: torch.Tensor, aux: float) -> torch.Tensor:
    """L1 restoration loss; with Proxy Fusion, on the privileged pass plus `aux` x the dictionary-only pass."""
    enc = net.encode(degraded)
    if net.proxy_fusion is None:
        return F.l1_loss(net.decode(degraded, enc, None), clean)
    with torch.no_grad():
        privileged = net.privileged_features(net(clean).clamp(0, 1))
    loss = F.l1_loss(net.decode(degraded, enc, privileged), clean)
    if aux > 0:
        loss = loss + aux * F.l1_loss(net.decode(degraded, enc, None), clean)
    return loss


def initial_weights(path: str | Path, model: SIPLConfig) -> dict[str, torch.Tensor]:
    """The state dict of a weights file to fine-tune from; its config must be the one being trained."""
    net = load_network(path)
    if net.config != model:
        raise ValueError(f"--init {path} has a different model config (file, wanted): {net.config.differences(model)}")
    return net.state_dict()


def train(cfg: TrainConfig, sampler: CropSampler, out: Path, resume: bool, device: torch.device,
          log=print, compile_step: bool = False) -> SIPLNet:
    """Train into `out` (checkpoint.pt, weights.safetensors): resumed from its checkpoint when `resume` and one
    exists, else from `cfg.init` when given, else from scratch."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    net = SIPLNet(cfg.model).to(device)
    ckpt_path = out / "checkpoint.pt"
    resuming = resume and ckpt_path.exists()
    if cfg.init and not resuming:
        net.load_state_dict(initial_weights(cfg.init, cfg.model))
        log(f"fine-tuning from {cfg.init}")
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99),
                            fused=device.type == "cuda")  # one kernel for all parameters on a GPU
    rng = random.Random(cfg.seed)
    step, history, elapsed = 0, [], 0.0
    if resuming:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if _config_record(state["model_config"]) != _config_record(cfg.model.to_dict()):
            raise ValueError(f"{ckpt_path} was trained with a different model config: {state['model_config']}")
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        for group in opt.param_groups:  # the state dict carries the saving machine's choice; use this one's
            group["fused"] = device.type == "cuda"
        step, history, elapsed = state["step"], state["history"], state["elapsed"]
        rng.setstate(_tuple_state(state["rng"]))
        torch.set_rng_state(state["torch_rng"])
        log(f"resumed from {ckpt_path} at step {step}")
    net.train()
    loss_fn = torch.compile(training_loss) if compile_step else training_loss
    batches = None
    if cfg.workers > 0:
        stream = BatchStream(sampler, cfg, seed=f"{cfg.seed}:{step}")
        batches = iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=cfg.workers,
                                                   pin_memory=device.type == "cuda", prefetch_factor=4))
    bar = tqdm(total=cfg.steps, initial=step, file=sys.stderr, dynamic_ncols=True, desc="train")
    running, t0 = None, time.time()
    out_of_time = False
    while step < cfg.steps and not out_of_time:
        lr = learning_rate(step, cfg, elapsed + time.time() - t0)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = make_batch(sampler, rng, cfg) if batches is None else next(batches)
        clean, degraded = (t.to(device, non_blocking=True) for t in batch)
        loss = loss_fn(net, degraded, clean, cfg.aux)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        # the running loss stays on the device; the host reads it every `LOSS_READ_EVERY` steps, not each step
        running = loss.detach().float() if running is None else 0.98 * running + 0.02 * loss.detach().float()
        bar.update(1)
        if step % LOSS_READ_EVERY == 0 or step % 50 == 0:
            shown = running.item()
            bar.set_postfix(loss=f"{shown:.4f}", lr=f"{lr:.2e}")
            if step % 50 == 0:
                history.append((step, shown))
        out_of_time = cfg.time_budget > 0 and elapsed + time.time() - t0 >= cfg.time_budget
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
            now = time.time()
            elapsed, t0 = elapsed + now - t0, now
            _save_checkpoint(ckpt_path, net, opt, step, history, elapsed, rng, cfg)
            save_weights(net, out / "weights.safetensors", _training_facts(cfg, step, elapsed, history))
    bar.close()
    if out_of_time:
        log(f"time budget of {cfg.time_budget:g} s reached at step {step} of {cfg.steps}")
    return net


def _training_facts(cfg: TrainConfig, step: int, elapsed: float, history: list) -> dict:
    return {"steps": step, "seconds": round(elapsed, 1), "batch": cfg.batch, "crop": cfg.crop, "lr": cfg.lr,
            "aux": cfg.aux, "seed": cfg.seed, "init": cfg.init, "dark_share": cfg.dark_share,
            "fade_share": cfg.fade_share, "mixture": cfg.mixture.format(), "time_budget": cfg.time_budget,
            "workers": cfg.workers, "final_loss": history[-1][1] if history else None}


def _config_record(config: dict) -> dict:
    """A model config as a checkpoint stores it: sequences as lists, the fields added since older checkpoints were
    written filled in with their defaults and those of retired variants left out (so those still resume)."""
    full = SIPLConfig.from_dict(config).to_dict()
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in full.items()}


def _tuple_state(obj):
    return tuple(_tuple_state(o) for o in obj) if isinstance(obj, list) else obj


def _save_checkpoint(path: Path, net, opt, step, history, elapsed, rng, cfg: TrainConfig) -> None:
    tmp = path.with_suffix(".tmp")
    model_config = _config_record(cfg.model.to_dict())
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "step": step, "history": history,
                "elapsed": elapsed, "rng": _list_state(rng.getstate()), "torch_rng": torch.get_rng_state(),
                "model_config": model_config}, tmp)
    tmp.replace(path)


def _list_state(obj):
    return [_list_state(o) for o in obj] if isinstance(obj, tuple) else obj


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m restoration.training.sipl", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", action="append", default=[], help="folder of clean photos (repeatable)")
    p.add_argument("--skimage", action="store_true", help="add scikit-image's bundled photos")
    p.add_argument("--exclude", default="", help="comma-separated file stems to leave out (held-out photos)")
    p.add_argument("--out", required=True, type=Path, help="run folder: checkpoint.pt, weights.safetensors")
    p.add_argument("--ablation", action="store_true", help="train without Proxy Fusion (plain small PromptIR)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step (compiles once)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--model-json", default="", help="SIPLConfig overrides as JSON")
    p.add_argument("--mixture", default=DEFAULT_MIXTURE.format(),
                   help="the blind mixture's shares: clean,noise,noise_combo,single,composite, summing to 1 "
                        "(default %(default)s)")
    scalars = [name for name in TrainConfig.__dataclass_fields__ if name not in ("model", "mixture")]
    for name in scalars:
        f = TrainConfig.__dataclass_fields__[name]
        p.add_argument("--" + name.replace("_", "-"), type=type(f.default), default=f.default)
    a = p.parse_args(argv)
    model = SIPLConfig.from_dict({**SIPLConfig().to_dict(), **json.loads(a.model_json or "{}"),
                                  "proxy_fusion": not a.ablation})
    try:
        mixture = MixtureShares.parse(a.mixture)
    except ValueError as e:
        p.error(f"--mixture: {e}")
    cfg = TrainConfig(**{k: getattr(a, k) for k in scalars}, mixture=mixture, model=model)
    if cfg.steps <= 0 or cfg.batch <= 0 or cfg.crop < 16 or cfg.crop % 8:
        p.error("--steps and --batch must be positive; --crop a multiple of 8, at least 16")
    if cfg.workers < 0 or not math.isfinite(cfg.time_budget) or cfg.time_budget < 0:
        p.error("--workers and --time-budget must be >= 0 (0: none)")
    if cfg.init:
        try:
            initial_weights(cfg.init, cfg.model)
        except (OSError, ValueError) as e:
            p.error(str(e))
    if a.threads:
        torch.set_num_threads(a.threads)
    tune_allocator()
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick its fastest convolutions
        torch.set_float32_matmul_precision("high")  # TF32 matmuls
    exclude = tuple(s for s in a.exclude.split(",") if s)
    sampler = CropSampler.from_sources(a.images, a.skimage, CropConfig(crop=cfg.crop), exclude)
    print(f"{len(sampler.images)} training images (all scales); device {device}; config {asdict(cfg)}",
          file=sys.stderr)
    train(cfg, sampler, a.out, a.resume, device, log=lambda m: print(m, file=sys.stderr), compile_step=a.compile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
