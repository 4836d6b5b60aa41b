"""Gradio handlers of the annotation app: module-level functions over `FeedbackService`, wired by app.build_demo.

Each handler takes the service first (bound with `bind` when wiring), then widget values
and the per-user state: a small dict of ids (session, round, candidate and image ids in display
order, the next round, the refined image), never tensors or database sessions. Errors a person can
fix (bad image, unknown spec, busy engine) become `gr.Error` messages.
"""

from __future__ import annotations

import functools
import hashlib
import html
import inspect
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from feedback.loop.engine import RefineSettings
from feedback.loop.service import Busy, FeedbackService, RoundView
from feedback.loop.sheets import contact_sheet
from feedback.record.errors import FeedbackError
from feedback.record.models import REASON_TAGS

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "assets" / "samples"
#: Degradation specs offered in the dropdown (any spec can be typed; see restoration.degradations).
DEGRADATION_EXAMPLES = ("none", "noise:25", "blur:2.0", "jpeg:20", "sr:4", "motion:15", "rain", "haze",
                        "lowlight", "blur:1.5+noise:15")
HISTORY_COLUMNS = ["round", "status", "backbone", "prior", "candidates", "choice", "selector", "pairs", "refined",
                   "round id"]
PREFERRED_MARK, REJECTED_MARK = "✓ preferred", "✗ rejected"
#: How often one submission may find its key on a superseded choice (A, B, A, B, ... on one showing) before giving up.
MAX_RESUBMITS = 64
#: A click on a tile moves its mark one step along this cycle.
NEXT_MARK = {None: "preferred", "preferred": "rejected", "rejected": None}


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


def submission_key(state: dict, kind: str, preferred: list[str], rejected: list[str], tags: list[str],
                   regions: list[dict[str, Any]] | None = None) -> str:
    """The idempotency key of a submission: the same marks, tags and region boxes on the same showing of a round give
    the same key, so a double click (or a retried event) records once; other marks, tags or boxes give a new key."""
    facts = [state.get("round_id"), state.get("shown_key"), kind, sorted(preferred), sorted(rejected), sorted(tags)]
    if regions:
        facts.append(regions)
    content = json.dumps(facts, sort_keys=True)
    return "page:" + hashlib.sha256(content.encode()).hexdigest()[:40]


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


def mark(service: FeedbackService, state: dict, preferred: list[str], rejected: list[str], blind: bool) -> list:
    """Re-caption the tiles with the marks chosen so far (changeable until submitted)."""
    return gallery_items(service, state, preferred, rejected, blind)


def click_tile(service: FeedbackService, state: dict, preferred: list[str] | None, rejected: list[str] | None,
               blind: bool, evt: gr.SelectData) -> tuple[list[str], list[str], list]:
    """A click on gallery tile `evt.index` moves its mark along NEXT_MARK (none -> preferred -> rejected -> none)
    -> (preferred labels, rejected labels, re-captioned tiles); the checkbox groups show the same marks."""
    n = len(state.get("image_ids", []))
    k = evt.index
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < n:
        raise gr.Error(f"no tile at index {k!r}; generate candidates first" if n == 0 else
                       f"no tile at index {k!r}; the round has tiles 0..{n - 1}")
    label = f"#{k + 1}"
    preferred, rejected = list(preferred or []), list(rejected or [])
    current = "preferred" if label in preferred else "rejected" if label in rejected else None
    new = NEXT_MARK[current]
    by_tile = lambda labels: sorted(set(labels), key=lambda t: int(t.lstrip("#")))  # noqa: E731
    preferred = by_tile([t for t in preferred if t != label] + ([label] if new == "preferred" else []))
    rejected = by_tile([t for t in rejected if t != label] + ([label] if new == "rejected" else []))
    return preferred, rejected, gallery_items(service, state, preferred, rejected, blind)


def _by_tile(labels: list[str] | None) -> list[str]:
    """Tile labels '#k' in tile order, each once; gr.Error for anything else."""
    for label in labels or []:
        if not isinstance(label, str) or not label.startswith("#") or not label[1:].isdigit():
            raise gr.Error(f"tiles are named #1, #2, ...; got {str(label)[:20]!r}")
    return sorted(set(labels or []), key=lambda t: int(t[1:]))


