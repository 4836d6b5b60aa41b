"""Recording a choice: checks, idempotency keys, supersession, and the preference pairs a choice implies.

`record_choice` records a `ChoiceInput` (a person's or a metric's choice on a round; its `ChoiceKind` is pairwise,
tie or skip) with its preference pairs, superseding the round's previous choice, and returns a `RecordedChoice` (a
plain value, not an ORM row); `latest_choice` reads the live one and `superseded_choices` counts the replaced ones.
Like `feedback.record.store`, every function takes a Session and never opens, commits or closes one:

    with sessions.begin() as s:
        choice, created = record_choice(s, round_id, ChoiceInput(ChoiceKind.PAIRWISE, [a], [b, c]))

A vote is a few Core statements on the session's connection, no unit of work: one SELECT of the round (its
session, status, candidates and the choice already recorded under the idempotency key), then one UPDATE superseding
the live choice, the INSERTs of the choice, its members and its pairs (each one executemany; in a savepoint when a
key is given on PostgreSQL), and an UPDATE of the round's status when it changes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from itertools import combinations
from typing import Any, NamedTuple

from sqlalchemy import Connection, bindparam, func, insert, inspect, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from feedback.record.errors import Conflict, InputError, NotFound
from feedback.record.models import (
    CHOICE_KINDS,
    REASON_TAGS,
    Candidate,
    Choice,
    ChoiceCandidate,
    PreferencePair,
    Round,
    new_id,
    utcnow,
)
from feedback.record.regions import check_regions
from feedback.record.store import _int, _text, get_round

SELECTOR_PATTERN = re.compile(r"[A-Za-z0-9_.:+,\-]{1,200}")
MAX_IDEMPOTENCY_KEY = 128
MAX_DECISION_MS = 24 * 3600 * 1000
TIE_LABEL = 0.5
WIN_LABEL = 1.0
#: Round statuses a choice moves to 'chosen' or 'skipped' (a refined or failed round keeps its status).
CHOOSABLE = ("created", "candidates", "chosen", "skipped")


class ChoiceKind(StrEnum):
    """What a choice says about a round's candidates."""

    PAIRWISE = "pairwise"  # every preferred candidate beats every rejected one (label 1.0)
    TIE = "tie"  # the named candidates (every candidate of the round when none is named) look alike (0.5)
    SKIP = "skip"  # no judgement: no candidates, no pairs

    @classmethod
    def parse(cls, value: Any) -> ChoiceKind:
        """`value` as a ChoiceKind (a member or its name); InputError naming the kinds otherwise."""
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except (ValueError, TypeError):
            raise InputError(f"kind must be one of {', '.join(CHOICE_KINDS)}, got {str(value)[:40]!r}") from None


assert tuple(k.value for k in ChoiceKind) == CHOICE_KINDS  # the CHECK constraint of choices.kind


@dataclass(frozen=True)
class ChoiceInput:
    """A choice as its caller states it; `record_choice` checks it against the round and records it.

    `kind` is a ChoiceKind (its value is accepted and converted; anything else is refused here, InputError).
    `preferred` / `rejected`: candidate ids in the order given (a tie may split its ids over both, or name none:
    then it ties every candidate of the round, "all similar"). `tags`: reason tags (`REASON_TAGS`). `selector`:
    'human' or the metric name(s). A repeated `idempotency_key` in the same round returns the first choice.
    `zoom_count`, `viewport` ([width, height] in CSS pixels) and `device_pixel_ratio` say how the person looked;
    `regions`: boxes [{"on": "<k>", "x", "y", "w", "h", "tag"?}] on the round's k-th candidate in display order
    (from 1), checked by `feedback.record.regions`. Study votes, which check their own item-shaped boxes, hand them
    over as `marks` (stored as given) with their `consent_version` and `extra_pairs`: more (chosen, rejected)
    candidate-id pairs at 1.0 that their answer implies (a gallery's others beat its worst)."""

    kind: ChoiceKind
    preferred: Sequence[str] = ()
    rejected: Sequence[str] = ()
    tags: Sequence[str] = ()
    decision_ms: int | None = None
    selector: str = "human"
    idempotency_key: str | None = None
    zoom_count: int | None = None
    viewport: Sequence[int] | None = None
    device_pixel_ratio: float | None = None
    regions: Any = None
    marks: Sequence[dict[str, Any]] | None = None
    consent_version: str | None = None
    extra_pairs: Sequence[tuple[str, str]] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ChoiceKind.parse(self.kind))


