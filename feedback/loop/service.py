"""The preference loop as a service: record (feedback) -> compute (restoration) -> record, one event at a time.

`FeedbackService` is the one long-lived object of the app process: it holds the database, the image
store, the pseudonym salt, the admin token's hash and the diffusion prior (loaded once). The REST API
and the Gradio handlers call its methods; nothing here knows about HTTP or widgets.

Engine work (restore, candidates, selection, refinement) runs under `EngineGate` (`feedback.loop.gate`): one
computation at a time, at most `max_waiting` more waiting; beyond that `Busy` is raised (HTTP 503 + Retry-After).
Sessions, tokens and access checks come from `SessionAccess` (`feedback.loop.sessions`); what the methods
return are the views of `feedback.loop.views`.
A round's tensors never outlive a call: images live in the content-addressed store and the database
records everything needed to regenerate them (settings, seeds, weights hashes, code version).

Round life: `start_round` restores (round 0) and, unless told otherwise, generates the candidates;
`record_choice` stores a person's choice; `refine` uses the latest choice, records the refinement and
creates the next round starting from the refined image (its candidates generated unless told otherwise).
The start image of a round (the restored image in round 0, the refined image later) is itself one of
the round's candidates (`is_restored=True`), shown at a shuffled position like every other candidate.
A new choice on a round supersedes the previous one (kept, marked); refine, export and analysis read the latest.
Restore, candidates and refine report each network step with an estimate and stop at the next step when the
session cancels them, storing nothing (`feedback.loop.jobs`).
"""

from __future__ import annotations

import json
import random
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import torch
from sqlalchemy import select

from feedback.loop.batching import CandidateBatcher
from feedback.loop.engine import DEFAULT_PRIOR, EngineSettings, RefineSettings, RoundSettings, TTPOWorker
from feedback.loop.gate import EngineGate
from feedback.loop.jobs import Job, Jobs
from feedback.loop.sessions import AuthError, Principal, SessionAccess
from feedback.loop.uploads import UploadLimits, decode_upload
from feedback.loop.views import ChoiceView, RefineView, RoundView, round_view
from feedback.record import access, choices, store
from feedback.record.db import Database, retry_transient
from feedback.record.errors import Conflict, InputError
from feedback.record.images import ImageStore
from feedback.record.models import Candidate
from feedback.record.pseudonym import hash_token, load_or_create_salt
from feedback.record.store import RoundRecord

#: progress(fraction done, or None while the stage's step count is unknown; what is happening)
Progress = Callable[[float | None, str], None]


def _reporter(progress: Progress | None) -> Callable[[Job], None] | None:
    """A job's steps as progress(fraction or None while the stage's step count is unknown, message)."""
    if progress is None:
        return None
    return lambda job: progress(job.snapshot()["fraction"], job.describe())


