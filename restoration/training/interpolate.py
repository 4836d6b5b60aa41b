"""Weight-space ensemble of two SIPL weight files (WiSE-FT, Wortsman et al., CVPR 2022, eq. 1):
theta = (1 - alpha) * theta_a + alpha * theta_b.

    python -m restoration.training.interpolate A.safetensors B.safetensors --alpha 0.5 --out C.safetensors

When B is a fine-tune of A (say, on larger crops that teach dehazing), B gains one skill and loses
another; the weights on the straight line between them often keep most of both, because a fine-tune
stays in the basin of its start. Both files must hold the same network (same `SIPLConfig`). The output
records alpha and both parents (file name, sha256, training facts), so it can be remade exactly.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from restoration.backbones.hashing import weights_sha256
from restoration.backbones.sipl import load_network, read_metadata, save_weights
from restoration.backbones.sipl_net import SIPLNet


def weight_space_ensemble(a: SIPLNet, b: SIPLNet, alpha: float) -> SIPLNet:
    """A new network with (1 - alpha) * a + alpha * b for every floating-point tensor; alpha in [0, 1]."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (0 = the first network, 1 = the second), got {alpha}")
    if a.config != b.config:
        raise ValueError(f"the two networks differ in config (first, second): {a.config.differences(b.config)}")
    sa, sb = a.state_dict(), b.state_dict()
    mixed = {k: torch.lerp(sa[k].float(), sb[k].float(), float(alpha)) if sa[k].is_floating_point() else sa[k]
             for k in sa}
    out = SIPLNet(a.config)
    out.load_state_dict(mixed)
    return out.eval()


def _parent(path: Path) -> dict:
    return {"file": path.name, "sha256": weights_sha256(path),
            "facts": json.loads(read_metadata(path).get("facts", "{}"))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m restoration.training.interpolate", description=__doc__.split("\n\n")[0])
    p.add_argument("first", type=Path, help="weights at alpha = 0 (e.g. the shipped ones)")
    p.add_argument("second", type=Path, help="weights at alpha = 1 (e.g. a fine-tune of the first)")
    p.add_argument("--alpha", type=float, required=True, help="share of the second, in [0, 1]")
    p.add_argument("--out", type=Path, required=True, help="output weights file (.safetensors)")
    a = p.parse_args(argv)
    try:
        net = weight_space_ensemble(load_network(a.first), load_network(a.second), a.alpha)
    except (OSError, ValueError) as e:
        p.error(str(e))
    facts = {"weight_space_ensemble": {"alpha": a.alpha, "first": _parent(a.first), "second": _parent(a.second)}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(net, a.out, facts)
    print(f"wrote {a.out}: {1 - a.alpha:g} x {a.first.name} + {a.alpha:g} x {a.second.name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
