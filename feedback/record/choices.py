"""Recording a choice: checks, idempotency keys, supersession, and the preference pairs a choice implies.

`record_choice` records a person's or a metric's choice on a round (pairwise, tie or skip) with its
preference pairs, superseding the round's previous choice; `latest_choice` reads the live one and
`superseded_choices` counts the replaced ones. Like `feedback.record.store`, every function takes a Session
and never opens, commits or closes one:

    with sessions.begin() as s:
        choice, created = record_choice(s, round_id, preferred=[a], rejected=[b, c], kind="pairwise")
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import combinations
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from feedback.record.errors import Conflict, InputError
from feedback.record.models import (
    CHOICE_KINDS,
    REASON_TAGS,
    Candidate,
    Choice,
    ChoiceCandidate,
    PreferencePair,
    Round,
    utcnow,
)
from feedback.record.regions import check_regions
from feedback.record.store import _int, _text, get_round

SELECTOR_PATTERN = re.compile(r"[A-Za-z0-9_.:+,\-]{1,200}")
MAX_IDEMPOTENCY_KEY = 128
MAX_DECISION_MS = 24 * 3600 * 1000
TIE_LABEL = 0.5
WIN_LABEL = 1.0


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


def _choice_by_key(s: Session, round_id: str, key: str) -> Choice | None:
    return s.scalar(select(Choice).where(Choice.round_id == round_id, Choice.idempotency_key == key))


def _same_choice(existing: Choice, kind: str, preferred: list[str], rejected: list[str],
                 regions: list[dict[str, Any]] | None = None) -> Choice:
    """`existing` when it is the choice asked for (and its region marks, when they were sent); Conflict otherwise."""
    if (existing.kind, existing.preferred_ids, existing.rejected_ids) != (kind, preferred, rejected) or (
            regions is not None and (existing.regions or []) != regions):
        raise Conflict(f"idempotency key {existing.idempotency_key!r} was already used for a different choice "
                       f"({existing.id}) in this round; use a new key for a new choice")
    return existing


def _round_regions(regions: Any, positions: list[int]) -> list[dict[str, Any]] | None:
    """Region marks of a choice on a round showing candidates at `positions` (ascending): `on` is the k-th of them
    from 1, `position` the candidate's stored position; None when none were sent."""
    if regions is None:
        return None
    if not positions:
        raise InputError("region marks need candidates to mark; generate the round's candidates first")
    marks = check_regions(regions, len(positions), named_sides=False)
    return [{**box, "position": positions[box["position"]]} for box in marks or []]