def _to_uint8(t: torch.Tensor) -> np.ndarray:
    return (t[0].detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.astype(np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0).contiguous()


def _int_field(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, str):
        value = value.strip()
        try:
            value = int(value)
        except ValueError:
            raise InputError(f"{name} must be an integer in [{low}, {high}], got {value[:40]!r}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


class FeedbackService(SessionAccess):
    """Long-lived resources of one app process and the loop's operations over them."""

    def __init__(self, db: Database, data_dir: str, engine: EngineSettings = EngineSettings(),
                 admin_token: str | None = None, limits: UploadLimits = UploadLimits(),
                 max_waiting: int = 4, batch_sessions: int = 8) -> None:
        self.db = db
        self.images = ImageStore(data_dir)
        self.salt = load_or_create_salt(data_dir)
        self.worker = TTPOWorker(engine)
        self.limits = limits
        self.gate = EngineGate(max_waiting)
        self.batcher = CandidateBatcher(self.gate, self.worker, max_jobs=batch_sessions)
        self.jobs = Jobs()
        self._admin_hash = hash_token(admin_token) if admin_token else None

    # ------------------------------------------------------------------------------ rounds
    def get_round(self, round_id: str) -> RoundView:
        with self.db.reads.begin() as s:
            return round_view(store.get_round(s, round_id))

    def history(self, session_id: str) -> list[dict[str, Any]]:
        with self.db.reads.begin() as s:
            return access.session_history(s, session_id)

    def live_choice(self, round_id: str) -> ChoiceView | None:
        """The round's live (latest) choice, None when nothing was chosen yet."""
        with self.db.reads.begin() as s:
            choice = choices.latest_choice(s, round_id)
            if choice is None:
                return None
            return ChoiceView(choice.id, len(choice.pairs), False, choice.kind, choice.preferred_ids,
                              choice.rejected_ids, choice.selector)

    def annotator_sessions(self, session_id: str) -> list[dict[str, Any]]:
        """The sessions of this session's annotator, newest first (`access.annotator_sessions`: metadata only)."""
        with self.db.reads.begin() as s:
            return access.annotator_sessions(s, session_id)

    def session_zip(self, session_id: str, folder: str) -> str:
        """Write the session's zip (`feedback.record.session_archive`) into `folder`; its path."""
        from feedback.record.session_archive import session_record, write_session_zip

        with self.db.reads.begin() as s:
            record, image_ids = session_record(s, session_id)
        path = f"{folder}/ttpo-session-{session_id[:12]}.zip"
        return str(write_session_zip(record, image_ids, self.images, path))

    def round_settings(self, candidates: Any = None, seed: Any = None,
                       strengths: Sequence[float] | None = None) -> RoundSettings:
        """Validated candidate settings; None keeps the process defaults; a missing seed is drawn at random."""
        base = self.worker.settings.round
        n = base.num_candidates if candidates in (None, "") else _int_field(
            "candidates", candidates, 1, self.worker.settings.max_candidates)
        seed = secrets.randbelow(2**31) if seed in (None, "") else _int_field("seed", seed, 0, 2**31 - 1)
        return replace(base, num_candidates=n, seed=seed,
                       strengths=base.strengths if not strengths else tuple(float(x) for x in strengths)).checked()

    def start_round(self, session_id: str, image: bytes | np.ndarray, degradation: str | None = None,
                    backbone: str | None = None, candidates: Any = None, seed: Any = None,
                    parent_round_id: str | None = None, origin: str = "upload",
                    strengths: Sequence[float] | None = None, generate: bool = True,
                    prior: str | None = None, fit: bool = False, hint: str | None = None,
                    upscale: bool = False, progress: Progress | None = None) -> RoundView:
        """Decode and check the upload, degrade it when asked (the clean image kept as ground truth), restore,
        and record the round; then generate its candidates unless `generate=False`. `prior` names one of the
        worker's `prior_names()` (default: the process's prior); it is used for the candidates and refinement.
        `fit=True` downscales an image larger than the upload limits to fit them instead of refusing it; the
        round's params then record both sizes (`params["upload"]`), and the stored image is the downscaled one.
        `hint` is a degradation spec the restorer is told (blind when None or empty): the classical baselines
        choose their method by it, and a SIPL backbone told haze dehazes its output at the end; recorded as
        `params["hint"]`.
        `upscale=True` asks a super-resolution backbone (scale s > 1) for real upscaling: the upload is the small
        image, the restoration is s times its size and the round (candidates, refinement, later rounds) continues
        at that size. The output must fit the upload limits, so the upload may be at most 1/s of them (`fit`
        downscales to that). Every round records `params["scale_mode"]` (`same_size` or `upscale`) and
        `params["scale"]`, the backbone's.

        Everything a client sent is checked before anything is computed or stored: a refused request
        leaves no rows and no image files behind. `progress(fraction, message)` hears each step of the restorer's
        network (`feedback.loop.jobs`); `cancel(session_id)` stops it, and nothing is stored."""
        settings = self.round_settings(candidates, seed, strengths)
        request = self.worker.check_restore(backbone, prior, degradation, hint, bool(upscale), settings.seed)
        # upscaling: the output must fit the limits, so the upload may be 1/s of them
        limits = self.limits.for_output_scale(request.scale) if request.upscale else self.limits
        with self.db.reads.begin() as s:  # fail early on an unknown session / parent (checked again when written)
            self._check_parent(s, session_id, parent_round_id)
        decoded = decode_upload(image, limits, fit=bool(fit))
        array = decoded.array
        clean = _to_tensor(array)
        key = json.dumps(["restore", request.backbone, request.hint, request.upscale, list(clean.shape)])
        with self.jobs.run(session_id, "restore", key, report=_reporter(progress)) as job, self.gate.slot():
            job.check()  # cancelled while waiting for the engine
            made = self.worker.restore(clean, request, watch=job.watch)  # the event's one call into compute
            job.check()  # the last point of no return: nothing is stored before it
        record = made.degradation
        image_id = self.images.put_array(array)
        degraded_id = self.images.put_array(_to_uint8(made.degraded)) if record else image_id
        restored_id = self.images.put_array(_to_uint8(made.image))
        height, width = array.shape[:2]
        params: dict[str, Any] = {"scale_mode": "upscale" if request.upscale else "same_size",
                                  "scale": int(made.backbone.get("scale", 1))}
        if upload := decoded.facts():
            params["upload"] = upload
        if request.hint:
            params["hint"] = request.hint
        with self.db.sessions.begin() as s:  # the restore event's one write transaction
            self._check_parent(s, session_id, parent_round_id)
            src = store.add_source_image(
                s, image_hash=image_id, width=width, height=height, origin=origin, session_id=session_id,
                degradation_spec=record["spec"] if record else None,
                degradation_seed=record["seed"] if record else None, degradation_params=record,
                gt_image_hash=image_id if record else None, degraded_image_hash=degraded_id)
            rnd = store.create_round(s, self._round_record(
                settings, "restored", made.backbone, request.prior, made.prior, params, session_id=session_id,
                source_image_id=src.id, parent_round_id=parent_round_id, backbone_name=request.backbone,
                backbone_weights_hash=made.backbone.get("weights_hash"), stage_seconds={"restore": made.seconds},
                restored_image_hash=restored_id))
            round_id = rnd.id
        if generate:
            return self.generate_candidates(round_id, progress=progress)
        return self.get_round(round_id)

    @staticmethod
    def _check_parent(s: Any, session_id: str, parent_round_id: str | None) -> None:
        """NotFound for an unknown session; InputError for a parent round of another session."""
        store._get(s, store.SessionRow, session_id, "session")
        if parent_round_id is not None and store.get_round(s, parent_round_id).session_id != session_id:
            raise InputError(f"parent round {parent_round_id} belongs to another session; "
                             "name a round of this session or none")

    def _round_record(self, settings: RoundSettings, start: str, backbone_facts: dict[str, Any], prior: str,
                      prior_facts: dict[str, Any], extra: dict[str, Any] | None = None, **fields: Any) -> RoundRecord:
        """The record of a new round; `prior` is the prior's name, `prior_facts` its describe(); `extra` params are
        added (e.g. a later round carries its lineage's scale mode); `fields` are the round's own (its session,
        source image, backbone, parent, ...)."""
        return RoundRecord(prior_id=prior_facts["prior_id"], prior_weights_hash=prior_facts["weights_hash"],
                           params={"candidates": settings.to_dict(), "refine": self.worker.settings.refine.to_dict(),
                                   "start": start, "backbone": backbone_facts, "shuffle_seed": settings.seed,
                                   "prior": prior, **(extra or {})},
                           seeds=tuple(settings.seeds()), code_version=self.worker.code_version,
                           device=self.worker.settings.device, dtype=self.worker.settings.dtype, **fields)

    def generate_candidates(self, round_id: str, candidates: Any = None, seed: Any = None,
                            strengths: Sequence[float] | None = None, prior: str | None = None,
                            progress: Progress | None = None) -> RoundView:
        """Stage (i): candidates around the round's start image, shown in a shuffled (recorded) order.

        Settings given here (the prior included) replace the recorded ones (allowed only before any candidate
        exists); the round then records the prior actually used, its id and weights hash. `progress` hears each
        U-Net step; a cancelled stage (`cancel`) stores nothing, its new settings included."""
        if prior is not None:
            prior = self.worker.check_prior(prior)
        with self.db.reads.begin() as s:
            rnd = store.get_round(s, round_id)
            if rnd.candidates:
                raise Conflict(f"round {round_id} already has candidates; start a new round instead")
            if rnd.restored_image_hash is None:
                raise Conflict(f"round {round_id} has no start image")
            settings = RoundSettings.from_dict(rnd.params["candidates"])
            changed = {}  # new settings are recorded with the candidates, in one transaction
            if candidates not in (None, "") or seed not in (None, "") or strengths:
                settings = self.round_settings(candidates if candidates not in (None, "") else settings.num_candidates,
                                               seed if seed not in (None, "") else settings.seed,
                                               strengths or settings.strengths)
                changed = {"candidates": settings.to_dict(), "shuffle_seed": settings.seed}
            if prior is not None:
                changed["prior"] = prior
            prior = changed.get("prior", rnd.params.get("prior", DEFAULT_PRIOR))
            start_id, session_id = rnd.restored_image_hash, rnd.session_id
        start = _to_tensor(self.images.get_array(start_id))
        specs, t_cand, prior_facts = self._make_candidates(session_id, start, start_id, settings, prior, progress)
        with self.db.sessions.begin() as s:  # the candidates event's one write transaction
            if s.scalar(select(Candidate.id).where(Candidate.round_id == round_id).limit(1)):  # another was first
                raise Conflict(f"round {round_id} already has candidates; start a new round instead")
            if changed:
                rnd = store.get_round(s, round_id)
                rnd.params = {**rnd.params, **changed}
                if "candidates" in changed:
                    rnd.seeds = settings.seeds()
            self._record_candidates(s, round_id, specs, t_cand, prior_facts)
            return round_view(store.get_round(s, round_id))

    def _make_candidates(self, session_id: str, start: torch.Tensor, start_id: str, settings: RoundSettings,
                         prior: str, progress: Progress | None) -> tuple[list[store.CandidateSpec], float, dict]:
        """Stage (i)'s compute and image files, nothing recorded: the candidate specs (the start image among them,
        all in a shuffled, recorded display order), seconds, and the prior's facts. Cancellable (`cancel`)."""
        key = json.dumps(["candidates", prior, list(start.shape), {**settings.to_dict(), "seed": 0}])
        with self.jobs.run(session_id, "candidates", key, [self.worker.prior(prior).unet],
                           _reporter(progress)) as job:
            made, t_cand = self.batcher.candidates(start, settings, prior)  # with other sessions' waiting requests
            job.check()  # cancelled (or its share of a batch dropped): nothing is stored
        prior_facts = self.worker.prior_facts(prior)  # loaded by now
        specs = [store.CandidateSpec(image_hash=start_id, method="restored", is_restored=True)]
        specs += [store.CandidateSpec(image_hash=self.images.put_array(_to_uint8(img)), method=meta.method,
                                      seed=meta.seed, strength=meta.strength) for img, meta in made]
        positions = list(range(len(specs)))
        random.Random(settings.seed).shuffle(positions)  # the display order; recorded per candidate
        return [replace(spec, position=p) for spec, p in zip(specs, positions)], t_cand, prior_facts

    @staticmethod
    def _record_candidates(s: Any, round_id: str, specs: list[store.CandidateSpec], seconds: float,
                           prior_facts: dict[str, Any]) -> None:
        store.add_candidates(s, round_id, specs)
        store.update_round(s, round_id, stage_seconds={"candidates": seconds}, prior_id=prior_facts["prior_id"],
                           prior_weights_hash=prior_facts["weights_hash"])

    # ------------------------------------------------------------------------------ choices
    def record_choice(self, round_id: str, choice: choices.ChoiceInput, who: Principal | None = None) -> ChoiceView:
        """Record a choice in one write transaction (`feedback.record.choices.record_choice`): its kind is pairwise,
        a tie (the given ids alike; none given: every candidate, "all similar") or a skip. It supersedes the round's
        previous choice (a correction); a repeated idempotency key returns the first, recording nothing. The choice
        carries the page's viewing facts (zoom_count, viewport [w, h], device_pixel_ratio) and its region boxes,
        [{"on": "<k>", "x", "y", "w", "h", "tag"?}] on the k-th candidate in display order (from 1) in [0, 1] image
        coordinates (`feedback.record.regions`). `who`: the caller, checked against the round's session inside the
        same write transaction, before anything is checked or written (AuthError 403)."""
        def check_owner(session_id: str) -> None:
            if session_id != who.session_id:
                raise AuthError("this round belongs to another session", 403)

        def write() -> ChoiceView:
            with self.db.sessions.begin() as s:  # the one transaction of a vote: access check, checks, write
                recorded, created = choices.record_choice(
                    s, round_id, choice, check_owner=None if who is None or who.admin else check_owner)
            return ChoiceView(recorded.id, len(recorded.pairs), created, recorded.kind.value, recorded.preferred_ids,
                              recorded.rejected_ids, recorded.selector, superseded=recorded.superseded,
                              live=recorded.live, regions=len(recorded.regions or []))
        # With an idempotency key a repeat cannot record twice, so transient database errors are retried.
        return retry_transient(write, attempts=3 if choice.idempotency_key else 1)

    def auto_choose(self, round_id: str, metrics: Sequence[str] | None = None) -> ChoiceView:
        """Stage (ii), automated: the metric selector (z-score fusion) picks preferred and rejected."""
        metrics = self.worker.check_metrics(metrics)
        view = self.get_round(round_id)
        if not view.candidates:
            raise Conflict(f"round {round_id} has no candidates yet; generate them first")
        images = {c.id: _to_tensor(self.images.get_array(c.image_id)) for c in view.candidates}
        start = _to_tensor(self.images.get_array(view.start_image_id))
        with self.gate.slot():
            selection, seconds = self.worker.select(start, images, metrics)
        with self.db.sessions.begin() as s:
            for cid in images:
                store.set_candidate_scores(s, cid, {m: selection.raw_scores[m][cid] for m in metrics}
                                           | {"fused": selection.scores[cid]})
            store.update_round(s, round_id, stage_seconds={"select": seconds})
        picked = (choices.ChoiceInput(choices.ChoiceKind.TIE, list(images), selector=selection.selector)
                  if selection.tie else choices.ChoiceInput(choices.ChoiceKind.PAIRWISE, selection.preferred_ids,
                                                            selection.rejected_ids, selector=selection.selector))
        choice = self.record_choice(round_id, picked)
        scores = {cid: {m: selection.raw_scores[m][cid] for m in metrics} | {"fused": selection.scores[cid]}
                  for cid in images}
        return replace(choice, scores=scores)

    # ------------------------------------------------------------------------------ refinement
    def refine(self, round_id: str, settings: RefineSettings | None = None, generate_next: bool = True,
               progress: Progress | None = None) -> RefineView:
        """Stage (iii): reward-guided denoising of the round's start image, guided by its latest choice.

        Records the refinement and the next round (starting from the refined image, same source and backbone);
        the next round's candidates are generated when `generate_next`. A tie refines with fidelity only."""
        progress = progress or (lambda _f, _m: None)
        settings = (settings or self.worker.settings.refine).checked()
        with self.db.reads.begin() as s:
            rnd = store.get_round(s, round_id)
            choice = choices.latest_choice(s, round_id)
            if choice is None:
                raise Conflict(f"round {round_id} has no choice yet; record one (POST .../choices) before refining")
            if choice.kind == "skip":
                raise Conflict("the latest choice of this round is a skip; record a preference or a tie to refine")
            by_id = {c.id: c.image_hash for c in rnd.candidates}
            preferred, rejected = ([], []) if choice.kind == "tie" else (choice.preferred_ids, choice.rejected_ids)
            choice_id, start_id, parent = choice.id, rnd.restored_image_hash, round_view(rnd)
            round_settings = RoundSettings.from_dict(rnd.params["candidates"])
            prior = rnd.params.get("prior", DEFAULT_PRIOR)
        progress(0.0, "loading images")
        load = lambda ids: torch.cat([_to_tensor(self.images.get_array(by_id[i])) for i in ids]) if ids else None  # noqa: E731
        start = _to_tensor(self.images.get_array(start_id))
        key = json.dumps(["refine", prior, list(start.shape), settings.to_dict(), bool(preferred), bool(rejected)])
        with self.jobs.run(parent.session_id, "refine", key, report=_reporter(progress)) as job, self.gate.slot():
            job.check()  # cancelled while waiting for the engine
            job.watch([self.worker.prior(prior).unet])
            refined, seconds = self.worker.refine(start, load(preferred), load(rejected), settings, prior)
            prior_facts = self.worker.prior_facts(prior)
            job.check()  # nothing is stored before this point
        refined_id = self.images.put_array(_to_uint8(refined))
        next_settings = replace(round_settings, seed=(round_settings.seed + 1000) % 2**31)
        if generate_next:  # made before the write, so the refinement and the next round are recorded together
            made_next = self._make_candidates(parent.session_id, _to_tensor(self.images.get_array(refined_id)),
                                              refined_id, next_settings, prior, progress)  # from the stored image
        progress(1.0, "saving")
        backbone_facts = parent.params.get("backbone", {})
        carried = {k: parent.params[k] for k in ("scale_mode", "scale") if k in parent.params}
        with self.db.sessions.begin() as s:  # the refine event's one write transaction
            old = store.get_round(s, round_id)
            nxt = store.create_round(s, self._round_record(
                next_settings, "refined", backbone_facts, prior, prior_facts, carried, session_id=old.session_id,
                source_image_id=old.source_image_id, parent_round_id=round_id, backbone_name=old.backbone_name,
                backbone_weights_hash=old.backbone_weights_hash, restored_image_hash=refined_id))
            params = {**settings.to_dict(), "choice_kind": "tie" if not preferred else "pairwise",
                      "preferred": preferred, "rejected": rejected}
            refinement = store.record_refinement(s, round_id, choice_id, refined_id, params, seconds,
                                                 next_round_id=nxt.id)
            store.update_round(s, round_id, stage_seconds={"refine": seconds})
            if generate_next:
                self._record_candidates(s, nxt.id, *made_next)
            refinement_id, next_id = refinement.id, nxt.id
        next_view = self.get_round(next_id)
        return RefineView(round_id, refinement_id, refined_id, next_view, seconds)

    def export_jsonl(self, session_id: str | None = None) -> Iterator[dict[str, Any]]:
        """Every preference pair with its full context (see `store.export_pairs`).

        Rows are read in one short transaction before the first is yielded, so a slow reader never holds
        the database (SQLite transactions here take the write lock)."""
        with self.db.sessions.begin() as s:
            rows = list(store.export_pairs(s, session_id=session_id))
        yield from rows

    def cancel(self, session_id: str) -> int:
        """Cancel the session's running restore, candidates or refine stages (`feedback.loop.jobs`); how many there were.
        Each stops at its next step and stores nothing."""
        return self.jobs.cancel(session_id)

    def progress(self, session_id: str) -> list[dict[str, Any]]:
        """The session's running stages: stage, step, total (once learnt), elapsed and estimated seconds left."""
        return self.jobs.progress(session_id)

    def superseded_choices(self) -> int:
        """How many choices later choices replaced (left out of every export and analysis)."""
        with self.db.reads.begin() as s:
            return choices.superseded_choices(s)

    def describe(self) -> dict[str, Any]:
        return {"engine": asdict(self.worker.settings), "code_version": self.worker.code_version,
                "limits": asdict(self.limits), "max_waiting": self.gate.max_waiting}

