"""Process-wide settings for the compute entry points (the commands and the app call `tune_allocator`), and
`synchronize`, which every timer around GPU work uses.

glibc's malloc serves large blocks (above a threshold that starts at 128 KiB and adapts as blocks are freed) with
fresh `mmap` pages and returns them to the kernel on `free`, so every forward pass of a network pays for page faults
and zeroing on its activations. On a virtual machine that is most of the cost: the SIPL restore of a 256 px image
took 2.85-3.31 s with the threshold pinned at 128 KiB, 0.92-1.10 s with glibc's adaptive default (it depends on what
ran before) and 0.60-0.68 s tuned (`python scripts/bench_allocator.py`; 64 MiB was already enough). Keeping blocks up to
`mmap_threshold_mb` in the heap, and up to `trim_threshold_mb` of free heap in the process, removes that cost for
the price of some resident memory that is not handed back at once.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import resource

log = logging.getLogger(__name__)

#: mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Set TTPO_MALLOC_TUNING=0 to keep glibc's defaults.
ENV_SWITCH = "TTPO_MALLOC_TUNING"

_applied: tuple[int, int] | None = None


def tune_allocator(mmap_threshold_mb: int = 128, trim_threshold_mb: int = 256) -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True when applied (Linux with glibc, not
    switched off by TTPO_MALLOC_TUNING=0). Idempotent; other platforms and C libraries are left alone."""
    global _applied
    if not 0 < mmap_threshold_mb <= trim_threshold_mb:
        raise ValueError(f"need 0 < mmap_threshold_mb <= trim_threshold_mb, got {mmap_threshold_mb}, "
                         f"{trim_threshold_mb}")
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "off", "false", "no"):
        return False
    if _applied == (mmap_threshold_mb, trim_threshold_mb):
        return True
    ok = set_malloc_thresholds(mmap_threshold_mb << 20, trim_threshold_mb << 20)
    if ok:
        _applied = (mmap_threshold_mb, trim_threshold_mb)
        log.debug("malloc: mmap threshold %d MiB, trim threshold %d MiB", mmap_threshold_mb, trim_threshold_mb)
    return ok


def set_malloc_thresholds(mmap_bytes: int, trim_bytes: int) -> bool:
    """glibc `mallopt` of both thresholds, in bytes; True when both were accepted, False off glibc. Fixed values also
    switch off glibc's adaptive mmap threshold. `tune_allocator` is the entry point; this is the mechanism."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, mmap_bytes) == 1
    return mallopt(M_TRIM_THRESHOLD, trim_bytes) == 1 and ok


def allocator_settings() -> dict[str, int] | None:
    """The thresholds `tune_allocator` set in this process (MiB), or None: recorded by the benchmark."""
    if _applied is None:
        return None
    return {"mmap_threshold_mb": _applied[0], "trim_threshold_mb": _applied[1]}


def synchronize(device) -> None:
    """Wait for the work queued on `device` (a torch.device or its name) when it is a CUDA GPU, whose kernels run
    asynchronously, so that a timer around it covers that work; nothing on other devices."""
    import torch  # here, so that the allocator settings above stay importable without torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: The device choices every command and the app take; 'auto' is the default.
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; 'cpu', 'cuda', 'cuda:N' are checked and returned as given
    (ValueError for another name, or for CUDA where torch sees none). Recorded with every round and report."""
    import torch

    text = str(device).strip().lower()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(text).type
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use {DEVICE_CHOICES}") from None
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported; use {DEVICE_CHOICES}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: torch sees no CUDA GPU here; use auto or cpu")
    return text


# ---- machine facts (the benchmarks report them) ------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (e.g. "AMD EPYC"), or "" where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which taskset / cgroups narrow), else os.cpu_count()."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def peak_memory_mb(device: str) -> float:
    """GPU: torch.cuda.max_memory_allocated; CPU: the process's peak resident set size (ru_maxrss)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if platform.system() == "Darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def cap_gpu_memory(device: str, cap_gb: float) -> float | None:
    """Make CUDA allocations past `cap_gb` GiB fail (torch.cuda.set_per_process_memory_fraction), so a run that
    finishes proves the cap holds; returns the fraction of the device set, None when there is no cap."""
    if not cap_gb:
        return None
    if not device.startswith("cuda"):
        raise ValueError("a GPU memory cap needs a CUDA device")
    import torch

    total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    fraction = cap_gb * 2**30 / total
    if not 0 < fraction <= 1:
        raise ValueError(f"a GPU memory cap of {cap_gb:g} GiB does not fit this device's {total / 2**30:.1f} GiB")
    torch.cuda.set_per_process_memory_fraction(fraction, torch.device(device))
    return fraction


#: Dense peak TFLOP/s by GPU model (NVIDIA data sheets, without sparsity): bf16/fp16 tensor cores, and float32
#: convolutions, which cuDNN runs as TF32 on tensor cores while torch.backends.cudnn.allow_tf32 is on (the default).
GPU_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2},
    "H100 NVL": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "H100": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},  # SXM5
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
}


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The device's dense peak for the U-Net's compute precision, None when not in GPU_PEAK_TFLOPS (CPUs)."""
    for model, peaks in GPU_PEAK_TFLOPS.items():  # most specific names first
        if model in device_name:
            import torch

            if precision == "fp32" and torch.backends.cudnn.allow_tf32:
                return peaks["tf32"]
            return peaks[precision]
    return None
