"""Seeded synthetic degradations for all-in-one restoration, and the text spec that names them.

Every function takes and returns (B, 3, H, W) float tensors in [0, 1]. Randomness comes only from a
``torch.Generator`` passed in, never from the global RNG, so ``degrade(x, spec, seed)`` is reproducible from the
``DegradationRecord`` it returns.

Spec grammar (parsed the same way everywhere):
    spec      := '' | 'none' | step ('+' step)*      steps are applied left to right
    step      := name [':' number (',' number)*]     omitted trailing arguments take their defaults
Examples: ``noise:25``, ``blur:2.0+jpeg:30``, ``rain+haze``, ``sr:4``, ``motion:15``, ``lowlight``,
``motion:15,45`` (length 15 px at 45 degrees). ``describe_degradations()`` prints the full table.
"""

from __future__ import annotations

import difflib
import io
import math
import operator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from restoration.kernels import _gaussian_kernel1d, _separable, filter2d, motion_kernel

# ----------------------------------------------------------------------------------------------------------------
# The table of degradations
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArgSpec:
    """One argument of a degradation: its default and its valid (inclusive) range or discrete choices."""

    name: str
    default: float
    low: float
    high: float
    unit: str
    integer: bool = False
    choices: tuple[float, ...] | None = None

    def describe(self) -> str:
        if self.choices is not None:
            valid = "one of " + ", ".join(_fmt(c) for c in self.choices)
        else:
            valid = f"{_fmt(self.low)}..{_fmt(self.high)}" + (" (integer)" if self.integer else "")
        return f"{self.name} ({self.unit}) {valid}, default {_fmt(self.default)}"


@dataclass(frozen=True)
class DegradationInfo:
    """Facts about one degradation: its arguments (names, defaults, valid ranges) and a one-line doc."""

    name: str
    args: tuple[ArgSpec, ...]
    doc: str

    @property
    def arg_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.args)

    @property
    def defaults(self) -> tuple[float, ...]:
        return tuple(float(a.default) for a in self.args)

    @property
    def ranges(self) -> tuple[tuple[float, float], ...]:
        return tuple((a.low, a.high) for a in self.args)

    def usage(self) -> str:
        signature = self.name + "".join(f"[{':' if i == 0 else ','}{a}]" for i, a in enumerate(self.arg_names))
        lines = [f"  {signature:<34} {self.doc}"]
        lines += [f"      {a.describe()}" for a in self.args]
        return "\n".join(lines)


DEGRADATIONS: dict[str, DegradationInfo] = {
    info.name: info
    for info in (
        DegradationInfo(
            "noise",
            (ArgSpec("sigma", 25, 0, 255, "std in 0-255 units"),),
            "additive white Gaussian noise, independent per pixel and channel",
        ),
        DegradationInfo(
            "blur",
            (ArgSpec("sigma", 2.0, 0.1, 10, "px"),),
            "isotropic Gaussian blur, kernel 2*ceil(3*sigma)+1 wide, reflect padding",
        ),
        DegradationInfo(
            "motion",
            (ArgSpec("length", 15, 1, 64, "px"), ArgSpec("angle", 0, -180, 180, "degrees, 0 = horizontal")),
            "linear motion blur along a line of the given length and angle",
        ),
        DegradationInfo(
            "sr",
            (ArgSpec("scale", 4, 2, 4, "factor", integer=True, choices=(2, 4)),),
            "bicubic downsampling by scale, then bicubic upsampling back to the input size",
        ),
        DegradationInfo(
            "jpeg",
            (ArgSpec("quality", 30, 1, 100, "JPEG quality", integer=True),),
            "real JPEG encode/decode (libjpeg via Pillow, 4:2:0 chroma) at the given quality",
        ),
        DegradationInfo(
            "rain",
            (
                ArgSpec("density", 0.004, 0.0001, 0.05, "fraction of pixels seeding a streak"),
                ArgSpec("length", 15, 1, 64, "px"),
                ArgSpec("angle", 10, -60, 60, "degrees from vertical"),
            ),
            "bright rain streaks: sparse random points smeared along a line, alpha-blended",
        ),
        DegradationInfo(
            "snow",
            (
                ArgSpec("density", 0.003, 0.0001, 0.05, "fraction of pixels seeding a flake"),
                ArgSpec("size", 1.0, 0.3, 4, "flake radius (Gaussian sigma) in px"),
            ),
            "white snow flakes of random brightness, alpha-blended",
        ),
        DegradationInfo(
            "haze",
            (
                ArgSpec("beta", 1.5, 0.1, 5, "scattering coefficient per unit depth"),
                ArgSpec("airlight", 0.85, 0.5, 1, "atmospheric light A in [0,1]"),
            ),
            "atmospheric scattering I = J*t + A*(1-t), t = exp(-beta*depth), smooth random depth in [0,1]",
        ),
        DegradationInfo(
            "lowlight",
            (
                ArgSpec("scale", 0.3, 0.05, 1, "brightness factor"),
                ArgSpec("gamma", 1.5, 1, 4, "gamma exponent"),
                ArgSpec("sigma", 0, 0, 50, "noise std in 0-255 units"),
            ),
            "darkening I = scale * J**gamma, plus optional Gaussian noise",
        ),
    )
}


