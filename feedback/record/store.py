"""Recording the preference loop: functions that take a Session and never open, commit or close one.

The caller owns the transaction, one per user event:

    with sessions.begin() as s:
        rnd = create_round(s, RoundRecord(session_id=..., source_image_id=..., ...))

Invalid input raises `InputError` (message says what is allowed), unknown ids raise `NotFound`.
Choices (a vote, its preference pairs, supersession) are recorded by `feedback.record.choices`, in the same way.
Image ids are the sha256 hex ids of `feedback.record.images`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from feedback.record.errors import InputError, NotFound
from feedback.record.models import (
    ORIGINS,
    ROUND_STATUSES,
    Annotator,
    Base,
    Candidate,
    Choice,
    PreferencePair,
    Refinement,
    Round,
    SessionRow,
    SourceImage,
)

ModelT = TypeVar("ModelT", bound=Base)

HEX64 = re.compile(r"[0-9a-f]{64}")
MAX_SEED = 2**63 - 1  # BIGINT


# ----------------------------------------------------------------------------------------- checks
def _hash(name: str, value: Any, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not HEX64.fullmatch(value):
        raise InputError(f"{name} must be a sha256 hex digest (64 lowercase hex characters), got {str(value)[:80]!r}")
    return value


def _text(name: str, value: Any, max_len: int, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise InputError(f"{name} must be non-empty text of at most {max_len} characters, got {str(value)[:80]!r}")
    return value


def _json(name: str, value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be JSON (no NaN/inf; use null for missing scores): {exc}") from None
    return value


def _int(name: str, value: Any, low: int, high: int, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _get(s: Session, model: type[ModelT], object_id: Any, what: str) -> ModelT:
    if not isinstance(object_id, str) or not object_id:
        raise NotFound(f"{what} id must be a non-empty string, got {object_id!r}")
    obj = s.get(model, object_id)
    if obj is None:
        raise NotFound(f"no {what} with id {object_id[:80]!r}")
    return obj


# ------------------------------------------------------------------------------ sessions, images
def create_annotator_session(s: Session, pseudonym: str, token_hash: str, *, study_id: str | None = None,
                             condition: str | None = None) -> SessionRow:
    """Start a session for the annotator with this pseudonym (created on first visit); store only the token hash."""
    _hash("pseudonym", pseudonym)
    _hash("token_hash", token_hash)
    annotator = s.scalar(select(Annotator).where(Annotator.pseudonym == pseudonym))
    if annotator is None:
        try:
            with s.begin_nested():  # two first visits at once: the unique pseudonym lets one win
                annotator = Annotator(pseudonym=pseudonym)
                s.add(annotator)
        except IntegrityError:
            annotator = s.scalars(select(Annotator).where(Annotator.pseudonym == pseudonym)).one()
    row = SessionRow(annotator=annotator, token_hash=token_hash,
                     study_id=_text("study_id", study_id, 64, optional=True),
                     condition=_text("condition", condition, 64, optional=True))
    s.add(row)
    s.flush()
    return row


def session_by_token_hash(s: Session, token_hash: str) -> SessionRow:
    """The session authenticated by this token hash; NotFound when none."""
    row = s.scalar(select(SessionRow).where(SessionRow.token_hash == _hash("token_hash", token_hash)))
    if row is None:
        raise NotFound("no session for this token")
    return row


def add_source_image(s: Session, *, image_hash: str, width: int, height: int, origin: str,
                     session_id: str | None = None, degradation_spec: str | None = None,
                     degradation_seed: int | None = None, degradation_params: dict[str, Any] | None = None,
                     gt_image_hash: str | None = None, degraded_image_hash: str | None = None) -> SourceImage:
    """Record an image a round can start from; for synthetic degradations, how to regenerate it."""
    if origin not in ORIGINS:
        raise InputError(f"origin must be one of {', '.join(ORIGINS)}, got {origin!r}")
    if session_id is not None:
        _get(s, SessionRow, session_id, "session")
    image = SourceImage(
        session_id=session_id, image_hash=_hash("image_hash", image_hash),
        width=_int("width", width, 1, 1 << 16), height=_int("height", height, 1, 1 << 16), origin=origin,
        degradation_spec=_text("degradation_spec", degradation_spec, 512, optional=True),
        degradation_seed=_int("degradation_seed", degradation_seed, 0, MAX_SEED, optional=True),
        degradation_params=_json("degradation_params", degradation_params),
        gt_image_hash=_hash("gt_image_hash", gt_image_hash, optional=True),
        degraded_image_hash=_hash("degraded_image_hash", degraded_image_hash, optional=True),
    )
    s.add(image)
    s.flush()
    return image


# ------------------------------------------------------------------------------ rounds, candidates
@dataclass(frozen=True)
class RoundRecord:
    """What a new round records: its session, source image and backbone; the code, device and dtype that ran it;
    optionally its parent (its index is the parent's + 1), the prior, params, seeds, stage seconds, start image,
    status, and the study and condition it belongs to."""

    session_id: str
    source_image_id: str
    backbone_name: str
    code_version: str
    device: str
    dtype: str
    parent_round_id: str | None = None
    backbone_weights_hash: str | None = None
    prior_id: str | None = None
    prior_weights_hash: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] = ()
    stage_seconds: dict[str, float] = field(default_factory=dict)
    restored_image_hash: str | None = None
    status: str = "created"
    study_id: str | None = None
    condition: str | None = None


def create_round(s: Session, record: RoundRecord) -> Round:
    """Record a round; its index is the parent's + 1 (0 without parent). The parent must be in the same session."""
    r = record
    _get(s, SessionRow, r.session_id, "session")
    _get(s, SourceImage, r.source_image_id, "source image")
    index = 0
    if r.parent_round_id is not None:
        parent = _get(s, Round, r.parent_round_id, "parent round")
        if parent.session_id != r.session_id:
            raise InputError(f"parent round {r.parent_round_id} belongs to another session")
        index = parent.round_index + 1
    if r.status not in ROUND_STATUSES:
        raise InputError(f"status must be one of {', '.join(ROUND_STATUSES)}, got {r.status!r}")
    seeds = list(r.seeds)
    for seed in seeds:
        _int("each seed", seed, 0, MAX_SEED)
    rnd = Round(
        session_id=r.session_id, source_image_id=r.source_image_id, parent_round_id=r.parent_round_id,
        round_index=index, backbone_name=_text("backbone_name", r.backbone_name, 128),
        backbone_weights_hash=_hash("backbone_weights_hash", r.backbone_weights_hash, optional=True),
        prior_id=_text("prior_id", r.prior_id, 128, optional=True),
        prior_weights_hash=_hash("prior_weights_hash", r.prior_weights_hash, optional=True),
        params=_json("params", dict(r.params)), seeds=seeds,
        code_version=_text("code_version", r.code_version, 64), device=_text("device", r.device, 64),
        dtype=_text("dtype", r.dtype, 32), stage_seconds=_json("stage_seconds", dict(r.stage_seconds)),
        restored_image_hash=_hash("restored_image_hash", r.restored_image_hash, optional=True), status=r.status,
        study_id=_text("study_id", r.study_id, 64, optional=True),
        condition=_text("condition", r.condition, 64, optional=True),
    )
    s.add(rnd)
    s.flush()
    return rnd


def get_round(s: Session, round_id: str) -> Round:
    """The round with this id; NotFound when none."""
    return _get(s, Round, round_id, "round")


def update_round(s: Session, round_id: str, *, restored_image_hash: str | None = None,
                 stage_seconds: dict[str, float] | None = None, status: str | None = None,
                 prior_id: str | None = None, prior_weights_hash: str | None = None) -> Round:
    """Fill in what a round computed: the restored image, seconds per stage (merged), a new status, the
    diffusion prior its candidates used."""
    rnd = get_round(s, round_id)
    if prior_id is not None:
        rnd.prior_id = _text("prior_id", prior_id, 128)
    if prior_weights_hash is not None:
        rnd.prior_weights_hash = _hash("prior_weights_hash", prior_weights_hash)
    if restored_image_hash is not None:
        rnd.restored_image_hash = _hash("restored_image_hash", restored_image_hash)
    if stage_seconds is not None:
        rnd.stage_seconds = {**rnd.stage_seconds, **_json("stage_seconds", dict(stage_seconds))}
    if status is not None:
        if status not in ROUND_STATUSES:
            raise InputError(f"status must be one of {', '.join(ROUND_STATUSES)}, got {status!r}")
        rnd.status = status
    s.flush()
    return rnd


@dataclass(frozen=True)
class CandidateSpec:
    """One image to show; `position` defaults to the next free slot of the round."""

    image_hash: str
    method: str
    seed: int | None = None
    strength: float | None = None
    is_restored: bool = False
    scores: dict[str, float | None] = field(default_factory=dict)
    position: int | None = None


def add_candidates(s: Session, round_id: str, specs: Sequence[CandidateSpec]) -> list[Candidate]:
    """Record the candidates shown in a round, in order; sets the round's status to 'candidates'."""
    rnd = get_round(s, round_id)
    if not specs:
        raise InputError("add_candidates needs at least one candidate")
    taken = set(s.scalars(select(Candidate.position).where(Candidate.round_id == round_id)))
    next_free = max(taken, default=-1) + 1
    rows = []
    for spec in specs:
        position = spec.position
        if position is None:
            position, next_free = next_free, next_free + 1
        _int("position", position, 0, 10_000)
        if position in taken:
            raise InputError(f"position {position} is already used in round {round_id}")
        taken.add(position)
        if spec.strength is not None and (isinstance(spec.strength, bool) or not math.isfinite(spec.strength)):
            raise InputError(f"strength must be a finite number, got {spec.strength!r}")
        rows.append(Candidate(
            round_id=round_id, image_hash=_hash("image_hash", spec.image_hash),
            method=_text("method", spec.method, 64), seed=_int("seed", spec.seed, 0, MAX_SEED, optional=True),
            strength=None if spec.strength is None else float(spec.strength), is_restored=bool(spec.is_restored),
            scores=_json("scores", dict(spec.scores)), position=position,
        ))
    s.add_all(rows)
    if rnd.status == "created":
        rnd.status = "candidates"
    s.flush()
    return rows


def set_candidate_scores(s: Session, candidate_id: str, scores: dict[str, float | None]) -> Candidate:
    """Merge automated metric scores into a candidate's scores."""
    candidate = _get(s, Candidate, candidate_id, "candidate")
    candidate.scores = {**candidate.scores, **_json("scores", dict(scores))}
    s.flush()
    return candidate


# ------------------------------------------------------------------------------ refinement, lineage
def record_refinement(s: Session, round_id: str, choice_id: str, result_image_hash: str, params: dict[str, Any],
                      seconds: float, next_round_id: str | None = None) -> Refinement:
    """Record the reward-guided refinement of a round guided by `choice_id`; sets the round to 'refined'."""
    rnd = get_round(s, round_id)
    choice = _get(s, Choice, choice_id, "choice")
    if choice.round_id != round_id:
        raise InputError(f"choice {choice_id} belongs to round {choice.round_id}, not {round_id}")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < math.inf:
        raise InputError(f"seconds must be a finite number >= 0, got {seconds!r}")
    refinement = Refinement(round_id=round_id, choice_id=choice_id,
                            result_image_hash=_hash("result_image_hash", result_image_hash),
                            params=_json("params", dict(params)), seconds=float(seconds))
    s.add(refinement)
    if next_round_id is not None:
        link_next_round(s, refinement, next_round_id)
    rnd.status = "refined"
    s.flush()
    return refinement


def link_next_round(s: Session, refinement: Refinement | str, next_round_id: str) -> Refinement:
    """Point a refinement at the round it started; that round's parent must be the refined round."""
    if isinstance(refinement, str):
        refinement = _get(s, Refinement, refinement, "refinement")
    nxt = get_round(s, next_round_id)
    if nxt.parent_round_id != refinement.round_id:
        raise InputError(f"round {next_round_id} is not a child of round {refinement.round_id}")
    refinement.next_round_id = next_round_id
    s.flush()
    return refinement


def round_lineage(s: Session, round_id: str) -> list[Round]:
    """The chain of rounds from the first (index 0) to `round_id`, following parent links."""
    chain = [get_round(s, round_id)]
    seen = {round_id}
    while (parent_id := chain[-1].parent_round_id) is not None:
        if parent_id in seen:
            raise RuntimeError(f"round lineage of {round_id} has a cycle at {parent_id}; run integrity_check")
        seen.add(parent_id)
        chain.append(get_round(s, parent_id))
    return chain[::-1]


# ------------------------------------------------------------------------------------------ export
def export_pairs(s: Session, *, session_id: str | None = None, batch_size: int = 500) -> Iterator[dict[str, Any]]:
    """One dict per preference pair of a live choice (superseded choices left out): label, both candidates' images
    and settings, the choice (with its region marks, `regions`, [] without), round and source."""
    chosen, rejected = aliased(Candidate), aliased(Candidate)
    query = (
        select(PreferencePair, Choice, Round, SourceImage, SessionRow.annotator_id, chosen, rejected)
        .join(Choice, PreferencePair.choice_id == Choice.id)
        .join(Round, Choice.round_id == Round.id)
        .join(SourceImage, Round.source_image_id == SourceImage.id)
        .join(SessionRow, Round.session_id == SessionRow.id)
        .join(chosen, PreferencePair.chosen_candidate_id == chosen.id)
        .join(rejected, PreferencePair.rejected_candidate_id == rejected.id)
        .where(Choice.superseded_at.is_(None))
        .order_by(Choice.created_at, Choice.id, PreferencePair.id)
    )
    if session_id is not None:
        query = query.where(Round.session_id == session_id)
    for pair, choice, rnd, src, annotator_id, a, b in s.execute(query.execution_options(yield_per=batch_size)):
        yield {
            "pair_id": pair.id, "label": pair.label, "choice_id": choice.id, "kind": choice.kind,
            "reason_tags": list(choice.reason_tags), "decision_ms": choice.decision_ms, "selector": choice.selector,
            "regions": [dict(box) for box in choice.regions or []],
            "chosen_candidate_id": a.id, "chosen_image": a.image_hash, "chosen_seed": a.seed,
            "chosen_strength": a.strength, "chosen_method": a.method, "chosen_position": a.position,
            "chosen_is_restored": a.is_restored, "chosen_scores": dict(a.scores),
            "rejected_candidate_id": b.id, "rejected_image": b.image_hash, "rejected_seed": b.seed,
            "rejected_strength": b.strength, "rejected_method": b.method, "rejected_position": b.position,
            "rejected_is_restored": b.is_restored, "rejected_scores": dict(b.scores),
            "round_id": rnd.id, "round_index": rnd.round_index, "parent_round_id": rnd.parent_round_id,
            "session_id": rnd.session_id, "annotator_id": annotator_id, "study_id": rnd.study_id,
            "condition": rnd.condition, "backbone_name": rnd.backbone_name,
            "backbone_weights_hash": rnd.backbone_weights_hash, "prior_id": rnd.prior_id,
            "prior_weights_hash": rnd.prior_weights_hash, "params": dict(rnd.params), "seeds": list(rnd.seeds),
            "code_version": rnd.code_version, "device": rnd.device, "dtype": rnd.dtype,
            "restored_image": rnd.restored_image_hash, "source_image_id": src.id, "source_image": src.image_hash,
            "degraded_image": src.degraded_image_hash, "gt_image": src.gt_image_hash, "origin": src.origin,
            "degradation_spec": src.degradation_spec, "degradation_seed": src.degradation_seed,
            "created_at": _iso(choice.created_at),
        }


def _iso(moment: datetime) -> str:
    # SQLite returns naive datetimes (stored as UTC); PostgreSQL aware ones. Export both as UTC.
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def count_rows(s: Session) -> dict[str, int]:
    """Number of rows per table (for status pages and tests)."""
    return {table.name: s.scalar(select(func.count()).select_from(table)) or 0
            for table in Base.metadata.sorted_tables}
