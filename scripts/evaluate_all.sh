#!/usr/bin/env bash
# Reproduce the figures in docs/history/sipl_model_card_2026-12-06.md: evaluation JSON files under docs/results/.
# Usage: scripts/evaluate_all.sh PHOTOS_DIR   (PHOTOS_DIR from scripts/get_photos.sh: train/ val/ eval/)
set -euo pipefail
cd "$(dirname "$0")/.."
photos="${1:-data/photos}"
out=docs/results
mkdir -p "$out"
py=.venv/bin/python
ev() { # backbone spec images tag [extra]   ($module: restoration.evaluate unless set, e.g. by an experiment's block)
  local b="$1" s="$2" d="$3" tag="$4"; shift 4
  echo "evaluate $b $s on $d" >&2
  $py -m "${module:-restoration.evaluate}" --backbone "$b" --degradation "$s" --images "$d" --size 256 --seed 0 \
    --json "$@" > "$out/$tag.json"
}
# choosing the default number of self-refinement rounds: held-out validation photos only
for r in 0 1 2; do ev sipl noise:25 "$photos/val" "val_sipl_noise25_rounds$r" --rounds $r; done
# what the geometric self-ensemble buys (an option, not the default: n copies cost n restorations)
for n in 2 8; do ev sipl noise:25 "$photos/val" "val_sipl_noise25_ensemble$n" --ensemble $n; done
# independent evaluation photos
for spec in noise:25 noise:15+blur:1.5 rain+haze; do
  tag=$(echo "$spec" | tr ':+.' '__p')
  ev sipl "$spec" "$photos/eval" "eval_sipl_$tag"
  ev sipl_ablation "$spec" "$photos/eval" "eval_ablation_$tag"
  ev classical "$spec" "$photos/eval" "eval_classical_$tag"
done
ev sipl noise:25 "$photos/eval" eval_sipl_noise_25_ensemble8 --ensemble 8
ev nlm noise:25 "$photos/eval" eval_nlm_noise_25
ev nlm noise:15+blur:1.5 "$photos/eval" eval_nlm_noise_15pblur_1p5
ev wiener noise:15+blur:1.5 "$photos/eval" eval_wiener_noise_15pblur_1p5
ev dehaze rain+haze "$photos/eval" eval_dehaze_rainphaze
ev median rain+haze "$photos/eval" eval_median_rainphaze
# each single degradation on its own: what the blind networks do with it, beside the classical method told the spec
mkdir -p "$out/singles"
for spec in noise:15 noise:50 blur:1.5 motion:15 sr:2 sr:4 jpeg:30 rain haze snow; do
  tag=$(echo "$spec" | tr ':+.' '__p')
  for b in sipl sipl_ablation classical; do ev "$b" "$spec" "$photos/eval" "singles/${tag}_$b"; done
done
$py scripts/summarize_results.py "$out"/singles/*.json > "$out/singles/SUMMARY.md"
# the scene-context pass (experiments/scene_context, never a default; validation decided it, evaluation photos after)
mkdir -p "$out/scene_context"
for set in val eval; do
  for spec in rain+haze haze noise:25 noise:15+blur:1.5 none rain; do
    tag=$(echo "$spec" | tr ':+.' '__p')
    for b in sipl sipl_ablation; do
      module=experiments.scene_context.evaluate ev "$b" "$spec" "$photos/$set" "scene_context/${set}_${b}_$tag"
    done
  done
done
$py scripts/summarize_results.py "$out"/scene_context/*.json > "$out/scene_context/SUMMARY.md"
# told the degradation (--informed), as the classical baselines always are: told haze, SIPL ends with dehazing
mkdir -p "$out/informed"
for set in eval val; do
  for spec in rain+haze haze; do
    tag=$(echo "$spec" | tr ':+.' '__p')
    for b in sipl sipl_ablation; do ev "$b" "$spec" "$photos/$set" "informed/${set}_${b}_$tag" --informed; done
  done
done
$py scripts/summarize_results.py "$out"/informed/*.json > "$out/informed/SUMMARY.md"
# the backbone table for study designers (docs/BACKBONES.md): SIPL, ablation, classical, Real-ESRGAN, with PIQE
bash scripts/evaluate_backbones.sh "$photos"
$py scripts/summarize_results.py "$out"/*.json > "$out/SUMMARY.md"; cat "$out/SUMMARY.md"
