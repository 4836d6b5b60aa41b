"""Gradio handlers of the admin tab: studies, their analysis (tables, plots, CSV) and the dataset export.

Every handler takes the app's one `StudyService` first (bound with `feedback.web.ui.bind` when wiring; it owns the
background preparation of new studies, and its `fb` is the app's FeedbackService) and the admin token typed
into the tab's password box, which is checked on the server with the service's own token check before
anything is read: a wrong or missing token gets an error and no data. The work is done by
`feedback.studies.service`, `feedback.analysis.report` and `feedback.analysis.export`; this module only turns their results
into table rows and files. While a study is picked, the tab's timer calls `live_dashboard` every `LIVE_SECONDS`
(participants, votes, exclusions, current scores with intervals, sampler state), as /study-admin refreshes itself.
Files are written to a fresh folder under the system temp folder (Gradio copies
returned files into its cache to serve them); folders older than `KEEP_SECONDS` are removed on the next call.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import gradio as gr

from feedback.analysis import export
from feedback.analysis.votes import AnalysisConfig
from feedback.analysis.writers import write_csv, write_plots
from feedback.loop.service import FeedbackService
from feedback.loop.sessions import AuthError
from feedback.record.errors import FeedbackError, InputError
from feedback.studies.service import StudyService
from feedback.web.ui import user_errors

STUDY_COLUMNS = ["study id", "name", "conditions", "participants", "consent", "created", "participant link",
                 "status"]
CONDITION_COLUMNS = ["condition", "win rate", "CI low", "CI high", "Bradley-Terry", "BT CI low", "BT CI high",
                     "votes", "ties"]
AGREEMENT_COLUMNS = ["metric", "agrees with people", "CI low", "CI high", "comparisons", "gallery best agrees",
                     "gallery votes"]
PARTICIPANT_COLUMNS = ["participant", "status", "answered", "attention checks passed", "votes", "consistency",
                       "first-shown share", "flagged", "reasons"]
LIVE_COLUMNS = ["condition", "Bradley-Terry", "BT CI low", "BT CI high", "win rate", "votes"]
#: The live view of a picked study refreshes every LIVE_SECONDS, with LIVE_RESAMPLES bootstrap resamples.
LIVE_SECONDS = 5.0
LIVE_RESAMPLES = 200
MAX_RESAMPLES = 100_000
MAX_DEFINITION_BYTES = 1_000_000
KEEP_SECONDS = 3600
WORK_ROOT = Path(tempfile.gettempdir()) / "ttpo-admin"


def check_admin(service: FeedbackService, token: str | None) -> None:
    """AuthError unless `token` is the app's admin token (the same check as the REST API's)."""
    if not service.admin_enabled:
        raise AuthError("this app was started without an admin token (--admin-token or $TTPO_ADMIN_TOKEN); "
                        "the admin tab is off", 403)
    try:
        service.require_admin(service.authenticate((token or "").strip() or None))
    except AuthError:  # one answer for every refusal: no hint whether a token is a session's
        raise AuthError("wrong or missing admin token", 403) from None


def _work_dir(kind: str) -> Path:
    """A new private folder for one call's files; folders of earlier calls older than KEEP_SECONDS go."""
    WORK_ROOT.mkdir(mode=0o700, exist_ok=True)
    for old in WORK_ROOT.iterdir():
        try:
            if time.time() - old.stat().st_mtime > KEEP_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:  # removed by another process meanwhile
            pass
    return Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=WORK_ROOT))


def _r(x: Any, digits: int = 3) -> float | None:
    return None if x is None else round(float(x), digits)


# --------------------------------------------------------------------------------------------- studies
def _study_choices(studies: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(f"{s['name']} ({s['study_id'][:8]})", s["study_id"]) for s in studies]


