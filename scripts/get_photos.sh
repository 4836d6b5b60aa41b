#!/usr/bin/env bash
# Fetch the photos used by this project from Debian packages into DIR (default data/photos):
#   DIR/train  - nature photos of mate-backgrounds except Storm and Wood (training)
#   DIR/val    - Storm and Wood, and 13 photographs of lomiri-wallpapers-16.04/-20.04 (held out from training:
#                choosing settings such as the self-refinement rounds and which checkpoint ships)
#   DIR/eval   - photographs from plasma-workspace-wallpapers (independent evaluation only; never train or tune on them)
set -euo pipefail
out="${1:-data/photos}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$out/train" "$out/val" "$out/eval"
(cd "$work" && apt-get download -q mate-backgrounds plasma-workspace-wallpapers lomiri-wallpapers-16.04 \
  lomiri-wallpapers-20.04 >/dev/null 2>&1) || {
  echo "apt-get download failed: run 'apt-get update' first" >&2; exit 1; }
for deb in "$work"/*.deb; do dpkg -x "$deb" "$work/x"; done
nature="$work/x/usr/share/backgrounds/mate/nature"
for f in "$nature"/*.jpg; do
  case "$(basename "$f" .jpg)" in Storm|Wood) cp "$f" "$out/val/";; *) cp "$f" "$out/train/";; esac
done
# the photographs only (the packages' abstract renders and textures are left out)
for n in Bridge_by_Sander_Klootwijk Dragonfly_by_Bolly Picture_0B_by_freespace Picture_1A_by_freespace \
         Wine_by_Jakkub_Mede aitzgorri_by_Aitzol_Berasategi free_by_Peter_Nerlich friends_by_Aitzol_Berasategi \
         life_by_Aitzol_Berasategi picosdeeuropa_by_Aitzol_Berasategi seeding_by_Clements_Engelhardt \
         sunset_by_Aitzol_Berasategi Kleiber_by_Lukas_Baubkus; do
  cp "$work/x/usr/share/backgrounds/$n.jpg" "$out/val/"
done
for n in BytheWater ColdRipple ColorfulCups DarkestHour EveningGlow FallenLeaf Grey Kite OneStandsOut Path Shell summer_1am; do
  f="$(ls "$work/x/usr/share/wallpapers/$n/contents/images/"* | sort -V | tail -1)"
  cp "$f" "$out/eval/$n.${f##*.}"
done
echo "photos in $out: $(ls "$out/train" | wc -l) train, $(ls "$out/val" | wc -l) val, $(ls "$out/eval" | wc -l) eval"
