"""TTPO conditions of studies on the real service (SQLite, tiny seeded priors, nlm): prior and selector variants
of 'ttpo-auto:', checked at creation and recorded with each stimulus."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from feedback.db import open_database
from feedback.engine import EngineSettings, RefineSettings, RoundSettings
from feedback.errors import InputError
from feedback.models import Study
from feedback.service import FeedbackService
from feedback.study_service import StudyService
from restoration.diffusion.priors import build_pixel_unet, save_pixel_prior, weights_sha256

try:
    from conftest import TINY_PRIOR
    from tests.app_server import png_bytes
except ImportError:  # tests/ is not importable as a package: pytest put tests/ itself on sys.path
    from app_server import png_bytes
    from conftest import TINY_PRIOR


@pytest.fixture(scope="module")
def priors(tmp_path_factory) -> dict[str, str]:
    """Two tiny priors with different seeded weights: offered as 'default' and 'other'."""
    folder = tmp_path_factory.mktemp("priors")
    dirs = {}
    for seed, name in enumerate(("default", "other")):
        torch.manual_seed(seed)
        dirs[name] = str(save_pixel_prior(folder / name, build_pixel_unet(TINY_PRIOR), TINY_PRIOR))
    return dirs


@pytest.fixture(scope="module")
def studies(tmp_path_factory, priors) -> Iterator[StudyService]:
    data = tmp_path_factory.mktemp("data")
    engine = EngineSettings(backbone="nlm", prior=priors["default"], extra_priors=(("other", priors["other"]),),
                            backbones=("nlm", "bicubic", "median"), selector=("piqe",),
                            round=RoundSettings(num_candidates=2, steps=2), refine=RefineSettings(steps=2))
    db = open_database(data_dir=data)
    service = StudyService(FeedbackService(db, str(data), engine))
    yield service
    service.close(timeout_s=30)
    db.engine.dispose()


def _images(folder, n: int = 2, size: int = 32) -> list[str]:
    paths = []
    for i in range(n):
        paths.append(folder / f"in{i}.png")
        paths[-1].write_bytes(png_bytes(size, seed=30 + i))
    return [str(p) for p in paths]


def _definition(folder, **extra) -> dict:
    return {"name": "ttpo", "images": _images(folder), "degradations": ["noise:20"], "conditions": ["nlm", "bicubic"],
            "attention_checks": 0, "repeat_share": 0, "consent_text": "ok", "consent_version": "v1", "seed": 3,
            **extra}


def _stimuli(studies: StudyService, sid: str) -> list[dict]:
    with studies.fb.db.sessions.begin() as s:
        return s.get(Study, sid).stimuli


@pytest.mark.parametrize("conditions, words", [
    (["nlm", "ttpo-auto:nlm;prior=nope"], ["unknown prior 'nope'", "available: default, other"]),
    (["nlm", "ttpo-auto:nlm;selector=piqe+nope"], ["'ttpo-auto:nlm;selector=piqe+nope'", "nope"]),
    (["nlm", "ttpo-auto:sipl9"], ["unknown backbone 'sipl9'", "available: nlm, bicubic, median"]),
    (["ttpo-auto:nlm", "ttpo-auto:nlm;prior=default;selector=piqe"], ["same system"]),
    (["ttpo-auto:nlm;selector=entropy+piqe", "ttpo-auto:nlm;selector=piqe+entropy"], ["same system"]),
])
def test_bad_ttpo_conditions_are_refused_at_creation(studies, tmp_path, conditions, words) -> None:
    with pytest.raises(InputError) as err:
        studies.create_study(_definition(tmp_path, conditions=conditions))
    for word in words:
        assert word in str(err.value)


def test_prior_and_selector_variants_are_prepared_and_recorded(studies, tmp_path, priors) -> None:
    conditions = ["nlm", "ttpo-auto:nlm", "ttpo-auto:nlm;prior=other", "ttpo-auto:nlm;selector=entropy+piqe"]
    sid = studies.create_study(_definition(tmp_path, conditions=conditions))["study_id"]
    assert studies.wait_until_ready(sid, timeout_s=300)["status"] == "active"
    for stim in _stimuli(studies, sid):
        facts, outputs = stim["facts"], stim["outputs"]
        assert "prior" not in facts["nlm"]
        default, other = facts["ttpo-auto:nlm"]["prior"], facts["ttpo-auto:nlm;prior=other"]["prior"]
        assert default["name"] == "default" and default["weights_hash"] == weights_sha256(priors["default"])
        assert other["name"] == "other" and other["weights_hash"] == weights_sha256(priors["other"])
        assert facts["ttpo-auto:nlm"]["selector"] == "piqe" and facts["ttpo-auto:nlm"]["metrics"] == ["piqe"]
        assert facts["ttpo-auto:nlm;selector=entropy+piqe"]["metrics"] == ["entropy", "piqe"]
        assert facts["ttpo-auto:nlm;selector=entropy+piqe"]["prior"] == default
        assert outputs["ttpo-auto:nlm"] != outputs["ttpo-auto:nlm;prior=other"]  # another prior, another image
        assert facts["ttpo-auto:nlm"]["candidates"] == {**RoundSettings(num_candidates=2, steps=2).to_dict(),
                                                        "seed": stim["seed"]}