def status_text(study: dict[str, Any]) -> str:
    """'active', 'preparing (3 of 8 stimuli)' or 'failed: <error>' for the study table."""
    if study["status"] == "preparing":
        return f"preparing ({study['progress']['done']} of {study['progress']['total']} stimuli)"
    if study["status"] == "failed":
        return f"failed: {study['error'] or 'no error recorded'}"
    return study["status"]


@user_errors
def list_studies(studies: StudyService, token: str) -> tuple[list[list[Any]], dict, dict, str]:
    """-> (study table rows, study picker update, export scope update, status line)."""
    check_admin(studies.fb, token)
    listed = studies.list_studies()
    rows = [[s["study_id"], s["name"], ", ".join(s["conditions"]), s["participants"], s["consent_version"],
             s["created_at"][:19], f"/study/{s['study_id']}", status_text(s)] for s in listed]
    choices = _study_choices(listed)
    picked = choices[-1][1] if choices else None  # the newest study
    preparing = sum(s["status"] == "preparing" for s in listed)
    return (rows, gr.update(choices=choices, value=picked), gr.update(choices=[("all", ""), *choices], value=""),
            f"{len(listed)} studies." + (f" {preparing} being prepared: press *List studies* again to see their "
                                         "progress." if preparing else ""))


def parse_definition(text: str | None, upload: str | None) -> Any:
    """The study definition from an uploaded .json/.yaml file (preferred) or pasted text; YAML reads JSON too."""
    if upload:
        path = Path(upload)
        if path.suffix.lower() not in (".json", ".yaml", ".yml"):
            raise InputError(f"study definition {path.name}: upload a .json, .yaml or .yml file")
        if path.stat().st_size > MAX_DEFINITION_BYTES:
            raise InputError(f"study definition {path.name} is larger than {MAX_DEFINITION_BYTES} bytes")
        text = path.read_text(encoding="utf-8", errors="replace")
    if not text or not text.strip():
        raise InputError("paste a study definition (JSON or YAML) or upload a .json/.yaml file")
    if len(text) > MAX_DEFINITION_BYTES:
        raise InputError(f"the study definition is longer than {MAX_DEFINITION_BYTES} characters")
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"the study definition is neither JSON nor YAML: {exc}") from None


@user_errors
def create_study(studies: StudyService, token: str, text: str | None, upload: str | None) -> tuple:
    """Create a study (checked now; its stimuli are computed in the background) -> (status, then
    `list_studies`' outputs)."""
    check_admin(studies.fb, token)
    created = studies.create_study(parse_definition(text, upload))
    rows, picker, scope, _ = list_studies(studies, token)
    msg = (f"Created study **{created['name']}** (`{created['study_id']}`): {created['stimuli']} stimuli, "
           f"{created['n_items']} items per participant. Its images are being prepared in the background; "
           f"press *List studies* to see the progress. Participant link (open once it is active): "
           f"`/study/{created['study_id']}`")
    picker["value"] = created["study_id"]
    return msg, rows, picker, scope


# --------------------------------------------------------------------------------------------- analysis
def analysis_tables(report: dict[str, Any]) -> tuple[list[list[Any]], list[list[Any]], list[list[Any]]]:
    """(conditions, metric agreement, participants) rows of a `StudyService.analysis` report."""
    conditions = [[name, _r(c["win_rate"]), _r(c["ci"][0]), _r(c["ci"][1]), _r(c["bt_score"]), _r(c["bt_ci"][0]),
                   _r(c["bt_ci"][1]), c["n"], c["ties"]] for name, c in report["conditions"].items()]
    agreement = [[m, _r(a["rate"]), _r(a["ci"][0]), _r(a["ci"][1]), a["n"], _r(a["gallery"]["rate"]),
                  a["gallery"]["n"]] for m, a in report["metric_agreement"].items()]
    quality = report["participants"]  # by analysis pseudonym
    people = []
    for participant_id, p in report.get("study_participants", {}).items():
        q = quality.get(p["pseudonym"], {})
        people.append([participant_id[:8], p["status"], f"{p['answered']}/{p['n_items']}",
                       f"{p['attention_passed']}/{p['attention_checks']}", q.get("votes", 0),
                       _r(q.get("consistency")), _r(q.get("position_bias")), bool(q.get("flagged", False)),
                       "; ".join(q.get("reasons", []))])
    return conditions, agreement, people


