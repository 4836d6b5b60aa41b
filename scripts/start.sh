#!/usr/bin/env bash
# Quick start: create/update .venv, then start the app (prints its address). Extra args go to app.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python app.py "$@"
