"""Does a SIPL network with a deconvolution bank choose its filters by the blur it sees?

    .venv/bin/python scripts/probe_bank_blend.py WEIGHTS IMAGE [--size 256] [--specs clean,blur:0.8,blur:1.5,blur:3.0]

Restores IMAGE (resized so its short side is --size, centre-cropped), clean and degraded by each spec (seed 0),
with one single pass of the network in WEIGHTS, and prints, per spec, the blend head's mean weight on each filter
of the bank (`SIPLConfig.deconv_bank`, in px). A network that uses the bank puts its weight on the filter that
matches the blur; equal rows mean it does not look at the blur to choose.
"""
from __future__ import annotations

import argparse
import sys

import torch

from restoration.backbones.sipl import load_network
from restoration.degradations import degrade
from restoration.io import load_image, resize_short_side_center_crop


def blend_means(net: torch.nn.Module, x: torch.Tensor) -> list[float]:
    """The blend head's output for x, averaged over channels and pixels: one weight per filter of the bank."""
    seen: dict[str, torch.Tensor] = {}
    hook = net.blend_head.register_forward_hook(lambda _m, _i, out: seen.__setitem__("blend", out))
    try:
        with torch.inference_mode():
            net(x)
    finally:
        hook.remove()
    return seen["blend"].unflatten(1, (len(net.bank), 3)).mean(dim=(0, 2, 3, 4)).tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights")
    parser.add_argument("image")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--specs", default="clean,blur:0.8,blur:1.5,blur:3.0,noise:15+blur:1.5")
    args = parser.parse_args(argv)
    net = load_network(args.weights).eval()
    if getattr(net, "blend_head", None) is None:
        print(f"{args.weights} has no deconvolution bank (SIPLConfig.deconv_bank is empty)", file=sys.stderr)
        return 2
    clean = resize_short_side_center_crop(load_image(args.image), args.size)
    m = net.multiple
    clean = clean[..., : clean.shape[-2] // m * m, : clean.shape[-1] // m * m]
    print("spec".ljust(20) + "".join(f"{s:>8g}px" for s in net.bank))
    for spec in args.specs.split(","):
        x = clean if spec == "clean" else degrade(clean, spec, 0)[0]
        print(spec.ljust(20) + "".join(f"{v:>+10.3f}" for v in blend_means(net, x)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
