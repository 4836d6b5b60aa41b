"""The page as a tool, in a real browser (Playwright + the system Chromium), checked in the database: keyboard
marks, the 1:1 compare view (two candidates zoomed together, a mark set from it), a corrected choice (the export
holds only the latest), a reload that resumes the session, and a cancelled refine that leaves nothing behind.

Run: .venv/bin/python -m pytest tests/test_browser_tool.py -q -s
Saves docs/screenshot.jpg (the README's picture).
"""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest

try:
    from tests.app_server import ADMIN_TOKEN, REPO, running_app
except ImportError:  # pytest run from inside tests/
    from app_server import ADMIN_TOKEN, REPO, running_app

STEP_MS = 120_000
pytestmark = pytest.mark.browser


def _wait_status(page, text: str) -> None:
    page.wait_for_function("t => (document.querySelector('#status') || {innerText: ''}).innerText.includes(t)",
                           arg=text, timeout=STEP_MS)


def _captions(page) -> list[str]:
    return page.eval_on_selector_all("#gallery .caption-label", "els => els.map(e => e.innerText.trim())")


def _wait_caption(page, k: int, caption: str) -> None:
    page.wait_for_function("([k, c]) => (document.querySelectorAll('#gallery .caption-label')[k] || {}).innerText "
                           "=== c", arg=[k, caption], timeout=30_000)


def _checked(page, group: str) -> list[str]:
    boxes = page.locator(f"#{group} label")
    return [boxes.nth(i).inner_text().strip() for i in range(boxes.count())
            if boxes.nth(i).locator("input").is_checked()]


def _files(data_dir) -> set[str]:
    return {p.name for p in (data_dir / "images").rglob("*.png")}


def _count(db_path, table: str) -> int:
    with sqlite3.connect(db_path) as db:
        return db.execute(f"select count(*) from {table}").fetchone()[0]


