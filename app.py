"""The TTPO annotation app: Gradio Blocks for people, REST routes for programs, one process. Layout and wiring only.

    python app.py [--port 7860] [--data-dir data] [--db URL] [--admin-token T] [--host 127.0.0.1]
                  [--rate-limit 30] [--rate-burst 10] [--prior FOLDER] [--extra-prior NAME=FOLDER ...]
                  [--backbone NAME=PATH_OR_BUILTIN ...] [--backbone DEFAULT] [--device auto]

Handlers live in feedback/web/ui.py and feedback/web/ui_choices.py (annotation) and feedback/web/admin_ui.py (the
admin tab: studies, analysis, export; behind the admin token; laid out in feedback/web/admin_tab.py), routes in
feedback/web/api.py, the loop in feedback/loop/service.py.
Small engine settings for tests and demos: `--candidates 2 --candidate-steps 2 --refine-steps 2`, or
TTPO_FAST=1 (the same). The admin token may also come from $TTPO_ADMIN_TOKEN; the database URL from
$TTPO_DB_URL (default: SQLite in the data directory). Alembic migrations are applied on start.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
from pathlib import Path

import restoration  # noqa: F401 - first: offline by default (restoration/offline.py) before gradio loads the hub
import gradio as gr
from fastapi import FastAPI

from feedback.loop.engine import DEFAULT_PRIOR, DTYPE_OF_PRECISION, EngineSettings, RefineSettings, RoundSettings
from feedback.loop.ratelimit import RateLimit
from feedback.loop.service import FeedbackService
from feedback.loop.uploads import UploadLimits
from feedback.record.db import open_database
from feedback.record.models import REASON_TAGS
from feedback.studies.service import StudyService
from feedback.web import ui, ui_choices, ui_sessions
from feedback.web.admin_tab import admin_tab
from feedback.web.api import build_api
from feedback.web.study_api import build_study_router

OFFLINE_METRICS = ("piqe", "entropy")  # no downloaded weights needed
PAGE_JS = Path(ui.__file__).resolve().parent / "page.js"  # keyboard shortcuts, the 1:1 compare view
PAGE_CSS = Path(ui.__file__).resolve().parent / "page.css"
PRIOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")
BACKBONE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,39}")


def build_demo(service: FeedbackService, studies: StudyService | None = None) -> gr.Blocks:
    """The Gradio Blocks: the annotation flow and the admin tab; every event has an api_name, state holds ids only."""
    studies = studies or StudyService(service)
    with gr.Blocks(title="TTPO: restore, compare, refine") as demo:
        with gr.Tab("Annotate", id="annotate", elem_id="annotate_tab"):
            browser, blind, shown = annotate_tab(service)
        with gr.Tab("Admin", id="admin", elem_id="admin_tab"):
            admin_tab(studies)  # feedback/web/admin_tab.py
        # a reload continues the session this browser keeps, where it was
        demo.load(ui.bind(service, ui_sessions.resume), [browser, blind], shown, api_name="resume",
                  concurrency_limit=None)
    return demo


def candidate_concurrency(service: FeedbackService) -> int:
    """How many page users' candidate requests may wait at the engine at once: enough to fill a batch, and no
    more than the engine gate lets wait beside the one engine event the page runs, so page users never get
    the gate's 'busy' answer from each other."""
    return max(1, min(service.batcher.max_jobs, service.gate.max_waiting))


