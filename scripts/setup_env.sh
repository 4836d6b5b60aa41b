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
# Bytecode for the installed packages, once per change of them: where PYTHONDONTWRITEBYTECODE is set (CI images),
# Python would otherwise compile gradio, diffusers and torch from source in every process (measured on this
# 2-core machine: importing gradio, diffusers and pyiqa 51 s -> 21 s, beside a training run; compiling takes 96 s).
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ ! -f .venv/.bytecode ] || [ "$site" -nt .venv/.bytecode ]; then
  .venv/bin/python -m compileall -q -j 0 "$site" >/dev/null 2>&1 || true  # a few packages ship unparsable test files
  touch .venv/.bytecode
fi
.venv/bin/python - <<'PY'
import torch, torchvision  # fails loudly on a mismatched pair (torchvision::nms)
print(f"environment ready: torch {torch.__version__}, torchvision {torchvision.__version__}")
PY
