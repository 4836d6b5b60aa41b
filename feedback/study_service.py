"""User studies as a service: create a study (precompute every stimulus x condition once), enrol participants,
serve their items in order, record votes with their viewing conditions, withdraw, analyse.

Every item is recorded as a round of the participant's session with two candidates, position 0 on the
left and 1 on the right, whose `method` is the condition shown; a vote is a `Choice` of that round (selector
'human', or 'attention-check' for attention checks, which `feedback.analysis` therefore leaves out). So
`feedback.analysis` and `feedback.export` read study votes unchanged. Images are computed when the study is
created (fast and blind: a participant only ever sees finished PNGs by their hash).

Conditions: a backbone name ('nlm', 'sipl', ...) restores the stimulus once; 'ttpo-auto:<backbone>' restores,
generates diffusion candidates, lets the metric selector choose and refines (one automatic TTPO round).

    python -m feedback.study_service create studies/pilot.yaml --data-dir data [--db URL]

prints the study id and the participant link path (/study/<id>); analyse with
`python -m feedback.analysis --study <id>` or GET /api/v1/studies/<id>/analysis (admin token).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from feedback import store
from feedback.analysis import AnalysisConfig, analyze, load_votes
from feedback.db import retry_transient
from feedback.errors import Conflict, InputError, NotFound
from feedback.models import (
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
from feedback.pseudonym import hash_token, new_token, pseudonym
from feedback.service import (
    AuthError,
    FeedbackService,
    Principal,
    _to_tensor,
    _to_uint8,
)
from feedback.study import (
    ATTENTION_CLEAN,
    ATTENTION_CONTROL,
    ATTENTION_CONTROL_SPEC,
    StudyDefinition,
    assign_items,
    is_image_id_text,
    load_study,
    new_completion_code,
    normalise_code,
    study_from_dict,
)
from feedback.uploads import decode_image_bytes

TTPO_AUTO_PREFIX = "ttpo-auto:"
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


class StudyService:
    """Studies over the app's `FeedbackService` (its database, image store, engine and salt)."""

    def __init__(self, feedback: FeedbackService) -> None:
        self.fb = feedback

    # ------------------------------------------------------------------------------ admin: studies
    def check_conditions(self, study: StudyDefinition) -> None:
        """InputError naming what is allowed when a condition is not a backbone or 'ttpo-auto:<backbone>'."""
        for condition in study.conditions:
            backbone = condition.removeprefix(TTPO_AUTO_PREFIX)
            try:
                self.fb.worker.check_backbone(backbone)
            except InputError as exc:
                raise InputError(f"condition {condition!r}: {exc.message}; or 'ttpo-auto:<backbone>'") from None

    def _load_image(self, entry: str, size: int | None) -> np.ndarray:
        if is_image_id_text(entry):
            array = self.fb.images.get_array(entry)
        else:
            try:
                with open(entry, "rb") as handle:
                    data = handle.read(self.fb.limits.max_bytes + 1)
            except OSError as exc:
                raise InputError(f"study image {entry!r} cannot be read: {exc.strerror}") from None
            array = decode_image_bytes(data, self.fb.limits)
        if size is not None:
            h, w = array.shape[:2]
            scale = size / max(h, w)
            image = Image.fromarray(array).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                  Image.Resampling.BICUBIC)
            array = np.asarray(image, dtype=np.uint8).copy()
        return array

    def run_condition(self, condition: str, degraded: torch.Tensor, seed: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """The condition's output for one degraded image (1, 3, H, W) in [0, 1], and what was run."""
        # Only the backbone: the diffusion prior is loaded for 'ttpo-auto:' conditions alone.
        from restoration.backbones import get_restorer

        worker = self.fb.worker
        backbone = worker.check_backbone(condition.removeprefix(TTPO_AUTO_PREFIX))
        try:
            restorer = get_restorer(backbone, worker.settings.device)
        except (ValueError, FileNotFoundError) as exc:
            raise InputError(f"condition {condition!r}: backbone {backbone!r} cannot be loaded: {exc}") from None
        t0 = time.perf_counter()
        restored = restorer.restore(degraded).clamp(0, 1)
        seconds, facts = time.perf_counter() - t0, restorer.describe()
        if not condition.startswith(TTPO_AUTO_PREFIX):
            return restored, {"backbone": facts, "seconds": {"restore": seconds}}
        settings = replace(worker.settings.round, seed=seed)
        made, t_cand = worker.candidates(restored, settings)
        images = {"restored": restored} | {f"c{i}": img for i, (img, _meta) in enumerate(made)}
        selection, t_select = worker.select(restored, images, worker.settings.selector)
        def pick(ids: list[str]) -> torch.Tensor | None:
            return torch.cat([images[i] for i in ids]) if ids else None

        preferred, rejected = ([], []) if selection.tie else (selection.preferred_ids, selection.rejected_ids)
        refined, t_refine = worker.refine(restored, pick(preferred), pick(rejected), worker.settings.refine)
        return refined, {"backbone": facts, "selector": selection.selector, "preferred": preferred,
                         "rejected": rejected, "candidates": settings.to_dict(),
                         "refine": worker.settings.refine.to_dict(),
                         "seconds": {"restore": seconds, "candidates": t_cand, "select": t_select, "refine": t_refine}}

    def create_study(self, definition: StudyDefinition | dict[str, Any]) -> dict[str, Any]:
        """Check the definition, compute every stimulus x condition output once, record the study."""
        study = definition if isinstance(definition, StudyDefinition) else study_from_dict(definition)
        self.check_conditions(study)
        t0 = time.perf_counter()
        clean_images = [self._load_image(entry, study.size) for entry in study.images]
        stimuli: list[dict[str, Any]] = []
        with self.fb.gate.slot():
            for j, (i, spec) in enumerate(study.stimuli):
                seed = study.seed + j
                clean = _to_tensor(clean_images[i])
                degraded, record = self.fb.worker.degrade(clean, spec, seed)
                control, _ = self.fb.worker.degrade(clean, ATTENTION_CONTROL_SPEC, seed)
                outputs, facts = {}, {}
                for condition in study.conditions:
                    out, facts[condition] = self.run_condition(condition, degraded, seed)
                    outputs[condition] = self.fb.images.put_array(_to_uint8(out))
                stimuli.append({
                    "image": i, "degradation": spec, "seed": seed, "record": record.to_dict() if record else None,
                    "clean": self.fb.images.put_array(clean_images[i]),
                    "degraded": self.fb.images.put_array(_to_uint8(degraded)),
                    "control": self.fb.images.put_array(_to_uint8(control)),
                    "outputs": outputs, "facts": facts})
        with self.fb.db.sessions.begin() as s:
            for stim in stimuli:
                height, width = clean_images[stim["image"]].shape[:2]
                record = stim["record"]
                src = store.add_source_image(
                    s, image_hash=stim["clean"], width=width, height=height, origin="study",
                    degradation_spec=stim["degradation"] or None, degradation_seed=stim["seed"] if record else None,
                    degradation_params=record, gt_image_hash=stim["clean"] if record else None,
                    degraded_image_hash=stim["degraded"])
                stim["source_image_id"] = src.id
            row = Study(name=study.name, definition=study.to_dict(), consent_version=study.consent_version,
                        stimuli=stimuli)
            s.add(row)
            s.flush()
            return {"study_id": row.id, "name": row.name, "stimuli": len(stimuli),
                    "conditions": list(study.conditions), "n_items": study.n_items,
                    "seconds": time.perf_counter() - t0}

    def _study(self, s: Session, study_id: str, lock: bool = False) -> tuple[Study, StudyDefinition]:
        """The study row and its definition; `lock` holds the row (FOR UPDATE on PostgreSQL) to the end of `s`."""
        row = s.get(Study, study_id, with_for_update=lock) if isinstance(study_id, str) else None
        if row is None:
            raise NotFound(f"no study with id {study_id!r}")
        return row, study_from_dict(row.definition)

    def list_studies(self) -> list[dict[str, Any]]:
        with self.fb.db.sessions.begin() as s:
            counts = dict(s.execute(select(Participant.study_id, func.count()).group_by(Participant.study_id)).all())
            return [{"study_id": r.id, "name": r.name, "consent_version": r.consent_version,
                     "conditions": r.definition["conditions"], "participants": counts.get(r.id, 0),
                     "created_at": r.created_at.isoformat()}
                    for r in s.scalars(select(Study).order_by(Study.created_at))]

    def public_info(self, study_id: str) -> dict[str, Any]:
        """What the participant page shows before enrolment: name, consent text and version, instructions."""
        with self.fb.db.sessions.begin() as s:
            row, study = self._study(s, study_id)
            return {"study_id": row.id, "name": study.name, "consent_text": study.consent_text,
                    "consent_version": study.consent_version, "instructions": study.instructions,
                    "n_items": study.n_items}

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
            row, study = self._study(s, study_id, lock=True)
            if consent_version != row.consent_version:
                raise InputError(f"consent version {str(consent_version)[:32]!r} is not this study's current "
                                 f"version {row.consent_version!r}; show the current consent text again")
            platform_hash = pseudonym(f"platform:{study_id}:{platform_id.strip()}", self.fb.salt) if platform_id else None
            if platform_hash is not None and (old := s.scalar(select(Participant).where(
                    Participant.study_id == study_id, Participant.platform_id_hash == platform_hash))):
                s.get(SessionRow, old.session_id).token_hash = hash_token(token)
                return Enrolment(old.id, token, len(old.items), resumed=True)
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
            planned = assign_items(study, index, study.seed)
            for item in planned:
                self._add_item(s, row, participant, session.id, item)
            return Enrolment(participant.id, token, len(planned), resumed=False)

    def _add_item(self, s: Session, row: Study, participant: Participant, session_id: str, item: Any) -> None:
        stim = row.stimuli[item.stimulus]
        images = {**stim["outputs"], ATTENTION_CLEAN: stim["clean"], ATTENTION_CONTROL: stim["control"]}
        rnd = store.create_round(
            s, session_id=session_id, source_image_id=stim["source_image_id"], backbone_name=STUDY_BACKBONE_NAME,
            code_version=self.fb.worker.code_version, device=self.fb.worker.settings.device,
            dtype=self.fb.worker.settings.dtype, study_id=row.id,
            condition="attention-check" if item.is_attention_check else None,
            params={"study_item": item.to_dict(), "stimulus": {k: stim[k] for k in ("image", "degradation", "seed")},
                    "facts": {c: stim["facts"].get(c) for c in (item.left, item.right)}},
            seeds=[stim["seed"]])
        store.add_candidates(s, rnd.id, [
            store.CandidateSpec(image_hash=images[item.left], method=item.left, position=0),
            store.CandidateSpec(image_hash=images[item.right], method=item.right, position=1)])
        s.add(StudyItem(participant_id=participant.id, position=item.position, stimulus=item.stimulus,
                        round_id=rnd.id, left_image_hash=images[item.left], right_image_hash=images[item.right],
                        left_condition=item.left, right_condition=item.right, is_repeat=item.is_repeat,
                        repeat_of=item.repeat_of, is_attention_check=item.is_attention_check,
                        expected=item.expected))

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
            _row, study = self._study(s, study_id)
            participant = self._participant(s, who, study_id, participant_id)
            items = participant.items
            todo = next((item for item in items if item.answer is None), None)
            if todo is None:
                if participant.status != "completed":
                    participant.status, participant.completed_at = "completed", utcnow()
                return {"done": True, "completion_code": participant.completion_code, "n": len(items)}
            return {"done": False, "k": todo.position + 1, "n": len(items), "instructions": study.instructions,
                    "left": {"image_id": todo.left_image_hash}, "right": {"image_id": todo.right_image_hash}}

    def vote(self, who: Principal, study_id: str, participant_id: str, k: int, choice: Any,
             decision_ms: Any = None, zoom_count: Any = None, viewport: Any = None,
             dpr: Any = None) -> dict[str, Any]:
        """Record the answer to item k (1-based) with its viewing conditions; a repeat of the same answer is a
        no-op (created False), a different answer to an answered item is a Conflict."""
        if choice not in CHOICES:
            raise InputError(f"choice must be one of {', '.join(CHOICES)}, got {str(choice)[:20]!r}")
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
                participant = self._participant(s, who, study_id, participant_id)
                items = participant.items
                if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(items):
                    raise NotFound(f"item k must be in 1..{len(items)}, got {k!r}")
                item = items[k - 1]
                if item.answer is not None:
                    if item.answer != choice:
                        raise Conflict(f"item {k} was already answered ({item.answer}); answers cannot be changed")
                    return {"k": k, "n": len(items), "created": False, "choice_id": item.choice_id}
                first_open = next(i for i in items if i.answer is None)
                if first_open is not item:
                    raise Conflict(f"answer item {first_open.position + 1} first (items are judged in order)")
                left, right = sorted(s.scalars(select(Candidate).where(Candidate.round_id == item.round_id)),
                                     key=lambda c: c.position)
                preferred, rejected = {"left": ([left.id], [right.id]), "right": ([right.id], [left.id]),
                                       "tie": ([left.id, right.id], [])}[choice]
                row, created = store.record_choice(
                    s, item.round_id, preferred, rejected, "tie" if choice == "tie" else "pairwise",
                    decision_ms=decision_ms, selector="attention-check" if item.is_attention_check else "human",
                    idempotency_key=f"study-item:{item.id}")
                row.zoom_count, row.viewport_w, row.viewport_h = zoom_count, width, height
                row.device_pixel_ratio = None if dpr is None else float(dpr)
                row.consent_version = participant.consent_version
                item.answer, item.choice_id, item.answered_at = choice, row.id, utcnow()
                s.flush()
                return {"k": k, "n": len(items), "created": created, "choice_id": row.id}
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

    # ------------------------------------------------------------------------------ analysis
    def analysis(self, study_id: str, config: AnalysisConfig | None = None) -> dict[str, Any]:
        """`feedback.analysis.analyze` over the study's human votes, plus per participant: status, answers,
        attention checks passed, and the analysis pseudonym (the key of `participants`)."""
        with self.fb.db.sessions.begin() as s:
            self._study(s, study_id)
            votes = load_votes(s, study_id=study_id)
            people = {}
            for p, pseud in s.execute(select(Participant, Annotator.pseudonym)
                                      .join(SessionRow, Participant.session_id == SessionRow.id)
                                      .join(Annotator, SessionRow.annotator_id == Annotator.id)
                                      .where(Participant.study_id == study_id)):
                checks = [i for i in p.items if i.is_attention_check and i.answer is not None]
                people[p.id] = {"pseudonym": pseud, "index": p.participant_index, "status": p.status,
                                "answered": sum(i.answer is not None for i in p.items), "n_items": len(p.items),
                                "attention_checks": len(checks),
                                "attention_passed": sum(i.answer == i.expected for i in checks)}
        report = analyze(votes, config or AnalysisConfig())
        report["study_participants"] = people
        return report

    def export_rows(self, study_id: str) -> list[dict[str, Any]]:
        """Every preference pair of the study (`store.export_pairs` rows), attention checks included."""
        with self.fb.db.sessions.begin() as s:
            self._study(s, study_id)
            return [row for row in store.export_pairs(s) if row["study_id"] == study_id]


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
    from feedback.db import open_database
    from feedback.engine import EngineSettings

    parser = argparse.ArgumentParser(prog="python -m feedback.study_service", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["create"], help="create: compute and record a study from a file")
    parser.add_argument("definition", help="study definition (.yaml, .yml or .json)")
    parser.add_argument("--db", default=None, help="database URL (default: $TTPO_DB_URL or SQLite in --data-dir)")
    parser.add_argument("--data-dir", default="data", help="images, SQLite database and pseudonym salt")
    parser.add_argument("--prior", default="default", help="diffusion prior for 'ttpo-auto:' conditions")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        study = load_study(args.definition)
        feedback = FeedbackService(open_database(args.db, args.data_dir), args.data_dir,
                                   EngineSettings(prior=args.prior, device=args.device))
        created = StudyService(feedback).create_study(study)
    except InputError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(json.dumps({**created, "participant_page": f"/study/{created['study_id']}"}))


if __name__ == "__main__":
    main()
