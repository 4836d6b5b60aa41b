"""Offline by default: nothing in ttpo-lab reaches a model hub unless asked.

Importing `restoration` or `feedback` sets the Hugging Face hub, transformers and datasets offline switches and
turns Gradio's analytics off, unless TTPO_ONLINE=1 (`ttpo --online ...`). Variables the environment already sets
win. Set before huggingface_hub is imported, which reads them once.
"""
from __future__ import annotations

import os

OFFLINE_VARIABLES = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                     "GRADIO_ANALYTICS_ENABLED": "False"}


def apply_offline_default(environ: dict | None = None) -> bool:
    """Set OFFLINE_VARIABLES (where unset) unless TTPO_ONLINE=1; returns whether the process is offline."""
    env = os.environ if environ is None else environ
    if env.get("TTPO_ONLINE", "").strip() == "1":
        return False
    for key, value in OFFLINE_VARIABLES.items():
        env.setdefault(key, value)
    return True
