"""A study's stimuli, computed in the background: every stimulus x condition restored once, then recorded at once.

`StudyService.create_study` checks what can be checked at once (definition, conditions, degradations, every
image read and decoded, each stored as a PNG whose id goes into `Study.inputs`), records the study as
'preparing' and hands its id to the `StudyPreparer` of the service: one worker thread that prepares one study
at a time. Each stimulus is computed under the engine gate (`FeedbackService.gate.slot()`), so it waits behind
interactive rounds instead of holding the engine for a whole study, and `progress_done` counts the stimuli.
At the end one transaction writes the source images and the stimuli and switches the study to 'active';
on any error one transaction switches it to 'failed' with the message and writes nothing else.

A study found 'preparing' when a service starts (its process was killed mid-way) is prepared again from the
start (`StudyPreparer.resume`): its inputs are in the image store, and every output is a deterministic function
of the definition, so the result is the one the first attempt would have recorded. Replicas sharing a
PostgreSQL database may both resume one study; the final transaction locks the row and writes only while it
is still 'preparing', so the study is recorded once (the other replica's work is discarded).

Conditions (`feedback.studies.study.parse_condition`): a backbone name ('nlm', 'sipl', ...) restores the stimulus once;
'ttpo-auto:<backbone>[;prior=<name>][;selector=<metrics>]' restores, generates diffusion candidates under the
prior, lets the metric selector choose and refines under the same prior (one automatic TTPO round); its facts
record the prior's id and weights hash and the selector. 'ttpo-human:<backbone>[;prior=<name>]' makes the same
candidates as the study's guide study showed (checked image by image) and refines with its people's choice
(`feedback.studies.guide`); its facts record the guide, the vote counts and the preferred/rejected candidates.
A guide study's stimulus (`compute_guide_stimulus`) is the restored image and K-1 diffusion candidates.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from PIL import Image
from sqlalchemy import select, update

from feedback.loop.engine import RestoreRequest, RoundSettings
from feedback.loop.gate import Busy
from feedback.loop.service import FeedbackService, _to_tensor, _to_uint8
from feedback.loop.uploads import decode_image_bytes
from feedback.record import store
from feedback.record.errors import FeedbackError, InputError
from feedback.record.models import MAX_STUDY_ERROR, Study
from feedback.studies.guide import Guide, load_guide
from feedback.studies.study import (
    ATTENTION_CONTROL_SPEC,
    CONDITION_SYNTAX,
    TTPO_HUMAN,
    Condition,
    StudyDefinition,
    guide_labels,
    is_image_id_text,
    parse_condition,
    study_from_dict,
)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ checks at creation
def check_conditions(fb: FeedbackService, study: StudyDefinition) -> list[Condition]:
    """The study's conditions with backbone, prior and selector checked against what this server offers (the
    prior and selector filled in with the defaults where left out); InputError naming what is allowed, also
    when two names are the same system ('ttpo-auto:nlm' and 'ttpo-auto:nlm;prior=default')."""
    checked: dict[tuple[Any, ...], str] = {}
    conditions = []
    for name in study.conditions:
        c = parse_condition(name)
        try:
            backbone = fb.worker.check_backbone(c.backbone)
            prior = fb.worker.check_prior(c.prior) if c.is_ttpo else None
            selector = fb.worker.check_metrics(c.selector) if c.is_ttpo else None
        except InputError as exc:
            raise InputError(f"condition {name!r}: {exc.message}; conditions are {CONDITION_SYNTAX}") from None
        c = Condition(name, c.kind, backbone, prior, selector)
        key = (c.kind, backbone, prior, None if selector is None else tuple(sorted(selector)))
        if key in checked:
            raise InputError(f"conditions {checked[key]!r} and {name!r} are the same system; compare different ones")
        checked[key] = name
        conditions.append(c)
    return conditions


def check_guide(fb: FeedbackService, study: StudyDefinition, inputs: list[str]) -> Guide | None:
    """The study's guide study with its votes (None without one); InputError when it cannot guide this study:
    `feedback.studies.guide.load_guide`'s checks, and every 'ttpo-human:' condition must name the guide's backbone
    and prior (so the guide's candidates are the ones the condition makes)."""
    if study.guide_study is None:
        return None
    with fb.db.reads.begin() as s:
        guide = load_guide(s, study, inputs)
    theirs = check_conditions(fb, guide.definition)[0]
    for c in check_conditions(fb, study):
        if c.kind == TTPO_HUMAN and (c.backbone, c.prior) != (theirs.backbone, theirs.prior):
            raise InputError(f"condition {c.name!r}: guide_study {guide.study_id} showed the candidates of backbone "
                             f"{theirs.backbone!r} under prior {theirs.prior!r} ({theirs.name!r}); name the same "
                             "backbone and prior")
    return guide


def check_degradations(fb: FeedbackService, study: StudyDefinition) -> None:
    """InputError (with the table of allowed degradations) for a spec that does not parse."""
    for spec in study.degradations:
        try:
            fb.worker.check_degradation(spec)
        except InputError as exc:
            raise InputError(f"study definition: degradation {spec[:60]!r}: {exc.message}") from None


def store_inputs(fb: FeedbackService, study: StudyDefinition) -> list[str]:
    """Read and decode every definition image (a file path or a stored image id) and store it as a PNG;
    returns the image ids in definition order. InputError / NotFound name the image that cannot be used."""
    ids = []
    for entry in study.images:
        if is_image_id_text(entry):
            fb.images.get_array(entry)  # NotFound when not stored; decodes it once
            ids.append(entry)
            continue
        try:
            with open(entry, "rb") as handle:
                data = handle.read(fb.limits.max_bytes + 1)
        except OSError as exc:
            raise InputError(f"study image {entry!r} cannot be read: {exc.strerror}") from None
        try:
            ids.append(fb.images.put_array(decode_image_bytes(data, fb.limits)))
        except InputError as exc:
            raise InputError(f"study image {entry!r}: {exc.message}") from None
    return ids


def resized(array: np.ndarray, size: int | None) -> np.ndarray:
    """(H, W, 3) uint8 with its longer side scaled to `size` px (bicubic); unchanged when `size` is None."""
    if size is None:
        return array
    h, w = array.shape[:2]
    scale = size / max(h, w)
    image = Image.fromarray(array).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                          Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8).copy()