class Pair(NamedTuple):
    """A preference pair of a recorded choice."""

    chosen_candidate_id: str
    rejected_candidate_id: str
    label: float


@dataclass(frozen=True)
class RecordedChoice:
    """A recorded choice: what `record_choice` stored, or the earlier choice a repeated idempotency key named."""

    id: str
    kind: ChoiceKind
    preferred_ids: list[str]
    rejected_ids: list[str]
    selector: str
    pairs: list[Pair]
    regions: list[dict[str, Any]] | None
    created_at: datetime
    superseded_at: datetime | None = None
    #: Choices of the round this one superseded when it was recorded (0 for an earlier choice returned again).
    superseded: int = 0

    @property
    def live(self) -> bool:
        """Whether it is the round's live choice (False: a later choice superseded it)."""
        return self.superseded_at is None


def preference_pairs(kind: str, preferred: Sequence[str], rejected: Sequence[str]) -> list[tuple[str, str, float]]:
    """(chosen, rejected, label) pairs of a choice: preferred x rejected at 1.0; a tie: all unordered pairs at 0.5."""
    if kind == "pairwise":
        return [(p, r, WIN_LABEL) for p in preferred for r in rejected]
    if kind == "tie":
        return [(a, b, TIE_LABEL) for a, b in combinations([*preferred, *rejected], 2)]
    return []


def _choice_ids(name: str, ids: Sequence[str]) -> list[str]:
    if isinstance(ids, str) or not isinstance(ids, Sequence):
        raise InputError(f"{name} must be a list of candidate ids, got {type(ids).__name__}")
    ids = list(ids)
    if not all(isinstance(i, str) and i for i in ids):
        raise InputError(f"{name} must contain candidate id strings")
    if len(set(ids)) != len(ids):
        raise InputError(f"{name} lists a candidate more than once")
    return ids


def _checked(c: ChoiceInput, every_candidate: list[str]) -> tuple[list[str], list[str], dict[str, Any]]:
    """(preferred, rejected, the other checked fields of `c` as columns of `choices`); `every_candidate` (display
    order) is what a tie naming no candidate ties. InputError saying what is allowed."""
    preferred, rejected = _choice_ids("preferred", c.preferred), _choice_ids("rejected", c.rejected)
    if c.kind is ChoiceKind.TIE and not preferred and not rejected:
        preferred = list(every_candidate)  # "all similar"
    if overlap := set(preferred) & set(rejected):
        raise InputError(f"candidates {sorted(overlap)} are both preferred and rejected")
    if c.kind is ChoiceKind.PAIRWISE and not (preferred and rejected):
        raise InputError("a pairwise choice needs at least one preferred and one rejected candidate")
    if c.kind is ChoiceKind.TIE and len(preferred) + len(rejected) < 2:
        raise InputError("a tie needs at least two candidate ids")
    if c.kind is ChoiceKind.SKIP and (preferred or rejected):
        raise InputError("a skip names no candidates; send empty preferred and rejected lists")
    tags = list(c.tags)
    if unknown := [t for t in tags if t not in REASON_TAGS]:
        raise InputError(f"unknown reason tags {unknown}; allowed: {', '.join(REASON_TAGS)}")
    if len(set(tags)) != len(tags):
        raise InputError("reason tags list a tag more than once")
    _int("decision_ms", c.decision_ms, 0, MAX_DECISION_MS, optional=True)
    if not isinstance(c.selector, str) or not SELECTOR_PATTERN.fullmatch(c.selector):
        raise InputError(f"selector must be 'human' or metric name(s) like 'piqe+entropy' "
                         f"(letters, digits, _.:+,-; at most 200), got {str(c.selector)[:80]!r}")
    _text("idempotency_key", c.idempotency_key, MAX_IDEMPOTENCY_KEY, optional=True)
    _int("zoom_count", c.zoom_count, 0, 1_000_000, optional=True)
    width = height = None
    if (viewport := c.viewport) is not None:
        if isinstance(viewport, str) or not isinstance(viewport, Sequence) or len(viewport) != 2:
            raise InputError(f"viewport must be [width, height] in CSS pixels, got {str(viewport)[:40]!r}")
        width = _int("viewport width", viewport[0], 1, 100_000)
        height = _int("viewport height", viewport[1], 1, 100_000)
    dpr = c.device_pixel_ratio
    if dpr is not None and (isinstance(dpr, bool) or not isinstance(dpr, (int, float)) or not 0 < dpr <= 16):
        raise InputError(f"device_pixel_ratio must be a number in (0, 16], got {str(dpr)[:20]!r}")
    _text("consent_version", c.consent_version, 32, optional=True)
    columns = {"kind": c.kind.value, "reason_tags": tags, "decision_ms": c.decision_ms, "selector": c.selector,
               "idempotency_key": c.idempotency_key, "zoom_count": c.zoom_count, "viewport_w": width,
               "viewport_h": height, "device_pixel_ratio": None if dpr is None else float(dpr),
               "consent_version": c.consent_version}
    return preferred, rejected, columns


