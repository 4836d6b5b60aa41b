"""Print a Markdown table of `restoration.evaluate` JSON files: backbone, degradation, mean PSNR/SSIM, seconds."""
import json
import sys
from pathlib import Path


def main(paths: list[str]) -> None:
    print("| file | backbone | degradation | images | ensemble | input PSNR | PSNR | single-pass PSNR | SSIM | s/image |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for p in paths:
        d = json.loads(Path(p).read_text())
        m = d["mean"]
        single = f"{m['psnr_single_pass']:.2f}" if "psnr_single_pass" in m else "-"
        ensemble = d.get("restorer", {}).get("ensemble", 1)
        print(f"| {Path(p).stem} | {d['backbone']} | `{d['degradation']}` | {len(d['images'])} | {ensemble} "
              f"| {m['input_psnr']:.2f} | {m['psnr']:.2f} "
              f"| {single} | {m['ssim']:.4f} | {m['seconds']:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
