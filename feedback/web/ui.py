"""Gradio handlers of the annotation app: module-level functions over `FeedbackService`, wired by app.build_demo.

Each handler takes the service first (bound with `bind` when wiring), then widget values
and the per-user state: a small dict of ids (session, round, candidate and image ids in display
order, the next round, the refined image), never tensors or database sessions. Errors a person can
fix (bad image, unknown spec, busy engine) become `gr.Error` messages. Marking tiles and recording a choice
(by a person or the metric selector) are the handlers of `feedback.web.ui_choices`.
"""

from __future__ import annotations

import functools
import inspect
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from feedback.loop.engine import RefineSettings
from feedback.loop.gate import Busy
from feedback.loop.service import FeedbackService
from feedback.loop.sheets import contact_sheet
from feedback.loop.views import RoundView
from feedback.record.errors import FeedbackError

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "assets" / "samples"
#: Degradation specs offered in the dropdown (any spec can be typed; see restoration.degradations).
DEGRADATION_EXAMPLES = ("none", "noise:25", "blur:2.0", "jpeg:20", "sr:4", "motion:15", "rain", "haze",
                        "lowlight", "blur:1.5+noise:15")
HISTORY_COLUMNS = ["round", "status", "backbone", "prior", "candidates", "choice", "selector", "pairs", "refined",
                   "round id"]
PREFERRED_MARK, REJECTED_MARK = "✓ preferred", "✗ rejected"


def bind(service: Any, fn: Callable) -> Callable:
    """`fn` with `service` as its first argument, for wiring an event.

    Unlike functools.partial it keeps the rest of `fn`'s signature and type hints, through which Gradio finds
    the parameters it fills itself (`evt: gr.SelectData`, `progress=gr.Progress()`)."""

    @functools.wraps(fn)
    def handler(*args: Any, **kwargs: Any) -> Any:
        return fn(service, *args, **kwargs)

    handler.__signature__ = inspect.signature(functools.partial(fn, service))
    return handler


class UploadedImage(gr.Image):
    """An image input whose uploaded file reaches `feedback.loop.uploads` untouched.

    gr.Image opens every upload with Pillow before any handler runs, so a text file, an archive or a
    decompression bomb failed there with a generic error. This one passes the file's path on (pasted
    images, which arrive as data URLs, still go through gr.Image), and the restore handler's decoder
    answers with a message naming what is allowed.
    """

    is_template = True  # rendered by the page as the gr.Image it extends

    def preprocess(self, payload: Any) -> Any:
        if payload is None or (payload.url and payload.url.startswith("data:")):
            return super().preprocess(payload)
        if payload.path is None:
            raise gr.Error("the upload arrived without a file; upload the image again")
        return str(payload.path)


def user_errors(fn: Callable) -> Callable:
    """Show a FeedbackError (bad input, unknown id, busy engine) to the person instead of a stack trace."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Busy as exc:
            raise gr.Error(f"{exc.message}") from None
        except FeedbackError as exc:
            raise gr.Error(exc.message) from None

    return wrapper


def sample_names() -> list[str]:
    """Bundled sample images (file names in assets/samples)."""
    return sorted(p.name for p in SAMPLES_DIR.glob("*.png")) if SAMPLES_DIR.is_dir() else []


def load_sample(name: str | None) -> str | None:
    """Path of a bundled sample, for the input image widget."""
    if not name:
        return None
    path = (SAMPLES_DIR / name).resolve()
    if path.parent != SAMPLES_DIR or not path.is_file():
        raise gr.Error(f"unknown sample {name!r}; choose one of {', '.join(sample_names())}")
    return str(path)


def _path(service: FeedbackService, image_id: str) -> str:
    return str(service.images.path_for(image_id))


def _need(state: dict, key: str, what: str) -> str:
    if not state.get(key):
        raise gr.Error(what)
    return state[key]


# --------------------------------------------------------------------------------------------- session
@user_errors
def sign_in(service: FeedbackService, name: str, state: dict) -> tuple[dict, str]:
    """Start a session for the typed name (kept only as a salted pseudonym)."""
    session_id, _token = service.create_session(name or "")
    return {"session_id": session_id}, f"Signed in. Session `{session_id[:8]}`; your name is stored only as a pseudonym."


def history_rows(service: FeedbackService, state: dict) -> list[list[Any]]:
    """The session's rounds as table rows (oldest first)."""
    if not state.get("session_id"):
        return []
    return [[r["round_index"], r["status"], r["backbone"], r["prior"] or "", r["candidates"], r["choice"] or "",
             r["selector"] or "", r["pairs"], "yes" if r["refined_image"] else "", r["round_id"]]
            for r in service.history(state["session_id"])]


# --------------------------------------------------------------------------------------------- round
def _origin(image_path: str) -> str:
    return "sample" if Path(image_path).name in sample_names() else "upload"


