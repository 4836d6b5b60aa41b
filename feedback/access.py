"""Who may see what: queries that decide whether a session owns an image, and a session's round history.

Like `feedback.store`, these functions take a Session and never open, commit or close one.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import exists, or_, select
from sqlalchemy.orm import Session

from feedback.models import Candidate, Choice, Refinement, Round, SourceImage


def session_owns_image(s: Session, session_id: str, image_hash: str) -> bool:
    """True when the image is a source, degraded, ground-truth, start, candidate or refined image of the session."""
    queries = (
        select(SourceImage.id).where(
            SourceImage.session_id == session_id,
            or_(SourceImage.image_hash == image_hash, SourceImage.gt_image_hash == image_hash,
                SourceImage.degraded_image_hash == image_hash)),
        select(Round.id).where(Round.session_id == session_id, Round.restored_image_hash == image_hash),
        select(Candidate.id).join(Round, Candidate.round_id == Round.id)
        .where(Round.session_id == session_id, Candidate.image_hash == image_hash),
        select(Refinement.id).join(Round, Refinement.round_id == Round.id)
        .where(Round.session_id == session_id, Refinement.result_image_hash == image_hash),
    )
    return any(s.scalar(select(exists(q))) for q in queries)


def session_history(s: Session, session_id: str) -> list[dict[str, Any]]:
    """One row per round of the session, oldest first: index, ids, status, backbone, prior name, candidates,
    choice, refinement."""
    rounds = s.scalars(select(Round).where(Round.session_id == session_id)
                       .order_by(Round.created_at, Round.round_index)).all()
    rows = []
    for rnd in rounds:
        choice = s.scalars(select(Choice).where(Choice.round_id == rnd.id)
                           .order_by(Choice.created_at.desc(), Choice.id.desc()).limit(1)).first()
        refinement = s.scalars(select(Refinement).where(Refinement.round_id == rnd.id)
                               .order_by(Refinement.created_at.desc()).limit(1)).first()
        rows.append({
            "round_id": rnd.id, "round_index": rnd.round_index, "parent_round_id": rnd.parent_round_id,
            "status": rnd.status, "backbone": rnd.backbone_name, "prior": rnd.params.get("prior"),
            "candidates": len(rnd.candidates),
            "choice": None if choice is None else choice.kind,
            "selector": None if choice is None else choice.selector,
            "pairs": 0 if choice is None else len(choice.pairs),
            "refined_image": None if refinement is None else refinement.result_image_hash,
            "next_round_id": None if refinement is None else refinement.next_round_id,
            "seconds": dict(rnd.stage_seconds),
        })
    return rows
