"""A study's participants: enrolment, their items in order, votes with viewing conditions, withdrawal.

`StudyParticipants` is the participant side of `feedback.studies.service.StudyService` (a mixin over its
`fb`, the app's `FeedbackService`, and its `_study` row check): it enrols a participant (a session of their
own), records each planned or adaptively chosen item as a round with its candidates, checks and records each
vote as a `Choice` (gallery votes as the preference pairs they imply), screens out after a failed attention
check, and deletes a participant's rows on withdrawal (`delete_participant`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from feedback.loop.service import FeedbackService
from feedback.loop.sessions import AuthError, Principal
from feedback.record import choices, store
from feedback.record.choices import ChoiceKind
from feedback.record.db import retry_transient
from feedback.record.errors import Conflict, InputError, NotFound
from feedback.record.models import (
    STUDY_ANSWERS,
    Annotator,
    Candidate,
    Choice,
    ChoiceCandidate,
    Participant,
    PreferencePair,
    Refinement,
    Round,
    SessionRow,
    Study,
    StudyItem,
    utcnow,
)
from feedback.record.pseudonym import hash_token, new_token, pseudonym
from feedback.record.regions import check_regions
from feedback.studies.plan import GalleryItem, PlannedItem, assign_items
from feedback.studies.sampling import (
    SamplerState,
    adaptive_slots,
    choose_adaptive_item,
    repeat_item,
)
from feedback.studies.study import (
    ATTENTION_CLEAN,
    ATTENTION_CONTROL,
    StudyDefinition,
    completion_link,
    gallery_answer,
    gallery_pairs,
    new_completion_code,
    normalise_code,
)

CHOICES = STUDY_ANSWERS  # left | right | tie
STUDY_BACKBONE_NAME = "study"  # rounds of a study show finished images; no backbone runs in them
MAX_VIEWPORT = 100_000


@dataclass(frozen=True)
class Enrolment:
    participant_id: str
    token: str
    n_items: int
    resumed: bool


def _int(name: str, value: Any, low: int, high: int, optional: bool = True) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(f"{name} must be an integer in [{low}, {high}], got {str(value)[:40]!r}")
    return value


class StudyParticipants:
    """Enrol participants, serve and record their items, withdraw them (a mixin of `StudyService`)."""

    fb: FeedbackService

    def enrol(self, study_id: str, consent_version: Any, platform_id: Any = None) -> Enrolment:
        """Enrol a participant who agreed to `consent_version` (must be the study's current one).

        With a platform id (e.g. PROLIFIC_PID) a second enrolment resumes the same participant (a new token
        replaces the old one); the id itself is stored only as a salted HMAC."""
        if platform_id is not None and (not isinstance(platform_id, str) or not 0 < len(platform_id.strip()) <= 200):
            raise InputError("platform_id must be text of 1-200 characters (e.g. the PROLIFIC_PID)")
        for attempt in range(3):
            try:
                return self._enrol_once(study_id, consent_version, platform_id)
            except IntegrityError:  # two first enrolments with one platform id raced (unique hash); again
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _enrol_once(self, study_id: str, consent_version: Any, platform_id: str | None) -> Enrolment:
        token = new_token()
        with self.fb.db.sessions.begin() as s:
            # Locking the study row serialises enrolments of one study across processes (replicas on
            # PostgreSQL; SQLite's write lock does it already), so participant indices never collide.
            row, study = self._study(s, study_id, lock=True, active=True)
            if consent_version != row.consent_version:
                raise InputError(f"consent version {str(consent_version)[:32]!r} is not this study's current "
                                 f"version {row.consent_version!r}; show the current consent text again")
            platform_hash = pseudonym(f"platform:{study_id}:{platform_id.strip()}", self.fb.salt) if platform_id else None
            if platform_hash is not None and (old := s.scalar(select(Participant).where(
                    Participant.study_id == study_id, Participant.platform_id_hash == platform_hash))):
                s.get(SessionRow, old.session_id).token_hash = hash_token(token)
                return Enrolment(old.id, token, max(len(old.items), study.n_items), resumed=True)
            name = f"study:{study_id}:{platform_id.strip() if platform_id else new_token()}"
            session = store.create_annotator_session(s, pseudonym(name, self.fb.salt), hash_token(token),
                                                     study_id=study_id)
            last = s.scalar(select(func.max(Participant.participant_index)).where(Participant.study_id == study_id))
            index = 0 if last is None else last + 1
            participant = Participant(study_id=study_id, session_id=session.id, participant_index=index,
                                      platform_id_hash=platform_hash, consent_version=row.consent_version,
                                      completion_code=new_completion_code(), status="active")
            s.add(participant)
            s.flush()
            if study.sampling == "adaptive":  # items are chosen one at a time (`_add_adaptive_item`)
                self._add_adaptive_item(s, row, study, participant)
                return Enrolment(participant.id, token, study.n_items, resumed=False)
            planned = assign_items(study, index, study.seed)
            for item in planned:
                self._add_item(s, row, participant, session.id, item)
            return Enrolment(participant.id, token, len(planned), resumed=False)

    def _sampler_state(self, s: Session, study_id: str, study: StudyDefinition) -> SamplerState:
        """Every main (not repeated, not attention-check) item of the study, answered or pending."""
        state = SamplerState(study.plan_conditions)
        for stimulus, left, right, answer in s.execute(
                select(StudyItem.stimulus, StudyItem.left_condition, StudyItem.right_condition, StudyItem.answer)
                .join(Participant, StudyItem.participant_id == Participant.id)
                .where(Participant.study_id == study_id, StudyItem.is_repeat.is_(False),
                       StudyItem.is_attention_check.is_(False), StudyItem.gallery.is_(None))):
            state.add(stimulus, left, right, answer)
        return state

    def _add_adaptive_item(self, s: Session, row: Study, study: StudyDefinition, participant: Participant) -> None:
        """Add the participant's next item of an adaptive study when every earlier one is answered. The caller
        holds the study row's lock (FOR UPDATE on PostgreSQL, SQLite's write lock), so replicas choose one at a
        time from the same votes, and a second call for the same position finds the item made by the first."""
        items = list(s.scalars(select(StudyItem).where(StudyItem.participant_id == participant.id)
                               .order_by(StudyItem.position).execution_options(populate_existing=True)))
        if len(items) >= study.n_items or any(i.answer is None for i in items):
            return
        position = len(items)
        slot = adaptive_slots(study, participant.participant_index, study.seed)[position]
        score = votes = None
        if "attention" in slot:
            item = slot["attention"]
        elif "repeat_of_main" in slot:
            mains = [i for i in items if not i.is_repeat and not i.is_attention_check]
            first = mains[slot["repeat_of_main"]]
            item = repeat_item(PlannedItem(first.position, first.stimulus, first.left_condition,
                                           first.right_condition), position)
        else:
            seen: dict[int, int] = {}
            for i in items:
                if not i.is_repeat and not i.is_attention_check:
                    seen[i.stimulus] = seen.get(i.stimulus, 0) + 1
            choice = choose_adaptive_item(study, self._sampler_state(s, row.id, study),
                                          participant.participant_index, position, study.seed, seen)
            item, score, votes = choice.item, choice.score, choice.n_votes
        self._add_item(s, row, participant, participant.session_id, item, sampler="adaptive", score=score,
                       votes=votes)
        s.flush()
        s.expire(participant, ["items"])

    def _add_item(self, s: Session, row: Study, participant: Participant, session_id: str, item: Any,
                  sampler: str = "latin", score: float | None = None, votes: int | None = None) -> None:
        stim = row.stimuli[item.stimulus]
        scores = stim.get("scores") or {}  # metric scores of each output, computed at preparation
        images = {**stim["outputs"], ATTENTION_CLEAN: stim["clean"], ATTENTION_CONTROL: stim["control"]}
        shown = item.shown if isinstance(item, GalleryItem) else (item.left, item.right)
        made_by = stim.get("guide") or {}  # a guide study's stimulus: how its candidates were made
        rnd = store.create_round(s, store.RoundRecord(
            session_id=session_id, source_image_id=stim["source_image_id"], backbone_name=STUDY_BACKBONE_NAME,
            code_version=self.fb.worker.code_version, device=self.fb.worker.settings.device,
            dtype=self.fb.worker.settings.dtype, study_id=row.id,
            condition="attention-check" if item.is_attention_check else None,
            prior_id=made_by.get("prior", {}).get("prior_id"),
            prior_weights_hash=made_by.get("prior", {}).get("weights_hash"),
            params={"study_item": item.to_dict(), "stimulus": {k: stim[k] for k in ("image", "degradation", "seed")},
                    "sampler": {"name": sampler, "score": score, "votes": votes},
                    "facts": {c: stim["facts"].get(c) for c in dict.fromkeys(shown)},
                    **({"guide": {k: made_by[k] for k in ("condition", "candidates")}} if made_by else {})},
            seeds=(stim["seed"],)))
        if isinstance(item, GalleryItem):
            store.add_candidates(s, rnd.id, [store.CandidateSpec(image_hash=images[c], method=c, position=p,
                                                                 scores=dict(scores.get(c) or {}),
                                                                 **(_candidate_lineage(stim, c) if made_by else {}))
                                             for p, c in enumerate(shown)])
            s.add(StudyItem(participant_id=participant.id, position=item.position, stimulus=item.stimulus,
                            round_id=rnd.id, gallery=[{"condition": c, "image_hash": images[c]} for c in shown],
                            is_repeat=item.is_repeat, repeat_of=item.repeat_of,
                            is_attention_check=item.is_attention_check, expected=item.expected, sampler=sampler,
                            sampler_score=score, sampler_votes=votes))
            return
        store.add_candidates(s, rnd.id, [
            store.CandidateSpec(image_hash=images[item.left], method=item.left, position=0,
                                scores=dict(scores.get(item.left) or {})),
            store.CandidateSpec(image_hash=images[item.right], method=item.right, position=1,
                                scores=dict(scores.get(item.right) or {}))])
        s.add(StudyItem(participant_id=participant.id, position=item.position, stimulus=item.stimulus,
                        round_id=rnd.id, left_image_hash=images[item.left], right_image_hash=images[item.right],
                        left_condition=item.left, right_condition=item.right, is_repeat=item.is_repeat,
                        repeat_of=item.repeat_of, is_attention_check=item.is_attention_check,
                        expected=item.expected, sampler=sampler, sampler_score=score, sampler_votes=votes))

    def _participant(self, s: Session, who: Principal, study_id: str, participant_id: str) -> Participant:
        participant = s.get(Participant, participant_id) if isinstance(participant_id, str) else None
        if participant is None or participant.study_id != study_id:
            raise NotFound(f"no participant {str(participant_id)[:40]!r} in study {str(study_id)[:40]!r}")
        if not who.admin and who.session_id != participant.session_id:
            raise AuthError("this token belongs to another participant", 403)
        return participant

    def next_item(self, who: Principal, study_id: str, participant_id: str) -> dict[str, Any]:
        """The first unanswered item (so a reload resumes), or {done, completion_code} when all are answered."""
        with self.fb.db.sessions.begin() as s:
            row, study = self._study(s, study_id, active=True)
            participant = self._participant(s, who, study_id, participant_id)
            if participant.screened_out_at is not None:
                return {"done": True, "screened_out": True, "n": study.n_items, "redirect": study.screenout_url}
            items = participant.items
            if (study.sampling == "adaptive" and len(items) < study.n_items
                    and all(item.answer is not None for item in items)):
                s.execute(select(Study.id).where(Study.id == study_id).with_for_update())
                self._add_adaptive_item(s, row, study, participant)
                items = participant.items
            n = max(len(items), study.n_items) if study.sampling == "adaptive" else len(items)
            todo = next((item for item in items if item.answer is None), None)
            if todo is None:
                if participant.status != "completed":
                    participant.status, participant.completed_at = "completed", utcnow()
                done = {"done": True, "completion_code": participant.completion_code, "n": n}
                link = completion_link(study.completion_url, participant.completion_code)
                return done if link is None else {**done, "redirect": link}
            if todo.gallery is not None:
                return {"done": False, "k": todo.position + 1, "n": n, "instructions": study.instructions,
                        "gallery": [{"image_id": g["image_hash"]} for g in todo.gallery]}
            return {"done": False, "k": todo.position + 1, "n": n, "instructions": study.instructions,
                    "left": {"image_id": todo.left_image_hash}, "right": {"image_id": todo.right_image_hash}}

    def vote(self, who: Principal, study_id: str, participant_id: str, k: int, choice: Any,
             decision_ms: Any = None, zoom_count: Any = None, viewport: Any = None,
             dpr: Any = None, worst: Any = None, regions: Any = None) -> dict[str, Any]:
        """Record the answer to item k (1-based) with its viewing conditions; a repeat of the same answer is a
        no-op (created False), a different answer to an answered item is a Conflict.

        Pairwise items: `choice` left | right | tie. Gallery items: `choice` is the best image's position 1..K
        (text or integer) and `worst` optionally another position. `regions`: boxes where the participant saw a
        problem (`feedback.record.regions.check_regions`). A failed attention check in a study with a
        screen-out URL screens the participant out: the answer says so (`screened_out`, `redirect`)."""
        _int("zoom_count", zoom_count, 0, 1_000_000)
        width = height = None
        if viewport is not None:
            if not isinstance(viewport, (list, tuple)) or len(viewport) != 2:
                raise InputError("viewport must be [width, height] in CSS pixels")
            width, height = (_int("viewport width", viewport[0], 1, MAX_VIEWPORT, optional=False),
                             _int("viewport height", viewport[1], 1, MAX_VIEWPORT, optional=False))
        if dpr is not None and (isinstance(dpr, bool) or not isinstance(dpr, (int, float)) or not 0 < dpr <= 16):
            raise InputError(f"dpr (device pixel ratio) must be a number in (0, 16], got {str(dpr)[:20]!r}")

        def write() -> dict[str, Any]:
            with self.fb.db.sessions.begin() as s:
                _row, study = self._study(s, study_id)
                participant = self._participant(s, who, study_id, participant_id)
                items = participant.items
                valid = not isinstance(k, bool) and isinstance(k, int) and 1 <= k <= len(items)
                if participant.screened_out_at is not None and not (valid and items[k - 1].answer is not None):
                    raise Conflict("this participant was screened out by a failed attention check; no more answers")
                if not valid:
                    raise NotFound(f"item k must be in 1..{len(items)}, got {k!r}")
                item = items[k - 1]
                answer, worst_mark = _answer(item, choice, worst)
                marks = check_regions(regions, 2 if item.gallery is None else len(item.gallery))
                if item.answer is not None:
                    if (item.answer, item.worst) != (answer, worst_mark):
                        raise Conflict(f"item {k} was already answered ({item.answer}"
                                       f"{f', worst {item.worst}' if item.worst else ''}); answers cannot be changed")
                    return {"k": k, "n": len(items), "created": False, "choice_id": item.choice_id}
                first_open = next(i for i in items if i.answer is None)
                if first_open is not item:
                    raise Conflict(f"answer item {first_open.position + 1} first (items are judged in order)")
                shown = sorted(s.scalars(select(Candidate).where(Candidate.round_id == item.round_id)),
                               key=lambda c: c.position)
                selector = "attention-check" if item.is_attention_check else "human"
                facts = {"decision_ms": decision_ms, "selector": selector, "idempotency_key": f"study-item:{item.id}",
                         "zoom_count": zoom_count, "viewport": None if width is None else (width, height),
                         "device_pixel_ratio": dpr, "marks": marks, "consent_version": participant.consent_version}
                if item.gallery is None:
                    left, right = shown
                    preferred, rejected = {"left": ([left.id], [right.id]), "right": ([right.id], [left.id]),
                                           "tie": ([left.id, right.id], [])}[answer]
                    vote = choices.ChoiceInput(ChoiceKind.TIE if answer == "tie" else ChoiceKind.PAIRWISE,
                                               preferred, rejected, **facts)
                else:
                    best = int(answer) - 1
                    # best x others come with the choice; the others beat the worst
                    beat_worst = [(a.id, b.id) for a, b in gallery_pairs(shown, best, None if worst_mark is None
                                                                         else int(worst_mark) - 1)
                                  if a is not shown[best]]
                    vote = choices.ChoiceInput(ChoiceKind.PAIRWISE, [shown[best].id],
                                               [c.id for c in shown if c is not shown[best]],
                                               extra_pairs=beat_worst, **facts)
                row, created = choices.record_choice(s, item.round_id, vote)
                item.answer, item.worst, item.choice_id, item.answered_at = answer, worst_mark, row.id, utcnow()
                out = {"k": k, "n": len(items), "created": created, "choice_id": row.id}
                if item.is_attention_check and answer != item.expected and study.screenout_url:
                    participant.screened_out_at = utcnow()
                    out |= {"screened_out": True, "redirect": study.screenout_url}
                s.flush()
                return out
        # One answer per item (a repeat is a no-op), so a transient database error is safely retried.
        return retry_transient(write)

    def withdraw(self, study_id: str, completion_code: Any) -> dict[str, int]:
        """Delete every row of the participant with this completion code (items, votes, pairs, rounds,
        candidates, session, and the pseudonym when no other session uses it); returns rows deleted per table."""
        code = normalise_code(completion_code)
        with self.fb.db.sessions.begin() as s:
            self._study(s, study_id)
            participant = s.scalar(select(Participant).where(Participant.study_id == study_id,
                                                             Participant.completion_code == code))
            if participant is None:
                raise NotFound("no participant of this study has this completion code")
            return delete_participant(s, participant)

    def withdraw_participant(self, who: Principal, study_id: str, participant_id: str) -> dict[str, int]:
        """Withdraw at any point (the participant's own token): delete their rows, as `withdraw` does."""
        with self.fb.db.sessions.begin() as s:
            self._study(s, study_id)
            return delete_participant(s, self._participant(s, who, study_id, participant_id))


def _candidate_lineage(stim: dict[str, Any], label: str) -> dict[str, Any]:
    """Seed, strength and is_restored of a guide study's candidate (none for attention-check images)."""
    fact = stim["facts"].get(label)
    if fact is None:
        return {}
    return {"seed": fact.get("seed"), "strength": fact.get("strength"), "is_restored": bool(fact.get("is_restored"))}


def _answer(item: StudyItem, choice: Any, worst: Any) -> tuple[str, str | None]:
    """(answer, worst) of a vote on `item`, checked against its kind; InputError says what is allowed."""
    if item.gallery is None:
        if not isinstance(choice, str) or choice not in CHOICES:
            raise InputError(f"choice must be one of {', '.join(CHOICES)}, got {str(choice)[:20]!r}")
        if worst is not None:
            raise InputError("worst applies to gallery items only; this item shows two images (left, right)")
        return choice, None
    k = len(item.gallery)
    answer = gallery_answer(choice, k)
    worst_mark = None if worst is None else gallery_answer(worst, k, "worst")
    if worst_mark == answer:
        raise InputError("the image marked worst must not be the one picked as best")
    return answer, worst_mark


def delete_participant(s: Session, participant: Participant) -> dict[str, int]:
    """Delete a participant's rows and nothing else; returns the number of rows deleted per table."""
    session_id = participant.session_id
    round_ids = select(Round.id).where(Round.session_id == session_id).scalar_subquery()
    choice_ids = select(Choice.id).where(Choice.round_id.in_(round_ids)).scalar_subquery()
    deleted: dict[str, int] = {}

    def run(table: str, statement: Any) -> None:
        deleted[table] = deleted.get(table, 0) + (s.execute(statement.execution_options(synchronize_session=False))
                                                  .rowcount or 0)

    run("study_items", delete(StudyItem).where(StudyItem.participant_id == participant.id))
    run("preference_pairs", delete(PreferencePair).where(PreferencePair.choice_id.in_(choice_ids)))
    run("choice_candidates", delete(ChoiceCandidate).where(ChoiceCandidate.choice_id.in_(choice_ids)))
    run("refinements", delete(Refinement).where(Refinement.round_id.in_(round_ids)))
    run("choices", delete(Choice).where(Choice.id.in_(choice_ids)))
    run("candidates", delete(Candidate).where(Candidate.round_id.in_(round_ids)))
    run("rounds", delete(Round).where(Round.session_id == session_id))
    run("participants", delete(Participant).where(Participant.id == participant.id))
    annotator_id = s.scalar(select(SessionRow.annotator_id).where(SessionRow.id == session_id))
    run("sessions", delete(SessionRow).where(SessionRow.id == session_id))
    if not s.scalar(select(func.count()).select_from(SessionRow).where(SessionRow.annotator_id == annotator_id)):
        run("annotators", delete(Annotator).where(Annotator.id == annotator_id))
    s.expire_all()
    return deleted
