#!/usr/bin/env bash
# Create or update the project environment in .venv (Python 3.11+), with uv.
# Usage: scripts/setup_env.sh [extra]      e.g. scripts/setup_env.sh test
# uv resolves torch and torchvision from the package registry as a matching pair (it ignores a machine-wide
# pip find-links that may offer a CPU-only torch without a matching torchvision).
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --isolated --quiet uv || python3 -m pip install --isolated --quiet --user uv
  export PATH="$HOME/.local/bin:$PATH"
fi
[ -x .venv/bin/python ] || uv venv --quiet --python 3.11 .venv || uv venv --quiet .venv
spec="."
[ -n "$extra" ] && spec=".[$extra]"
uv pip install --quiet --python .venv/bin/python -e "$spec"
.venv/bin/python - <<'PY'
import torch, torchvision  # fails loudly on a mismatched pair (torchvision::nms)
print(f"environment ready: torch {torch.__version__}, torchvision {torchvision.__version__}")
PY
