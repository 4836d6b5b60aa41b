"""The Admin tab of the app's Gradio Blocks: its layout and the wiring of its events to `feedback.web.admin_ui`.

`admin_tab(studies)` lays out the study list, the analysis of a study (with a live view that refreshes
itself), the preference dataset export and study creation inside the caller's `gr.Tab`; every handler it
wires is bound to the app's one `StudyService` and checks the admin token. `app.build_demo` calls it.
"""

from __future__ import annotations

import gradio as gr

from feedback.analysis.export import FORMATS, VARIANTS
from feedback.studies.service import StudyService
from feedback.web import admin_ui, ui


def admin_tab(studies: StudyService) -> None:
    """Studies, their analysis (with a live view that refreshes itself while a study is picked) and the preference
    dataset export; every handler that reads or writes data checks the admin token."""
    bind = lambda fn: ui.bind(studies, fn)  # noqa: E731 - `studies` must not be rebound below
    gr.Markdown("## Admin\nStudies, their analysis and the preference dataset. Every action checks the admin "
                "token on the server (`--admin-token` / `$TTPO_ADMIN_TOKEN`).")
    with gr.Row():
        token = gr.Textbox(type="password", label="Admin token", elem_id="admin_token", scale=4)
        list_btn = gr.Button("List studies", variant="primary", elem_id="admin_list", scale=1)
    admin_status = gr.Markdown("Enter the admin token and press *List studies*.", elem_id="admin_status")
    study_table = gr.Dataframe(headers=admin_ui.STUDY_COLUMNS, label="Studies", interactive=False,
                               elem_id="admin_studies")

    with gr.Accordion("Analysis of a study", open=True):
        with gr.Row():
            study = gr.Dropdown([], value=None, label="Study", elem_id="admin_study", scale=3)
            resamples = gr.Number(1000, precision=0, minimum=1, maximum=admin_ui.MAX_RESAMPLES,
                                  label="Bootstrap resamples")
            exclude = gr.Checkbox(False, label="Leave out flagged (inattentive) participants")
            analyse_btn = gr.Button("Analyse", variant="primary", elem_id="admin_analyse")
        # the live view: refreshed by itself while a study is picked (as /study-admin does)
        live = gr.Checkbox(True, label=f"Refresh the live view every {admin_ui.LIVE_SECONDS:g} s while a study is "
                                       f"picked ({admin_ui.LIVE_RESAMPLES} bootstrap resamples)", elem_id="admin_live")
        live_summary = gr.Markdown(elem_id="admin_live_summary")
        live_scores = gr.Dataframe(headers=admin_ui.LIVE_COLUMNS, interactive=False, elem_id="admin_live_scores",
                                   label="Live: current Bradley-Terry scores with 95% intervals, best first")
        timer = gr.Timer(admin_ui.LIVE_SECONDS, active=False)
        summary = gr.Markdown(elem_id="admin_summary")
        conditions = gr.Dataframe(headers=admin_ui.CONDITION_COLUMNS, interactive=False,
                                  label="Conditions: win rate and Bradley-Terry log-strength with 95% intervals",
                                  elem_id="admin_conditions")
        with gr.Row():
            agreement = gr.Dataframe(headers=admin_ui.AGREEMENT_COLUMNS, interactive=False,
                                     label="Metric agreement with people", elem_id="admin_agreement")
            people = gr.Dataframe(headers=admin_ui.PARTICIPANT_COLUMNS, interactive=False, label="Participants",
                                  elem_id="admin_participants")
        plots = gr.Gallery(label="Plots", columns=4, height=320, elem_id="admin_plots")
        tables = gr.File(label="CSV tables and the JSON report", file_count="multiple", interactive=False,
                         elem_id="admin_tables")

    with gr.Accordion("Export the preference dataset", open=False):
        with gr.Row():
            fmt = gr.Radio(list(FORMATS), value=FORMATS[0], label="Format")
            variant = gr.Radio(list(VARIANTS), value=VARIANTS[0], label="Columns")
            human_only = gr.Checkbox(False, label="Human choices only")
            scope = gr.Dropdown([("all", "")], value="", label="Study (all: every session)", elem_id="admin_scope")
            export_btn = gr.Button("Export", variant="primary", elem_id="admin_export")
        export_file = gr.File(label="Dataset (zip)", interactive=False, elem_id="admin_export_file")

    with gr.Accordion("Create a study", open=False):
        gr.Markdown("A study definition in JSON or YAML (fields: see `feedback/studies/study.py`); image paths are read on "
                    "the server and checked now; every stimulus x condition is then computed in the background "
                    "(the study list shows the progress).")
        with gr.Row():
            definition = gr.Code(language="yaml", label="Definition", elem_id="admin_definition")
            upload = gr.File(file_types=[".json", ".yaml", ".yml"], type="filepath", label="or upload a file")
        create_btn = gr.Button("Create study", elem_id="admin_create")

    listed = [study_table, study, scope]
    list_btn.click(bind(admin_ui.list_studies), [token], [*listed, admin_status], api_name="admin_list_studies",
                   concurrency_limit=None)
    token.submit(bind(admin_ui.list_studies), [token], [*listed, admin_status], api_name="admin_list_studies_enter",
                 concurrency_limit=None)
    live_out = [live_summary, live_scores, timer]
    for picked, what in ((study.change, "pick"), (live.change, "toggle")):  # start or stop it, show it now
        picked(admin_ui.live_timer, [study, live], [timer], api_name=f"admin_live_{what}", queue=False).then(
            bind(admin_ui.live_dashboard), [token, study, exclude], live_out, api_name=f"admin_live_{what}_now",
            show_progress="hidden", concurrency_id="admin_live", concurrency_limit=1)
    timer.tick(bind(admin_ui.live_dashboard), [token, study, exclude], live_out, api_name="admin_live",
               show_progress="hidden", trigger_mode="once", concurrency_id="admin_live", concurrency_limit=1)
    analyse_btn.click(bind(admin_ui.analyse_study), [token, study, resamples, exclude],
                      [summary, conditions, agreement, people, plots, tables], api_name="admin_analyse",
                      concurrency_id="admin", concurrency_limit=1)
    export_btn.click(bind(admin_ui.export_preferences), [token, fmt, variant, human_only, scope],
                     [export_file, admin_status], api_name="admin_export", concurrency_id="admin",
                     concurrency_limit=1)
    create_btn.click(bind(admin_ui.create_study), [token, definition, upload], [admin_status, *listed],
                     api_name="admin_create_study", concurrency_id="admin", concurrency_limit=1)
