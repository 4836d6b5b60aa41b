"""Benchmark one TTPO round stage by stage, and the batched candidates against a naive per-candidate loop.

    python -m restoration.bench --size N --candidates K [--device auto|cpu|cuda] [--repeat R] [--backbone sipl]
        [--prior default] [--seed S] [--threads T] [--precision fp32|bf16|fp16] [--compile MODE] [--contiguous]
        [--tile PX] [--steps N] [--refine-steps N] [--warmup W] [--no-naive] [--label TEXT] --json

Measures, on the shipped weights, the median over R runs (after W warm-up rounds) of each stage
(restore, candidates, select, refine) and of the whole round, the peak memory, and, in the same
process and interleaved with the rounds (so load on a shared machine hits both alike), the same
candidates made the naive way: one candidate at a time through a standard diffusers
DDIMInverseScheduler / DDIMScheduler loop calling a stock copy of the prior's UNet (as loaded: float32,
contiguous memory) directly, unbatched, sharing nothing. The naive images must match the batched ones
(`naive_max_abs_diff`, `naive_psnr_db`), otherwise the speed-up would compare different work.
`unet_samples` counts the images the UNet saw (a batch of 8 counts 8) in each path, which is where the
speed-up comes from. On CUDA, `cuda_syncs` counts per stage how often one more, untimed round made the host wait
on the GPU (`count_cuda_syncs`).

To drive the unmodified diffusers schedulers along the engine's timesteps (the inversion ladder or
grid, then strength * T down to the clean image, which no `set_timesteps` spacing reproduces), each
loop gets a respaced schedule: `trained_betas` chosen so that the scheduler's index j has alpha_bar
of the j-th timestep, and the UNet is called with the original timestep (the respacing of improved
DDPM, Nichol & Dhariwal 2021, sec. 4). The naive loop never tiles: skip it (--no-naive) for images
above the prior's tile size. One JSON object goes to stdout; logs go to stderr.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from restoration.diffusion.candidates import (
    CandidateConfig,
    plan_candidates,
)
from restoration.diffusion.naive import naive_candidate, naive_candidates, stock_unet
from restoration.diffusion.priors import (
    COMPILE_MODES,
    DEFAULT_TILE,
    DiffusionPrior,
    PriorNotFoundError,
    resolve_precision,
)
from restoration.diffusion.refine import RefineConfig
from restoration.runtime import (
    allocator_settings,
    available_cpus,
    cap_gpu_memory,
    cpu_model,
    peak_memory_mb,
    peak_tflops,
    resolve_device,
    synchronize,
    tune_allocator,
)

STAGES = ("restore", "candidates", "select", "refine")
#: the sample the benchmark input is cut from (a synthetic image when it is missing).
SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "assets" / "samples" / "astronaut.png"
BENCH_DEGRADATION = "noise:25"


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run measures; `threads` 0 means every CPU the process may use; `steps` /
    `refine_steps` 0 keep the engine's defaults; `tile` is the prior's denoiser tile in pixels (0: off)."""

    size: int = 64
    candidates: int = 8
    device: str = "cpu"
    repeat: int = 3
    backbone: str = "sipl"
    prior: str = "default"
    seed: int = 0
    threads: int = 0
    channels_last: bool = True  # the prior's U-Net in channels-last memory format (the engine's default)
    precision: str = "fp32"
    compile_mode: str = "none"  # torch.compile mode of the prior's U-Net (the naive loop stays eager)
    tile: int = DEFAULT_TILE
    steps: int = 0
    refine_steps: int = 0
    warmup: int = 1
    naive: bool = True
    label: str = ""
    gpu_memory_cap_gb: float = 0.0  # on CUDA: allocations past this many GiB fail (0: the whole device)


# ---- timing ---------------------------------------------------------------------------------------


def _timed(fn: Callable[[], Any], device: str) -> tuple[Any, float]:
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
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


