"""The steps around a restorer that keep its interface (`RestorerStep`): geometric self-ensemble and a restorer
told the degradation.

Geometric self-ensemble: restore flipped and rotated copies of the input and average them back.

The eight symmetries of the square (four quarter-turn rotations, each with and without a horizontal flip)
lose nothing and are undone exactly on the output. A trained network is not exactly equivariant to them,
so its errors on the copies differ, and averaging the copies cancels part of them. `n` copies cost `n`
restorations. Copies are added in a fixed order: `n = 2` is identity + flip, `n = 4` adds the quarter turn
and its flip, `n = 8` all of them. `SelfEnsemble` is the step around a restorer
(`create_restorer(name, ensemble=n)`).

A restorer told the degradation: the step around a blind SIPL backbone that uses what it is told.

The classical baselines are told the degradation spec and choose their method by it. A SIPL backbone told a spec
(`create_restorer(name, degradation=SPEC)`, `evaluate --informed`, `tpo --hint`, the app's hint) stays blind to
it, except that a spec with haze ends the restoration with dark channel prior dehazing of its output at
`TOLD_DEHAZE`: the haze a blind network leaves, removed where the person or the experiment says there is haze.
Omega and t0 were chosen on the training photos and adopted by a rule written before their validation figures
(docs/history/sipl_model_card_2026-12-06.md, *told the degradation, SIPL ends with dehazing*). Other specs change
nothing; the spec is recorded either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from restoration.backbones.base import Restorer, RestorerStep
from restoration.backbones.classical import estimate_haze
from restoration.degradations import parse_spec

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


# ---- told the degradation ------------------------------------------------------------------------------------

#: (omega, t0) of the dark channel prior dehazing that ends a restoration told haze.
TOLD_DEHAZE = (0.75, 0.4)


class ToldDegradation(RestorerStep):
    """`inner` told the degradation `spec` (a ValueError when it does not parse); told haze, its output is dehazed."""

    def __init__(self, inner: Restorer, spec: str):
        has_haze = "haze" in {step.name for step in parse_spec(spec)}
        super().__init__(inner)
        self.told = spec
        self.dehaze = TOLD_DEHAZE if has_haze else None

    def apply(self, x: torch.Tensor, restore) -> torch.Tensor:
        y = restore(x)
        if self.dehaze is None:
            return y
        omega, t0 = self.dehaze
        with torch.no_grad():
            return estimate_haze(y).dehaze(y, omega, t0)

    def facts(self) -> dict[str, Any]:
        return {"told": self.told,
                "told_dehaze": None if self.dehaze is None else dict(zip(("omega", "t0"), self.dehaze))}