def test_keyboard_compare_correction_reload_and_cancel(browser, tmp_path):
    from PIL import Image

    image = tmp_path / "cat.png"  # a bundled photo as a person's upload (256 px), degraded by noise below
    Image.open(REPO / "assets" / "samples" / "chelsea.png").convert("RGB").save(image)
    data = tmp_path / "data"
    with running_app(data, ("--candidates", "3")) as server:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server.url + "/", wait_until="domcontentloaded")
        page.locator("#name input, #name textarea").first.fill("Ada")
        page.locator("#start").click()
        _wait_status(page, "Signed in")
        page.locator("#upload input[type=file]").set_input_files(str(image))
        page.locator("#upload img").first.wait_for(timeout=30_000)
        degradation = page.locator("#degradation input")
        degradation.fill("noise:25")
        degradation.press("Enter")
        page.locator("#restore").click()
        _wait_status(page, "restored with")
        page.locator("#generate").click()
        _wait_status(page, "Click a tile")
        assert len(_captions(page)) == 4  # 3 candidates + the restored image

        # keyboard: 1 marks tile #1 preferred, 2 twice marks #2 rejected, Esc clears, then again
        page.locator("#title").click()
        page.keyboard.press("1")
        _wait_caption(page, 0, "#1 ✓ preferred")
        page.keyboard.press("2")
        _wait_caption(page, 1, "#2 ✓ preferred")
        page.keyboard.press("2")
        _wait_caption(page, 1, "#2 ✗ rejected")
        page.keyboard.press("Escape")
        _wait_caption(page, 0, "#1")
        _wait_caption(page, 1, "#2")
        page.keyboard.press("1")
        _wait_caption(page, 0, "#1 ✓ preferred")
        page.keyboard.press("3")
        page.keyboard.press("3")
        _wait_caption(page, 2, "#3 ✗ rejected")
        assert (_checked(page, "preferred"), _checked(page, "rejected")) == (["#1"], ["#3"])
        page.keyboard.press("Enter")
        _wait_status(page, "Choice recorded (1 preference pairs)")

        # compare view: tiles #2 and #4 side by side, zoomed to 4x and panned together; #2 marked from it
        chips = page.locator("#compare_strip .compare-chip")
        chips.nth(1).click()
        chips = page.locator("#compare_strip .compare-chip")
        chips.nth(3).click()
        page.wait_for_function("() => document.querySelectorAll('#compare_panes .compare-pane').length === 2")
        page.locator("#compare_zoom_in").click()
        panes = page.locator("#compare_panes .compare-pane")
        box = panes.nth(0).bounding_box()
        page.mouse.move(box["x"] + 100, box["y"] + 100)
        page.mouse.down()
        page.mouse.move(box["x"] + 60, box["y"] + 80, steps=4)
        page.mouse.up()
        page.keyboard.press("ArrowRight")
        shown = page.eval_on_selector_all("#compare_panes .compare-img",
                                          "els => els.map(e => [e.style.width, e.style.transform, e.naturalWidth])")
        assert len(shown) == 2 and shown[0][:2] == shown[1][:2]  # the same region at the same zoom
        assert float(shown[0][0].rstrip("px")) == 4 * shown[0][2]  # 4x: each image pixel is 4 x 4 screen pixels
        assert page.locator("#compare_zoom").inner_text() == "4x"
        page.locator("#compare_panes .compare-bar button[data-mark=preferred]").first.click()
        _wait_caption(page, 1, "#2 ✓ preferred")
        page.locator("#compare_mode").click()  # before/after slider between the two
        page.wait_for_function("() => document.querySelectorAll('#compare_panes .compare-pane img').length === 2")
        page.locator("#compare_split").fill("30")
        page.locator("#compare_mode").click()

        # the corrected choice (#1 and #2 over #3) replaces the first; a double click records it once
        page.locator("#submit").dblclick()
        _wait_status(page, "replacing the earlier choice")
        page.wait_for_timeout(1000)
        with sqlite3.connect(server.db_path) as db:
            rows = db.execute("select superseded_at is null, zoom_count, viewport_w, device_pixel_ratio from choices "
                              "order by created_at").fetchall()
        assert [r[0] for r in rows] == [0, 1], rows  # two choices, the first superseded
        assert rows[1][1] >= 5 and rows[1][2] == 1400 and rows[1][3] == 1.0  # zoom/compare interactions recorded
        export = httpx.get(f"{server.url}/api/v1/export", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        pairs = [json.loads(line) for line in export.text.splitlines()]
        assert export.headers["x-superseded-choices"] == "1"
        assert len(pairs) == 2 and {p["rejected_position"] for p in pairs} == {2 - 0}  # tile #3 at position 2
        assert {p["chosen_position"] for p in pairs} == {0, 1}

        # a reload continues the session: the same round, its tiles and the live choice's marks
        page.reload(wait_until="domcontentloaded")
        _wait_status(page, "Welcome back")
        page.wait_for_function("() => document.querySelectorAll('#gallery .caption-label').length === 4")
        assert (_checked(page, "preferred"), _checked(page, "rejected")) == (["#1", "#2"], ["#3"])
        assert page.locator("#rounds .caption-label").first.inner_text().startswith("round 0")
        chips = page.locator("#compare_strip .compare-chip")
        chips.nth(0).click()
        page.locator("#compare_strip .compare-chip").nth(1).click()
        page.locator("#compare_zoom_in").click()
        page.set_viewport_size({"width": 1400, "height": 2000})
        page.evaluate("() => window.scrollTo(0, 0)")
        page.wait_for_timeout(500)
        (REPO / "docs").mkdir(exist_ok=True)
        page.screenshot(path=str(REPO / "docs" / "screenshot.jpg"), full_page=False, type="jpeg", quality=80)
        page.set_viewport_size({"width": 1400, "height": 1000})

        # a refine cancelled half-way stores no row and no image
        rounds, refinements, files = _count(server.db_path, "rounds"), _count(server.db_path, "refinements"), \
            _files(data)
        page.get_by_text("Settings").first.click()
        steps = page.locator("#refine_steps input[type=number]")
        steps.fill("50")
        steps.press("Enter")
        page.locator("#title").click()
        page.keyboard.press("r")
        with sqlite3.connect(server.db_path) as db:
            session_id = db.execute("select id from sessions").fetchone()[0]
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        for _ in range(600):  # until the refine has made a few steps (the REST view of the same job)
            running = httpx.get(f"{server.url}/api/v1/sessions/{session_id}/progress", headers=admin).json()["running"]
            if running and running[0]["stage"] == "refine" and running[0]["step"] >= 3:
                break
            page.wait_for_timeout(50)
        page.wait_for_function("() => [...document.querySelectorAll('[data-testid=status-tracker]')]"
                               ".some(e => / steps /.test(e.textContent))", timeout=30_000)  # shown per step
        page.locator("#cancel").click()
        page.get_by_text("was cancelled").first.wait_for(timeout=STEP_MS)
        page.wait_for_timeout(500)
        assert (_count(server.db_path, "rounds"), _count(server.db_path, "refinements")) == (rounds, refinements)
        assert _files(data) == files
        page.keyboard.press("r")  # the round goes on: refine again, uncancelled
        _wait_status(page, "Refined in")
        assert _count(server.db_path, "refinements") == refinements + 1
        page.close()
