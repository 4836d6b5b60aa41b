"""Geometric self-ensemble: restore flipped and rotated copies of the input and average them back.

The eight symmetries of the square (four quarter-turn rotations, each with and without a horizontal flip)
lose nothing and are undone exactly on the output. A trained network is not exactly equivariant to them,
so its errors on the copies differ, and averaging the copies cancels part of them. `n` copies cost `n`
restorations. Copies are added in a fixed order: `n = 2` is identity + flip, `n = 4` adds the quarter turn
and its flip, `n = 8` all of them. `SelfEnsemble` is the step around a restorer
(`create_restorer(name, ensemble=n)`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from restoration.backbones.base import Restorer, RestorerStep

#: Accepted numbers of copies.
ENSEMBLE_SIZES = (1, 2, 4, 8)
#: (rotation quarter-turns, horizontal flip) of each copy, in the order they are added.
_SYMMETRIES = ((0, False), (0, True), (1, False), (1, True), (2, False), (2, True), (3, False), (3, True))


def check_ensemble(n: int) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n not in ENSEMBLE_SIZES:
        raise ValueError(f"ensemble must be one of {', '.join(map(str, ENSEMBLE_SIZES))}, got {n!r}")
    return n


def _forward(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, turns, (-2, -1)) if turns else x


def _inverse(y: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    if turns:
        y = torch.rot90(y, -turns, (-2, -1))
    return y.flip(-1) if flip else y


def self_ensemble(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of `inverse(fn(forward(x)))` over the first `n` symmetries; `n = 1` is just `fn(x)`.

    (B, C, H, W) -> fn's output shape; `fn` must map an image to an image of the same orientation
    (any size factor), as restoration networks do.
    """
    check_ensemble(n)
    total = None
    for turns, flip in _SYMMETRIES[:n]:
        y = _inverse(fn(_forward(x, turns, flip)), turns, flip)
        total = y if total is None else total + y
    return total / n


class SelfEnsemble(RestorerStep):
    """A restorer whose output is the mean of `n` geometric copies restored by `inner` (each in [0, 1])."""

    def __init__(self, inner: Restorer, n: int):
        super().__init__(inner)
        self.n = check_ensemble(n)

    def apply(self, x: torch.Tensor, restore) -> torch.Tensor:
        return self_ensemble(restore, x, self.n)

    def facts(self) -> dict:
        return {"ensemble": self.n}
