"""SQLAlchemy models of the preference record: who looked, at what, what was shown, what was chosen.

Images are not stored in the database: every `*_hash` column is the sha256 hex id of a PNG in the
content-addressed store (`feedback.record.images`). Public objects have string ids (uuid4 hex).
Raw names, tokens and IP addresses are never stored: annotators are pseudonyms, sessions keep a
hash of their API token.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

#: Where an image came from.
ORIGINS = ("upload", "sample", "study")
#: What the annotator (or the metric selector) said about a round's candidates.
CHOICE_KINDS = ("pairwise", "tie", "skip")
#: Why a rejected candidate was worse; the UI offers exactly these.
REASON_TAGS = (
    "over-smoothed",
    "artefacts",
    "color-shift",
    "hallucinated-detail",
    "residual-noise",
    "residual-blur",
    "over-sharpened",
    "other",
)
#: Life of a round: created -> candidates -> chosen|skipped -> refined; failed on an error.
ROUND_STATUSES = ("created", "candidates", "chosen", "skipped", "refined", "failed")
#: Role of a candidate in a choice (association table).
CHOICE_ROLES = ("preferred", "rejected")
#: Life of a study participant: active -> completed. Withdrawal deletes the participant's rows. A participant who
#: failed an attention check of a study with a screen-out URL stays 'active' with `screened_out_at` set.
PARTICIPANT_STATUSES = ("active", "completed")
#: Which sampler chose a study item: the Latin-square plan or adaptive sampling (`feedback.studies.sampling`).
STUDY_SAMPLERS = ("latin", "adaptive")
#: Answers of a pairwise study item; a gallery item's answer (and worst mark) is a position '1'..'6'.
STUDY_ANSWERS = ("left", "right", "tie")
GALLERY_POSITIONS = ("1", "2", "3", "4", "5", "6")
#: Life of a study: preparing (stimuli computed in the background) -> active, or failed (error recorded).
STUDY_STATUSES = ("preparing", "active", "failed")
MAX_STUDY_ERROR = 2000

ID_LENGTH = 32
HASH_LENGTH = 64

# Stable constraint names so Alembic migrations (and SQLite batch mode) can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSONB on PostgreSQL (indexable, compact), JSON text elsewhere.
JSONType = JSON().with_variant(JSONB(), "postgresql")


def new_id() -> str:
    """A fresh public id: 32 lowercase hex characters (uuid4)."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _id_column() -> Mapped[str]:
    return mapped_column(String(ID_LENGTH), primary_key=True, default=new_id)


def _created_at() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


class Annotator(Base):
    """A person, known only by a salted HMAC of the name they typed (`feedback.record.pseudonym`)."""

    __tablename__ = "annotators"

    id: Mapped[str] = _id_column()
    pseudonym: Mapped[str] = mapped_column(String(HASH_LENGTH), unique=True, nullable=False)
    created_at: Mapped[datetime] = _created_at()

    sessions: Mapped[list[SessionRow]] = relationship(back_populates="annotator")


class SessionRow(Base):
    """One visit of an annotator; authenticated by an API token of which only the sha256 is kept."""

    __tablename__ = "sessions"

    id: Mapped[str] = _id_column()
    annotator_id: Mapped[str] = mapped_column(ForeignKey("annotators.id"), index=True, nullable=False)
    token_hash: Mapped[str] = mapped_column(String(HASH_LENGTH), unique=True, nullable=False)
    created_at: Mapped[datetime] = _created_at()
    # Room for user studies: which study and which arm this session belongs to.
    study_id: Mapped[str | None] = mapped_column(String(64), index=True)
    condition: Mapped[str | None] = mapped_column(String(64))

    annotator: Mapped[Annotator] = relationship(back_populates="sessions")
    rounds: Mapped[list[Round]] = relationship(back_populates="session")


