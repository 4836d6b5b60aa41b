"""What the loop hands its callers of a round, a choice and a refinement: frozen views, never ORM rows.

`RoundView` (with its `CandidateView`s in display order), `ChoiceView` and `RefineView` are plain
dataclasses the REST API and the Gradio handlers render; `round_view` builds a `RoundView` from a
recorded round while its database session is open.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from feedback.record.models import Round


@dataclass(frozen=True)
class CandidateView:
    id: str
    image_id: str
    position: int
    is_restored: bool
    seed: int | None
    strength: float | None
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundView:
    """What a client sees of a round; candidates in display (shuffled) order."""

    round_id: str
    session_id: str
    round_index: int
    parent_round_id: str | None
    status: str
    input_image_id: str
    start_image_id: str
    candidates: list[CandidateView]
    seconds: dict[str, float]
    params: dict[str, Any]


@dataclass(frozen=True)
class ChoiceView:
    choice_id: str
    pairs: int
    created: bool
    kind: str
    preferred: list[str]
    rejected: list[str]
    selector: str
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Choices of the round this one superseded when it was recorded (0: the round's first choice, or a retry).
    superseded: int = 0
    #: Whether it is the round's live choice (False: a retry returned a choice a later one has superseded).
    live: bool = True
    #: How many region marks (boxes where the person saw a problem) the choice carries.
    regions: int = 0


@dataclass(frozen=True)
class RefineView:
    round_id: str
    refinement_id: str
    image_id: str
    next_round: RoundView
    seconds: float


def round_view(rnd: Round) -> RoundView:
    src = rnd.source_image
    return RoundView(
        round_id=rnd.id, session_id=rnd.session_id, round_index=rnd.round_index,
        parent_round_id=rnd.parent_round_id, status=rnd.status,
        input_image_id=src.degraded_image_hash or src.image_hash, start_image_id=rnd.restored_image_hash or "",
        candidates=[CandidateView(c.id, c.image_hash, c.position, c.is_restored, c.seed, c.strength, dict(c.scores))
                    for c in sorted(rnd.candidates, key=lambda c: c.position)],
        seconds=dict(rnd.stage_seconds), params=dict(rnd.params))
