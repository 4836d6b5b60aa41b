"""The votes the analysis reads and its settings: `Vote` rows loaded from the record, and `AnalysisConfig`.

`load_votes` turns the human preference pairs of the database into `Vote`s (one per pair, each image named
by its condition, see `CONDITION_KEYS`), `load_regions` reads the region marks of human votes, and
`AnalysisConfig` holds the bootstrap settings and the thresholds that flag an inattentive participant.
`feedback.analysis.report` computes the report from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from feedback.record.errors import InputError
from feedback.record.models import Annotator, Candidate, Choice, Round, SessionRow
from feedback.record.store import export_pairs

CONDITION_KEYS = ("method", "arm+method")
BOOTSTRAP_UNITS = ("participant", "vote")


@dataclass(frozen=True)
class Vote:
    """One human preference pair: `chosen` beat `rejected` (label 1.0) or they tied (label 0.5).

    Positions are the candidates' display order in the round (0 = shown first / on the left).
    """

    annotator: str
    chosen_image: str
    rejected_image: str
    chosen_condition: str
    rejected_condition: str
    chosen_position: int
    rejected_position: int
    label: float
    chosen_scores: Mapping[str, float | None] = field(default_factory=dict)
    rejected_scores: Mapping[str, float | None] = field(default_factory=dict)
    study_id: str | None = None
    round_id: str = ""
    choice_id: str = ""
    gallery_size: int = 0  # K of a gallery study item (the pair is one of its vote's pairs); 0 otherwise

    @property
    def is_tie(self) -> bool:
        return self.label != 1.0


@dataclass(frozen=True)
class AnalysisConfig:
    """Bootstrap settings and the thresholds that flag a participant as inattentive."""

    n_resamples: int = 1000
    seed: int = 0
    level: float = 0.95
    bootstrap_unit: str = "participant"  # resample whole participants (their votes are not independent)
    min_repeats: int = 4  # repeated pairs needed before consistency can flag
    chance_consistency: float = 0.6  # test-retest agreement at or below this is "at chance" (chance = 0.5)
    min_position_votes: int = 10  # decisive votes needed before position bias can flag
    extreme_position_bias: float = 0.85  # first-shown share >= this (or <= 1 - this) is extreme (unbiased 0.5)
    exclude_flagged: bool = False  # leave flagged participants out of conditions, alpha and metric agreement

    def __post_init__(self) -> None:
        if self.bootstrap_unit not in BOOTSTRAP_UNITS:
            raise InputError(f"bootstrap_unit must be one of {', '.join(BOOTSTRAP_UNITS)}, "
                             f"got {self.bootstrap_unit!r}")
        if self.n_resamples < 1:
            raise InputError(f"n_resamples must be >= 1, got {self.n_resamples}")
        if not 0 < self.level < 1:
            raise InputError(f"level must be in (0, 1), got {self.level}")


# -------------------------------------------------------------------------------------------- loading
def load_votes(s: Session, *, condition_by: str = "method", study_id: str | None = None) -> list[Vote]:
    """Human preference pairs of the database as votes (metric selections are not votes of people)."""
    if condition_by not in CONDITION_KEYS:
        raise InputError(f"condition_by must be one of {', '.join(CONDITION_KEYS)}, got {condition_by!r}")
    sessions = {sid: (pseudonym, study, condition) for sid, pseudonym, study, condition in s.execute(
        select(SessionRow.id, Annotator.pseudonym, SessionRow.study_id, SessionRow.condition)
        .join(Annotator, SessionRow.annotator_id == Annotator.id))}
    votes = []
    for row in export_pairs(s):
        if row["selector"] != "human":
            continue
        pseudonym, session_study, session_condition = sessions[row["session_id"]]
        study = row["study_id"] or session_study
        if study_id is not None and study != study_id:
            continue
        arm = row["condition"] or session_condition or row["backbone_name"]
        prefix = "" if condition_by == "method" else f"{arm}/"
        votes.append(Vote(
            annotator=pseudonym, chosen_image=row["chosen_image"], rejected_image=row["rejected_image"],
            chosen_condition=prefix + row["chosen_method"], rejected_condition=prefix + row["rejected_method"],
            chosen_position=row["chosen_position"], rejected_position=row["rejected_position"],
            label=float(row["label"]), chosen_scores=row["chosen_scores"], rejected_scores=row["rejected_scores"],
            study_id=study, round_id=row["round_id"], choice_id=row["choice_id"],
            gallery_size=_gallery_size(row["params"])))
    return votes


def _gallery_size(params: Any) -> int:
    shown = params.get("study_item", {}).get("shown") if isinstance(params, dict) else None
    return len(shown) if isinstance(shown, list) and len(shown) > 2 else 0


def load_regions(s: Session, study_id: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(condition, box) of every region mark on a human vote (of one study): the condition is the method of the
    candidate the box was drawn on (`feedback.studies.regions`)."""
    query = (select(Choice.round_id, Choice.regions).join(Round, Choice.round_id == Round.id)
             .where(Choice.regions.is_not(None), Choice.selector == "human", Choice.superseded_at.is_(None)))
    if study_id is not None:
        query = query.where(Round.study_id == study_id)
    marks = []
    for round_id, boxes in s.execute(query).all():
        methods = dict(s.execute(select(Candidate.position, Candidate.method)
                                 .where(Candidate.round_id == round_id)).all())
        marks += [(methods.get(box["position"], "?"), box) for box in boxes or []]
    return marks