class UnetSamples:
    """Counts the images the modules' forward passes see (a batch of 8 counts 8), by input shape, while installed."""

    def __init__(self, *modules: torch.nn.Module | None):
        self.shapes: Counter[tuple[int, ...]] = Counter()
        self._handles = [m.register_forward_pre_hook(self._hook) for m in modules if m is not None]

    def _hook(self, module, args) -> None:
        self.shapes[tuple(args[0].shape[1:])] += int(args[0].shape[0])

    def take(self) -> Counter[tuple[int, ...]]:
        """Images per input shape (C, h, w) since the last take, and reset."""
        taken, self.shapes = self.shapes, Counter()
        return taken

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def run_round(engine, degraded: torch.Tensor, config: BenchConfig, counter: UnetSamples | None = None
              ) -> tuple[dict[str, float], Any, dict[str, Counter[tuple[int, ...]]]]:
    """One timed round (restore -> candidates -> select -> refine): seconds per stage, the Round, and the
    UNet samples per diffusion stage and input shape when a counter is given."""
    dev = config.device
    samples: dict[str, Counter[tuple[int, ...]]] = {}
    take = counter.take if counter is not None else Counter
    t0 = time.perf_counter()
    with torch.inference_mode():
        (restored, _), s_restore = _timed(lambda: engine.restore(degraded.to(dev)), dev)
    restored = restored.clone()  # a normal tensor again: refinement takes gradients w.r.t. x0_hat
    take()
    rnd, s_cand = _timed(lambda: engine.start_round(restored, seed=config.seed,
                                                    num_candidates=config.candidates), dev)
    samples["candidates"] = take()
    with torch.no_grad():
        sel, s_select = _timed(lambda: engine.select(rnd), dev)
    take()
    _, s_refine = _timed(lambda: engine.refine(rnd, sel), dev)
    samples["refine"] = take()
    synchronize(dev)
    seconds = {"restore": s_restore, "candidates": s_cand, "select": s_select, "refine": s_refine,
               "round": time.perf_counter() - t0}
    return seconds, rnd, samples


def count_cuda_syncs(engine, degraded: torch.Tensor, config: BenchConfig) -> dict[str, int] | None:
    """The host waits on the GPU per stage of one more, untimed round, counted by torch's sync debug mode
    (`torch.cuda.set_sync_debug_mode`: a warning per synchronising call, e.g. `.item()`, `.tolist()`, a blocking
    copy); None off CUDA. The stage timers' own synchronize calls are outside what is counted."""
    if not config.device.startswith("cuda"):
        return None
    counts: dict[str, int] = {}
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            def counted(stage: str, fn: Callable[[], Any]) -> Any:
                before = len(caught)
                out = fn()
                counts[stage] = sum("synchroniz" in str(w.message) for w in caught[before:])
                return out

            with torch.inference_mode():
                restored, _ = counted("restore", lambda: engine.restore(degraded.to(config.device)))
            restored = restored.clone()
            rnd = counted("candidates", lambda: engine.start_round(restored, seed=config.seed,
                                                                   num_candidates=config.candidates))
            with torch.no_grad():
                sel = counted("select", lambda: engine.select(rnd))
            counted("refine", lambda: engine.refine(rnd, sel))
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    synchronize(config.device)
    return counts


# ---- achieved compute ------------------------------------------------------------------------------