class SourceImage(Base):
    """An image a round starts from, and how it was made when the degradation is synthetic.

    `image_hash` is the image as received (upload or sample; downscaled when the client asked to fit the upload
    limits, the round's `params["upload"]` then holding both sizes); `degraded_image_hash` is the input given
    to restoration (equal to `image_hash` when nothing was degraded); `gt_image_hash` is the clean
    image when the degradation is synthetic. `degradation_spec`, `degradation_seed` and
    `degradation_params` regenerate the degraded image from the ground truth.
    """

    __tablename__ = "source_images"
    __table_args__ = (
        CheckConstraint("width > 0 AND height > 0", name="positive_size"),
        CheckConstraint("origin IN ('upload', 'sample', 'study')", name="origin"),
    )

    id: Mapped[str] = _id_column()
    session_id: Mapped[str | None] = mapped_column(ForeignKey("sessions.id"), index=True)
    image_hash: Mapped[str] = mapped_column(String(HASH_LENGTH), index=True, nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    origin: Mapped[str] = mapped_column(String(16), nullable=False)
    degradation_spec: Mapped[str | None] = mapped_column(String(512))
    degradation_seed: Mapped[int | None] = mapped_column(BigInteger)
    degradation_params: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    gt_image_hash: Mapped[str | None] = mapped_column(String(HASH_LENGTH))
    degraded_image_hash: Mapped[str | None] = mapped_column(String(HASH_LENGTH))
    created_at: Mapped[datetime] = _created_at()


class Round(Base):
    """One pass of the loop: restore -> candidates -> choice -> refinement, with everything needed to rerun it."""

    __tablename__ = "rounds"
    __table_args__ = (
        CheckConstraint("round_index >= 0", name="round_index"),
        Index("ix_rounds_session_id_created_at", "session_id", "created_at"),
    )

    id: Mapped[str] = _id_column()
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), nullable=False)
    source_image_id: Mapped[str] = mapped_column(ForeignKey("source_images.id"), index=True, nullable=False)
    parent_round_id: Mapped[str | None] = mapped_column(ForeignKey("rounds.id"), index=True)
    round_index: Mapped[int] = mapped_column(Integer, nullable=False)
    backbone_name: Mapped[str] = mapped_column(String(128), nullable=False)
    backbone_weights_hash: Mapped[str | None] = mapped_column(String(HASH_LENGTH))
    prior_id: Mapped[str | None] = mapped_column(String(128))
    prior_weights_hash: Mapped[str | None] = mapped_column(String(HASH_LENGTH))
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    seeds: Mapped[list[int]] = mapped_column(JSONType, nullable=False, default=list)
    code_version: Mapped[str] = mapped_column(String(64), nullable=False)
    device: Mapped[str] = mapped_column(String(64), nullable=False)
    dtype: Mapped[str] = mapped_column(String(32), nullable=False)
    stage_seconds: Mapped[dict[str, float]] = mapped_column(JSONType, nullable=False, default=dict)
    restored_image_hash: Mapped[str | None] = mapped_column(String(HASH_LENGTH))
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="created")
    study_id: Mapped[str | None] = mapped_column(String(64), index=True)
    condition: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = _created_at()

    session: Mapped[SessionRow] = relationship(back_populates="rounds")
    source_image: Mapped[SourceImage] = relationship()
    parent: Mapped[Round | None] = relationship(remote_side="Round.id")
    candidates: Mapped[list[Candidate]] = relationship(
        back_populates="round", order_by="Candidate.position"
    )
    choices: Mapped[list[Choice]] = relationship(back_populates="round", order_by="Choice.created_at")


class Candidate(Base):
    """One image shown in a round: a diffusion sample, or the restored image itself (`is_restored`)."""

    __tablename__ = "candidates"
    __table_args__ = (
        UniqueConstraint("round_id", "position"),
        CheckConstraint("position >= 0", name="position"),
    )

    id: Mapped[str] = _id_column()
    round_id: Mapped[str] = mapped_column(ForeignKey("rounds.id"), index=True, nullable=False)
    image_hash: Mapped[str] = mapped_column(String(HASH_LENGTH), nullable=False)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    strength: Mapped[float | None] = mapped_column(Float)
    method: Mapped[str] = mapped_column(String(64), nullable=False)
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    is_restored: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    scores: Mapped[dict[str, float]] = mapped_column(JSONType, nullable=False, default=dict)
    created_at: Mapped[datetime] = _created_at()

    round: Mapped[Round] = relationship(back_populates="candidates")