def _round_regions(regions: Any, positions: list[int]) -> list[dict[str, Any]] | None:
    """Region marks of a choice on a round showing candidates at `positions` (ascending): `on` is the k-th of them
    from 1, `position` the candidate's stored position; None when none were sent."""
    if regions is None:
        return None
    if not positions:
        raise InputError("region marks need candidates to mark; generate the round's candidates first")
    marks = check_regions(regions, len(positions), named_sides=False)
    return [{**box, "position": positions[box["position"]]} for box in marks or []]


# ------------------------------------------------------------------------------------ the statements of a vote
_rounds, _candidates, _choices = Round.__table__, Candidate.__table__, Choice.__table__
_members, _pairs = ChoiceCandidate.__table__, PreferencePair.__table__
#: The round's session and status, its candidates in display order (one row each; one row of NULLs when it has none)
#: and the id of the round's choice recorded under the key (NULL without one).
_ROUND = (select(_rounds.c.session_id, _rounds.c.status, _candidates.c.id, _candidates.c.position,
                 select(_choices.c.id).where(_choices.c.round_id == _rounds.c.id,
                                             _choices.c.idempotency_key == bindparam("key"))
                 .scalar_subquery())
          .select_from(_rounds.outerjoin(_candidates, _candidates.c.round_id == _rounds.c.id))
          .where(_rounds.c.id == bindparam("rid")).order_by(_candidates.c.position))
# PostgreSQL: choices of one round are recorded one at a time (the round's row stays locked until commit), so the
# statements after it see the choice committed before: one choice stays live. A retry that waited for the lock may
# miss the first attempt in this statement's own key lookup (its snapshot is older), so the key is looked up once
# more (`_BY_KEY`). SQLite has no row locks: its write transaction (BEGIN IMMEDIATE, `feedback.record.db`) already
# excluded every other writer when this statement runs.
_ROUND_LOCKED = _ROUND.with_for_update(of=_rounds)
_BY_KEY = select(_choices.c.id).where(_choices.c.round_id == bindparam("rid"),
                                      _choices.c.idempotency_key == bindparam("key"))
_SUPERSEDE = (update(_choices).where(_choices.c.round_id == bindparam("rid"), _choices.c.superseded_at.is_(None))
              .values(superseded_at=bindparam("now")))
_SET_STATUS = update(_rounds).where(_rounds.c.id == bindparam("rid")).values(status=bindparam("new_status"))
_INSERT_MEMBERS, _INSERT_PAIRS = insert(_members), insert(_pairs)