def unet_flops(prior: DiffusionPrior, shape: tuple[int, ...]) -> int:
    """Floating-point operations (2 per multiply-add, convolutions and matrix products; what
    torch.utils.flop_counter counts) of one forward pass of the prior's U-Net on one input of `shape` (C, h, w)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros((1, *shape), device=prior.device)
    t = torch.full((1,), prior.num_train_timesteps // 2, device=prior.device, dtype=torch.long)
    kwargs = {"encoder_hidden_states": prior.prompt_embeds[:1]} if prior.kind == "latent" else {}
    with torch.inference_mode(), FlopCounterMode(display=False) as flops:
        prior.unet(x, t, **kwargs)
    return int(flops.get_total_flops())


def achieved_tflops(prior: DiffusionPrior, shapes: Counter[tuple[int, ...]], seconds: float) -> tuple[float, float]:
    """(TFLOP of the U-Net passes counted in `shapes`, TFLOP/s over `seconds`)."""
    total = sum(unet_flops(prior, shape) * n for shape, n in shapes.items()) / 1e12
    return total, total / seconds if seconds > 0 else 0.0


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
    cap_gpu_memory(dev, config.gpu_memory_cap_gb)
    candidates = replace(CandidateConfig(), num_candidates=config.candidates, seed=config.seed)
    if config.steps:
        candidates = replace(candidates, steps=config.steps)
    refine = replace(RefineConfig(), steps=config.refine_steps) if config.refine_steps else RefineConfig()
    tpo = TPOConfig(backbone=config.backbone, prior=config.prior, device=dev, candidates=candidates, refine=refine,
                    precision=config.precision)
    engine = TPOEngine(tpo, restorer=create_restorer(config.backbone, dev))
    engine.prior.tile, engine.prior.tile_overlap = config.tile, config.tile // 8
    engine.prior.check_tiling()
    engine.prior.set_inference_format(channels_last=config.channels_last, compile_mode=config.compile_mode)
    naive_unet = stock_unet(engine.prior) if config.naive else None
    degraded = bench_input(config.size, config.seed)
    log(f"backbone {config.backbone}, prior {engine.prior.prior_id} (tile {config.tile}), {config.size} px, "
        f"{config.candidates} candidates ({candidates.method}), {torch.get_num_threads()} threads, device {dev}")

    metas = plan_candidates(candidates, engine.prior)
    # hooks first: a compiled U-Net (--compile) then compiles with them in the warm-up, not in a timed round
    counter = UnetSamples(engine.prior.unet, naive_unet)
    runs, naive_runs, rnd, naive, shapes = [], [], None, None, {}
    try:
        for _ in range(config.warmup):  # allocator, kernels, lazy imports, metric setup; the naive loop's shapes
            _, rnd, _ = run_round(engine, degraded, config)
            if config.naive:
                with torch.inference_mode():
                    naive_candidate(rnd.start, engine.prior, metas[0], naive_unet)
        if dev.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(dev)
        counter.take()  # the warm-up's passes are not counted
        for r in range(config.repeat):  # rounds and naive loops interleaved: drifting load hits both alike
            seconds, rnd, shapes = run_round(engine, degraded, config, counter)
            runs.append(seconds)
            log(f"round {r}: " + ", ".join(f"{k} {v:.3f}s" for k, v in seconds.items()))
            if config.naive:
                with torch.inference_mode():
                    naive, s = _timed(lambda: naive_candidates(rnd.start, engine.prior, metas, naive_unet), dev)
                naive_runs.append(s)
                shapes["naive_candidates"] = counter.take()
                log(f"naive {r}: {s:.3f}s")
    finally:
        counter.remove()
    peak = peak_memory_mb(dev)  # before the sync census, which is one more round
    reserved = torch.cuda.max_memory_reserved(dev) / 2**20 if dev.startswith("cuda") else None
    syncs = count_cuda_syncs(engine, degraded, config)
    if syncs is not None:
        log("host waits on the GPU per stage: " + ", ".join(f"{k} {v}" for k, v in syncs.items()))
    median = {k: statistics.median(s[k] for s in runs) for k in (*STAGES, "round")}

    naive_s = statistics.median(naive_runs) if naive_runs else None
    samples = {stage: sum(counted.values()) for stage, counted in shapes.items()}
    model = cpu_model()
    device_name = (torch.cuda.get_device_name(dev) if dev.startswith("cuda")
                   else f"cpu ({platform.machine()}{', ' + model if model else ''})")
    peak_tf = peak_tflops(device_name, config.precision)
    tflop, tflops = achieved_tflops(engine.prior, shapes["candidates"], median["candidates"])
    log(f"candidates: {tflop:.3f} TFLOP of U-Net passes, {tflops:.3f} TFLOP/s"
        + (f" ({100 * tflops / peak_tf:.1f} % of the {peak_tf:g} TFLOP/s peak)" if peak_tf else ""))
    diff = psnr_db = None
    if naive is not None:
        batched = torch.cat([c.image for c in rnd.candidates if not c.is_start])
        diff = float((naive.to(batched.device) - batched).abs().max())
        mse = float(((naive.to(batched.device) - batched) ** 2).mean())
        psnr_db = 10 * math.log10(1 / mse) if mse > 0 else float("inf")
        log(f"candidates batched {median['candidates']:.3f}s vs naive {naive_s:.3f}s; max |diff| {diff:.2e}, "
            f"PSNR {psnr_db:.1f} dB; "
            f"UNet samples {samples['candidates']} vs {samples['naive_candidates']}")
    return {
        "label": config.label or None,
        "device": device_name,
        "size": config.size,
        "candidates": config.candidates,
        "repeat": config.repeat,
        "warmup": config.warmup,
        "seconds": median,
        "naive_candidates_seconds": naive_s,
        "speedup_vs_naive": naive_s / median["candidates"] if naive_s and median["candidates"] > 0 else None,
        "peak_memory_mb": peak,
        "peak_reserved_mb": reserved,  # CUDA: what the caching allocator held at most (None off CUDA)
        "gpu_memory_cap_gb": config.gpu_memory_cap_gb or None,
        "naive_max_abs_diff": diff,
        "naive_psnr_db": psnr_db,
        "unet_samples": samples,
        "unet_tflop": {"candidates": tflop},
        "unet_tflops": {"candidates": tflops},
        "peak_tflops": peak_tf,
        "peak_fraction": tflops / peak_tf if peak_tf else None,
        "cuda_syncs": syncs,  # per stage of one untimed round (count_cuda_syncs); None off CUDA
        "threads": torch.get_num_threads(),
        "allocator": allocator_settings(),  # glibc malloc thresholds (restoration/runtime.py), None = defaults
        "torch": torch.__version__,
        "channels_last": config.channels_last,
        "precision": config.precision,
        "compile": config.compile_mode,
        "tile": config.tile,
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
    p.add_argument("--device", default="auto", help="auto (CUDA when torch sees a GPU, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--repeat", type=int, default=3, help="timed runs after the warm-up; medians are reported")
    p.add_argument("--backbone", default="sipl", help="registry name or checkpoint path (nlm is weight-free)")
    p.add_argument("--prior", default="default", help="diffusion prior name or folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: every CPU this process may use)")
    p.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16", "fp16"),
                   help="the prior's compute precision (autocast; 'auto' as the app: bf16 where native); "
                        "the naive loop always runs float32")
    p.add_argument("--compile", default="none", choices=COMPILE_MODES,
                   help="torch.compile the prior's U-Net (the warm-up rounds pay the compilation; the naive loop "
                        "stays eager)")
    p.add_argument("--contiguous", action="store_true",
                   help="keep the prior's U-Net in contiguous memory (the engine uses channels-last)")
    p.add_argument("--tile", type=int, default=DEFAULT_TILE,
                   help="the diffusion denoiser runs on tiles of this many pixels (with 1/8 overlap) above it; 0: off")
    p.add_argument("--steps", type=int, default=0, help="candidate DDIM steps (0: the engine's default)")
    p.add_argument("--refine-steps", type=int, default=0, help="refinement DDIM steps (0: the engine's default)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds before the timed ones")
    p.add_argument("--no-naive", action="store_true", help="skip the naive per-candidate loop (large images)")
    p.add_argument("--gpu-memory-cap", type=float, default=0.0, metavar="GIB",
                   help="on CUDA, make allocations past this many GiB fail, so that a finished run proves the "
                        "round fits (issue 6: a 4096 px round within 16 GiB); 0: no cap")
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
    if a.tile and a.tile < 32:
        p.error("--tile must be 0 (off) or at least 32 pixels")
    if a.steps < 0 or a.refine_steps < 0 or a.warmup < 0:
        p.error("--steps, --refine-steps and --warmup must be >= 0")
    try:
        a.device = resolve_device(a.device)
    except ValueError as exc:
        p.error(f"--device: {exc}")
    if a.gpu_memory_cap < 0 or (a.gpu_memory_cap and not a.device.startswith("cuda")):
        p.error("--gpu-memory-cap takes a positive number of GiB, with --device cuda")
    return BenchConfig(size=a.size, candidates=a.candidates, device=a.device, repeat=a.repeat,
                       backbone=a.backbone, prior=a.prior, seed=a.seed, threads=a.threads,
                       channels_last=not a.contiguous, precision=resolve_precision(a.precision, a.device),
                       compile_mode=a.compile, tile=a.tile, steps=a.steps, refine_steps=a.refine_steps,
                       warmup=a.warmup, naive=not a.no_naive, label=a.label,
                       gpu_memory_cap_gb=a.gpu_memory_cap), a.json


def main(argv: list[str] | None = None) -> int:
    config, as_json = _parse(argv)
    tune_allocator()

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
    except torch.cuda.OutOfMemoryError as exc:
        cap = f" (--gpu-memory-cap {config.gpu_memory_cap_gb:g} GiB)" if config.gpu_memory_cap_gb else ""
        log(f"error: the round ran out of GPU memory{cap}: {str(exc).splitlines()[0]}")
        return 3
    if as_json:
        print(json.dumps(result))
    else:
        s = result["seconds"]
        line = " ".join(f"{k}={s[k]:.3f}s" for k in s) + f" peak={result['peak_memory_mb']:.0f}MB"
        if result["naive_candidates_seconds"] is not None:
            line += (f" naive={result['naive_candidates_seconds']:.3f}s speedup={result['speedup_vs_naive']:.2f}x "
                     f"diff={result['naive_max_abs_diff']:.1e}")
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