def _ids(state: dict, labels: list[str]) -> list[str]:
    ids = state.get("candidate_ids", [])
    out = []
    for label in labels or []:
        k = int(label.lstrip("#")) - 1
        if not 0 <= k < len(ids):
            raise gr.Error(f"no tile {label}")
        out.append(ids[k])
    return out


@user_errors
def submit_choice(service: FeedbackService, state: dict, preferred: list[str], rejected: list[str],
                  tags: list[str], kind: str = "pairwise", viewing: str | None = "",
                  regions: str | None = "") -> tuple[str, list]:
    """Record the choice of this round: 'pairwise' (marks), 'tie' (all similar) or 'skip'. `viewing`: the page's
    JSON {"zoom_count", "viewport", "dpr"} (zoom and compare interactions), recorded with the choice. `regions`: the
    page's JSON list of boxes drawn on the tiles, [{"on": "<tile number>", "x", "y", "w", "h", "tag"}] in [0, 1]
    image coordinates (`parse_regions`), stored with the choice (checked by `feedback.record.regions`)."""
    round_id = _need(state, "round_id", "Generate candidates first.")
    if not state.get("candidate_ids"):
        raise gr.Error("Generate candidates first.")
    decision_ms = int(max(0.0, time.time() - state.get("shown_at", time.time())) * 1000)
    if kind == "pairwise" and (not preferred or not rejected):
        raise gr.Error("Mark at least one tile as preferred and one as rejected (or press All similar / Skip).")
    preferred, rejected = _by_tile(preferred), _by_tile(rejected)  # canonical order: the same marks, the same key
    preferred_ids = _ids(state, preferred) if kind == "pairwise" else []
    rejected_ids = _ids(state, rejected) if kind == "pairwise" else []
    boxes = parse_regions(regions)
    key = submission_key(state, kind, preferred_ids, rejected_ids, tags or [], boxes)
    for _ in range(MAX_RESUBMITS):
        view = service.record_choice(round_id, preferred_ids, rejected_ids, tie=kind == "tie", skip=kind == "skip",
                                     tags=tags or [], decision_ms=decision_ms, idempotency_key=key,
                                     viewing=parse_viewing(viewing), regions=boxes)
        if view.live:
            break
        # The key named an earlier submission of these marks that a later choice superseded: choosing them
        # again is a new choice. The next key follows from the one found, so a double click still records once.
        key = "page:" + hashlib.sha256(f"{key}:{view.choice_id}".encode()).hexdigest()[:40]
    else:
        raise gr.Error("these marks were submitted and superseded too many times; reload the round")
    what = {"pairwise": "Choice recorded", "tie": "Recorded: all similar", "skip": "Skipped"}[kind]
    if view.superseded:
        what += ", replacing the earlier choice of this round"
    hint = " Press *Refine* to apply it." if kind != "skip" else " Restore another image or generate again."
    marked = f", {view.regions} region mark{'s' if view.regions != 1 else ''}" if view.regions else ""
    return f"{what} ({view.pairs} preference pairs{marked}).{hint}", history_rows(service, state)


def submit_pairwise(service, state, preferred, rejected, tags, viewing="", regions=""):
    return submit_choice(service, state, preferred, rejected, tags, "pairwise", viewing, regions)


def submit_tie(service, state, tags, viewing="", regions=""):
    return submit_choice(service, state, [], [], tags, "tie", viewing, regions)


def submit_skip(service, state, viewing=""):
    return submit_choice(service, state, [], [], [], "skip", viewing)


def parse_regions(text: str | None) -> list[Any] | None:
    """The page's region JSON (a list of boxes, see `submit_choice`) -> the list (None when empty or []); the boxes
    themselves are checked by the record. gr.Error when it is not a JSON list."""
    if not text or not text.strip():
        return None
    try:
        boxes = json.loads(text)
    except json.JSONDecodeError:
        raise gr.Error("the page sent malformed region marks; clear the boxes and draw them again") from None
    if not isinstance(boxes, list):
        raise gr.Error("the page sent malformed region marks; clear the boxes and draw them again")
    return boxes or None


