"""A participant walks through a 3-item study in a real browser: consent, keyboard answers, resume after a
reload, the completion code; the votes and viewing conditions are checked in the database.

Run: .venv/bin/python -m pytest tests/feedback/studies/test_study_browser.py -m browser -q -s
Skips when /usr/bin/chromium is missing (never downloads a browser).
"""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest

try:
    from tests.app_server import create_study, png_bytes, running_app
except ImportError:  # pytest run from inside tests/
    from app_server import create_study, png_bytes, running_app

STEP_TIMEOUT_MS = 60_000

pytestmark = pytest.mark.browser


def _wait_progress(page, text: str) -> None:
    page.wait_for_function("t => document.querySelector('#progress').innerText === t", arg=text,
                           timeout=STEP_TIMEOUT_MS)


def test_participant_reaches_the_completion_code(browser, tmp_path):
    images = []
    for i in range(2):
        images.append(tmp_path / f"img{i}.png")
        images[-1].write_bytes(png_bytes(40, seed=i))
    definition = {"name": "Browser study", "images": [str(p) for p in images], "conditions": ["nlm", "bicubic"],
                  "degradations": ["noise:20"], "repeat_share": 0.5, "attention_checks": 0,
                  "consent_text": "We store your choices under a pseudonym.", "consent_version": "v1"}
    with running_app(tmp_path / "data") as server:
        with httpx.Client(base_url=server.url, timeout=300) as client:
            created = create_study(client, definition)
        sid = created["study_id"]
        assert created["n_items"] == 3  # 2 stimuli + 1 repeat
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(f"{server.url}/study/{sid}?PROLIFIC_PID=abc123")
        page.locator("#consent-text").filter(has_text="pseudonym").wait_for(timeout=STEP_TIMEOUT_MS)
        assert page.locator("#consent-button").is_disabled()
        page.locator("#consent-box").check()
        page.locator("#consent-button").click()
        _wait_progress(page, "1 of 3")
        page.wait_for_function("document.querySelector('#left').naturalWidth > 0", timeout=STEP_TIMEOUT_MS)
        page.locator("#left").click()  # a zoom interaction
        page.keyboard.press("ArrowLeft")
        _wait_progress(page, "2 of 3")
        page.reload()  # resumes where it left off
        _wait_progress(page, "2 of 3")
        page.keyboard.press("t")
        _wait_progress(page, "3 of 3")
        page.locator("#choose-right").click()
        page.wait_for_function("document.querySelector('#code').innerText.length === 10", timeout=STEP_TIMEOUT_MS)
        code = page.locator("#code").inner_text()
        with sqlite3.connect(server.db_path) as db:
            answers = [a for (a,) in db.execute(
                "SELECT answer FROM study_items i JOIN participants p ON i.participant_id = p.id "
                "WHERE p.completion_code = ? ORDER BY i.position", (code,))]
            zooms = [z for (z,) in db.execute("SELECT zoom_count FROM choices ORDER BY created_at")]
            viewports = set(db.execute("SELECT viewport_w, viewport_h, device_pixel_ratio FROM choices"))
        assert answers == ["left", "tie", "right"]
        assert zooms == [1, 0, 0] and viewports == {(1200, 900, 1.0)}
        page.locator("#withdraw-button").click()
        page.locator("#withdrawn").wait_for(state="visible", timeout=STEP_TIMEOUT_MS)
        with sqlite3.connect(server.db_path) as db:
            assert db.execute("SELECT COUNT(*) FROM choices").fetchone()[0] == 0
            assert db.execute("SELECT COUNT(*) FROM participants").fetchone()[0] == 0


