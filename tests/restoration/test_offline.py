"""Offline by default: importing the project (or the app) turns the model hubs off unless TTPO_ONLINE=1."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from restoration.offline import OFFLINE_VARIABLES, apply_offline_default

ROOT = Path(__file__).resolve().parents[2]
PROBE = "import huggingface_hub.constants as c; print(c.HF_HUB_OFFLINE)"


def _run(code: str, **extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_VARIABLES and k != "TTPO_ONLINE"}
    env.update(extra)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_the_hub_is_offline_after_importing_the_project_or_the_app():
    assert _run("import restoration; " + PROBE) == "True"
    assert _run("import app; " + PROBE) == "True"
    assert _run(PROBE) == "False"  # the probe itself: online without the project


def test_asked_online_it_is_online():
    assert _run("import restoration; " + PROBE, TTPO_ONLINE="1") == "False"


def test_variables_already_set_win():
    env = {"HF_HUB_OFFLINE": "0"}
    assert apply_offline_default(env) and env["HF_HUB_OFFLINE"] == "0" and env["TRANSFORMERS_OFFLINE"] == "1"
    env = {"TTPO_ONLINE": "1"}
    assert not apply_offline_default(env) and "HF_HUB_OFFLINE" not in env
