"""Restoration backbones: SIPL (shipped weights), classical baselines, user checkpoints via spandrel."""

from restoration.backbones.base import Restorer
from restoration.backbones.hashing import weights_sha256
from restoration.backbones.registry import (
    DEFAULT_BACKBONE,
    available_backbones,
    clear_restorer_cache,
    create_restorer,
    get_restorer,
    is_sipl_backbone,
)

__all__ = [
    "DEFAULT_BACKBONE",
    "Restorer",
    "available_backbones",
    "clear_restorer_cache",
    "create_restorer",
    "get_restorer",
    "is_sipl_backbone",
    "weights_sha256",
]