def test_participant_walks_a_gallery_study(browser, tmp_path):
    """Three images per item: keys 1..3 pick the best, Shift+number marks the worst, Enter submits; or buttons."""
    images = []
    for i in range(2):
        images.append(tmp_path / f"img{i}.png")
        images[-1].write_bytes(png_bytes(40, seed=i))
    definition = {"name": "Gallery study", "images": [str(p) for p in images],
                  "conditions": ["nlm", "bicubic", "median"], "candidates_per_round": 3,
                  "degradations": ["noise:20"], "repeat_share": 0, "attention_checks": 1,
                  "consent_text": "We store your choices under a pseudonym.", "consent_version": "v1"}
    with running_app(tmp_path / "data") as server:
        with httpx.Client(base_url=server.url, timeout=300) as client:
            sid = create_study(client, definition)["study_id"]
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(f"{server.url}/study/{sid}")
        page.locator("#consent-box").check()
        page.locator("#consent-button").click()
        _wait_progress(page, "1 of 3")
        page.wait_for_function("document.querySelectorAll('#gallery img').length === 3 && "
                               "[...document.querySelectorAll('#gallery img')].every(i => i.naturalWidth > 0)",
                               timeout=STEP_TIMEOUT_MS)
        assert page.locator("#pair-item").is_hidden() and page.locator("#submit-gallery").is_disabled()
        page.keyboard.press("2")
        page.keyboard.press("Shift+Digit3")
        assert page.locator("#g2.best").count() == 1 and page.locator("#g3.worst").count() == 1
        page.keyboard.press("Enter")
        _wait_progress(page, "2 of 3")
        page.locator("#best-1").click()
        page.locator("#submit-gallery").click()
        _wait_progress(page, "3 of 3")
        page.keyboard.press("3")
        page.keyboard.press("Enter")
        page.wait_for_function("document.querySelector('#code').innerText.length === 10", timeout=STEP_TIMEOUT_MS)
        code = page.locator("#code").inner_text()
        with sqlite3.connect(server.db_path) as db:
            answers = db.execute(
                "SELECT answer, worst FROM study_items i JOIN participants p ON i.participant_id = p.id "
                "WHERE p.completion_code = ? ORDER BY i.position", (code,)).fetchall()
            pairs = db.execute("SELECT COUNT(*) FROM preference_pairs").fetchone()[0]
        assert answers == [("2", "3"), ("1", None), ("3", None)]
        assert pairs == 3 + 2 + 2  # best > 2 others (+ the other > the worst on item 1)


def test_participant_marks_regions_in_an_adaptive_study_and_withdraws_midway(browser, tmp_path):
    """M turns marking on; a drag on the right image draws a box, tagged from its list, sent with the vote in
    [0, 1] image coordinates; the participant then withdraws at item 2 and every row of theirs is deleted."""
    images = []
    for i in range(2):
        images.append(tmp_path / f"img{i}.png")
        images[-1].write_bytes(png_bytes(40, seed=i))
    definition = {"name": "Adaptive study", "images": [str(p) for p in images], "conditions": ["nlm", "bicubic"],
                  "degradations": ["noise:20"], "repeat_share": 0, "attention_checks": 0, "sampling": "adaptive",
                  "consent_text": "We store your choices under a pseudonym.", "consent_version": "v1"}
    with running_app(tmp_path / "data") as server:
        with httpx.Client(base_url=server.url, timeout=300) as client:
            sid = create_study(client, definition)["study_id"]
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(f"{server.url}/study/{sid}")
        page.locator("#consent-box").check()
        page.locator("#consent-button").click()
        _wait_progress(page, "1 of 2")
        page.wait_for_function("document.querySelector('#right').naturalWidth > 0", timeout=STEP_TIMEOUT_MS)
        page.keyboard.press("m")
        box = page.locator("#right").bounding_box()
        page.mouse.move(box["x"] + 0.25 * box["width"], box["y"] + 0.5 * box["height"])
        page.mouse.down()
        page.mouse.move(box["x"] + 0.5 * box["width"], box["y"] + 0.75 * box["height"], steps=5)
        page.mouse.up()
        assert page.locator(".mark").count() == 1 and page.locator("#right.zoomed").count() == 0
        page.locator(".mark select").select_option("residual-noise")
        page.locator("#choose-left").click()
        _wait_progress(page, "2 of 2")
        assert page.locator(".mark").count() == 0  # marks belong to one item
        with sqlite3.connect(server.db_path) as db:
            (regions,) = db.execute("SELECT regions FROM choices WHERE regions IS NOT NULL").fetchone()
        (mark,) = json.loads(regions)
        assert mark["on"] == "right" and mark["position"] == 1 and mark["tag"] == "residual-noise"
        assert mark["x"] == pytest.approx(0.25, abs=0.02) and mark["y"] == pytest.approx(0.5, abs=0.02)
        assert mark["w"] == pytest.approx(0.25, abs=0.02) and mark["h"] == pytest.approx(0.25, abs=0.02)
        page.locator("#withdraw-now").click()
        page.locator("#withdraw-yes").click()
        page.locator("#withdrawn-screen").wait_for(state="visible", timeout=STEP_TIMEOUT_MS)
        with sqlite3.connect(server.db_path) as db:
            assert db.execute("SELECT COUNT(*) FROM choices").fetchone()[0] == 0
            assert db.execute("SELECT COUNT(*) FROM participants").fetchone()[0] == 0
