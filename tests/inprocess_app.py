"""The real app (`app.build_app`: REST routes, study routes, Gradio mount) in-process over a tiny engine.

For tests that drive many requests (security matrix, fuzzing) without a server process: backbone nlm
(weight-free), the tiny seeded pixel prior of conftest saved to a folder, 2 candidates and 2 steps.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from feedback.loop.engine import EngineSettings, RefineSettings, RoundSettings
from feedback.loop.ratelimit import RateLimit
from feedback.loop.service import FeedbackService
from feedback.record.db import open_database
from restoration.diffusion.pixel import save_pixel_prior
from restoration.diffusion.priors import DiffusionPrior

try:
    from conftest import TINY_PRIOR  # the module pytest loaded (tests/ is on sys.path under pytest)
except ImportError:
    from tests.conftest import TINY_PRIOR

ADMIN_TOKEN = "in-process-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def tiny_service(folder: Path, prior: DiffusionPrior, max_waiting: int = 4) -> FeedbackService:
    """A FeedbackService over SQLite in `folder`/data with the tiny prior (saved to `folder`/prior)."""
    prior_dir = save_pixel_prior(folder / "prior", prior.unet, TINY_PRIOR)
    engine = EngineSettings(backbone="nlm", prior=str(prior_dir), backbones=("nlm", "bicubic", "median"),
                            round=RoundSettings(num_candidates=2, steps=2), refine=RefineSettings(steps=2))
    data = folder / "data"
    return FeedbackService(open_database(data_dir=data), str(data), engine, admin_token=ADMIN_TOKEN,
                           max_waiting=max_waiting)


def tiny_app(service: FeedbackService, rate_limit: RateLimit = RateLimit()) -> FastAPI:
    """`app.build_app` over the service (imported here: building the Gradio Blocks takes seconds)."""
    from app import build_app

    return build_app(service, queue_size=4, rate_limit=rate_limit)
