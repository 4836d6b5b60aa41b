"""`restoration.evaluate` with the scene-context pass around the backbone (any backbone).

    python -m experiments.scene_context.evaluate --backbone sipl --degradation rain+haze --images DIR --size 256 \
        --seed 0 --json      # every flag of `python -m restoration.evaluate`

The JSON's `restorer` holds `scene_context` (the pass's config). `scripts/evaluate_all.sh` made
`docs/results/scene_context/` with it.
"""
from __future__ import annotations

import sys

from experiments.scene_context.scene_context import SceneContextRestorer
from restoration import evaluate


def main(argv: list[str] | None = None) -> int:
    return evaluate.main(argv, wrap=SceneContextRestorer)


if __name__ == "__main__":
    sys.exit(main())
