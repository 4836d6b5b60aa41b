#!/usr/bin/env bash
# Fetch into .whl/ (git-ignored) the wheels that a lent GPU machine lacks for this project's commands: diffusers
# (the prior and the benchmark's naive loop), pyiqa (the candidates' selector), SQLAlchemy (the feedback service that
# `scripts/bench_sessions.py` drives; a CPython 3.12 build) and what they import at start-up there. That machine has
# Python 3.12 with torch, torchvision, transformers, huggingface-hub, safetensors, scikit-image, scipy, opencv and
# pillow, but no registry access (/work/.library/device/README.md). Run here, once, before
# `scripts/device_session.sh` travels there.
# Versions are this project's `.venv` ones; huggingface-hub >= 1.32 is what diffusers 0.42 needs (1.33 there).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.whl
mkdir -p "$dest"
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform any)
for spec in diffusers==0.42.1 pyiqa==0.1.16 addict==2.4.0 future==1.0.0 yapf==0.43.0 importlib-metadata==10.2.0 \
            sqlalchemy==2.1.9; do
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$dest" "$spec" 2> >(grep -v "is ignored: it is neither" >&2)
done
ls -1 "$dest"
du -sh "$dest"