def _fmt(v: float) -> str:
    """Shortest text that parses back to the same float (integers without a decimal point)."""
    v = float(v)
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


def describe_degradations() -> str:
    """The full, human-readable table of allowed degradations (used in every parse error)."""
    head = (
        "allowed degradations (join steps with '+', applied left to right; arguments after ':' separated by ',';\n"
        "omitted trailing arguments take their defaults; '' or 'none' means no degradation):"
    )
    return "\n".join([head] + [info.usage() for info in DEGRADATIONS.values()])


# ----------------------------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DegradationStep:
    """One parsed step: a name from DEGRADATIONS and all its arguments (defaults filled in)."""

    name: str
    args: tuple[float, ...]


def _spec_error(spec: str, problem: str) -> ValueError:
    return ValueError(f"invalid degradation spec {spec!r}: {problem}.\n{describe_degradations()}")


def _parse_number(spec: str, name: str, arg: ArgSpec, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _spec_error(spec, f"{name}: argument {arg.name}={text!r} is not a number") from None
    if not math.isfinite(value):
        raise _spec_error(spec, f"{name}: argument {arg.name}={text!r} is not finite")
    if arg.integer and not value.is_integer():
        raise _spec_error(spec, f"{name}: argument {arg.name}={text!r} must be an integer")
    if arg.choices is not None and value not in arg.choices:
        allowed = ", ".join(_fmt(c) for c in arg.choices)
        raise _spec_error(spec, f"{name}: {arg.name}={text} is not one of {allowed}")
    if not arg.low <= value <= arg.high:
        raise _spec_error(spec, f"{name}: {arg.name}={text} is out of range [{_fmt(arg.low)}, {_fmt(arg.high)}]")
    return value


def parse_spec(spec: str) -> list[DegradationStep]:
    """Parse 'name[:a,b]+name...' into steps with defaults filled in; '' or 'none' -> []. Raises ValueError."""
    if not isinstance(spec, str):
        raise TypeError(f"degradation spec must be a str, got {type(spec).__name__}")
    text = spec.strip()
    if text.lower() in ("", "none"):
        return []
    steps = []
    for component in text.split("+"):
        component = component.strip()
        if not component:
            raise _spec_error(spec, "empty step (a '+' with nothing on one side)")
        name, sep, arg_text = component.partition(":")
        name = name.strip().lower()
        if name not in DEGRADATIONS:
            close = difflib.get_close_matches(name, DEGRADATIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _spec_error(spec, f"unknown degradation {name!r}{hint}; allowed: {', '.join(DEGRADATIONS)}")
        info = DEGRADATIONS[name]
        texts = [t.strip() for t in arg_text.split(",")] if sep else []
        if sep and any(t == "" for t in texts):
            raise _spec_error(spec, f"{name}: empty argument in {component!r}")
        if len(texts) > len(info.args):
            raise _spec_error(
                spec,
                f"{name} takes at most {len(info.args)} argument(s) ({', '.join(info.arg_names)}), got {len(texts)}",
            )
        values = [_parse_number(spec, name, a, t) for a, t in zip(info.args, texts)]
        values += [float(a.default) for a in info.args[len(values) :]]
        steps.append(DegradationStep(name, tuple(values)))
    return steps


def format_spec(steps: list[DegradationStep] | tuple[DegradationStep, ...]) -> str:
    """Canonical text of steps (every argument written out); parse_spec(format_spec(s)) == s; [] -> 'none'."""
    if not steps:
        return "none"
    return "+".join(f"{s.name}:{','.join(_fmt(a) for a in s.args)}" for s in steps)


# ----------------------------------------------------------------------------------------------------------------
# The degradations (pure functions)
# ----------------------------------------------------------------------------------------------------------------


def _randn(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    # Drawn on the generator's device (CPU) and moved, so results do not depend on where x lives.
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=like.device, dtype=like.dtype)


def _rand(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float32).to(device=like.device, dtype=like.dtype)


def add_gaussian_noise(x: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """(B,C,H,W) [0,1] -> same, plus N(0, (sigma/255)^2) per pixel; sigma in 0-255 units; clamped to [0,1]."""
    return (x + _randn(tuple(x.shape), generator, x) * (sigma / 255.0)).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B,C,H,W) [0,1] -> same shape, Gaussian blur with std `sigma` px, reflect padding."""
    return _separable(x, _gaussian_kernel1d(sigma)).clamp(0, 1)


def motion_blur(x: torch.Tensor, length: float, angle: float) -> torch.Tensor:
    """(B,C,H,W) [0,1] -> same shape, linear motion blur `length` px at `angle` degrees, reflect padding."""
    return filter2d(x, motion_kernel(length, angle)).clamp(0, 1)


def bicubic_downsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    """(B,C,H,W) [0,1] -> (B,C,H//scale,W//scale) [0,1] (at least 1x1), antialiased bicubic."""
    size = (max(1, x.shape[-2] // scale), max(1, x.shape[-1] // scale))
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


def bicubic_upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B,C,h,w) [0,1] -> (B,C,*size) [0,1], bicubic interpolation."""
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0, 1)


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """(B,3,H,W) [0,1] -> same shape, real JPEG encode/decode at `quality` in 1..100 (output on 1/255 steps)."""
    q = int(quality)
    if not 1 <= q <= 100:
        raise ValueError(f"jpeg quality must be an integer in 1..100, got {quality}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"jpeg expects a (B, 3, H, W) tensor, got {tuple(x.shape)}")
    images = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = []
    for image in images:  # one encode/decode per image; libjpeg is deterministic
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=q)
        buffer.seek(0)
        with Image.open(buffer) as im:
            decoded.append(torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1))
    return torch.stack(decoded).to(device=x.device, dtype=x.dtype) / 255.0


def _streak_layer(points: torch.Tensor, length: float, angle: float) -> torch.Tensor:
    # Smearing a point with a unit-sum line kernel spreads it over ~length px; multiply back so a streak's
    # core stays as bright as its seed.
    return (filter2d(points, motion_kernel(length, angle)) * length).clamp(0, 1)


def add_rain(x: torch.Tensor, density: float, length: float, angle: float, generator: torch.Generator) -> torch.Tensor:
    """(B,C,H,W) [0,1] -> same, bright streaks `length` px long, `angle` degrees from vertical; density = fraction
    of pixels seeding a streak; each image gets its own streaks."""
    b, _, h, w = x.shape
    seeds = (_rand((b, 1, h, w), generator, x) < density).to(x.dtype)
    strength = 0.5 + 0.5 * _rand((b, 1, h, w), generator, x)
    streaks = _streak_layer(seeds * strength, length, 90.0 + angle)
    alpha = 0.8 * _separable(streaks, _gaussian_kernel1d(0.5)).clamp(0, 1)
    return (x * (1 - alpha) + 0.95 * alpha).clamp(0, 1)


def add_snow(x: torch.Tensor, density: float, size: float, generator: torch.Generator) -> torch.Tensor:
    """(B,C,H,W) [0,1] -> same, white flakes of Gaussian radius `size` px; density = fraction of pixels seeding a
    flake; each image gets its own flakes."""
    b, _, h, w = x.shape
    seeds = (_rand((b, 1, h, w), generator, x) < density).to(x.dtype)
    strength = 0.6 + 0.4 * _rand((b, 1, h, w), generator, x)
    k1 = _gaussian_kernel1d(size)
    peak = float(k1.max()) ** 2  # rescale so a flake's centre has the seed's strength
    flakes = (_separable(seeds * strength, k1) / peak).clamp(0, 1)
    return (x * (1 - flakes) + flakes).clamp(0, 1)


def synthetic_depth(b: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    """(b,1,h,w) smooth random depth in [0,1]: a vertical ramp (far at the top) mixed with a 4x4-cell random field."""
    coarse = torch.rand((b, 1, 4, 4), generator=generator)
    field_ = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    lo = field_.amin(dim=(2, 3), keepdim=True)
    hi = field_.amax(dim=(2, 3), keepdim=True)
    field_ = (field_ - lo) / (hi - lo).clamp_min(1e-6)
    ramp = torch.linspace(1.0, 0.0, h).view(1, 1, h, 1).expand(b, 1, h, w)
    return (0.5 * ramp + 0.5 * field_).clamp(0, 1)


def add_haze(
    x: torch.Tensor, beta: float, airlight: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,C,H,W) [0,1] -> (hazy image in [0,1], transmission t (B,1,H,W) in (0,1]); I = J*t + A*(1-t),
    t = exp(-beta*depth) with a smooth random depth map in [0,1] per image."""
    b, _, h, w = x.shape
    depth = synthetic_depth(b, h, w, generator).to(device=x.device, dtype=x.dtype)
    t = torch.exp(-beta * depth)
    return (x * t + airlight * (1 - t)).clamp(0, 1), t


def low_light(
    x: torch.Tensor, scale: float, gamma: float, sigma: float = 0.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B,C,H,W) [0,1] -> same, darkened I = scale * J**gamma, plus N(0,(sigma/255)^2) noise (0-255 units)."""
    y = scale * x.clamp(0, 1) ** gamma
    if sigma > 0:
        if generator is None:
            raise ValueError("low_light with sigma > 0 needs a torch.Generator for its noise")
        y = add_gaussian_noise(y, sigma, generator)
    return y.clamp(0, 1)


# ----------------------------------------------------------------------------------------------------------------
# Applying a spec
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DegradationRecord:
    """What degrade() did: canonical spec, seed, and per step its name and every resolved parameter."""

    spec: str
    seed: int
    steps: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"spec": self.spec, "seed": self.seed, "steps": [dict(s) for s in self.steps]}

    @classmethod
    def from_dict(cls, data: dict) -> DegradationRecord:
        return cls(spec=str(data["spec"]), seed=int(data["seed"]), steps=[dict(s) for s in data.get("steps", [])])


def _apply_step(x: torch.Tensor, step: DegradationStep, g: torch.Generator) -> tuple[torch.Tensor, dict]:
    params = dict(zip(DEGRADATIONS[step.name].arg_names, step.args))
    for arg in DEGRADATIONS[step.name].args:
        if arg.integer:
            params[arg.name] = int(params[arg.name])
    resolved: dict = {"name": step.name, **params}
    if step.name == "noise":
        y = add_gaussian_noise(x, params["sigma"], g)
    elif step.name == "blur":
        y = gaussian_blur(x, params["sigma"])
    elif step.name == "motion":
        y = motion_blur(x, params["length"], params["angle"])
    elif step.name == "sr":
        small = bicubic_downsample(x, params["scale"])
        resolved["low_res_size"] = [int(small.shape[-2]), int(small.shape[-1])]
        y = bicubic_upsample(small, (x.shape[-2], x.shape[-1]))
    elif step.name == "jpeg":
        y = jpeg(x, params["quality"])
    elif step.name == "rain":
        y = add_rain(x, params["density"], params["length"], params["angle"], g)
    elif step.name == "snow":
        y = add_snow(x, params["density"], params["size"], g)
    elif step.name == "haze":
        y, t = add_haze(x, params["beta"], params["airlight"], g)
        resolved["mean_transmission"] = round(float(t.mean()), 6)
    elif step.name == "lowlight":
        y = low_light(x, params["scale"], params["gamma"], params["sigma"], g)
    else:  # the table and this dispatch must list the same names
        raise ValueError(f"no implementation for degradation {step.name!r}")
    return y, resolved


def degrade(x: torch.Tensor, spec: str, seed: int) -> tuple[torch.Tensor, DegradationRecord]:
    """(B,3,H,W) [0,1] -> same shape [0,1] degraded by `spec` (steps left to right), and the record that
    reproduces it. Deterministic in (spec, seed); uses a local generator, never the global RNG."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"degrade expects a (B, 3, H, W) tensor, got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"degrade expects a float tensor in [0, 1], got dtype {x.dtype}")
    if isinstance(seed, bool) or not hasattr(seed, "__index__"):
        raise TypeError(f"seed must be an int, got {seed!r}")
    seed = operator.index(seed)
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    steps = parse_spec(spec)
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    y = x.clamp(0, 1)
    resolved = []
    for step in steps:
        y, params = _apply_step(y, step, g)
        y = y.clamp(0, 1)
        resolved.append(params)
    return y, DegradationRecord(spec=format_spec(steps), seed=seed, steps=resolved)