class Choice(Base):
    """What was chosen in a round: preferred over rejected, a tie, or a skip; by a person or a metric.

    The candidates of a choice live in `choice_candidates` (role preferred|rejected) so foreign keys
    guard them. `idempotency_key` is unique per round: a retried request records once. A new choice on a round
    supersedes the previous one (kept, `superseded_at` set): a round has at most one live choice, the one export,
    analysis and refinement read.
    """

    __tablename__ = "choices"
    __table_args__ = (
        UniqueConstraint("round_id", "idempotency_key"),
        CheckConstraint("kind IN ('pairwise', 'tie', 'skip')", name="kind"),
        CheckConstraint("decision_ms IS NULL OR decision_ms >= 0", name="decision_ms"),
        Index("ix_choices_round_id_created_at", "round_id", "created_at"),
        Index("ix_choices_round_id_live", "round_id", unique=True, sqlite_where=text("superseded_at IS NULL"),
              postgresql_where=text("superseded_at IS NULL")),
    )

    id: Mapped[str] = _id_column()
    round_id: Mapped[str] = mapped_column(ForeignKey("rounds.id"), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    reason_tags: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)
    decision_ms: Mapped[int | None] = mapped_column(Integer)
    selector: Mapped[str] = mapped_column(String(200), nullable=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    # Viewing conditions of the vote (user studies; null elsewhere) and the consent version it was given under.
    zoom_count: Mapped[int | None] = mapped_column(Integer)
    viewport_w: Mapped[int | None] = mapped_column(Integer)
    viewport_h: Mapped[int | None] = mapped_column(Integer)
    device_pixel_ratio: Mapped[float | None] = mapped_column(Float)
    consent_version: Mapped[str | None] = mapped_column(String(32))
    # Where the person saw a problem: [{"on", "position", "x", "y", "w", "h", "tag"}] in [0, 1] image
    # coordinates of the candidate at `position` (`feedback.studies.regions`).
    regions: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = _created_at()
    # When a later choice on the same round replaced this one; NULL for the round's live choice.
    superseded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    round: Mapped[Round] = relationship(back_populates="choices")
    members: Mapped[list[ChoiceCandidate]] = relationship(
        back_populates="choice", cascade="all, delete-orphan"
    )
    pairs: Mapped[list[PreferencePair]] = relationship(back_populates="choice", cascade="all, delete-orphan")

    def _ids(self, role: str) -> list[str]:
        return [m.candidate_id for m in sorted(self.members, key=lambda m: m.rank) if m.role == role]

    @property
    def preferred_ids(self) -> list[str]:
        """Candidate ids preferred (for a tie: the tied ids), in the order they were given."""
        return self._ids("preferred")

    @property
    def rejected_ids(self) -> list[str]:
        """Candidate ids rejected, in the order they were given."""
        return self._ids("rejected")


class ChoiceCandidate(Base):
    """Association of a choice with the candidates it names, and in which role."""

    __tablename__ = "choice_candidates"
    __table_args__ = (CheckConstraint("role IN ('preferred', 'rejected')", name="role"),)

    choice_id: Mapped[str] = mapped_column(ForeignKey("choices.id"), primary_key=True)
    candidate_id: Mapped[str] = mapped_column(ForeignKey("candidates.id"), primary_key=True, index=True)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    rank: Mapped[int] = mapped_column(Integer, nullable=False, default=0)

    choice: Mapped[Choice] = relationship(back_populates="members")
    candidate: Mapped[Candidate] = relationship()


class PreferencePair(Base):
    """One training pair derived from a choice: label 1.0 (chosen beats rejected) or 0.5 (tie)."""

    __tablename__ = "preference_pairs"
    __table_args__ = (
        UniqueConstraint("choice_id", "chosen_candidate_id", "rejected_candidate_id"),
        CheckConstraint("label IN (0.5, 1.0)", name="label"),
        CheckConstraint("chosen_candidate_id <> rejected_candidate_id", name="distinct"),
    )

    id: Mapped[str] = _id_column()
    choice_id: Mapped[str] = mapped_column(ForeignKey("choices.id"), index=True, nullable=False)
    chosen_candidate_id: Mapped[str] = mapped_column(ForeignKey("candidates.id"), index=True, nullable=False)
    rejected_candidate_id: Mapped[str] = mapped_column(ForeignKey("candidates.id"), index=True, nullable=False)
    label: Mapped[float] = mapped_column(Float, nullable=False)
    created_at: Mapped[datetime] = _created_at()

    choice: Mapped[Choice] = relationship(back_populates="pairs")
    chosen: Mapped[Candidate] = relationship(foreign_keys=[chosen_candidate_id])
    rejected: Mapped[Candidate] = relationship(foreign_keys=[rejected_candidate_id])


class Refinement(Base):
    """Reward-guided denoising of a round, guided by one choice; may start the next round."""

    __tablename__ = "refinements"
    __table_args__ = (CheckConstraint("seconds >= 0", name="seconds"),)

    id: Mapped[str] = _id_column()
    round_id: Mapped[str] = mapped_column(ForeignKey("rounds.id"), index=True, nullable=False)
    choice_id: Mapped[str] = mapped_column(ForeignKey("choices.id"), index=True, nullable=False)
    result_image_hash: Mapped[str] = mapped_column(String(HASH_LENGTH), nullable=False)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    seconds: Mapped[float] = mapped_column(Float, nullable=False)
    next_round_id: Mapped[str | None] = mapped_column(ForeignKey("rounds.id"), index=True)
    created_at: Mapped[datetime] = _created_at()

    round: Mapped[Round] = relationship(foreign_keys=[round_id])
    choice: Mapped[Choice] = relationship()
    next_round: Mapped[Round | None] = relationship(foreign_keys=[next_round_id])


class Study(Base):
    """A user study: its definition (`feedback.studies.study.StudyDefinition` as JSON) and its precomputed stimuli.

    `stimuli[j]` holds, for stimulus j, the source image id (`source_image_id`) and the image hash of each
    condition's output (`outputs`) and of the attention-check images (`clean`, `control`).
    A study is created 'preparing' with `inputs` (the image id of each definition image as read at creation)
    and no stimuli; the stimuli are written all at once with the switch to 'active', or 'failed' with `error`.
    `progress_done` of `progress_total` stimuli are computed so far (both equal once active)."""

    __tablename__ = "studies"
    __table_args__ = (
        CheckConstraint("status IN ('preparing', 'active', 'failed')", name="status"),
        CheckConstraint("progress_done >= 0 AND progress_done <= progress_total", name="progress"),
    )

    id: Mapped[str] = _id_column()
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    definition: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    consent_version: Mapped[str] = mapped_column(String(32), nullable=False)
    stimuli: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, nullable=False, default=list)
    created_at: Mapped[datetime] = _created_at()
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="active")
    progress_done: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    error: Mapped[str | None] = mapped_column(String(MAX_STUDY_ERROR))
    inputs: Mapped[list[str] | None] = mapped_column(JSONType)


