"""Compute: restoration backbones, the diffusion side of TTPO, selection, training. Imports no database or web code."""
from restoration.offline import apply_offline_default

apply_offline_default()
