"""`restoration.evaluate` with a trained post-dehazing file run after the backbone (after its own post step).

    python -m experiments.post_dehaze.evaluate --post-dehaze FILE --backbone sipl --degradation rain+haze \
        --images DIR --size 256 --seed 0 --json      # every other flag of `python -m restoration.evaluate`

The JSON's `restorer` names the file (`post_dehaze`, `post_dehaze_hash`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.post_dehaze.post_dehaze import PostDehazer
from restoration import evaluate
from restoration.backbones.post_step import PostStep, PostStepRestorer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.post_dehaze.evaluate", add_help=False)
    p.add_argument("--post-dehaze", type=Path, required=True, metavar="FILE",
                   help="a post-dehazing file (python -m experiments.post_dehaze.train)")
    ours, rest = p.parse_known_args(argv)
    try:
        step = PostStep.from_file(ours.post_dehaze, PostDehazer)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return evaluate.main(rest, wrap=lambda restorer: PostStepRestorer(restorer, step))


if __name__ == "__main__":
    sys.exit(main())