def record_choice(s: Session, round_id: str, preferred: Sequence[str], rejected: Sequence[str], kind: str,
                  tags: Sequence[str] = (), decision_ms: int | None = None, selector: str = "human",
                  idempotency_key: str | None = None, zoom_count: int | None = None,
                  viewport: Sequence[int] | None = None, device_pixel_ratio: float | None = None,
                  regions: Any = None) -> tuple[Choice, bool]:
    """Record a choice and its preference pairs; returns (choice, created). A new choice supersedes the round's
    previous one (kept, `superseded_at` set to now): export, analysis and refinement read only the latest.

    kind 'pairwise': every preferred beats every rejected (label 1.0); 'tie': all unordered pairs of the
    given ids (preferred + rejected, at least two) at 0.5; 'skip': no ids, no pairs. `selector` is
    'human' or the metric name(s). A repeated `idempotency_key` in the same round returns the first
    choice with created=False (also under concurrent retries: the unique constraint decides, caught in
    a SAVEPOINT); reusing it for a different choice raises Conflict. `zoom_count`, `viewport` ([width, height] in
    CSS pixels) and `device_pixel_ratio` say how the person looked (zoom and compare interactions on the page).
    `regions`: boxes where the person saw a problem, [{"on": "<k>", "x", "y", "w", "h", "tag"?}] on the round's
    k-th candidate in display (position) order, from 1, in [0, 1] image coordinates (`feedback.record.regions`);
    stored with the choice as study votes store them ("position" added; [] or None: none). A repeated key with other
    regions is a different choice (Conflict).
    """
    if kind not in CHOICE_KINDS:
        raise InputError(f"kind must be one of {', '.join(CHOICE_KINDS)}, got {kind!r}")
    preferred, rejected = _choice_ids("preferred", preferred), _choice_ids("rejected", rejected)
    if overlap := set(preferred) & set(rejected):
        raise InputError(f"candidates {sorted(overlap)} are both preferred and rejected")
    if kind == "pairwise" and not (preferred and rejected):
        raise InputError("a pairwise choice needs at least one preferred and one rejected candidate")
    if kind == "tie" and len(preferred) + len(rejected) < 2:
        raise InputError("a tie needs at least two candidate ids")
    if kind == "skip" and (preferred or rejected):
        raise InputError("a skip names no candidates; send empty preferred and rejected lists")
    tags = list(tags)
    if unknown := [t for t in tags if t not in REASON_TAGS]:
        raise InputError(f"unknown reason tags {unknown}; allowed: {', '.join(REASON_TAGS)}")
    if len(set(tags)) != len(tags):
        raise InputError("reason tags list a tag more than once")
    _int("decision_ms", decision_ms, 0, MAX_DECISION_MS, optional=True)
    if not isinstance(selector, str) or not SELECTOR_PATTERN.fullmatch(selector):
        raise InputError(f"selector must be 'human' or metric name(s) like 'piqe+entropy' "
                         f"(letters, digits, _.:+,-; at most 200), got {str(selector)[:80]!r}")
    _text("idempotency_key", idempotency_key, MAX_IDEMPOTENCY_KEY, optional=True)
    _int("zoom_count", zoom_count, 0, 1_000_000, optional=True)
    if viewport is not None:
        if isinstance(viewport, str) or not isinstance(viewport, Sequence) or len(viewport) != 2:
            raise InputError(f"viewport must be [width, height] in CSS pixels, got {str(viewport)[:40]!r}")
        viewport = [_int("viewport width", viewport[0], 1, 100_000), _int("viewport height", viewport[1], 1, 100_000)]
    if device_pixel_ratio is not None and (isinstance(device_pixel_ratio, bool)
                                           or not isinstance(device_pixel_ratio, (int, float))
                                           or not 0 < device_pixel_ratio <= 16):
        raise InputError(f"device_pixel_ratio must be a number in (0, 16], got {str(device_pixel_ratio)[:20]!r}")

    rnd = get_round(s, round_id)
    # Choices of one round are recorded one at a time (PostgreSQL: the round's row is locked until commit; SQLite
    # transactions hold the write lock), so a retry sees the first attempt and only one choice stays live.
    if s.get_bind().dialect.name != "sqlite":  # SQLite has no row locks: its write transaction already serialises
        s.execute(select(Round.id).where(Round.id == round_id).with_for_update())
    position_of = dict(s.execute(select(Candidate.id, Candidate.position).where(Candidate.round_id == round_id)
                                 .order_by(Candidate.position)).all())
    marks = _round_regions(regions, list(position_of.values()))
    if idempotency_key is not None and (existing := _choice_by_key(s, round_id, idempotency_key)):
        return _same_choice(existing, kind, preferred, rejected, marks), False
    in_round = set(position_of)
    if foreign := [i for i in [*preferred, *rejected] if i not in in_round]:
        shown = ", ".join(repr(i[:40]) for i in foreign[:3])  # ids are echoed shortened, at most three
        shown += f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise InputError(f"candidates {shown} are not candidates of round {round_id}")

    now = utcnow()  # the new choice's time is the time its predecessor was superseded
    choice = Choice(round_id=round_id, kind=kind, reason_tags=tags, decision_ms=decision_ms, selector=selector,
                    idempotency_key=idempotency_key, created_at=now, zoom_count=zoom_count,
                    viewport_w=viewport[0] if viewport else None, viewport_h=viewport[1] if viewport else None,
                    device_pixel_ratio=None if device_pixel_ratio is None else float(device_pixel_ratio))
    if marks:  # left unset it stays SQL NULL (assigning None would store JSON null)
        choice.regions = marks
    choice.members = [ChoiceCandidate(candidate_id=c, role=role, rank=rank)
                      for role, ids in (("preferred", preferred), ("rejected", rejected))
                      for rank, c in enumerate(ids)]
    choice.pairs = [PreferencePair(chosen_candidate_id=a, rejected_candidate_id=b, label=label)
                    for a, b, label in preference_pairs(kind, preferred, rejected)]
    try:
        with s.begin_nested():  # superseding and the new choice, or neither
            # before the insert: the partial unique index allows one live choice per round
            s.execute(update(Choice).where(Choice.round_id == round_id, Choice.superseded_at.is_(None))
                      .values(superseded_at=now))
            s.add(choice)
    except IntegrityError:
        # A concurrent request with the same key committed first; ours was rolled back to the savepoint.
        existing = _choice_by_key(s, round_id, idempotency_key) if idempotency_key is not None else None
        if existing is None:
            raise
        return _same_choice(existing, kind, preferred, rejected, marks), False
    if rnd.status in ("created", "candidates", "chosen", "skipped"):
        rnd.status = "skipped" if kind == "skip" else "chosen"
    s.flush()
    return choice, True


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
