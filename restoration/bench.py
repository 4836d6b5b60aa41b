"""Benchmark one TTPO round stage by stage, and the batched candidates against a naive per-candidate loop.

    python -m restoration.bench --size N --candidates K [--device cpu|cuda] [--repeat R] [--backbone sipl]
        [--prior default] [--seed S] [--threads T] [--channels-last] [--label TEXT] --json

Measures, on the shipped weights, the median over R runs (after one warm-up round) of each stage
(restore, candidates, select, refine) and of the whole round, the peak memory, and, in the same
process, the same candidates made the naive way: one candidate at a time through a standard diffusers
DDIMInverseScheduler / DDIMScheduler loop calling the prior's UNet directly. The naive images must
match the batched ones (`naive_max_abs_diff`), otherwise the speed-up would compare different work.

To drive the unmodified diffusers schedulers along the engine's timestep grid (t0 = strength * T down
to the clean image, which no `set_timesteps` spacing reproduces), each candidate gets a respaced
schedule: `trained_betas` chosen so that the scheduler's index j has alpha_bar of the j-th grid
timestep, and the UNet is called with the original timestep (the respacing of improved DDPM, Nichol &
Dhariwal 2021, sec. 4). One JSON object goes to stdout; logs go to stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from restoration.diffusion.candidates import CandidateConfig, CandidateMeta
from restoration.diffusion.priors import DiffusionPrior, PriorNotFoundError
from restoration.diffusion.sampling import timestep_grid

STAGES = ("restore", "candidates", "select", "refine")
#: the sample the benchmark input is cut from (a synthetic image when it is missing).
SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "assets" / "samples" / "astronaut.png"
BENCH_DEGRADATION = "noise:25"


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run measures; `threads` 0 means every CPU the process may use."""

    size: int = 64
    candidates: int = 8
    device: str = "cpu"
    repeat: int = 3
    backbone: str = "sipl"
    prior: str = "default"
    seed: int = 0
    threads: int = 0
    channels_last: bool = False
    label: str = ""


# ---- the naive reference: one candidate at a time through stock diffusers schedulers -------------


def respaced_betas(alphas_cumprod: torch.Tensor, timesteps_ascending: torch.Tensor) -> torch.Tensor:
    """betas (S,) float64 whose cumulative product of (1 - beta) is alpha_bar at each timestep, ascending."""
    a = alphas_cumprod.detach().double().cpu()[timesteps_ascending.cpu()]
    prev = torch.cat([a.new_ones(1), a[:-1]])
    return 1.0 - a / prev


