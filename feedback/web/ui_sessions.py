"""Gradio handlers that keep a person's sessions across reloads: the browser keeps the tokens, the page resumes.

The page's `gr.BrowserState` (encrypted in the browser's local storage with a key derived from the data folder's
salt) holds {"current": session id, "sessions": [{"id", "token", "at"}]}: the sessions this browser started. On
load the page continues the current session where it was (its latest round, the live choice's marks, a refined
image and the *Next round* it offers); the session list and the rounds' thumbnails let a person continue any
earlier one. Tokens never reach the page's per-user `gr.State`, which holds ids only.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from typing import Any

import gradio as gr

from feedback.loop.service import FeedbackService
from feedback.loop.sessions import AuthError
from feedback.record.errors import FeedbackError
from feedback.web.ui import _path, _show_round, gallery_items, history_rows, user_errors

#: At most this many sessions are remembered per browser (the oldest are forgotten first).
MAX_REMEMBERED = 20
EMPTY_BROWSER = {"current": None, "sessions": []}
#: Outputs of every handler that shows a round, in this order (app.annotate_tab wires them).
ROUND_OUTPUTS = ("state", "input_view", "restored_view", "gallery", "preferred", "rejected", "status", "history",
                 "rounds", "sessions", "compare", "browser")


def _browser(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("sessions"), list):
        return {"current": None, "sessions": []}
    return {"current": value.get("current"),
            "sessions": [s for s in value["sessions"] if isinstance(s, dict) and s.get("id") and s.get("token")]}


def _session_choices(service: FeedbackService, browser: dict[str, Any]) -> Any:
    choices = []
    for remembered in reversed(browser["sessions"]):  # newest first
        rounds = len(service.history(remembered["id"]))
        choices.append((f"{remembered['at'][:16].replace('T', ' ')} · {rounds} rounds · {remembered['id'][:8]}",
                        remembered["id"]))
    return gr.update(choices=choices, value=browser["current"])


def _rounds_gallery(service: FeedbackService, session_id: str | None) -> tuple[list[tuple[str, str]], list[str]]:
    """(thumbnails of the session's rounds' start images with captions, their round ids), oldest first."""
    if not session_id:
        return [], []
    items, ids = [], []
    for row in service.history(session_id):
        image = row["refined_image"] or row["start_image"]
        if not image:
            continue
        caption = f"round {row['round_index']} · {row['status']}" + (f" · {row['choice']}" if row["choice"] else "")
        items.append((_path(service, image), caption))
        ids.append(row["round_id"])
    return items, ids


def _resume_point(service: FeedbackService, session_id: str) -> str | None:
    """The round to continue: the latest; a round started by a refinement but not yet shown continues at its
    parent (refined, with *Next round* offered)."""
    rows = service.history(session_id)
    if not rows:
        return None
    latest = rows[-1]
    if latest["candidates"] == 0 and latest["parent_round_id"]:
        return latest["parent_round_id"]
    return latest["round_id"]


def show_round(service: FeedbackService, session_id: str, round_id: str | None, browser: dict[str, Any],
               blind: bool, message: str) -> tuple:
    """Every output of ROUND_OUTPUTS for `round_id` of the session (None: the session without a round)."""
    state: dict[str, Any] = {"session_id": session_id}
    input_path = start_path = None
    tiles: list = []
    preferred: list[str] = []
    rejected: list[str] = []
    compare = None
    if round_id is not None:
        view = service.get_round(round_id)
        if view.session_id != session_id:
            raise gr.Error("this round belongs to another session")
        state |= {"round_id": view.round_id, "round_index": view.round_index}
        input_path, start_path = _path(service, view.input_image_id), _path(service, view.start_image_id)
        if view.candidates:
            state = _show_round(service, state, view)
            labels = {cid: f"#{i + 1}" for i, cid in enumerate(state["candidate_ids"])}
            choice = service.live_choice(view.round_id)
            if choice is not None and choice.kind == "pairwise":
                preferred = [labels[c] for c in choice.preferred if c in labels]
                rejected = [labels[c] for c in choice.rejected if c in labels]
            tiles = gallery_items(service, state, preferred, rejected, blind)
        row = next(r for r in service.history(session_id) if r["round_id"] == view.round_id)
        if row["refined_image"]:
            state |= {"next_round_id": row["next_round_id"], "refined_id": row["refined_image"]}
            compare = (start_path, _path(service, row["refined_image"]))
            message += " It was refined: compare with the slider or press *Next round*."
        elif view.candidates:
            message += " Mark tiles and submit, or refine the recorded choice."
        else:
            message += " Press *Generate candidates*."
    thumbs, ids = _rounds_gallery(service, session_id)
    state["rounds"] = ids
    labels = [f"#{i + 1}" for i in range(len(state.get("image_ids", [])))]
    return (state, input_path, start_path, tiles, gr.update(choices=labels, value=preferred),
            gr.update(choices=labels, value=rejected), message, history_rows(service, state), thumbs,
            _session_choices(service, browser), compare, browser)


@user_errors
def start_session(service: FeedbackService, name: str, browser: Any = None, blind: bool = True) -> tuple:
    """Sign in: a new session for the typed name, remembered by this browser (its token in local storage)."""
    session_id, token = service.create_session(name or "")
    browser = _browser(browser)
    browser["sessions"] = (browser["sessions"] + [{"id": session_id, "token": token,
                                                   "at": datetime.now(UTC).isoformat(timespec="seconds")}]
                           )[-MAX_REMEMBERED:]
    browser["current"] = session_id
    return show_round(service, session_id, None, browser, blind,
                      f"Signed in. Session `{session_id[:8]}`; your name is stored only as a pseudonym. "
                      "This browser remembers the session: a reload continues it.")


def _authenticated(service: FeedbackService, browser: dict[str, Any], session_id: str | None) -> str | None:
    """The session id when this browser holds its (still valid) token, else None."""
    for remembered in browser["sessions"]:
        if remembered["id"] == session_id:
            try:
                return service.authenticate(remembered["token"]).session_id
            except (AuthError, FeedbackError):
                return None
    return None


def resume(service: FeedbackService, browser: Any, blind: bool) -> tuple:
    """On page load: continue the browser's current session where it was (or ask for a name)."""
    browser = _browser(browser)
    browser["sessions"] = [s for s in browser["sessions"] if _authenticated(service, browser, s["id"])]
    session_id = _authenticated(service, browser, browser["current"])
    if session_id is None:  # nothing to continue: leave the page as it is (a sign-in may have begun meanwhile)
        return tuple(gr.skip() for _ in ROUND_OUTPUTS)
    round_id = _resume_point(service, session_id)
    what = f"Welcome back: session `{session_id[:8]}`" + (f", round {service.get_round(round_id).round_index}."
                                                          if round_id else ".")
    return show_round(service, session_id, round_id, browser, blind, what)


