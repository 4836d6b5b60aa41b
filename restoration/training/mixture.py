"""The blind training mixture: which degradation specs the SIPL trainers draw, and in what shares.

`random_spec(rng, shares)` draws one spec of the grammar in `restoration.degradations`; `MixtureShares` are the
shares of clean, noise, noise combinations, single degradations and composites (`--mixture` of the trainer).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from dataclasses import astuple, dataclass

from restoration.degradations import DegradationStep, format_spec


def _r(v: float, digits: int = 1) -> float:
    return round(v, digits)


_SAMPLERS: dict[str, Callable[[random.Random], tuple[float, ...]]] = {
    "noise": lambda rng: (_r(rng.uniform(5, 55)),),
    "blur": lambda rng: (_r(rng.uniform(0.5, 3.0), 2),),
    "motion": lambda rng: (float(rng.randint(5, 25)), float(rng.randint(-90, 90))),
    "sr": lambda rng: (float(rng.choice((2, 4))),),
    "jpeg": lambda rng: (float(rng.randint(10, 60)),),
    "rain": lambda rng: (_r(rng.uniform(0.002, 0.01), 4), float(rng.randint(8, 25)), float(rng.randint(-30, 30))),
    "snow": lambda rng: (_r(rng.uniform(0.001, 0.006), 4), _r(rng.uniform(0.5, 1.8), 2)),
    "haze": lambda rng: (_r(rng.uniform(0.6, 2.5), 2), _r(rng.uniform(0.7, 1.0), 2)),
    "lowlight": lambda rng: (_r(rng.uniform(0.2, 0.5), 2), _r(rng.uniform(1.2, 2.0), 2), _r(rng.uniform(5, 20))),
}

# Composites in the spirit of CDD-11 (low-light, haze, rain, snow) plus noise, in the order they form: scene
# effects (haze, then rain/snow in front of it), then the camera's low exposure, then sensor noise.
# Low light is not in the blind mixture: a blind model cannot tell a dark photo with sensor noise from a low-light
# exposure with noise. Measured: a first mixture with noiseless low light taught the model to brighten dark photos
# (-10 dB on clean dark crops); with low light always under noise, the level of noisy photos shifted instead
# (noise:25 on the validation photo Wood: 14.4 dB vs 26-30 dB; Wood was then misread as dark, it is bright and
# misty, see `restoration.training.sipl.fade_some`). The training loop darkens some clean crops
# (`restoration.training.sipl.darken_some`), so noise on a dark scene keeps it dark. Haze appears mostly with rain, on either
# side of it (distant rain seen through haze: `rain+haze`).
_COMPOSITES: tuple[tuple[str, ...], ...] = (
    ("haze", "rain"),
    ("haze", "rain"),
    ("rain", "haze"),
    ("haze", "rain", "noise"),
    ("rain", "noise"),
    ("haze", "snow"),
    ("blur", "jpeg"),
)
#: Degradations the blind training mixture never draws (they stay available in specs and evaluation).
NOT_IN_MIXTURE = frozenset({"lowlight"})

# Noise with blur in either order: blur then noise is a camera (optics, then the sensor); noise then blur is a
# noisy photo resized or smoothed afterwards, whose residual noise is low-frequency and correlated.
_NOISE_COMBOS: tuple[tuple[str, ...], ...] = (("blur", "noise"), ("noise", "blur"), ("noise", "jpeg"))

_SINGLES: tuple[str, ...] = ("blur", "blur", "motion", "sr", "jpeg", "jpeg", "rain", "haze")


#: The mixture's groups of degradation-name tuples, in `MixtureShares` order: clean (none), noise alone, noise with
#: blur or jpeg, one other degradation, a composite. `random_spec` draws a group by its share, then one tuple of it.
_MIXTURE_GROUPS: tuple[tuple[tuple[str, ...], ...], ...] = (
    (), (("noise",),), _NOISE_COMBOS, tuple((n,) for n in _SINGLES), _COMPOSITES)


@dataclass(frozen=True)
class MixtureShares:
    """The blind training mixture's shares, in order: clean (identity), noise alone, noise with blur or jpeg
    (`_NOISE_COMBOS`), one other degradation (`_SINGLES`), a composite (`_COMPOSITES`). They must sum to 1."""

    clean: float = 0.05
    noise: float = 0.40
    noise_combo: float = 0.15
    single: float = 0.25
    composite: float = 0.15

    def __post_init__(self) -> None:
        values = astuple(self)
        if any(not math.isfinite(v) or v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
            raise ValueError(f"mixture shares must be >= 0 and sum to 1 (clean, noise, noise_combo, single, "
                             f"composite); got {', '.join(f'{v:g}' for v in values)}")

    @classmethod
    def parse(cls, text: str) -> MixtureShares:
        """`"0.05,0.4,0.15,0.25,0.15"` -> shares (the order of the fields)."""
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 5:
            raise ValueError(f"mixture shares: expected 5 comma-separated numbers (clean, noise, noise_combo, "
                             f"single, composite), got {text!r}")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"mixture shares: not numbers: {text!r}") from None
        return cls(*values)

    def format(self) -> str:
        return ",".join(f"{v:g}" for v in astuple(self))


#: The mixture the shipped weights were trained on.
DEFAULT_MIXTURE = MixtureShares()


def random_step(name: str, rng: random.Random) -> DegradationStep:
    """One `name` step with arguments drawn from the training mixture's ranges (not for 'none')."""
    if name not in _SAMPLERS:
        raise ValueError(f"no training range for {name!r}; allowed: {', '.join(_SAMPLERS)}")
    return DegradationStep(name, _SAMPLERS[name](rng))


def random_spec(rng: random.Random, shares: MixtureShares = DEFAULT_MIXTURE) -> str:
    """A spec with concrete arguments from the blind all-in-one training mixture; by default 5% clean (identity),
    40% noise (sigma 5-55), 15% noise with blur or jpeg, 25% one other degradation, 15% a composite."""
    u = rng.random()
    edges = list(itertools.accumulate(astuple(shares)))
    group = _MIXTURE_GROUPS[next((k for k, edge in enumerate(edges) if u < edge), len(edges) - 1)]
    if not group:
        return "none"
    names = group[0] if len(group) == 1 else rng.choice(group)
    return format_spec([random_step(n, rng) for n in names])
