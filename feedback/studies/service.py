"""User studies as a service: create a study (its stimuli computed in the background), enrol participants,
serve their items in order, record votes with their viewing conditions, withdraw, analyse.

Every item is recorded as a round of the participant's session with two candidates, position 0 on the
left and 1 on the right, whose `method` is the condition shown; a vote is a `Choice` of that round (selector
'human', or 'attention-check' for attention checks, which `feedback.analysis.report` therefore leaves out). So
`feedback.analysis.report` and `feedback.analysis.export` read study votes unchanged. A gallery item (K > 2) is a round with K
candidates at positions 0..K-1 in shown order; its vote (best position, optional worst) is a pairwise Choice
(best preferred over the others) whose preference pairs are `feedback.studies.study.gallery_pairs`: the best beats
each other image and each other image beats the worst, so analysis and export read them as pairs too. A
participant only ever sees finished PNGs by their hash (blind and fast). A guide study's gallery shows a
stimulus's TTPO candidates: their methods are 'restored', 'c0', ... and they carry their seed, strength and
is_restored, the round its prior id and weights hash, so its votes are exported as preference pairs between
candidates with their lineage (`feedback.studies.guide`).

Creation returns at once: `create_study` checks the definition, conditions, degradations and images, records
the study as 'preparing' and hands it to the service's `StudyPreparer` (`feedback.studies.prepare`), which
computes every stimulus x condition in a background thread and switches the study to 'active' (or 'failed',
with the error) in one transaction. Enrolling in, or fetching items of, a study that is not active is a
Conflict (409) that says how far its preparation is. `wait_until_ready` blocks until it is (CLI, tests).

    python -m feedback.studies.service create studies/pilot.yaml --data-dir data [--db URL]

waits for the stimuli, then prints the study id and the participant link path (/study/<id>); analyse with
`python -m feedback.analysis.report --study <id>` or GET /api/v1/studies/<id>/analysis (admin token).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from feedback.analysis.report import AnalysisConfig, analyze, load_regions, load_votes
from feedback.loop.service import AuthError, FeedbackService, Principal
from feedback.record import store
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
from feedback.record.store import WIN_LABEL
from feedback.studies.prepare import (
    StudyPreparer,
    check_conditions,
    check_degradations,
    check_guide,
    check_stimulus_metrics,
    store_inputs,
)
from feedback.studies.sampling import (
    SamplerState,
    adaptive_slots,
    choose_adaptive_item,
    repeat_item,
)
from feedback.studies.study import (
    ATTENTION_CLEAN,
    ATTENTION_CONTROL,
    GalleryItem,
    PlannedItem,
    StudyDefinition,
    assign_items,
    completion_link,
    gallery_answer,
    gallery_pairs,
    load_study,
    new_completion_code,
    normalise_code,
    study_from_dict,
)

CHOICES = STUDY_ANSWERS  # left | right | tie
STUDY_BACKBONE_NAME = "study"  # rounds of a study show finished images; no backbone runs in them
MAX_VIEWPORT = 100_000
MAX_WAIT_S = 3600.0


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


def _status(row: Study) -> dict[str, Any]:
    return {"study_id": row.id, "name": row.name, "status": row.status,
            "progress": {"done": row.progress_done, "total": row.progress_total}, "error": row.error}


class StudyService:
    """Studies over the app's `FeedbackService` (its database, image store, engine and salt).

    The service owns the background `StudyPreparer` of the studies it creates: an app makes one StudyService
    and shares it (REST routes, admin tab); `resume_preparing()` at start picks up studies a killed process
    left 'preparing', `close()` stops the worker."""

    def __init__(self, feedback: FeedbackService) -> None:
        self.fb = feedback
        self.preparer = StudyPreparer(feedback)

    # ------------------------------------------------------------------------------ admin: studies
    def create_study(self, definition: StudyDefinition | dict[str, Any]) -> dict[str, Any]:
        """Check the definition, conditions, degradations and images now; record the study 'preparing' and
        compute its stimuli in the background. -> {study_id, name, status, stimuli, conditions, n_items, progress}"""
        study = definition if isinstance(definition, StudyDefinition) else study_from_dict(definition)
        check_conditions(self.fb, study)
        check_degradations(self.fb, study)
        check_stimulus_metrics(self.fb, study)
        inputs = store_inputs(self.fb, study)
        check_guide(self.fb, study, inputs)  # checked again (and its votes read) when the study is prepared
        with self.fb.db.sessions.begin() as s:
            row = Study(name=study.name, definition=study.to_dict(), consent_version=study.consent_version,
                        stimuli=[], status="preparing", progress_done=0, progress_total=len(study.stimuli),
                        inputs=inputs)
            s.add(row)
            s.flush()
            created = {**_status(row), "stimuli": len(study.stimuli), "conditions": list(study.conditions),
                       "n_items": study.n_items}
        self.preparer.submit(created["study_id"])
        return created

    def resume_preparing(self) -> list[str]:
        """Prepare again every study a killed process left 'preparing' (call once when the app starts)."""
        return self.preparer.resume()

    def close(self, timeout_s: float | None = None) -> None:
        """Stop the background worker after the study in hand (the rest stay 'preparing' for the next start)."""
        self.preparer.close(timeout_s)

    def study_status(self, study_id: str) -> dict[str, Any]:
        """{study_id, name, status: preparing|active|failed, progress: {done, total}, error}."""
        with self.fb.db.reads.begin() as s:
            row = s.get(Study, study_id) if isinstance(study_id, str) else None
            if row is None:
                raise NotFound(f"no study with id {str(study_id)[:40]!r}")
            return _status(row)

    def wait_until_ready(self, study_id: str, timeout_s: float = 600.0, poll_s: float = 0.1) -> dict[str, Any]:
        """`study_status` once the study is no longer 'preparing', or after `timeout_s` seconds (still
        'preparing' then). Polls the database, so it also sees studies prepared by another process."""
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 <= timeout_s <= MAX_WAIT_S:
            raise InputError(f"timeout must be a number of seconds in [0, {MAX_WAIT_S:g}], got {timeout_s!r}")
        deadline = time.monotonic() + timeout_s
        while (status := self.study_status(study_id))["status"] == "preparing" and time.monotonic() < deadline:
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        return status

    def _study(self, s: Session, study_id: str, lock: bool = False,
               active: bool = False) -> tuple[Study, StudyDefinition]:
        """The study row and its definition; `lock` holds the row (FOR UPDATE on PostgreSQL) to the end of `s`;
        `active`: Conflict unless the study is active (its stimuli are ready)."""
        row = s.get(Study, study_id, with_for_update=lock) if isinstance(study_id, str) else None
        if row is None:
            raise NotFound(f"no study with id {study_id!r}")
        if active and row.status == "preparing":
            raise Conflict(f"study {row.id} is still being prepared ({row.progress_done} of {row.progress_total} "
                           "stimuli); try again in a few minutes")
        if active and row.status != "active":
            # The error text stays with the admin (it may name server files); participants learn the state.
            raise Conflict(f"study {row.id} failed: its images could not be prepared, so it is not open")
        return row, study_from_dict(row.definition)

    def list_studies(self) -> list[dict[str, Any]]:
        with self.fb.db.sessions.begin() as s:
            counts = dict(s.execute(select(Participant.study_id, func.count()).group_by(Participant.study_id)).all())
            return [{**_status(r), "consent_version": r.consent_version,
                     "conditions": r.definition["conditions"], "participants": counts.get(r.id, 0),
                     "created_at": r.created_at.isoformat()}
                    for r in s.scalars(select(Study).order_by(Study.created_at))]

    def public_info(self, study_id: str) -> dict[str, Any]:
        """What the participant page shows before enrolment: name, consent text and version, instructions, and
        whether the study is open (status 'active'; 'preparing' or 'failed' otherwise, without the error)."""
        with self.fb.db.sessions.begin() as s:
            row, study = self._study(s, study_id)
            return {"study_id": row.id, "name": study.name, "consent_text": study.consent_text,
                    "consent_version": study.consent_version, "instructions": study.instructions,
                    "n_items": study.n_items, "status": row.status,
                    "progress": {"done": row.progress_done, "total": row.progress_total}}

    # ------------------------------------------------------------------------------ participants
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
        rnd = store.create_round(
            s, session_id=session_id, source_image_id=stim["source_image_id"], backbone_name=STUDY_BACKBONE_NAME,
            code_version=self.fb.worker.code_version, device=self.fb.worker.settings.device,
            dtype=self.fb.worker.settings.dtype, study_id=row.id,
            condition="attention-check" if item.is_attention_check else None,
            prior_id=made_by.get("prior", {}).get("prior_id"),
            prior_weights_hash=made_by.get("prior", {}).get("weights_hash"),
            params={"study_item": item.to_dict(), "stimulus": {k: stim[k] for k in ("image", "degradation", "seed")},
                    "sampler": {"name": sampler, "score": score, "votes": votes},
                    "facts": {c: stim["facts"].get(c) for c in dict.fromkeys(shown)},
                    **({"guide": {k: made_by[k] for k in ("condition", "candidates")}} if made_by else {})},
            seeds=[stim["seed"]])
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
                if item.gallery is None:
                    left, right = shown
                    preferred, rejected = {"left": ([left.id], [right.id]), "right": ([right.id], [left.id]),
                                           "tie": ([left.id, right.id], [])}[answer]
                    row, created = store.record_choice(
                        s, item.round_id, preferred, rejected, "tie" if answer == "tie" else "pairwise",
                        decision_ms=decision_ms, selector=selector, idempotency_key=f"study-item:{item.id}")
                else:
                    best = int(answer) - 1
                    row, created = store.record_choice(
                        s, item.round_id, [shown[best].id], [c.id for c in shown if c is not shown[best]],
                        "pairwise", decision_ms=decision_ms, selector=selector,
                        idempotency_key=f"study-item:{item.id}")
                    if created:  # best x others came with the choice; the others beat the worst
                        row.pairs += [PreferencePair(chosen_candidate_id=a.id, rejected_candidate_id=b.id,
                                                     label=WIN_LABEL)
                                      for a, b in gallery_pairs(shown, best, None if worst_mark is None
                                                                else int(worst_mark) - 1)
                                      if a is not shown[best]]
                row.zoom_count, row.viewport_w, row.viewport_h = zoom_count, width, height
                row.device_pixel_ratio = None if dpr is None else float(dpr)
                row.consent_version = participant.consent_version
                if marks is not None:  # left unset it stays SQL NULL (assigning None would store JSON null)
                    row.regions = marks
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

    # ------------------------------------------------------------------------------ analysis
    def analysis(self, study_id: str, config: AnalysisConfig | None = None) -> dict[str, Any]:
        """`feedback.analysis.report.analyze` over the study's human votes (region marks included), plus per participant:
        status, answers, attention checks passed, and the analysis pseudonym (the key of `participants`), and the
        sampler's state (`sampling`)."""
        with self.fb.db.sessions.begin() as s:
            _row, study = self._study(s, study_id)
            votes = load_votes(s, study_id=study_id)
            regions = load_regions(s, study_id)
            sampling = self._sampling_report(s, study_id, study)
            people = {}
            for p, pseud in s.execute(select(Participant, Annotator.pseudonym)
                                      .join(SessionRow, Participant.session_id == SessionRow.id)
                                      .join(Annotator, SessionRow.annotator_id == Annotator.id)
                                      .where(Participant.study_id == study_id)):
                checks = [i for i in p.items if i.is_attention_check and i.answer is not None]
                people[p.id] = {"pseudonym": pseud, "index": p.participant_index,
                                "status": "screened_out" if p.screened_out_at is not None else p.status,
                                "answered": sum(i.answer is not None for i in p.items),
                                "n_items": max(len(p.items), study.n_items if study.sampling == "adaptive" else 0),
                                "attention_checks": len(checks),
                                "attention_passed": sum(i.answer == i.expected for i in checks)}
        report = analyze(votes, config or AnalysisConfig(), regions=regions)
        report["study_participants"] = people
        report["sampling"] = sampling
        return report

    def _sampling_report(self, s: Session, study_id: str, study: StudyDefinition) -> dict[str, Any]:
        """How the study's items were chosen: items per sampler, the adaptive items' mean score, and for an
        adaptive study the posterior now (mean and sd per condition) and the pair it would show next."""
        counts = dict(s.execute(select(StudyItem.sampler, func.count()).join(Participant)
                                .where(Participant.study_id == study_id).group_by(StudyItem.sampler)).all())
        mean_score = s.scalar(select(func.avg(StudyItem.sampler_score)).join(Participant)
                              .where(Participant.study_id == study_id))
        out: dict[str, Any] = {"sampler": study.sampling, "items": counts,
                               "mean_score_bits": None if mean_score is None else float(mean_score)}
        if study.sampling == "adaptive":
            state = self._sampler_state(s, study_id, study)
            mean, cov = state.posterior()
            choice = choose_adaptive_item(study, state, 0, 0, study.seed)
            out |= {"votes": state.n_votes, "pending": int(state.pending.sum() // 2),
                    "posterior": {c: {"mean": float(mean[i]), "sd": float(cov[i, i] ** 0.5)}
                                  for i, c in enumerate(state.conditions)},
                    "next_pair": sorted((choice.item.left, choice.item.right)), "next_score_bits": choice.score}
        return out

    def export_rows(self, study_id: str) -> list[dict[str, Any]]:
        """Every preference pair of the study (`store.export_pairs` rows), attention checks included, each with its
        vote's region marks (`regions`, [] without)."""
        with self.fb.db.sessions.begin() as s:
            self._study(s, study_id)
            marks = dict(s.execute(select(Choice.id, Choice.regions).join(Round, Choice.round_id == Round.id)
                                   .where(Round.study_id == study_id, Choice.regions.is_not(None))).all())
            return [{**row, "regions": marks.get(row["choice_id"]) or []}
                    for row in store.export_pairs(s) if row["study_id"] == study_id]


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


def main(argv: list[str] | None = None) -> None:
    from feedback.loop.engine import EngineSettings
    from feedback.record.db import open_database

    parser = argparse.ArgumentParser(prog="python -m feedback.studies.service", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["create"], help="create: record a study from a file and compute its stimuli")
    parser.add_argument("definition", help="study definition (.yaml, .yml or .json)")
    parser.add_argument("--db", default=None, help="database URL (default: $TTPO_DB_URL or SQLite in --data-dir)")
    parser.add_argument("--data-dir", default="data", help="images, SQLite database and pseudonym salt")
    parser.add_argument("--prior", default="default", help="diffusion prior for 'ttpo-auto:' conditions")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--timeout", type=float, default=MAX_WAIT_S, help="seconds to wait for the stimuli")
    args = parser.parse_args(argv)
    studies = None
    try:
        study = load_study(args.definition)
        feedback = FeedbackService(open_database(args.db, args.data_dir), args.data_dir,
                                   EngineSettings(prior=args.prior, device=args.device))
        studies = StudyService(feedback)
        created = studies.create_study(study)
        status = studies.wait_until_ready(created["study_id"], timeout_s=args.timeout)
    except (InputError, NotFound) as exc:
        parser.exit(2, f"error: {exc}\n")
    finally:
        if studies is not None:
            studies.close(timeout_s=0)
    if status["status"] != "active":  # failed, or still preparing (an app started later picks it up)
        parser.exit(1, f"error: study {created['study_id']} is {status['status']}"
                       f"{': ' + status['error'] if status['error'] else ''}\n")
    print(json.dumps({**created, **status, "participant_page": f"/study/{created['study_id']}"}))


if __name__ == "__main__":
    main()