def _recorded(conn: Connection, choice_id: str) -> RecordedChoice:
    """The stored choice `choice_id` as a RecordedChoice (a repeated idempotency key names it)."""
    row = conn.execute(select(_choices).where(_choices.c.id == choice_id)).one()
    members = conn.execute(select(_members.c.candidate_id, _members.c.role).where(_members.c.choice_id == choice_id)
                           .order_by(_members.c.rank)).all()
    pairs = conn.execute(select(_pairs.c.chosen_candidate_id, _pairs.c.rejected_candidate_id, _pairs.c.label)
                         .where(_pairs.c.choice_id == choice_id).order_by(_pairs.c.created_at, _pairs.c.id)).all()
    return RecordedChoice(row.id, ChoiceKind(row.kind), [c for c, role in members if role == "preferred"],
                          [c for c, role in members if role == "rejected"], row.selector, [Pair(*p) for p in pairs],
                          row.regions, row.created_at, row.superseded_at)


def _same_choice(existing: RecordedChoice, key: str, kind: ChoiceKind, preferred: list[str], rejected: list[str],
                 regions: list[dict[str, Any]] | None) -> RecordedChoice:
    """`existing` when it is the choice asked for (and its region marks, when they were sent); Conflict otherwise."""
    if (existing.kind, existing.preferred_ids, existing.rejected_ids) != (kind, preferred, rejected) or (
            regions is not None and (existing.regions or []) != regions):
        raise Conflict(f"idempotency key {key!r} was already used for a different choice "
                       f"({existing.id}) in this round; use a new key for a new choice")
    return existing


def _forget_stale(s: Session, round_id: str) -> None:
    """Expire what the session holds of the round and its live choices (written here past the unit of work)."""
    for obj in list(s.identity_map.values()):
        state = inspect(obj)
        if isinstance(obj, Round) and state.dict.get("id") == round_id:
            s.expire(obj, ["status", "choices"])
        elif isinstance(obj, Choice) and state.dict.get("round_id") == round_id:
            s.expire(obj, ["superseded_at"])


