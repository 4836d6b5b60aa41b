"""How much glibc's malloc thresholds cost the SIPL restore (`restoration.runtime.tune_allocator`).

    .venv/bin/python scripts/bench_allocator.py [--size 256] [--repeat 9] [--rounds 2] [--backbone sipl]

Runs each setting in its own fresh process, `--rounds` times interleaved (so load drifting on a shared machine hits
every setting alike): `fixed-128k` (the mmap threshold pinned at glibc's initial 128 KiB: every large block is a
fresh mmap), `default` (glibc's adaptive threshold, what a process gets without tuning; the figure depends on what
ran before), `tuned` (`tune_allocator()`, what the commands and the app use). Prints one JSON object: the median
restore seconds of each setting over `--repeat` timed calls (after one untimed call), per round.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, statistics, sys, time
from restoration.backbones import create_restorer
from restoration.bench import bench_input
from restoration.runtime import set_malloc_thresholds, tune_allocator
mode, size, repeat, backbone = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if mode == "fixed-128k":
    assert set_malloc_thresholds(128 << 10, 128 << 10), "mallopt refused (not glibc)"
elif mode == "tuned":
    assert tune_allocator(), "tune_allocator did not apply (not glibc, or TTPO_MALLOC_TUNING=0)"
x = bench_input(size, 0)
restorer = create_restorer(backbone)
restorer.restore(x)
times = []
for _ in range(repeat):
    t0 = time.perf_counter()
    restorer.restore(x)
    times.append(time.perf_counter() - t0)
print(json.dumps({"median": statistics.median(times), "min": min(times), "max": max(times)}))
"""

MODES = ("fixed-128k", "default", "tuned")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/bench_allocator.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeat", type=int, default=9)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--backbone", default="sipl")
    a = p.parse_args(argv)
    if a.size < 16 or a.repeat < 1 or a.rounds < 1:
        p.error("--size must be >= 16, --repeat and --rounds >= 1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | {"TTPO_MALLOC_TUNING": "1"}
    result: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(a.rounds):
        for mode in MODES:
            out = subprocess.run([sys.executable, "-c", CHILD, mode, str(a.size), str(a.repeat), a.backbone],
                                 env=env, capture_output=True, text=True, check=False)
            if out.returncode:
                print(out.stderr, file=sys.stderr)
                return out.returncode
            result[mode].append(round(json.loads(out.stdout.strip().splitlines()[-1])["median"], 3))
            print(f"{mode}: {result[mode][-1]} s", file=sys.stderr)
    print(json.dumps({"size": a.size, "repeat": a.repeat, "backbone": a.backbone, "restore_seconds": result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
