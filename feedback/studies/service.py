"""User studies as a service: create a study (its stimuli computed in the background), enrol participants,
serve their items in order, record votes with their viewing conditions, withdraw, analyse. The participant
side (enrolment, items, votes, withdrawal) is `feedback.studies.participants`; this module creates, lists and
analyses studies and holds the command line.

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
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from feedback.analysis.report import analyze
from feedback.analysis.votes import AnalysisConfig, load_regions, load_votes
from feedback.loop.service import FeedbackService
from feedback.record import store
from feedback.record.errors import Conflict, InputError, NotFound
from feedback.record.models import Annotator, Choice, Participant, Round, SessionRow, Study, StudyItem
from feedback.studies.participants import StudyParticipants
from feedback.studies.prepare import (
    StudyPreparer,
    check_conditions,
    check_degradations,
    check_guide,
    check_stimulus_metrics,
    store_inputs,
)
from feedback.studies.sampling import choose_adaptive_item
from feedback.studies.study import StudyDefinition, load_study, study_from_dict

MAX_WAIT_S = 3600.0


def _status(row: Study) -> dict[str, Any]:
    return {"study_id": row.id, "name": row.name, "status": row.status,
            "progress": {"done": row.progress_done, "total": row.progress_total}, "error": row.error}


class StudyService(StudyParticipants):
    """Studies over the app's `FeedbackService` (its database, image store, engine and salt).

    The service owns the background `StudyPreparer` of the studies it creates: an app makes one StudyService
    and shares it (REST routes, admin tab); `resume_preparing()` at start picks up studies a killed process
    left 'preparing', `close()` stops the worker. Enrolment, items, votes and withdrawal come from
    `StudyParticipants` (`feedback.studies.participants`)."""

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