def _summary(report: dict[str, Any], study_id: str) -> str:
    alpha = report["krippendorff_alpha"]
    excluded = report["excluded_participants"]
    return (f"Study `{study_id}`: **{report['n_votes']}** human votes from **{report['n_participants']}** "
            f"participants. Krippendorff's alpha (agreement between people): "
            f"**{'n/a' if alpha is None else f'{alpha:.3f}'}**."
            + (f" Left out as flagged: {len(excluded)} participants." if excluded else "")
            + " Win rates and Bradley-Terry scores with bootstrap 95% intervals below."
            + _tests_text(report.get("condition_tests") or {}) + _sampling_text(report.get("sampling")))


def _tests_text(tests: dict[str, Any]) -> str:
    """The pairwise condition tests as one line each (significant ones marked)."""
    if not tests.get("pairs"):
        return ""
    lines = [f"- {r['a']} vs {r['b']}: BT difference {_r(r['bt_difference'], 2)}, p = {_r(r['p'])}, "
             f"Holm p = {_r(r['p_holm'])}{' **(significant)**' if r['significant'] else ''}" for r in tests["pairs"]]
    return (f"\n\nPairwise tests ({tests['method']}; {tests['correction']}, alpha {_r(tests['alpha'], 3)}):\n"
            + "\n".join(lines))


def _sampling_text(sampling: dict[str, Any] | None) -> str:
    if not sampling:
        return ""
    text = f"\n\nSampling: **{sampling['sampler']}**, items per sampler {sampling['items']}"
    if sampling["sampler"] == "adaptive":
        text += (f"; {sampling['votes']} votes, {sampling['pending']} pending; next pair "
                 f"{' vs '.join(sampling['next_pair'])} ({_r(sampling['next_score_bits'])} bits)")
    return text + "."


