"""TTPO's diffusion side: priors (one denoiser interface), inversion, candidates (stage i), and
reward-guided denoising (stage iii). Selection (stage ii) lives in `restoration.selection`."""
from restoration.diffusion.candidates import (
    Candidate,
    CandidateConfig,
    CandidateMeta,
    generate_candidates,
    regenerate,
    sample_candidates,
)
from restoration.diffusion.guidance import GuidanceConfig, make_guided_model_fn
from restoration.diffusion.priors import DiffusionPrior, PriorNotFoundError, load_prior
from restoration.diffusion.refine import RefineConfig, reward_guided_denoise

__all__ = [
    "Candidate", "CandidateConfig", "CandidateMeta", "DiffusionPrior", "GuidanceConfig", "PriorNotFoundError",
    "RefineConfig", "generate_candidates", "load_prior", "make_guided_model_fn", "regenerate",
    "reward_guided_denoise", "sample_candidates",
]