class Participant(Base):
    """One person in a study: a pseudonymous session, the consent version agreed to, a unique completion code.

    `platform_id_hash` is a salted HMAC of a recruiting platform's id (e.g. PROLIFIC_PID), never the id."""

    __tablename__ = "participants"
    __table_args__ = (
        UniqueConstraint("study_id", "participant_index"),
        CheckConstraint("status IN ('active', 'completed')", name="status"),
        CheckConstraint("participant_index >= 0", name="participant_index"),
    )

    id: Mapped[str] = _id_column()
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), index=True, nullable=False)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True, nullable=False)
    participant_index: Mapped[int] = mapped_column(Integer, nullable=False)
    platform_id_hash: Mapped[str | None] = mapped_column(String(HASH_LENGTH), index=True)
    consent_version: Mapped[str] = mapped_column(String(32), nullable=False)
    completion_code: Mapped[str] = mapped_column(String(32), unique=True, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="active")
    created_at: Mapped[datetime] = _created_at()
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    screened_out_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    items: Mapped[list[StudyItem]] = relationship(back_populates="participant", order_by="StudyItem.position")


class StudyItem(Base):
    """Item k of a participant: one round with two candidates (position 0 left, 1 right), and the answer.

    A gallery item (K > 2 candidates) has `gallery` ([{"condition", "image_hash"}] in shown order, candidate
    positions 0..K-1) instead of the left/right columns (NULL); its answer is the best image's position
    '1'..'K' and `worst` the position marked worst (optional); `expected` is a position too."""

    __tablename__ = "study_items"
    __table_args__ = (
        UniqueConstraint("participant_id", "position"),
        CheckConstraint("position >= 0", name="position"),
        CheckConstraint("answer IS NULL OR answer IN ('left', 'right', 'tie', '1', '2', '3', '4', '5', '6')",
                        name="answer"),
        CheckConstraint("worst IS NULL OR (worst IN ('1', '2', '3', '4', '5', '6') AND worst <> answer)",
                        name="worst"),
        CheckConstraint("gallery IS NOT NULL OR (left_image_hash IS NOT NULL AND right_image_hash IS NOT NULL)",
                        name="shown"),
        CheckConstraint("sampler IN ('latin', 'adaptive')", name="sampler"),
    )

    id: Mapped[str] = _id_column()
    participant_id: Mapped[str] = mapped_column(ForeignKey("participants.id"), index=True, nullable=False)
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    stimulus: Mapped[int] = mapped_column(Integer, nullable=False)
    round_id: Mapped[str] = mapped_column(ForeignKey("rounds.id"), index=True, nullable=False)
    left_image_hash: Mapped[str | None] = mapped_column(String(HASH_LENGTH))
    right_image_hash: Mapped[str | None] = mapped_column(String(HASH_LENGTH))
    left_condition: Mapped[str | None] = mapped_column(String(64))
    right_condition: Mapped[str | None] = mapped_column(String(64))
    gallery: Mapped[list[dict[str, str]] | None] = mapped_column(JSONType)
    is_repeat: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    repeat_of: Mapped[int | None] = mapped_column(Integer)
    is_attention_check: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    expected: Mapped[str | None] = mapped_column(String(8))
    answer: Mapped[str | None] = mapped_column(String(8))
    worst: Mapped[str | None] = mapped_column(String(8))
    choice_id: Mapped[str | None] = mapped_column(ForeignKey("choices.id"), index=True)
    answered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Which sampler chose the item (STUDY_SAMPLERS) and why: an adaptive main item's expected information gain
    # (bits) and the number of votes its posterior saw; NULL for planned items.
    sampler: Mapped[str] = mapped_column(String(16), nullable=False, default="latin", server_default="latin")
    sampler_score: Mapped[float | None] = mapped_column(Float)
    sampler_votes: Mapped[int | None] = mapped_column(Integer)

    participant: Mapped[Participant] = relationship(back_populates="items")
