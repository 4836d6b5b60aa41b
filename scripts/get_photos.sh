#!/usr/bin/env bash
# Fetch the photos used by this project from Debian packages into DIR (default data/photos):
#   DIR/train  - nature photos of mate-backgrounds except Storm and Wood (training)
#   DIR/val    - Storm and Wood (held out: choosing settings such as the self-refinement rounds)
#   DIR/eval   - photographs from plasma-workspace-wallpapers (independent evaluation only; never train or tune on them)
set -euo pipefail
out="${1:-data/photos}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$out/train" "$out/val" "$out/eval"
(cd "$work" && apt-get download -q mate-backgrounds plasma-workspace-wallpapers >/dev/null 2>&1) || {
  echo "apt-get download failed: run 'apt-get update' first" >&2; exit 1; }
for deb in "$work"/*.deb; do dpkg -x "$deb" "$work/x"; done
nature="$work/x/usr/share/backgrounds/mate/nature"
for f in "$nature"/*.jpg; do
  case "$(basename "$f" .jpg)" in Storm|Wood) cp "$f" "$out/val/";; *) cp "$f" "$out/train/";; esac
done
for n in BytheWater ColdRipple ColorfulCups DarkestHour EveningGlow FallenLeaf Grey Kite OneStandsOut Path Shell summer_1am; do
  f="$(ls "$work/x/usr/share/wallpapers/$n/contents/images/"* | sort -V | tail -1)"
  cp "$f" "$out/eval/$n.${f##*.}"
done
echo "photos in $out: $(ls "$out/train" | wc -l) train, $(ls "$out/val" | wc -l) val, $(ls "$out/eval" | wc -l) eval"