def parse_viewing(text: str | None) -> dict[str, Any] | None:
    """The page's viewing JSON -> {"zoom_count", "viewport", "dpr"} (None when empty); gr.Error when malformed."""
    if not text or not text.strip():
        return None
    try:
        viewing = json.loads(text)
    except json.JSONDecodeError:
        raise gr.Error("the page sent malformed viewing facts; reload the page") from None
    if not isinstance(viewing, dict):
        raise gr.Error("the page sent malformed viewing facts; reload the page")
    return {k: viewing[k] for k in ("zoom_count", "viewport", "dpr") if viewing.get(k) is not None}


def set_mark(service: FeedbackService, state: dict, preferred: list[str] | None, rejected: list[str] | None,
             blind: bool, request: str) -> tuple[list[str], list[str], list]:
    """Set one tile's mark, as the compare view asks: request 'k:preferred|rejected|none' (k from 1)
    -> (preferred labels, rejected labels, re-captioned tiles)."""
    n = len(state.get("image_ids", []))
    number, _, mark_name = str(request or "").partition(":")
    if not number.isdigit() or not 1 <= int(number) <= n or mark_name not in ("preferred", "rejected", "none"):
        raise gr.Error(f"a mark request is 'k:preferred', 'k:rejected' or 'k:none' with k in 1..{n}, "
                       f"got {str(request)[:40]!r}")
    label = f"#{int(number)}"
    preferred = _by_tile([t for t in preferred or [] if t != label] + ([label] if mark_name == "preferred" else []))
    rejected = _by_tile([t for t in rejected or [] if t != label] + ([label] if mark_name == "rejected" else []))
    return preferred, rejected, gallery_items(service, state, preferred, rejected, blind)


def region_tools_html() -> str:
    """The region-mark tools above the candidates (feedback/web/page.js draws the boxes): a toggle (or M) turns a
    drag on a tile into a box where the problem is, the tag given to new boxes (the reason tags; optional), a
    button that clears every box, and the list of boxes (each: its tile, its tag to change, a remove button)."""
    options = "".join(f'<option value="{html.escape(t)}">{html.escape(t)}</option>' for t in REASON_TAGS)
    return ('<div class="region-tools"><b>Where is the problem?</b> '
            '<button id="region_toggle" type="button" aria-pressed="false">Draw boxes on the tiles (M)</button>'
            '<label>tag for new boxes <select id="region_tag"><option value="">(no tag)</option>'
            f'{options}</select></label>'
            '<button id="region_clear" type="button">Clear boxes</button>'
            '<span id="region_count">no boxes</span></div><div id="region_list"></div>')


def clear_marks(service: FeedbackService, state: dict, blind: bool) -> tuple[list[str], list[str], list]:
    """Every tile unmarked (Esc)."""
    return [], [], gallery_items(service, state, [], [], blind)


def cancel(service: FeedbackService, state: dict) -> str:
    """Stop this session's running restore, candidates or refine at its next step; it stores nothing."""
    if not state.get("session_id") or not service.cancel(state["session_id"]):
        return "Nothing is running."
    return "Cancelling: the running stage stops at its next step and stores nothing."


@user_errors
def auto_choose(service: FeedbackService, state: dict, metrics: list[str] | str, blind: bool) -> tuple:
    """Let the metric selector choose instead of the person; show its pick and every score."""
    round_id = _need(state, "round_id", "Generate candidates first.")
    if not state.get("candidate_ids"):
        raise gr.Error("Generate candidates first.")
    view = service.auto_choose(round_id, metrics)
    labels = {cid: f"#{i + 1}" for i, cid in enumerate(state["candidate_ids"])}
    names = sorted({m for s in view.scores.values() for m in s} - {"fused"}) + ["fused"]
    rows = [[labels[cid], *[round(view.scores[cid].get(m, float("nan")), 4) for m in names],
             "preferred" if cid in view.preferred else "rejected" if cid in view.rejected else ""]
            for cid in state["candidate_ids"]]
    pref, rej = [labels[c] for c in view.preferred], [labels[c] for c in view.rejected]
    msg = (f"**{view.selector}** chose {', '.join(pref)} over {', '.join(rej) or 'nothing (tie)'} "
           f"({view.pairs} pairs recorded). Press *Refine* to apply it.")
    table = gr.update(value=rows, headers=["tile", *names, "pick"])
    return msg, table, gallery_items(service, state, pref if view.kind != "tie" else [], rej, blind), \
        history_rows(service, state)


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
