"""Who may see what: queries that decide whether a session owns an image, and a session's round history.

Like `feedback.record.store`, these functions take a Session and never open, commit or close one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import exists, func, or_, select
from sqlalchemy.orm import Session

from feedback.record.errors import NotFound
from feedback.record.models import Candidate, Choice, Refinement, Round, SessionRow, SourceImage


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
    the live choice (and how many earlier ones it superseded), refinement, the input and start images."""
    rounds = s.scalars(select(Round).where(Round.session_id == session_id)
                       .order_by(Round.created_at, Round.round_index)).all()
    rows = []
    for rnd in rounds:
        choice = s.scalars(select(Choice).where(Choice.round_id == rnd.id, Choice.superseded_at.is_(None))
                           .order_by(Choice.created_at.desc(), Choice.id.desc()).limit(1)).first()
        refinement = s.scalars(select(Refinement).where(Refinement.round_id == rnd.id)
                               .order_by(Refinement.created_at.desc()).limit(1)).first()
        src = rnd.source_image
        rows.append({
            "round_id": rnd.id, "round_index": rnd.round_index, "parent_round_id": rnd.parent_round_id,
            "created_at": _iso(rnd.created_at), "input_image": src.degraded_image_hash or src.image_hash,
            "start_image": rnd.restored_image_hash,
            "superseded": sum(c.superseded_at is not None for c in rnd.choices),
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


def annotator_sessions(s: Session, session_id: str) -> list[dict[str, Any]]:
    """The sessions of this session's annotator (the same pseudonym), newest first: id, start time, rounds, the time
    of the latest round, whether it is this session. Metadata only: each session's images need its own token."""
    annotator_id = s.scalar(select(SessionRow.annotator_id).where(SessionRow.id == session_id))
    if annotator_id is None:
        raise NotFound(f"no session with id {session_id[:80]!r}")
    rows = s.execute(
        select(SessionRow.id, SessionRow.created_at, func.count(Round.id), func.max(Round.created_at))
        .outerjoin(Round, Round.session_id == SessionRow.id)
        .where(SessionRow.annotator_id == annotator_id, SessionRow.study_id.is_(None))
        .group_by(SessionRow.id, SessionRow.created_at)
        .order_by(SessionRow.created_at.desc(), SessionRow.id)).all()
    return [{"session_id": sid, "created_at": _iso(created), "rounds": n, "last_round_at": last and _iso(last),
             "current": sid == session_id} for sid, created, n, last in rows]


def _iso(moment: datetime) -> str:
    # SQLite returns naive datetimes (stored as UTC); PostgreSQL aware ones.
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()
