"""Gradio handlers of a round's choice: marking tiles, region marks, and recording the choice or the metrics' pick.

A click on a tile (or the compare view) moves its mark along NEXT_MARK; `submit_choice` (pairwise, all similar,
skip) records the marks with the page's viewing facts and region boxes under an idempotency key
(`submission_key`), so a double click records once; `auto_choose` lets the metric selector choose instead.
Like `feedback.web.ui`, each handler takes the service first (bound with `feedback.web.ui.bind`) and the
per-user state dict.
"""

from __future__ import annotations

import hashlib
import html
import json
import time
from typing import Any

import gradio as gr

from feedback.loop.service import FeedbackService
from feedback.record.choices import ChoiceInput, ChoiceKind
from feedback.record.models import REASON_TAGS
from feedback.web.ui import _need, gallery_items, history_rows, user_errors

#: How often one submission may find its key on a superseded choice (A, B, A, B, ... on one showing) before giving up.
MAX_RESUBMITS = 64
#: A click on a tile moves its mark one step along this cycle.
NEXT_MARK = {None: "preferred", "preferred": "rejected", "rejected": None}


def submission_key(state: dict, kind: str, preferred: list[str], rejected: list[str], tags: list[str],
                   regions: list[dict[str, Any]] | None = None) -> str:
    """The idempotency key of a submission: the same marks, tags and region boxes on the same showing of a round give
    the same key, so a double click (or a retried event) records once; other marks, tags or boxes give a new key."""
    facts = [state.get("round_id"), state.get("shown_key"), kind, sorted(preferred), sorted(rejected), sorted(tags)]
    if regions:
        facts.append(regions)
    content = json.dumps(facts, sort_keys=True)
    return "page:" + hashlib.sha256(content.encode()).hexdigest()[:40]


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
                  tags: list[str], kind: ChoiceKind | str = ChoiceKind.PAIRWISE, viewing: str | None = "",
                  regions: str | None = "") -> tuple[str, list]:
    """Record the choice of this round: 'pairwise' (marks), 'tie' (all similar) or 'skip'. `viewing`: the page's
    JSON {"zoom_count", "viewport", "dpr"} (zoom and compare interactions), recorded with the choice. `regions`: the
    page's JSON list of boxes drawn on the tiles, [{"on": "<tile number>", "x", "y", "w", "h", "tag"}] in [0, 1]
    image coordinates (`parse_regions`), stored with the choice (checked by `feedback.record.regions`)."""
    kind = ChoiceKind.parse(kind)
    round_id = _need(state, "round_id", "Generate candidates first.")
    if not state.get("candidate_ids"):
        raise gr.Error("Generate candidates first.")
    decision_ms = int(max(0.0, time.time() - state.get("shown_at", time.time())) * 1000)
    if kind is ChoiceKind.PAIRWISE and (not preferred or not rejected):
        raise gr.Error("Mark at least one tile as preferred and one as rejected (or press All similar / Skip).")
    preferred, rejected = _by_tile(preferred), _by_tile(rejected)  # canonical order: the same marks, the same key
    preferred_ids = _ids(state, preferred) if kind is ChoiceKind.PAIRWISE else []
    rejected_ids = _ids(state, rejected) if kind is ChoiceKind.PAIRWISE else []
    boxes, seen = parse_regions(regions), parse_viewing(viewing) or {}
    key = submission_key(state, kind, preferred_ids, rejected_ids, tags or [], boxes)
    for _ in range(MAX_RESUBMITS):
        view = service.record_choice(round_id, ChoiceInput(
            kind, preferred_ids, rejected_ids, tags=tags or [], decision_ms=decision_ms, idempotency_key=key,
            zoom_count=seen.get("zoom_count"), viewport=seen.get("viewport"), device_pixel_ratio=seen.get("dpr"),
            regions=boxes))
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
    hint = " Restore another image or generate again." if kind is ChoiceKind.SKIP else " Press *Refine* to apply it."
    marked = f", {view.regions} region mark{'s' if view.regions != 1 else ''}" if view.regions else ""
    return f"{what} ({view.pairs} preference pairs{marked}).{hint}", history_rows(service, state)


def submit_pairwise(service, state, preferred, rejected, tags, viewing="", regions=""):
    return submit_choice(service, state, preferred, rejected, tags, ChoiceKind.PAIRWISE, viewing, regions)


def submit_tie(service, state, tags, viewing="", regions=""):
    return submit_choice(service, state, [], [], tags, ChoiceKind.TIE, viewing, regions)


def submit_skip(service, state, viewing=""):
    return submit_choice(service, state, [], [], [], ChoiceKind.SKIP, viewing)


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
