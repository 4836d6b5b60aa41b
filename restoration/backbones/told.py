"""A restorer told the degradation: the step around a blind SIPL backbone that uses what it is told.

The classical baselines are told the degradation spec and choose their method by it. A SIPL backbone told a spec
(`create_restorer(name, degradation=SPEC)`, `evaluate --informed`, `tpo --hint`, the app's hint) stays blind to
it, except that a spec with haze ends the restoration with dark channel prior dehazing of its output at
`TOLD_DEHAZE`: the haze a blind network leaves, removed where the person or the experiment says there is haze.
Omega and t0 were chosen on the training photos and adopted by a rule written before their validation figures
(docs/history/sipl_model_card_2026-12-06.md, *told the degradation, SIPL ends with dehazing*). Other specs change
nothing; the spec is recorded either way.
"""
from __future__ import annotations

from typing import Any

import torch

from restoration.backbones.base import Restorer, RestorerStep
from restoration.backbones.classical import estimate_haze
from restoration.degradations import parse_spec

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