def annotate_tab(service: FeedbackService) -> None:
    """Restore -> candidates -> compare and mark tiles (and draw boxes where the problem is) -> refine, with
    settings, progress and cancel, keyboard shortcuts, the 1:1 compare view and the region boxes
    (feedback/web/page.js) and the sessions this browser keeps (feedback/web/ui_sessions.py)."""
    eng = service.worker.settings
    bind = lambda fn: ui.bind(service, fn)  # noqa: E731 - handlers take the service first
    state = gr.State({})
    browser = gr.BrowserState(ui_sessions.EMPTY_BROWSER, storage_key="ttpo-lab-sessions",
                              secret=service.browser_secret())
    with gr.Row(equal_height=True):
        gr.Markdown("### Restore, compare, refine", elem_id="title")
        name = gr.Textbox(show_label=False, placeholder="Your name or nickname (stored only as a pseudonym)",
                          elem_id="name", scale=3, container=False)
        start = gr.Button("Start", variant="primary", elem_id="start", scale=0, min_width=80)
        sessions = gr.Dropdown([], value=None, show_label=False, elem_id="sessions", scale=3, container=False,
                               info=None, allow_custom_value=False)
        zip_btn = gr.Button("Session zip", elem_id="session_zip", scale=0, min_width=110, size="sm")
    status = gr.Markdown("Enter a name and press Start.", elem_id="status")
    gr.HTML("<b>Keys</b>: <kbd>1</kbd>-<kbd>9</kbd> mark a tile (preferred, rejected, none) · <kbd>Enter</kbd> "
            "submit · <kbd>R</kbd> refine · <kbd>N</kbd> next round · <kbd>Esc</kbd> clear marks · <kbd>M</kbd> draw "
            "boxes where the problem is · in the compare view: drag or arrows pan, wheel or <kbd>+</kbd>/<kbd>-</kbd> "
            "zoom", elem_id="keys", js_on_load=None)

    with gr.Accordion("Settings", open=False):
        with gr.Row():
            backbone = gr.Dropdown(service.worker.backbones(), value=service.worker.default_backbone(),
                                   label="Restoration backbone", elem_id="backbone")
            prior = gr.Dropdown(service.worker.prior_names(), value=DEFAULT_PRIOR, elem_id="prior",
                                label="Diffusion prior (for candidates and refinement; each loaded once)")
            blind = gr.Checkbox(True, label="Blind mode (hide which tile is the restored image)", elem_id="blind")
        with gr.Row():
            n_candidates = gr.Slider(1, eng.max_candidates, value=eng.round.num_candidates, step=1,
                                     label="Number of candidates", elem_id="n_candidates")
            strengths = gr.Textbox(", ".join(str(s) for s in eng.round.strengths),
                                   label="Candidate strengths (inversion depth, (0, 1])")
            seed = gr.Number(-1, precision=0, label="Seed (-1: random, recorded)")
        with gr.Row():
            guidance = gr.Slider(0.0, 0.5, value=eng.refine.guidance_scale, step=0.005, label="Guidance scale")
            refine_strength = gr.Slider(0.05, 1.0, value=eng.refine.strength, step=0.05, label="Refine strength")
            refine_steps = gr.Slider(1, 50, value=eng.refine.steps, step=1, label="Refine steps",
                                     elem_id="refine_steps")
            metrics = gr.Dropdown(list(OFFLINE_METRICS), value=list(eng.selector), multiselect=True,
                                  allow_custom_value=True, label="Selector metrics (auto mode)")

    with gr.Row():
        with gr.Column(scale=1, min_width=260):
            sample = gr.Dropdown(ui.sample_names(), value=None, label="Bundled sample", elem_id="sample")
            image = ui.UploadedImage(type="filepath", label="Image to restore", sources=["upload", "clipboard"],
                                     elem_id="upload", height=256)
            fit = gr.Checkbox(True, elem_id="fit",
                              label=f"Downscale a larger photo to fit (sides up to {service.limits.max_side} px, "
                                    f"{service.limits.max_pixels} pixels); off: refuse it")
            degradation = gr.Dropdown(list(ui.DEGRADATION_EXAMPLES), value="none", allow_custom_value=True,
                                      label="Synthesize a degradation (the clean image is kept as ground truth)",
                                      elem_id="degradation")
            hint = gr.Dropdown(["", "haze", "rain+haze", "noise:25", "blur:1.5"], value="", allow_custom_value=True,
                               label="Tell the restorer the degradation (optional; empty: blind). The classical "
                                     "methods choose by it; SIPL, told haze, dehazes its output",
                               elem_id="hint")
            upscale = gr.Checkbox(False, elem_id="upscale",
                                  label="Upscale: a super-resolution backbone (e.g. realesrgan, x4) enlarges the image "
                                        "and the round continues at that size; off: restore at the image's size")
            with gr.Row():
                restore_btn = gr.Button("Restore", variant="primary", elem_id="restore")
                generate_btn = gr.Button("Generate candidates", variant="primary", elem_id="generate")
                cancel_btn = gr.Button("Cancel", elem_id="cancel", variant="stop", size="sm")
        input_view = gr.Image(label="Input", interactive=False, elem_id="input_view", height=384, scale=2)
        restored_view = gr.Image(label="Restored", interactive=False, elem_id="restored_view", height=384, scale=2)

    # A click on a tile cycles its mark (no enlarged preview: the compare view below shows detail at 1:1 and more).
    gallery = gr.Gallery(label="Candidates: click a tile (or press its number) to mark it preferred, again for "
                               "rejected, again to clear (one of them is the restored image)", columns=4, height="auto",
                         elem_id="gallery", allow_preview=False, object_fit="contain")
    gr.HTML(ui_choices.region_tools_html(), elem_id="region_view", js_on_load=None)
    gr.HTML('<div class="compare-tools"><b>Compare at 1:1</b> <span>click tiles to add them:</span>'
            '<button id="compare_zoom_out">-</button><span id="compare_zoom">2x</span>'
            '<button id="compare_zoom_in">+</button><button id="compare_one">1:1</button>'
            '<button id="compare_mode">before/after slider</button><button id="compare_swap">other pair</button>'
            '</div><div id="compare_strip"></div><div id="compare_panes"></div>',
            elem_id="compare_view", js_on_load=None)
    with gr.Row():
        preferred = gr.CheckboxGroup([], label="Preferred tiles", elem_id="preferred")
        rejected = gr.CheckboxGroup([], label="Rejected tiles", elem_id="rejected")
        tags = gr.CheckboxGroup(list(REASON_TAGS), label="Why were the rejected ones worse? (optional)")
    with gr.Row():
        submit = gr.Button("Submit choice", variant="primary", elem_id="submit")
        tie = gr.Button("All similar", elem_id="tie", size="sm")
        skip = gr.Button("Skip", elem_id="skip", size="sm")
        auto = gr.Button("Auto mode: let the metric choose", elem_id="auto", size="sm")
        refine_btn = gr.Button("Refine", variant="primary", elem_id="refine")
        next_btn = gr.Button("Next round", elem_id="next_round")
    # set by feedback/web/page.js: a mark from the compare view, Esc, and the viewing facts and region boxes sent
    # with each choice
    mark_request = gr.Textbox(visible="hidden", elem_id="mark_request")
    mark_apply = gr.Button(visible="hidden", elem_id="mark_apply")
    clear_btn = gr.Button(visible="hidden", elem_id="clear_marks")
    viewing = gr.Textbox(visible="hidden", elem_id="viewing")
    regions = gr.Textbox(visible="hidden", elem_id="regions")
    with gr.Row():
        compare = gr.ImageSlider(label="Before (start image) / after (refined)", type="filepath", elem_id="compare",
                                 height=480, scale=3)
        with gr.Column(scale=1, min_width=220):
            download = gr.DownloadButton("Download refined image", value=None, elem_id="download", size="sm")
            sheet_download = gr.DownloadButton("Download contact sheet", value=None, elem_id="download_sheet",
                                               size="sm")
            session_file = gr.File(label="Session zip (images + JSON record)", interactive=False,
                                   elem_id="session_file", height=80)
    auto_scores = gr.Dataframe(headers=["tile", "score", "pick"], label="Metric scores (auto mode)",
                               interactive=False)

    with gr.Accordion("Inspect detail: the same crop at 1:1 across candidates", open=False):
        with gr.Row():
            crop_x = gr.Slider(0, 100, value=50, step=1, label="x (% of width)")
            crop_y = gr.Slider(0, 100, value=50, step=1, label="y (% of height)")
            crop_size = gr.Slider(8, 256, value=32, step=8, label="crop size (px)")
            inspect = gr.Button("Inspect", elem_id="inspect")
        crops = gr.Gallery(label="Crops", columns=6, height=200)

    rounds = gr.Gallery(label="Rounds of this session: click one to continue it", columns=8, height=150,
                        elem_id="rounds", allow_preview=False, object_fit="cover")
    history = gr.Dataframe(headers=ui.HISTORY_COLUMNS, label="Rounds of this session", interactive=False,
                           elem_id="history")

    # ---- wiring: engine events share one concurrency slot; light events run freely ----
    engine = dict(concurrency_id="engine", concurrency_limit=1)
    # candidate events of several users may wait at the engine together, so that the batcher runs them as one
    # batch; the engine gate still computes one thing at a time (and the engine slot above may hold one more)
    candidates = dict(concurrency_id="candidates", concurrency_limit=candidate_concurrency(service))
    shown = [state, input_view, restored_view, gallery, preferred, rejected, status, history, rounds, sessions,
             compare, browser]  # ui_sessions.ROUND_OUTPUTS
    start.click(bind(ui_sessions.start_session), [name, browser, blind], shown, api_name="sign_in")
    name.submit(bind(ui_sessions.start_session), [name, browser, blind], shown, api_name="sign_in_enter")
    sessions.input(bind(ui_sessions.switch_session), [browser, sessions, blind], shown, api_name="switch_session",
                   concurrency_limit=None)
    rounds.select(bind(ui_sessions.open_round), [state, browser, blind], shown, api_name="open_round",
                  concurrency_limit=None)
    zip_btn.click(bind(ui_sessions.session_zip), [state], [session_file], api_name="session_zip",
                  concurrency_limit=None)
    sample.change(ui.load_sample, [sample], [image], api_name="load_sample")
    restore_btn.click(bind(ui.restore), [state, image, degradation, backbone, seed, fit, hint, upscale],
                      [state, input_view, restored_view, status, history, gallery, preferred, rejected],
                      api_name="restore", **engine)
    cancel_btn.click(bind(ui.cancel), [state], [status], api_name="cancel", concurrency_limit=None, queue=False)
    round_out = [state, gallery, preferred, rejected, status, history]
    generate_btn.click(bind(ui.generate), [state, n_candidates, seed, strengths, blind, prior], round_out,
                       api_name="generate", **candidates)
    marks = [state, preferred, rejected, blind]
    gallery.select(bind(ui_choices.click_tile), marks, [preferred, rejected, gallery], api_name="click_tile",
                   concurrency_limit=None)
    mark_apply.click(bind(ui_choices.set_mark), [*marks, mark_request], [preferred, rejected, gallery], api_name="set_mark",
                     concurrency_limit=None)
    clear_btn.click(bind(ui_choices.clear_marks), [state, blind], [preferred, rejected, gallery], api_name="clear_marks",
                    concurrency_limit=None)
    # .input, not .change: a tile click sets the checkboxes itself and must not re-caption twice
    for widget, api in ((preferred, "mark_preferred"), (rejected, "mark_rejected")):
        widget.input(bind(ui_choices.mark), marks, [gallery], api_name=api, concurrency_limit=None)
    blind.change(bind(ui_choices.mark), marks, [gallery], api_name="toggle_blind", concurrency_limit=None)
    submit.click(bind(ui_choices.submit_pairwise), [state, preferred, rejected, tags, viewing, regions], [status, history],
                 api_name="submit_choice", concurrency_limit=None)
    tie.click(bind(ui_choices.submit_tie), [state, tags, viewing, regions], [status, history], api_name="submit_tie",
              concurrency_limit=None)
    skip.click(bind(ui_choices.submit_skip), [state, viewing], [status, history], api_name="submit_skip",
               concurrency_limit=None)
    auto.click(bind(ui_choices.auto_choose), [state, metrics, blind], [status, auto_scores, gallery, history],
               api_name="auto_choose", **engine)
    refine_btn.click(bind(ui.refine), [state, refine_strength, refine_steps, guidance],
                     [state, compare, download, status, history, sheet_download], api_name="refine", **engine)
    next_btn.click(bind(ui.next_round), [state, n_candidates, seed, strengths, blind, prior], round_out,
                   api_name="next_round", **candidates)
    inspect.click(bind(ui.inspect_detail), [state, crop_x, crop_y, crop_size], [crops], api_name="inspect",
                  concurrency_limit=None)
    return browser, blind, shown


