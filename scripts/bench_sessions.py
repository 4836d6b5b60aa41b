"""Throughput of the loop with concurrent sessions: K sessions each run R full rounds at once.

    .venv/bin/python scripts/bench_sessions.py --sessions 8 --rounds 2 --size 256 [--batch-sessions 8]
        [--device cpu|cuda] [--precision fp32|bf16|auto] [--threads T] --json

Each session is a thread calling the real `FeedbackService` (shipped SIPL weights, default prior, SQLite in a
temporary folder, images on disk): upload + degrade (`noise:25`, seeded) + restore, candidates, automated
choice (piqe), refinement. The engine runs one computation at a time; candidate requests that wait together
share batches (`feedback.loop.batching`, at most --batch-sessions images; 1 turns batching off). Prints one JSON
object: rounds per minute, round latency percentiles, and the sizes of the candidate batches that ran.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2, help="rounds per session")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch-sessions", type=int, default=8, help="most sessions per candidate batch (1: off)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: every CPU)")
    p.add_argument("--backbone", default="sipl")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if not (a.device == "cpu" or a.device.startswith("cuda")):
        p.error(f"--device must be cpu, cuda or cuda:N, got {a.device!r}")
    if a.sessions < 1 or a.rounds < 1 or a.batch_sessions < 1 or not 16 <= a.size <= 2048:
        p.error("need --sessions, --rounds, --batch-sessions >= 1 and --size in 16..2048")

    import torch

    from feedback.loop.engine import DTYPE_OF_PRECISION, EngineSettings
    from feedback.loop.service import FeedbackService
    from feedback.record.db import open_database
    from restoration.bench import bench_input
    from restoration.diffusion.priors import resolve_precision
    from restoration.runtime import available_cpus, peak_memory_mb

    torch.set_num_threads(a.threads or available_cpus())
    precision = resolve_precision(a.precision, a.device)
    image = (bench_input(a.size)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        engine = EngineSettings(backbone=a.backbone, device=a.device, dtype=DTYPE_OF_PRECISION[precision])
        service = FeedbackService(open_database(data_dir=tmp), tmp, engine, max_waiting=4 * a.sessions,
                                  batch_sessions=a.batch_sessions)
        service.worker.warm_up()
        warm = service.create_session("warm-up")[0]  # one untimed round: kernels, metric set-up
        _round(service, warm, image, 0)
        service.batcher.batches.clear()
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()

        def client(k: int) -> None:
            session_id = service.create_session(f"bench-{k}")[0]
            for r in range(a.rounds):
                t0 = time.perf_counter()
                try:
                    _round(service, session_id, image, 1000 * k + r)
                except Exception as exc:  # noqa: BLE001 - reported, not hidden
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t0)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(a.sessions)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        batches = list(service.batcher.batches)
    q = statistics.quantiles(latencies, n=20, method="inclusive") if len(latencies) >= 2 else latencies * 19
    result = {
        "device": a.device, "precision": precision, "size": a.size, "sessions": a.sessions,
        "rounds_per_session": a.rounds, "batch_sessions": a.batch_sessions, "threads": torch.get_num_threads(),
        "rounds_done": len(latencies), "errors": errors, "wall_seconds": wall,
        "rounds_per_minute": 60 * len(latencies) / wall if wall > 0 else None,
        "round_latency_seconds": {"p50": statistics.median(latencies) if latencies else None,
                                  "p95": q[18] if latencies else None, "max": max(latencies, default=None)},
        "candidate_batches": batches, "peak_memory_mb": peak_memory_mb(a.device),
        "peak_rss_mb": peak_memory_mb("cpu"),  # the process's resident set; on CUDA peak_memory_mb is the GPU's
        "device_name": torch.cuda.get_device_name(a.device) if a.device.startswith("cuda") else None,
    }
    print(json.dumps(result, indent=None if a.json else 2))
    return 0 if not errors else 1


def _round(service, session_id: str, image: np.ndarray, seed: int) -> None:
    """One full round: upload + degrade + restore, candidates, automated choice, refinement."""
    view = service.start_round(session_id, image, degradation="noise:25", seed=seed)
    service.auto_choose(view.round_id)
    service.refine(view.round_id, generate_next=False)


if __name__ == "__main__":
    raise SystemExit(main())
