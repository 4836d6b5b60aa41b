#!/usr/bin/env bash
# Weight-space ensembles of two SIPL weight files, each scored on the validation photos.
#
#   bash scripts/wise_sweep.sh FIRST.safetensors SECOND.safetensors OUT_DIR [VAL_DIR]
#
# For alpha in 0.3 .. 0.8 (or the space-separated ALPHAS), writes OUT_DIR/wise_ALPHA.safetensors = (1 - alpha) FIRST + alpha SECOND
# (python -m restoration.training.interpolate), then prints one line per file (FIRST, the mixes, SECOND) and degradation:
# the mean PSNR on VAL_DIR (default data/photos/val; 256 px, seed 0) of noise:25, noise:15+blur:1.5 and rain+haze,
# with the single-pass PSNR and the input's. The lines also go to OUT_DIR/sweep.txt.
# This is how the eighth session's shipped weights were chosen (docs/history/sipl_model_card_2026-12-06.md).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: bash scripts/wise_sweep.sh FIRST.safetensors SECOND.safetensors OUT_DIR [VAL_DIR]" >&2
  exit 2
fi
first=$1 second=$2 out=$3 val=${4:-data/photos/val}
py=${PYTHON:-.venv/bin/python}
for f in "$first" "$second"; do
  [ -f "$f" ] || { echo "no such weights file: $f" >&2; exit 2; }
done
[ -d "$val" ] || { echo "no validation folder: $val (bash scripts/get_photos.sh data/photos)" >&2; exit 2; }
mkdir -p "$out"
files=("$first")
for alpha in ${ALPHAS:-0.3 0.4 0.5 0.6 0.7 0.8}; do
  "$py" -m restoration.training.interpolate "$first" "$second" --alpha "$alpha" --out "$out/wise_$alpha.safetensors" >&2
  files+=("$out/wise_$alpha.safetensors")
done
files+=("$second")
: > "$out/sweep.txt.part"
for w in "${files[@]}"; do
  for spec in noise:25 noise:15+blur:1.5 rain+haze; do
    "$py" -m restoration.evaluate --backbone "$w" --degradation "$spec" --images "$val" --size 256 --seed 0 --json \
      2>/dev/null | "$py" -c "
import json, sys
m = json.load(sys.stdin)['mean']
print(f\"{sys.argv[1]} {sys.argv[2]} psnr {m['psnr']:.2f} single {m.get('psnr_single_pass', float('nan')):.2f} \"
      f\"input {m['input_psnr']:.2f}\")" "$w" "$spec" | tee -a "$out/sweep.txt.part"
  done
done
mv "$out/sweep.txt.part" "$out/sweep.txt"