def build_app(service: FeedbackService, queue_size: int = 16, rate_limit: RateLimit = RateLimit()) -> FastAPI:
    """The FastAPI app: REST routes under /api/v1 and the Gradio Blocks mounted at /.

    One StudyService serves the study routes and the admin tab; studies a killed process left 'preparing' are
    prepared again now, in its background thread."""
    studies = StudyService(service)
    studies.resume_preparing()
    # user studies: /api/v1/studies..., /study/{id}
    api = build_api(service, rate_limit, routers=[build_study_router(service, studies)])
    demo = build_demo(service, studies).queue(default_concurrency_limit=1, max_size=queue_size)
    # Gradio serves files only from the image store (plus its own upload cache), never the data folder itself.
    app = gr.mount_gradio_app(api, demo, path="/", allowed_paths=[str(service.images.root)], ssr_mode=False,
                              css=PAGE_CSS.read_text(), head=f"<script>{PAGE_JS.read_text()}</script>",
                              footer_links=["api"], max_file_size=service.limits.max_bytes)
    # Gradio checks that a file path sent to an event (e.g. the image input) was uploaded by a user only once
    # the Blocks count as launched, which `launch()` marks and `mount_gradio_app` does not: without this, a
    # client could post {"path": "/any/file"} and have the server copy that file into the servable cache.
    demo.has_launched = True
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    fast = os.environ.get("TTPO_FAST") == "1"
    p = argparse.ArgumentParser(prog="python app.py", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--data-dir", default="data", help="images, SQLite database and pseudonym salt")
    p.add_argument("--db", default=None, help="database URL (default: $TTPO_DB_URL or SQLite in --data-dir)")
    p.add_argument("--admin-token", default=os.environ.get("TTPO_ADMIN_TOKEN"),
                   help="token for export and access to every session (default: $TTPO_ADMIN_TOKEN)")
    p.add_argument("--backbone", action="append", default=[], metavar="NAME=PATH_OR_BUILTIN | DEFAULT",
                   help="NAME=SOURCE offers a backbone by NAME (repeatable): SOURCE is a registry name (e.g. "
                        "realesrgan) or a checkpoint file, read and checked now; a value without '=' names the "
                        "default backbone ('auto', the default: sipl if installed, else nlm)")
    p.add_argument("--prior", default="default",
                   help="the diffusion prior offered as 'default': 'default' (assets/prior) or a folder")
    p.add_argument("--extra-prior", action="append", default=[], metavar="NAME=FOLDER",
                   help="another diffusion prior people may choose, by NAME (repeatable; loaded on first use)")
    p.add_argument("--device", default="auto", help="auto (CUDA when torch sees a GPU, else cpu), cpu, cuda or cuda:N; "
                                                    "recorded with every round")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="the diffusion prior's compute precision ('auto': bf16 where the CPU/GPU has native "
                        "bfloat16, else fp32)")
    p.add_argument("--compile", default="none", metavar="MODE",
                   help="torch.compile the diffusion prior's U-Net: none, default, reduce-overhead (CUDA graphs on a "
                        "GPU) or max-autotune; each new image size compiles once")
    p.add_argument("--candidates", type=int, default=2 if fast else RoundSettings.num_candidates,
                   help="default number of candidates")
    p.add_argument("--max-candidates", type=int, default=8)
    p.add_argument("--candidate-steps", type=int, default=2 if fast else RoundSettings.steps)
    p.add_argument("--refine-steps", type=int, default=2 if fast else RefineSettings.steps)
    p.add_argument("--max-side", type=int, default=1024, help="largest accepted image side (px)")
    p.add_argument("--queue-size", type=int, default=4, help="engine requests allowed to wait (more: 503)")
    p.add_argument("--batch-sessions", type=int, default=8,
                   help="most sessions whose waiting candidate requests run as one batch (1: no batching)")
    p.add_argument("--rate-limit", type=float, default=RateLimit.per_minute,
                   help="engine requests (round, auto, refine) per minute per session over the REST API (0: off)")
    p.add_argument("--rate-burst", type=int, default=RateLimit.burst,
                   help="engine requests a session may make at once before the per-minute rate applies")
    p.add_argument("--no-warmup", action="store_true", help="load models on the first request, not at start")
    a = p.parse_args(argv)
    if not 1 <= a.candidates <= a.max_candidates <= 64:
        p.error("need 1 <= --candidates <= --max-candidates <= 64")
    if a.candidate_steps < 1 or a.refine_steps < 1 or a.queue_size < 0 or not 16 <= a.max_side <= 8192:
        p.error("steps must be >= 1, --queue-size >= 0, --max-side in 16..8192")
    if not 1 <= a.batch_sessions <= 64:
        p.error("--batch-sessions must be in 1..64")
    if not 0 <= a.rate_limit <= 1e6 or not 1 <= a.rate_burst <= 10_000:
        p.error("need 0 <= --rate-limit <= 1e6 (0: off) and 1 <= --rate-burst <= 10000")
    a.extra_priors = []
    for item in a.extra_prior:
        name, _, folder = item.partition("=")
        if not PRIOR_NAME.fullmatch(name) or name == DEFAULT_PRIOR or not folder:
            p.error(f"--extra-prior {item!r}: expected NAME=FOLDER, NAME of letters, digits, '.', '_', '-' "
                    f"(at most 40, not {DEFAULT_PRIOR!r})")
        if not Path(folder).is_dir():
            p.error(f"--extra-prior {name}: no folder {folder}")
        if name in dict(a.extra_priors):
            p.error(f"--extra-prior {name} is given twice")
        a.extra_priors.append((name, str(Path(folder).resolve())))
    a.extra_backbones, defaults = parse_backbones(p, a.backbone)
    if len(defaults) > 1:
        p.error(f"--backbone: name one default backbone, got {', '.join(defaults)}")
    a.backbone = defaults[0] if defaults else "auto"
    from restoration.backbones.registry import available_backbones

    offered = [*available_backbones(), *dict(a.extra_backbones)]
    if a.backbone != "auto" and a.backbone not in offered:
        p.error(f"--backbone {a.backbone}: not a backbone name; offered: auto, {', '.join(offered)} (register a "
                "checkpoint with --backbone NAME=PATH)")
    from restoration.runtime import resolve_device

    try:
        a.device = resolve_device(a.device)
    except ValueError as exc:
        p.error(f"--device: {exc}")
    return a


