#!/usr/bin/env bash
# The backbone table of docs/BACKBONES.md: SIPL, its ablation, the classical method told the degradation and
# Real-ESRGAN on four degradations, 12 evaluation photos at 256 px, with PIQE (no reference, no download).
# Usage: scripts/evaluate_backbones.sh PHOTOS_DIR   (PHOTOS_DIR from scripts/get_photos.sh: eval/ is used)
# One evaluation at a time, one thread each (OMP_NUM_THREADS=1 unless set): 7 minutes on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
photos="${1:-data/photos}"
out=docs/results/backbones
mkdir -p "$out"
py=.venv/bin/python
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
for spec in sr:4 blur:1.5 jpeg:30 noise:25; do
  tag=$(echo "$spec" | tr ':+.' '__p')
  for b in sipl sipl_ablation classical realesrgan; do
    echo "evaluate $b $spec" >&2
    $py -m restoration.evaluate --backbone "$b" --degradation "$spec" --images "$photos/eval" --size 256 --seed 0 \
      --nr-metrics piqe --json > "$out/${tag}_$b.json"
  done
done
$py scripts/backbone_table.py "$out"/sr_4_*.json "$out"/blur_1p5_*.json "$out"/jpeg_30_*.json "$out"/noise_25_*.json \
  --doc docs/BACKBONES.md