@user_errors
def restore(service: FeedbackService, state: dict, image_path: str | None, degradation: str, backbone: str,
            seed: float | None, fit: bool = True, hint: str | None = "", upscale: bool = False,
            progress: gr.Progress = gr.Progress()) -> tuple:
    """Restore the uploaded (optionally degraded) image: a new round without candidates yet (old tiles cleared).
    `fit`: downscale an image larger than the upload limits to fit them (said in the status) instead of refusing.
    `hint`: the degradation the restorer is told (a spec; empty: blind). `upscale`: a super-resolution backbone
    enlarges the image by its scale and the round continues at that size (said in the status)."""
    session_id = _need(state, "session_id", "Enter your name and press Start first.")
    if not image_path:
        raise gr.Error("Upload an image or pick a sample first.")
    data = Path(image_path).read_bytes()
    view = service.start_round(session_id, data, degradation=degradation, backbone=backbone,
                               seed=None if seed is None or seed < 0 else int(seed), origin=_origin(image_path),
                               generate=False, fit=bool(fit), hint=hint, upscale=bool(upscale),
                               progress=_gradio_progress(progress))
    new_state = {"session_id": session_id, "round_id": view.round_id}
    told = f", told *{view.params['hint']}*" if view.params.get("hint") else ""
    did = "restored"
    if view.params.get("scale_mode") == "upscale":
        (h0, w0), (h, w) = (service.images.get_array(i).shape[:2] for i in (view.input_image_id, view.start_image_id))
        did = f"upscaled x{view.params['scale']} from {w0}x{h0} to {w}x{h} pixels"
    msg = (f"Round {view.round_index} {did} with **{backbone or 'default'}**{told} in "
           f"{view.seconds['restore']:.2f} s. "
           "Now press *Generate candidates*.")
    if view.params.get("upload"):
        (w0, h0), (w, h) = view.params["upload"]["original_size"], view.params["upload"]["size"]
        msg = f"Downscaled from {w0}x{h0} to {w}x{h} pixels to fit the upload limits. " + msg
    cleared = gr.update(choices=[], value=[])
    return (new_state, _path(service, view.input_image_id), _path(service, view.start_image_id), msg,
            history_rows(service, new_state), [], cleared, cleared)


def _show_round(service: FeedbackService, state: dict, view: RoundView) -> dict:
    return {**state, "round_id": view.round_id, "candidate_ids": [c.id for c in view.candidates],
            "image_ids": [c.image_id for c in view.candidates],
            "restored_index": next(i for i, c in enumerate(view.candidates) if c.is_restored),
            "shown_at": time.time(), "shown_key": uuid.uuid4().hex}


def gallery_items(service: FeedbackService, state: dict, preferred: list[str] | None = None,
                  rejected: list[str] | None = None, blind: bool = True) -> list[tuple[str, str]]:
    """(image path, caption) per tile: '#k', the mark chosen so far, and '(restored)' outside blind mode."""
    preferred, rejected = set(preferred or []), set(rejected or [])
    items = []
    for i, image_id in enumerate(state.get("image_ids", [])):
        label = f"#{i + 1}"
        caption = label
        if label in preferred:
            caption += f" {PREFERRED_MARK}"
        elif label in rejected:
            caption += f" {REJECTED_MARK}"
        if not blind and i == state.get("restored_index"):
            caption += " (restored)" if state.get("round_index", 0) == 0 else " (start)"
        items.append((_path(service, image_id), caption))
    return items


def _tile_choices(state: dict) -> dict:
    labels = [f"#{i + 1}" for i in range(len(state.get("image_ids", [])))]
    return gr.update(choices=labels, value=[])


@user_errors
def generate(service: FeedbackService, state: dict, candidates: float, seed: float | None, strengths: str,
             blind: bool, prior: str | None = None, progress: gr.Progress = gr.Progress()) -> tuple:
    """Generate the round's candidates (the restored image is one of them, at a shuffled position) under the
    chosen diffusion prior (None: the process default)."""
    round_id = _need(state, "round_id", "Restore an image first.")
    view = _generate(service, round_id, candidates, seed, strengths, prior, progress)
    return _after_candidates(service, state, view, blind)


def _gradio_progress(progress: Any) -> Callable[[float | None, str], None]:
    """The service's progress(fraction or None, message) as a Gradio progress bar: 'refine: step 12 of 50, about
    3 s left' once the stage's step count is known; before, a count of steps (Gradio draws no text for a bar of
    unknown length, only the count of a (done, None) pair, and each call is one step)."""
    steps = 0

    def report(fraction: float | None, message: str) -> None:
        nonlocal steps
        if fraction is not None:
            progress(fraction, desc=message)
        else:
            steps += 1
            progress((steps, None), desc=message, unit="steps")
    return report