# ------------------------------------------------------------------------------ compute
def _restore(fb: FeedbackService, c: Condition, degraded: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any], float]:
    """(restored (1, 3, H, W) in [0, 1], backbone facts, seconds) of the condition's backbone."""
    # Only the backbone: the diffusion prior is loaded for TTPO conditions alone (prior=None).
    request = RestoreRequest(fb.worker.check_backbone(c.backbone), prior=None)
    try:
        made = fb.worker.restore(degraded, request)
    except InputError as exc:
        raise InputError(f"condition {c.name!r}: {exc.message}") from None
    return made.image, made.backbone, made.seconds


def _prior_facts(fb: FeedbackService, prior: str) -> dict[str, Any]:
    facts = fb.worker.prior_facts(prior)
    return {"name": prior, "prior_id": facts["prior_id"], "weights_hash": facts["weights_hash"]}


def run_condition(fb: FeedbackService, condition: str, degraded: torch.Tensor, seed: int,
                  guide: dict[str, Any] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """The condition's output for one degraded image (1, 3, H, W) in [0, 1], and what was run.

    `guide`: in a study with a guide study, {'study_id', 'stimulus': the guide's stimulus, 'stimulus_index',
    'choice': its GuideChoice}; TTPO conditions then make the guide's candidates (its recorded settings), and
    'ttpo-human:' refines with the guide's choice."""
    worker = fb.worker
    c = parse_condition(condition)
    restored, facts, seconds = _restore(fb, c, degraded)
    if not c.is_ttpo:
        return restored, {"backbone": facts, "seconds": {"restore": seconds}}
    prior = worker.check_prior(c.prior)
    if c.kind == TTPO_HUMAN and guide is None:
        raise InputError(f"condition {condition!r} needs guide_study: the id of a guide study")
    settings = (RoundSettings.from_dict(guide["stimulus"]["guide"]["candidates"]) if guide is not None
                else replace(worker.settings.round, seed=seed))
    made, t_cand = worker.candidates(restored, settings, prior)
    images = {"restored": restored} | {f"c{i}": img for i, (img, _meta) in enumerate(made)}
    record: dict[str, Any] = {"backbone": facts, "prior": _prior_facts(fb, prior)}
    if c.kind == TTPO_HUMAN:
        _check_same_candidates(fb, condition, images, guide)
        choice, t_select = guide["choice"], 0.0
        preferred, rejected = list(choice.preferred), list(choice.rejected)
        record |= {"selector": "human", "guide_study": guide["study_id"], "guide_votes": choice.to_dict()}
    else:
        metrics = worker.check_metrics(c.selector)
        selection, t_select = worker.select(restored, images, metrics)
        preferred, rejected = (([], []) if selection.tie
                               else (list(selection.preferred_ids), list(selection.rejected_ids)))
        record |= {"selector": selection.selector, "metrics": list(metrics)}

    def pick(ids: list[str]) -> torch.Tensor | None:
        return torch.cat([images[i] for i in ids]) if ids else None

    refined, t_refine = worker.refine(restored, pick(preferred), pick(rejected), worker.settings.refine, prior)
    return refined, record | {
        "preferred": preferred, "rejected": rejected, "candidates": settings.to_dict(),
        "refine": worker.settings.refine.to_dict(),
        "seconds": {"restore": seconds, "candidates": t_cand, "select": t_select, "refine": t_refine}}


def _check_same_candidates(fb: FeedbackService, condition: str, images: dict[str, torch.Tensor],
                           guide: dict[str, Any]) -> None:
    """InputError unless every image made now is pixel for pixel the one the guide study showed."""
    shown = guide["stimulus"]["outputs"]
    differ = [label for label, image in images.items()
              if label not in shown or not np.array_equal(_to_uint8(image), fb.images.get_array(shown[label]))]
    if differ or len(shown) != len(images):
        raise InputError(f"condition {condition!r}: the candidates made now for stimulus {guide['stimulus_index']} "
                         f"differ from the ones guide_study {guide['study_id']} showed "
                         f"({', '.join(differ) or 'count'}); the backbone, prior or code changed since it was "
                         "prepared: run a new guide study")


def compute_guide_stimulus(fb: FeedbackService, study: StudyDefinition, seed: int, degraded: torch.Tensor
                           ) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
    """A guide study's stimulus: (outputs label -> image id, facts per label: seed, strength, ..., how the
    candidates were made: condition, backbone, prior, candidate settings)."""
    worker = fb.worker
    c = parse_condition(study.conditions[0])
    prior = worker.check_prior(c.prior)
    restored, backbone, t_restore = _restore(fb, c, degraded)
    settings = replace(worker.settings.round, num_candidates=study.candidates_per_round - 1, seed=seed).checked()
    made, t_cand = worker.candidates(restored, settings, prior)
    labels = guide_labels(study.candidates_per_round)
    outputs = {labels[0]: fb.images.put_array(_to_uint8(restored))}
    facts: dict[str, Any] = {labels[0]: {"is_restored": True, "seed": None, "strength": None}}
    for label, (image, meta) in zip(labels[1:], made, strict=True):
        outputs[label] = fb.images.put_array(_to_uint8(image))
        facts[label] = {"is_restored": False, **meta.to_dict()}
    made_by = {"condition": c.name, "backbone": backbone, "prior": _prior_facts(fb, prior),
               "candidates": settings.to_dict(), "seconds": {"restore": t_restore, "candidates": t_cand}}
    return outputs, facts, made_by


def compute_stimulus(fb: FeedbackService, study: StudyDefinition, j: int, clean: np.ndarray,
                     guide: Guide | None = None) -> dict[str, Any]:
    """Stimulus j (image i under spec): its degraded input, attention control and every condition's output
    (for a guide study: its candidates), stored as PNGs; the dict that goes into `Study.stimuli` (without
    `source_image_id`)."""
    i, spec = study.stimuli[j]
    seed = study.seed + j
    clean_t = _to_tensor(clean)
    degraded, record = fb.worker.degrade(clean_t, spec, seed)
    control, _ = fb.worker.degrade(clean_t, ATTENTION_CONTROL_SPEC, seed)
    stimulus: dict[str, Any] = {
        "image": i, "degradation": spec, "seed": seed, "record": record.to_dict() if record else None,
        "clean": fb.images.put_array(clean), "degraded": fb.images.put_array(_to_uint8(degraded)),
        "control": fb.images.put_array(_to_uint8(control))}
    if study.kind == "guide":
        outputs, facts, stimulus["guide"] = compute_guide_stimulus(fb, study, seed, degraded)
        return stimulus | {"outputs": outputs, "facts": facts}
    on_guide = None if guide is None else {"study_id": guide.study_id, "stimulus": guide.stimuli[j],
                                           "choice": guide.choices[j], "stimulus_index": j}
    outputs, facts = {}, {}
    for condition in study.conditions:
        out, facts[condition] = run_condition(fb, condition, degraded, seed, guide=on_guide)
        outputs[condition] = fb.images.put_array(_to_uint8(out))
    return stimulus | {"outputs": outputs, "facts": facts}


def check_stimulus_metrics(fb: FeedbackService, study: StudyDefinition) -> tuple[str, ...]:
    """The metrics every stimulus is scored by (`StudyDefinition.stimulus_metrics`), each usable offline; a
    full-reference one needs degradations (it compares with the clean image). InputError naming what is wrong."""
    from restoration.selection import metric_info

    try:
        names = fb.worker.check_metrics(list(study.stimulus_metrics))
    except InputError as exc:
        raise InputError(f"study definition: metrics: {exc.message}") from None
    full_reference = [m for m in names if metric_info(m).kind == "FR"]
    if full_reference and not study.degradations:
        raise InputError(f"study definition: metrics {', '.join(full_reference)} compare with the clean image, "
                         "so the study needs degradations (its images are then the clean ground truth)")
    return names


def score_stimulus(fb: FeedbackService, study: StudyDefinition, stimulus: dict[str, Any]) -> dict[str, Any]:
    """The stimulus with `scores`: {output label: {metric: score}} of every output as stored (the PNG people see),
    by `check_stimulus_metrics`' metrics; full-reference metrics against the clean image."""
    from restoration.selection import metric_info, score_images

    labels = list(stimulus["outputs"])
    images = torch.cat([_to_tensor(fb.images.get_array(stimulus["outputs"][label])) for label in labels])
    reference = _to_tensor(fb.images.get_array(stimulus["clean"]))
    scores: dict[str, dict[str, float | None]] = {label: {} for label in labels}
    for metric in check_stimulus_metrics(fb, study):
        full = metric_info(metric).kind == "FR"
        values = score_images(images, [metric], reference if full else None)[metric]
        for label, value in zip(labels, values.tolist(), strict=True):
            scores[label][metric] = value if np.isfinite(value) else None
    return stimulus | {"scores": scores}


# ------------------------------------------------------------------------------ the worker
class StudyPreparer:
    """One background thread that prepares the studies handed to it (`submit`), one at a time, in order."""

    def __init__(self, fb: FeedbackService) -> None:
        self.fb = fb
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, study_id: str) -> None:
        """Prepare the study in the background (the thread starts on first use)."""
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="study-preparer", daemon=True)
                self._thread.start()
        self._queue.put(study_id)

    def resume(self) -> list[str]:
        """Submit every study left 'preparing' (by a process that was killed); returns their ids, oldest first."""
        with self.fb.db.reads.begin() as s:
            ids = list(s.scalars(select(Study.id).where(Study.status == "preparing").order_by(Study.created_at)))
        for study_id in ids:
            self.submit(study_id)
        return ids

    def close(self, timeout_s: float | None = None) -> None:
        """Stop the thread once the study in hand is done (queued studies stay 'preparing' for the next start)."""
        with self._start_lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            while not self._queue.empty():
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._queue.put(None)
            thread.join(timeout_s)

    def _loop(self) -> None:
        while (study_id := self._queue.get()) is not None:
            try:
                self.prepare(study_id)
            except Exception:  # the thread must outlive any one study; prepare() records what it can
                log.exception("preparing study %s failed unexpectedly", study_id)

    @contextmanager
    def _engine_slot(self) -> Iterator[None]:
        """The engine gate's slot, waiting (not failing with Busy) while its queue is full."""
        while True:
            stack = ExitStack()
            try:
                stack.enter_context(self.fb.gate.slot())
            except Busy as exc:
                time.sleep(min(exc.retry_after, 5))
                continue
            with stack:
                yield
            return

    def prepare(self, study_id: str) -> str:
        """Compute and record the study's stimuli; returns its status afterwards ('active' or 'failed')."""
        with self.fb.db.reads.begin() as s:
            row = s.get(Study, study_id)
            if row is None or row.status != "preparing":
                return "missing" if row is None else row.status
            definition, inputs = dict(row.definition), list(row.inputs or [])
        try:
            study = study_from_dict(definition)
            if len(inputs) != len(study.images):
                raise InputError(f"the study records {len(inputs)} input images for {len(study.images)} "
                                 "definition images; create it again")
            guide = check_guide(self.fb, study, inputs)  # its votes as they are now; the facts record them
            clean_images = [resized(self.fb.images.get_array(image_id), study.size) for image_id in inputs]
            stimuli = []
            for j, (i, _spec) in enumerate(study.stimuli):
                with self._engine_slot():
                    stimuli.append(score_stimulus(self.fb, study,
                                                  compute_stimulus(self.fb, study, j, clean_images[i], guide)))
                with self.fb.db.sessions.begin() as s:
                    s.execute(update(Study).where(Study.id == study_id, Study.status == "preparing")
                              .values(progress_done=j + 1))
            return self._record(study_id, stimuli, clean_images)
        except Exception as exc:
            message = exc.message if isinstance(exc, FeedbackError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, FeedbackError):
                log.exception("preparing study %s failed", study_id)
            with self.fb.db.sessions.begin() as s:
                s.execute(update(Study).where(Study.id == study_id, Study.status == "preparing")
                          .values(status="failed", error=message[:MAX_STUDY_ERROR]))
            return "failed"

    def _record(self, study_id: str, stimuli: list[dict[str, Any]], clean_images: list[np.ndarray]) -> str:
        """One transaction: source images, stimuli, status 'active' (only if still 'preparing')."""
        with self.fb.db.sessions.begin() as s:
            row = s.get(Study, study_id, with_for_update=True)
            if row is None or row.status != "preparing":  # deleted, or recorded by another replica meanwhile
                return "missing" if row is None else row.status
            for stim in stimuli:
                height, width = clean_images[stim["image"]].shape[:2]
                record = stim["record"]
                src = store.add_source_image(
                    s, image_hash=stim["clean"], width=width, height=height, origin="study",
                    degradation_spec=stim["degradation"] or None, degradation_seed=stim["seed"] if record else None,
                    degradation_params=record, gt_image_hash=stim["clean"] if record else None,
                    degraded_image_hash=stim["degraded"])
                stim["source_image_id"] = src.id
            row.stimuli, row.status, row.progress_done, row.error = stimuli, "active", row.progress_total, None
            return "active"