@user_errors
def switch_session(service: FeedbackService, browser: Any, session_id: str | None, blind: bool) -> tuple:
    """Continue another session this browser started (chosen in the session list)."""
    browser = _browser(browser)
    found = _authenticated(service, browser, session_id)
    if found is None:
        raise gr.Error("this browser holds no valid token for that session")
    browser["current"] = found
    round_id = _resume_point(service, found)
    return show_round(service, found, round_id, browser, blind, f"Continuing session `{found[:8]}`.")


@user_errors
def open_round(service: FeedbackService, state: dict, browser: Any, blind: bool, evt: gr.SelectData) -> tuple:
    """Continue the round whose thumbnail was clicked."""
    ids = state.get("rounds", [])
    k = evt.index
    if not state.get("session_id") or isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(ids):
        raise gr.Error("no round at that thumbnail; sign in or reload the page")
    view = service.get_round(ids[k])
    return show_round(service, state["session_id"], ids[k], _browser(browser), blind,
                      f"Continuing round {view.round_index}.")


@user_errors
def session_zip(service: FeedbackService, state: dict) -> str:
    """The session as a zip (session.json + images/) for download."""
    if not state.get("session_id"):
        raise gr.Error("Enter your name and press Start first.")
    return service.session_zip(state["session_id"], tempfile.mkdtemp(prefix="ttpo-session-"))