def parse_backbones(p: argparse.ArgumentParser, items: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(registered (NAME, source) pairs, default names) of the --backbone values; every source is read and checked
    now (a checkpoint is loaded weights-only, a wheel model converted), so a bad one stops the start."""
    from restoration.backbones.registry import available_backbones, describe_backbone

    registered: list[tuple[str, str]] = []
    defaults = []
    for item in items:
        if "=" not in item:
            defaults.append(item.strip().lower())
            continue
        name, _, source = (part.strip() for part in item.partition("="))
        if not BACKBONE_NAME.fullmatch(name) or name == "auto" or not source:
            p.error(f"--backbone {item!r}: expected NAME=PATH_OR_BUILTIN, NAME of lower-case letters, digits, '.', "
                    "'_', '-' (at most 40, not 'auto')")
        if name in available_backbones() or name in dict(registered):
            p.error(f"--backbone {name}: the name is taken (built in or given twice); choose another")
        builtin = source.lower() in available_backbones()
        if builtin:
            source = source.lower()
        elif Path(source).expanduser().exists() or "/" in source or Path(source).suffix:
            source = str(Path(source).expanduser().resolve())  # a file: the name keeps meaning it after a chdir
        try:
            describe_backbone(source)
        except (ValueError, FileNotFoundError) as exc:
            p.error(f"--backbone {name}: {exc}")
        registered.append((name, source))
    return registered, defaults


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    a = parse_args(argv)
    from restoration.diffusion.priors import check_compile_mode, resolve_precision

    precision = resolve_precision(a.precision, a.device)
    try:
        check_compile_mode(a.compile)
    except ValueError as exc:
        raise SystemExit(f"app.py: error: --compile: {exc}") from None
    engine = EngineSettings(backbone=a.backbone, prior=a.prior, extra_priors=tuple(a.extra_priors),
                            extra_backbones=tuple(a.extra_backbones), device=a.device,
                            dtype=DTYPE_OF_PRECISION[precision], compile_mode=a.compile,
                            max_candidates=a.max_candidates,
                            round=RoundSettings(num_candidates=a.candidates, steps=a.candidate_steps),
                            refine=RefineSettings(steps=a.refine_steps))
    db = open_database(a.db, a.data_dir)  # applies Alembic migrations
    service = FeedbackService(db, a.data_dir, engine, admin_token=a.admin_token,
                              limits=UploadLimits(max_side=a.max_side, max_pixels=a.max_side * a.max_side),
                              max_waiting=a.queue_size, batch_sessions=a.batch_sessions)
    if not a.no_warmup:
        threading.Thread(target=service.worker.warm_up, name="warm-up", daemon=True).start()
    app = build_app(service, queue_size=max(1, 4 * a.queue_size),
                    rate_limit=RateLimit(per_minute=a.rate_limit, burst=a.rate_burst))
    print(f"ttpo-lab app on http://{a.host}:{a.port}/  (REST /api/v1, OpenAPI /openapi.json)", flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning")


if __name__ == "__main__":
    sys.exit(main())