def unet_eps(prior: DiffusionPrior, z_t: torch.Tensor, t: int) -> torch.Tensor:
    """The prior's raw UNet output for one sample z_t (1, C, h, w) at integer timestep t (unbatched call)."""
    _, c, h, w = z_t.shape
    r = prior.pixel_unshuffle
    multiple = r * 2 ** max(len(getattr(prior.unet.config, "block_out_channels", (1,))) - 1, 0)
    ph, pw = (-h) % multiple, (-w) % multiple
    x = F.pad(z_t, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate") if ph or pw else z_t
    if r > 1:
        x = F.pixel_unshuffle(x, r)
    t_in = torch.tensor([t], device=z_t.device, dtype=torch.long)
    if prior.kind == "latent":
        out = prior.unet(x, t_in, encoder_hidden_states=prior.prompt_embeds).sample
    else:
        out = prior.unet(x, t_in).sample
    if r > 1:
        out = F.pixel_shuffle(out, r)
    return out[:, :c, :h, :w].float()


def naive_candidate(restored: torch.Tensor, prior: DiffusionPrior, meta: CandidateMeta) -> torch.Tensor:
    """One candidate (1, 3, H, W) in [0, 1] from restored (1, 3, H, W): diffusers DDIM(Inverse)Scheduler loop."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    grid = timestep_grid([meta.strength], meta.steps, prior.num_train_timesteps)[0]  # descending (S,)
    t_of = grid.flip(0).tolist()  # scheduler index j -> the UNet's timestep
    betas = respaced_betas(prior.alphas_cumprod, grid.flip(0)).numpy()
    common = {"num_train_timesteps": len(t_of), "trained_betas": betas, "set_alpha_to_one": True,
              "prediction_type": prior.prediction_type, "timestep_spacing": "leading", "steps_offset": 0}
    scheduler = DDIMScheduler(clip_sample=prior.clip_x0, **common)
    scheduler.set_timesteps(len(t_of))
    gen = torch.Generator().manual_seed(int(meta.seed))
    z = prior.encode(restored)
    if meta.method == "ddim_inversion":
        inverse = DDIMInverseScheduler(clip_sample=False, **common)
        inverse.set_timesteps(len(t_of))
        for j in inverse.timesteps:
            z = inverse.step(unet_eps(prior, z, t_of[int(j)]), j, z).prev_sample
    elif meta.method == "forward_noise":
        noise = torch.randn(tuple(z.shape[1:]), generator=gen)[None].to(z.device)
        z = scheduler.add_noise(z, noise, torch.tensor([len(t_of) - 1]))
    else:
        raise ValueError(f"naive reference has no inversion method {meta.method!r}")
    for j in scheduler.timesteps:
        noise = torch.randn(tuple(z.shape[1:]), generator=gen)[None].to(z.device) if meta.eta > 0 else None
        z = scheduler.step(unet_eps(prior, z, t_of[int(j)]), j, z, eta=meta.eta,
                           use_clipped_model_output=True, variance_noise=noise).prev_sample
    return prior.decode(z, tuple(restored.shape[-2:]))


def naive_candidates(restored: torch.Tensor, prior: DiffusionPrior, metas: Sequence[CandidateMeta]) -> torch.Tensor:
    """(N, 3, H, W): a Python loop over candidates, each its own unbatched scheduler loop."""
    return torch.cat([naive_candidate(restored, prior, m) for m in metas])


# ---- timing ---------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str) -> tuple[Any, float]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def bench_input(size: int, seed: int = 0) -> torch.Tensor:
    """The degraded benchmark image (1, 3, size, size) in [0, 1]: a sample cut to size with seeded noise."""
    from restoration.degradations import degrade
    from restoration.io import load_image, resize_short_side_center_crop

    if SAMPLE_IMAGE.is_file():
        clean = resize_short_side_center_crop(load_image(SAMPLE_IMAGE), size)
    else:
        g = torch.Generator().manual_seed(seed)
        clean = F.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(size, size), mode="bicubic").clamp(0, 1)
    return degrade(clean, BENCH_DEGRADATION, seed)[0]


def run_round(engine, degraded: torch.Tensor, config: BenchConfig) -> tuple[dict[str, float], Any]:
    """One timed round (restore -> candidates -> select -> refine); returns seconds per stage and the Round."""
    dev = config.device
    t0 = time.perf_counter()
    with torch.inference_mode():
        (restored, _), s_restore = _timed(lambda: engine.restore(degraded.to(dev)), dev)
    restored = restored.clone()  # a normal tensor again: refinement takes gradients w.r.t. x0_hat
    rnd, s_cand = _timed(lambda: engine.start_round(restored, seed=config.seed,
                                                    num_candidates=config.candidates), dev)
    with torch.no_grad():
        sel, s_select = _timed(lambda: engine.select(rnd), dev)
    _, s_refine = _timed(lambda: engine.refine(rnd, sel), dev)
    _sync(dev)
    seconds = {"restore": s_restore, "candidates": s_cand, "select": s_select, "refine": s_refine,
               "round": time.perf_counter() - t0}
    return seconds, rnd


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which taskset / cgroups narrow), else os.cpu_count()."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def peak_memory_mb(device: str) -> float:
    """GPU: torch.cuda.max_memory_allocated; CPU: the process's peak resident set size (ru_maxrss)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if platform.system() == "Darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def _to_channels_last(engine) -> None:
    """Channels-last weights for the prior's UNet / VAE and any backbone network (a measured suggestion)."""
    modules = [engine.prior.unet, engine.prior.vae, getattr(engine.restorer, "net", None)]
    for m in modules:
        if isinstance(m, torch.nn.Module):
            m.to(memory_format=torch.channels_last)


def run_bench(config: BenchConfig, log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Load the backbone and prior, warm up, time R rounds and R naive candidate loops; the result dict.

    Sets torch's thread count for the run and restores the previous one afterwards.
    """
    previous = torch.get_num_threads()
    try:
        return _run_bench(config, log)
    finally:
        torch.set_num_threads(previous)


def _run_bench(config: BenchConfig, log: Callable[[str], None]) -> dict[str, Any]:
    from restoration.backbones import create_restorer
    from restoration.tpo import TPOConfig, TPOEngine

    torch.set_num_threads(config.threads or available_cpus())
    dev = config.device
    tpo = TPOConfig(backbone=config.backbone, prior=config.prior, device=dev,
                    candidates=replace(CandidateConfig(), num_candidates=config.candidates, seed=config.seed))
    engine = TPOEngine(tpo, restorer=create_restorer(config.backbone, dev))
    if config.channels_last:
        _to_channels_last(engine)
    degraded = bench_input(config.size, config.seed)
    log(f"backbone {config.backbone}, prior {engine.prior.prior_id}, {config.size} px, {config.candidates} "
        f"candidates, {torch.get_num_threads()} threads, device {dev}")

    run_round(engine, degraded, config)  # warm-up: allocator, kernels, lazy imports, metric setup
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    runs, rnd = [], None
    for r in range(config.repeat):
        seconds, rnd = run_round(engine, degraded, config)
        runs.append(seconds)
        log(f"round {r}: " + ", ".join(f"{k} {v:.3f}s" for k, v in seconds.items()))
    peak = peak_memory_mb(dev)
    median = {k: statistics.median(s[k] for s in runs) for k in (*STAGES, "round")}

    start = rnd.start
    metas = [c.meta for c in rnd.candidates if not c.is_start]
    batched = torch.cat([c.image for c in rnd.candidates if not c.is_start])
    with torch.inference_mode():
        naive_candidate(start, engine.prior, metas[0])  # warm-up of the unbatched shapes
        naive_runs = []
        for r in range(config.repeat):
            naive, s = _timed(lambda: naive_candidates(start, engine.prior, metas), dev)
            naive_runs.append(s)
            log(f"naive {r}: {s:.3f}s")
    naive_s = statistics.median(naive_runs)
    diff = float((naive.to(batched.device) - batched).abs().max())
    log(f"candidates batched {median['candidates']:.3f}s vs naive {naive_s:.3f}s; max |diff| {diff:.2e}")
    return {
        "label": config.label or None,
        "device": torch.cuda.get_device_name() if dev.startswith("cuda") else f"cpu ({platform.machine()})",
        "size": config.size,
        "candidates": config.candidates,
        "repeat": config.repeat,
        "seconds": median,
        "naive_candidates_seconds": naive_s,
        "speedup_vs_naive": naive_s / median["candidates"] if median["candidates"] > 0 else None,
        "peak_memory_mb": peak,
        "naive_max_abs_diff": diff,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "channels_last": config.channels_last,
        "backbone": engine.restorer.describe(),
        "prior": engine.prior.describe(),
        "candidate_config": {**tpo.candidates.__dict__, "strengths": list(tpo.candidates.strengths)},
        "refine_config": tpo.refine.to_dict(),
        "selector": list(tpo.selector),
        "runs": runs,
        "naive_runs": naive_runs,
    }


# ---- the command ----------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> tuple[BenchConfig, bool]:
    p = argparse.ArgumentParser(prog="python -m restoration.bench", description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=64, help="square image side in pixels (16..4096)")
    p.add_argument("--candidates", type=int, default=CandidateConfig().num_candidates, help="1..64")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--repeat", type=int, default=3, help="timed runs after the warm-up; medians are reported")
    p.add_argument("--backbone", default="sipl", help="registry name or checkpoint path (nlm is weight-free)")
    p.add_argument("--prior", default="default", help="diffusion prior name or folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: every CPU this process may use)")
    p.add_argument("--channels-last", action="store_true", help="channels-last weights (measured suggestion)")
    p.add_argument("--label", default="", help="free text stored in the JSON (shown by scripts/bench_table.py)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    a = p.parse_args(argv)
    if not 16 <= a.size <= 4096:
        p.error("--size must be in 16..4096")
    if not 1 <= a.candidates <= 64:
        p.error("--candidates must be in 1..64")
    if not 1 <= a.repeat <= 100:
        p.error("--repeat must be in 1..100")
    if a.threads < 0:
        p.error("--threads must be >= 0")
    if not (a.device == "cpu" or a.device.startswith("cuda")):
        p.error(f"--device must be cpu, cuda or cuda:N, got {a.device!r}")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda asked for, but torch sees no CUDA device")
    return BenchConfig(size=a.size, candidates=a.candidates, device=a.device, repeat=a.repeat,
                       backbone=a.backbone, prior=a.prior, seed=a.seed, threads=a.threads,
                       channels_last=a.channels_last, label=a.label), a.json


def main(argv: list[str] | None = None) -> int:
    config, as_json = _parse(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    try:
        result = run_bench(config, log)
    except FileNotFoundError as exc:  # PriorNotFoundError included
        hint = ("; pass --backbone nlm (weight-free) or a checkpoint path to benchmark without the SIPL weights"
                if not isinstance(exc, PriorNotFoundError) else "")
        log(f"error: {exc}{hint}")
        return 2
    except ValueError as exc:
        log(f"error: {exc}")
        return 2
    if as_json:
        print(json.dumps(result))
    else:
        s = result["seconds"]
        print(" ".join(f"{k}={s[k]:.3f}s" for k in s) + f" naive={result['naive_candidates_seconds']:.3f}s "
              f"speedup={result['speedup_vs_naive']:.2f}x peak={result['peak_memory_mb']:.0f}MB "
              f"diff={result['naive_max_abs_diff']:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