@user_errors
def analyse_study(studies: StudyService, token: str, study_id: str | None, resamples: float | None,
                  exclude_flagged: bool) -> tuple:
    """-> (summary, conditions rows, metric agreement rows, participant rows, plot PNGs, CSV + JSON files)."""
    check_admin(studies.fb, token)
    if not study_id:
        raise InputError("pick a study first (press *List studies*)")
    n = 1000 if resamples is None else resamples
    if not float(n).is_integer() or not 1 <= n <= MAX_RESAMPLES:
        raise InputError(f"bootstrap resamples must be an integer in 1..{MAX_RESAMPLES}, got {n}")
    report = studies.analysis(study_id, AnalysisConfig(n_resamples=int(n),
                                                                     exclude_flagged=bool(exclude_flagged)))
    out = _work_dir("analysis")
    files = write_csv(report, out)
    (out / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    files.append(out / "report.json")
    summary = _summary(report, study_id)
    try:
        plots = [str(p) for p in write_plots(report, out / "plots")]
    except InputError as exc:  # matplotlib missing: tables and files still come
        plots, summary = [], f"{summary}\n\nNo plots: {exc}"
    conditions, agreement, people = analysis_tables(report)
    return summary, conditions, agreement, people, plots, [str(f) for f in files]


# --------------------------------------------------------------------------------------------- live view
def live_timer(study_id: str | None, live: bool) -> gr.Timer:
    """The live view's timer: ticking while a study is picked and *Refresh by itself* is ticked."""
    return gr.Timer(active=bool(study_id) and bool(live))


def live_text(report: dict[str, Any], study_id: str) -> str:
    """The live line of a study's report: participants by status, votes, flagged and excluded participants, the
    sampler's state."""
    people = list(report.get("study_participants", {}).values())
    by = {s: sum(p["status"] == s for p in people) for s in ("active", "completed", "screened_out")}
    flagged = sum(bool(q.get("flagged")) for q in report["participants"].values())
    sampling = report.get("sampling") or {}
    sampler = sampling.get("sampler", "?")
    if sampler == "adaptive":
        sampler += (f" ({sampling['votes']} votes, {sampling['pending']} pending; next pair "
                    f"{' vs '.join(sampling['next_pair'])}, {_r(sampling['next_score_bits'])} bits)")
    return (f"**Live** · study `{study_id[:8]}`: **{len(people)}** participants ({by['active']} active, "
            f"{by['completed']} completed, {by['screened_out']} screened out), **{report['n_votes']}** votes, "
            f"{flagged} flagged, {len(report['excluded_participants'])} excluded. Sampler: {sampler}. "
            f"Updated {time.strftime('%H:%M:%S')}.")


def live_dashboard(studies: StudyService, token: str, study_id: str | None, exclude_flagged: bool = False) -> tuple:
    """The live view of the picked study, refreshed by the tab's timer -> (live line, current scores rows: condition,
    Bradley-Terry log-strength with its 95% interval, win rate, votes; best first, timer update). It never raises (a
    timer calls it): a wrong token, an unknown study or a failed one stop the timer and say why; a study being
    prepared shows its progress."""
    if not study_id:
        return "", [], gr.Timer(active=False)
    try:
        check_admin(studies.fb, token)
        status = studies.study_status(study_id)
        if status["status"] == "preparing":
            progress = status["progress"]
            line = (f"**Live** · study `{study_id[:8]}` is being prepared ({progress['done']} of "
                    f"{progress['total']} stimuli). Updated {time.strftime('%H:%M:%S')}.")
            return line, [], gr.skip()
        if status["status"] != "active":
            return f"**Live** view stopped: study `{study_id[:8]}` {status_text(status)}", [], gr.Timer(active=False)
        report = studies.analysis(study_id, AnalysisConfig(n_resamples=LIVE_RESAMPLES,
                                                           exclude_flagged=bool(exclude_flagged)))
    except FeedbackError as exc:  # AuthError included
        return f"**Live** view stopped: {exc.message}. Pick the study again to restart it.", [], gr.Timer(active=False)
    rows = [[name, _r(c["bt_score"]), _r(c["bt_ci"][0]), _r(c["bt_ci"][1]), _r(c["win_rate"]), c["n"]]
            for name, c in sorted(report["conditions"].items(), key=lambda kv: -(kv[1]["bt_score"] or 0.0))]
    return live_text(report, study_id), rows, gr.skip()


# --------------------------------------------------------------------------------------------- export
@user_errors
def export_preferences(studies: StudyService, token: str, format: str, variant: str, human_only: bool,
                       study_id: str | None) -> tuple[str, str]:
    """The preference dataset (`feedback.analysis.export`) as one zip (data file, images for jsonl, export_info.json)
    -> (zip path, status line)."""
    service = studies.fb
    check_admin(service, token)
    if format not in export.FORMATS or variant not in export.VARIANTS:
        raise InputError(f"format must be one of {', '.join(export.FORMATS)} and variant one of "
                         f"{', '.join(export.VARIANTS)}; got {format!r}, {variant!r}")
    out = _work_dir("export")
    with service.db.reads.begin() as s:
        result = export.export_dataset(s, service.images, out / "preferences", format=format, variant=variant,
                                       human_only=bool(human_only), study_id=study_id or None)
    scope = f"study {study_id}" if study_id else "all sessions"
    archive = shutil.make_archive(str(out / f"preferences-{variant}-{format}"), "zip", result.out_dir)
    shutil.rmtree(result.out_dir, ignore_errors=True)
    return archive, (f"Exported {result.rows} preference pairs ({variant}, {format}, {scope}); "
                     f"{result.superseded_choices} superseded choices left out.")