def _generate(service: FeedbackService, round_id: str, candidates: float, seed: float | None,
              strengths: str, prior: str | None, progress: Any = None) -> RoundView:
    """Candidates for a round from the settings widgets (seed < 0 or empty: a random, recorded seed)."""
    return service.generate_candidates(round_id, candidates=int(candidates),
                                       seed=None if seed is None or seed < 0 else int(seed),
                                       strengths=parse_strengths(strengths), prior=prior,
                                       progress=None if progress is None else _gradio_progress(progress))


def _after_candidates(service: FeedbackService, state: dict, view: RoundView, blind: bool) -> tuple:
    new_state = {**_show_round(service, state, view), "round_index": view.round_index}
    msg = (f"Round {view.round_index}: {len(view.candidates)} images in {view.seconds.get('candidates', 0):.1f} s "
           f"(prior **{view.params.get('prior', 'default')}**). Click a tile to mark it preferred, click again for "
           "rejected, a third time to clear; mark one or more of each, then *Submit choice*.")
    return (new_state, gallery_items(service, new_state, blind=blind), _tile_choices(new_state),
            _tile_choices(new_state), msg, history_rows(service, new_state))


def parse_strengths(text: str | None) -> tuple[float, ...] | None:
    """'0.1, 0.2' -> (0.1, 0.2); empty -> None (the defaults)."""
    if not text or not text.strip():
        return None
    try:
        return tuple(float(x) for x in text.replace(";", ",").split(",") if x.strip())
    except ValueError:
        raise gr.Error(f"strengths must be numbers in (0, 1] separated by commas, got {text[:60]!r}") from None


def cancel(service: FeedbackService, state: dict) -> str:
    """Stop this session's running restore, candidates or refine at its next step; it stores nothing."""
    if not state.get("session_id") or not service.cancel(state["session_id"]):
        return "Nothing is running."
    return "Cancelling: the running stage stops at its next step and stores nothing."


# --------------------------------------------------------------------------------------------- refine
@user_errors
def refine(service: FeedbackService, state: dict, strength: float, steps: float, guidance_scale: float,
           progress: gr.Progress = gr.Progress()) -> tuple:
    """Reward-guided denoising guided by the latest choice; shows before/after and offers the download."""
    round_id = _need(state, "round_id", "Generate candidates and record a choice first.")
    settings = RefineSettings(**{**service.worker.settings.refine.to_dict(), "strength": float(strength),
                                 "steps": int(steps), "guidance_scale": float(guidance_scale)})
    progress(0.0, desc="starting")
    result = service.refine(round_id, settings, generate_next=False, progress=_gradio_progress(progress))
    start_path = _path(service, service.get_round(round_id).start_image_id)
    refined_path = _path(service, result.image_id)
    new_state = {**state, "next_round_id": result.next_round.round_id, "refined_id": result.image_id}
    msg = f"Refined in {result.seconds:.1f} s. Compare with the slider, download it, or press *Next round*."
    sheet = contact_sheet_file(service, round_id, result.image_id)
    return new_state, (start_path, refined_path), refined_path, msg, history_rows(service, new_state), sheet


def contact_sheet_file(service: FeedbackService, round_id: str, refined_id: str | None) -> str:
    """The round's contact sheet (see `feedback.loop.sheets`) as a file path, for a download."""
    return str(contact_sheet(service, round_id, refined_id))


@user_errors
def next_round(service: FeedbackService, state: dict, candidates: float, seed: float | None, strengths: str,
               blind: bool, prior: str | None = None, progress: gr.Progress = gr.Progress()) -> tuple:
    """Start the next round from the refined image and generate its candidates (under the chosen prior)."""
    next_id = _need(state, "next_round_id", "Refine first; the next round starts from the refined image.")
    view = _generate(service, next_id, candidates, seed, strengths, prior, progress)
    base = {k: v for k, v in state.items() if k not in ("next_round_id", "refined_id")}
    return _after_candidates(service, base, view, blind)


@user_errors
def inspect_detail(service: FeedbackService, state: dict, x: float, y: float, size: float) -> list:
    """The same crop at 1:1 from every candidate; x, y in percent of the free range, size in pixels."""
    if not state.get("image_ids"):
        raise gr.Error("Generate candidates first.")
    crops = []
    for i, image_id in enumerate(state["image_ids"]):
        array = service.images.get_array(image_id)
        h, w = array.shape[:2]
        side = int(max(8, min(size, h, w)))
        top = int(round((h - side) * float(y) / 100.0))
        left = int(round((w - side) * float(x) / 100.0))
        crops.append((Image.fromarray(np.ascontiguousarray(array[top:top + side, left:left + side])), f"#{i + 1}"))
    return crops