def record_choice(s: Session, round_id: str, choice: ChoiceInput,
                  check_owner: Callable[[str], None] | None = None) -> tuple[RecordedChoice, bool]:
    """Record a choice and its preference pairs; returns (choice, created). A new choice supersedes the round's
    previous one (kept, `superseded_at` set to now): export, analysis and refinement read only the latest.

    Pairwise: every preferred beats every rejected (label 1.0); tie: all unordered pairs of the given ids (preferred
    + rejected, at least two; none given: every candidate of the round) at 0.5; skip: no ids, no pairs.
    `check_owner(session id of the round)` runs first, inside this transaction, and raises to refuse the caller.
    A repeated idempotency key in the same round returns the first choice with created=False (also under
    concurrent retries: the round's row lock, or SQLite's write lock, orders them, and on PostgreSQL the unique
    constraint is caught in a SAVEPOINT besides); reusing it for a different choice
    (other kind, ids, or region marks when they were sent) raises Conflict. NotFound for an unknown round;
    InputError saying what is allowed for anything else, and nothing is written.
    """
    if not isinstance(round_id, str) or not round_id:
        raise NotFound(f"round id must be a non-empty string, got {round_id!r}")
    s.flush()  # what the caller added in this session, before reading and writing past it
    conn = s.connection()
    row_locks = conn.dialect.name != "sqlite"
    key = choice.idempotency_key if isinstance(choice.idempotency_key, str) else None
    rows = conn.execute(_ROUND_LOCKED if row_locks else _ROUND, {"rid": round_id, "key": key}).all()
    if not rows:
        raise NotFound(f"no round with id {round_id[:80]!r}")
    session_id, status, existing_id = rows[0][0], rows[0][1], rows[0][4]
    if row_locks and key is not None and existing_id is None:  # now that the round is ours (see _ROUND_LOCKED)
        existing_id = conn.scalar(_BY_KEY, {"rid": round_id, "key": key})
    if check_owner is not None:
        check_owner(session_id)
    position_of = {cid: position for _, _, cid, position, _ in rows if cid is not None}
    preferred, rejected, fields = _checked(choice, list(position_of))
    if choice.marks is not None and choice.regions is not None:
        raise InputError("a choice takes region boxes (regions) or checked marks (marks), not both")
    regions = _round_regions(choice.regions, list(position_of.values()))
    if existing_id is not None:
        return _same_choice(_recorded(conn, existing_id), key, choice.kind, preferred, rejected, regions), False
    if foreign := [i for i in [*preferred, *rejected] if i not in position_of]:
        shown = ", ".join(repr(i[:40]) for i in foreign[:3])  # ids are echoed shortened, at most three
        shown += f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise InputError(f"candidates {shown} are not candidates of round {round_id}")
    pairs = [Pair(a, b, label) for a, b, label in preference_pairs(choice.kind.value, preferred, rejected)]
    for a, b in choice.extra_pairs:
        if a not in position_of or b not in position_of or a == b:
            raise InputError(f"extra pairs must name two different candidates of round {round_id}")
        pairs.append(Pair(a, b, WIN_LABEL))
    # no boxes sent (or []) stays SQL NULL (None would store JSON null); checked marks are stored as given
    stored = list(choice.marks) if choice.marks is not None else regions or None

    now = utcnow()  # the new choice's time is the time its predecessor was superseded
    choice_id = new_id()
    row = {"id": choice_id, "round_id": round_id, **fields, "created_at": now}
    if stored is not None:
        row["regions"] = stored
    members = [{"choice_id": choice_id, "candidate_id": c, "role": role, "rank": rank}
               for role, ids in (("preferred", preferred), ("rejected", rejected)) for rank, c in enumerate(ids)]
    # With row locks (PostgreSQL) the unique constraints still decide should a retry pass the key lookup anyway,
    # in a savepoint. SQLite's write transaction excluded every other writer since BEGIN.
    guarded = key is not None and row_locks
    try:
        with conn.begin_nested() if guarded else nullcontext():  # superseding and the new choice, or neither
            # before the insert: the partial unique index allows one live choice per round
            superseded = conn.execute(_SUPERSEDE, {"rid": round_id, "now": now}).rowcount
            conn.execute(insert(_choices), row)
            if members:
                conn.execute(_INSERT_MEMBERS, members)
            if pairs:
                conn.execute(_INSERT_PAIRS, [{"id": new_id(), "choice_id": choice_id, "chosen_candidate_id": a,
                                              "rejected_candidate_id": b, "label": label, "created_at": now}
                                             for a, b, label in pairs])
    except IntegrityError:
        # A concurrent request with the same key committed first; ours was rolled back to the savepoint.
        existing_id = guarded and conn.scalar(_BY_KEY, {"rid": round_id, "key": key})
        if not existing_id:
            raise
        return _same_choice(_recorded(conn, existing_id), key, choice.kind, preferred, rejected, regions), False
    new_status = "skipped" if choice.kind is ChoiceKind.SKIP else "chosen"
    if status in CHOOSABLE and status != new_status:
        conn.execute(_SET_STATUS, {"rid": round_id, "new_status": new_status})
    _forget_stale(s, round_id)
    return RecordedChoice(choice_id, choice.kind, preferred, rejected, choice.selector, pairs, stored, now, None,
                          superseded), True


def latest_choice(s: Session, round_id: str) -> Choice | None:
    """The live (latest, not superseded) choice of a round (None when nothing was chosen yet)."""
    get_round(s, round_id)
    return s.scalars(select(Choice).where(Choice.round_id == round_id, Choice.superseded_at.is_(None))
                     .order_by(Choice.created_at.desc(), Choice.id.desc()).limit(1)).first()


def superseded_choices(s: Session, *, study_id: str | None = None) -> int:
    """How many choices a later choice on the same round replaced (kept, but read by no export or analysis)."""
    query = select(func.count()).select_from(Choice).where(Choice.superseded_at.is_not(None))
    if study_id is not None:
        query = query.join(Round, Choice.round_id == Round.id).where(Round.study_id == study_id)
    return s.scalar(query) or 0
