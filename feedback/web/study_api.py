"""REST routes of user studies (over `feedback.studies.service.StudyService`) and the participant page.

Admin (Authorization: Bearer <admin token>):
  POST /api/v1/studies                    a study definition (JSON; fields of feedback.studies.study.StudyDefinition)
                                          -> 202 {"study_id", "status": "preparing", "progress": {"done", "total"},
                                          "status_url", "stimuli", "n_items", ...}; definition, conditions and
                                          images are checked now (400/404), the images computed in the background
  GET  /api/v1/studies/{id}/status        {"status": preparing|active|failed, "progress", "error"}
                                          (?wait_s=30: answer once it is not preparing, or after wait_s seconds)
  GET  /api/v1/studies                    [{"study_id", "name", "status", "progress", "participants", ...}]
  GET  /api/v1/studies/{id}/analysis      feedback.analysis.report report + per-participant attention checks
                                          (?n_resamples=1000&exclude_flagged=false)
  GET  /api/v1/studies/{id}/export        one preference pair per line (JSONL)
Participant:
  GET  /api/v1/studies/{id}               {"name", "consent_text", "consent_version", "instructions", "n_items",
                                          "status", "progress"}
  POST /api/v1/studies/{id}/participants  {"consent_version", "platform_id"?} -> {"participant_id", "token", "n_items"}
                                          (409 while the study is preparing or when it failed)
  GET  /api/v1/studies/{id}/participants/{pid}/next          (Bearer token) -> the first unanswered item
                                          {"k", "n", "left": {"url"}, "right": {"url"}, "instructions"}
                                          (a gallery item: "gallery": [{"url"}, ...] in positions 1..K instead
                                          of left/right) or {"done": true, "completion_code", "redirect"} (the
                                          study's completion_url with the code; screened out: "screened_out")
  POST /api/v1/studies/{id}/participants/{pid}/items/{k}/vote (Bearer token)
                                          {"choice": left|right|tie, "decision_ms", "zoom_count", "viewport": [w, h],
                                           "dpr"} -> {"k", "n", "created"}; idempotent per item
                                          (a gallery item: "choice": "1".."K" the best, "worst": "1".."K" optional;
                                          "regions": boxes where the problem is, feedback.studies.regions; a failed
                                          attention check of a study with a screenout_url answers
                                          "screened_out": true, "redirect")
  POST /api/v1/studies/{id}/participants/{pid}/withdraw      (Bearer token) withdraw at any point: rows deleted
  POST /api/v1/studies/{id}/withdraw      {"completion_code"} -> rows deleted per table
  GET  /study/{id}                        the participant page (consent, instructions, k of n, keys <- -> T;
                                          galleries: 1..K best, Shift+1..K worst, Enter)
  GET  /study-admin                       the admin page: create a study, list studies, see the analysis
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import BaseModel, Field

from feedback.analysis.votes import AnalysisConfig
from feedback.loop.service import FeedbackService
from feedback.studies.service import StudyService
from feedback.web.api import PREFIX, Who
from feedback.web.schemas import AUTH, INPUT, errors

PAGE = Path(__file__).resolve().parent / "study_page.html"
ADMIN_PAGE = Path(__file__).resolve().parent / "study_admin.html"
MAX_STATUS_WAIT_S = 60.0


class EnrolIn(BaseModel):
    consent_version: str = Field(description="the consent version the participant agreed to")
    platform_id: str | None = Field(None, description="recruiting platform id (e.g. PROLIFIC_PID); stored hashed")


class EnrolOut(BaseModel):
    participant_id: str
    token: str
    n_items: int
    resumed: bool


class VoteIn(BaseModel):
    choice: str = Field(description="left | right | tie; for a gallery item the best image's position '1'..'K'")
    worst: str | None = Field(None, description="gallery items only: the position marked worst ('1'..'K'), optional")
    decision_ms: int | None = None
    zoom_count: int | None = None
    viewport: list[int] | None = Field(None, description="[width, height] in CSS pixels")
    dpr: float | None = Field(None, description="window.devicePixelRatio")
    regions: Any = Field(None, description="where the problem is: [{\"on\": \"left\" | \"right\" | \"<position>\", "
                                           "\"x\", \"y\", \"w\", \"h\" in [0, 1], \"tag\"?}]")


class WithdrawIn(BaseModel):
    completion_code: str


def _image(image_id: str) -> dict[str, str]:
    return {"image_id": image_id, "url": f"{PREFIX}/images/{image_id}"}


def build_study_router(service: FeedbackService, studies: StudyService | None = None) -> APIRouter:
    """The study routes (under /api/v1) and the participant page (/study/{id}) over one service; `studies` is
    the app's shared StudyService (it owns the background preparation), a new one when not given."""
    studies = studies or StudyService(service)
    router = APIRouter()

    def with_status_url(status: dict[str, Any]) -> dict[str, Any]:
        return {**status, "status_url": f"{PREFIX}/studies/{status['study_id']}/status"}

    @router.post(f"{PREFIX}/studies", status_code=202, responses=errors(AUTH, 404, INPUT))
    def create_study(who: Who, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        service.require_admin(who)
        return with_status_url(studies.create_study(body))

    @router.get(f"{PREFIX}/studies/{{study_id}}/status", responses=errors(AUTH, 404, 422))
    def study_status(study_id: str, who: Who,
                     wait_s: Annotated[float, Query(ge=0, le=MAX_STATUS_WAIT_S)] = 0) -> dict[str, Any]:
        service.require_admin(who)
        return with_status_url(studies.wait_until_ready(study_id, timeout_s=wait_s) if wait_s
                               else studies.study_status(study_id))

    @router.get(f"{PREFIX}/studies", responses=errors(AUTH))
    def list_studies(who: Who) -> list[dict[str, Any]]:
        service.require_admin(who)
        return studies.list_studies()

    @router.get(f"{PREFIX}/studies/{{study_id}}", responses=errors(404, 422))
    def study_info(study_id: str) -> dict[str, Any]:
        return studies.public_info(study_id)

    @router.get(f"{PREFIX}/studies/{{study_id}}/analysis", responses=errors(AUTH, 400, 404, 422))
    def study_analysis(study_id: str, who: Who,
                       n_resamples: Annotated[int, Query(ge=1, le=100_000)] = 1000,
                       exclude_flagged: bool = False) -> dict[str, Any]:
        service.require_admin(who)
        return studies.analysis(study_id, AnalysisConfig(n_resamples=n_resamples, exclude_flagged=exclude_flagged))

    @router.get(f"{PREFIX}/studies/{{study_id}}/export", response_class=StreamingResponse,
                responses={200: {"content": {"application/x-ndjson": {}}, "description": "one pair per line"},
                           **errors(AUTH, 404, 422)})
    def study_export(study_id: str, who: Who) -> StreamingResponse:
        service.require_admin(who)
        rows = studies.export_rows(study_id)
        return StreamingResponse((json.dumps(r, separators=(",", ":")) + "\n" for r in rows),
                                 media_type="application/x-ndjson")

    @router.post(f"{PREFIX}/studies/{{study_id}}/participants", response_model=EnrolOut,
                 responses=errors(404, 409, INPUT))
    def enrol(study_id: str, body: EnrolIn) -> dict[str, Any]:
        e = studies.enrol(study_id, body.consent_version, body.platform_id)
        return {"participant_id": e.participant_id, "token": e.token, "n_items": e.n_items, "resumed": e.resumed}

    @router.get(f"{PREFIX}/studies/{{study_id}}/participants/{{participant_id}}/next",
                responses=errors(AUTH, 404, 409, 422))
    def next_item(study_id: str, participant_id: str, who: Who) -> dict[str, Any]:
        item = studies.next_item(who, study_id, participant_id)
        if item["done"]:
            return item
        if "gallery" in item:
            item["gallery"] = [_image(g["image_id"]) for g in item["gallery"]]
        else:
            item["left"], item["right"] = _image(item["left"]["image_id"]), _image(item["right"]["image_id"])
        return item

    @router.post(f"{PREFIX}/studies/{{study_id}}/participants/{{participant_id}}/items/{{k}}/vote",
                 responses=errors(AUTH, 404, 409, INPUT))
    def vote(study_id: str, participant_id: str, k: int, body: VoteIn, who: Who) -> dict[str, Any]:
        return studies.vote(who, study_id, participant_id, k, body.choice, decision_ms=body.decision_ms,
                            zoom_count=body.zoom_count, viewport=body.viewport, dpr=body.dpr, worst=body.worst,
                            regions=body.regions)

    @router.post(f"{PREFIX}/studies/{{study_id}}/participants/{{participant_id}}/withdraw",
                 responses=errors(AUTH, 404, 422))
    def withdraw_now(study_id: str, participant_id: str, who: Who) -> dict[str, Any]:
        return {"withdrawn": True, "deleted": studies.withdraw_participant(who, study_id, participant_id)}

    @router.post(f"{PREFIX}/studies/{{study_id}}/withdraw", responses=errors(404, INPUT))
    def withdraw(study_id: str, body: WithdrawIn) -> dict[str, Any]:
        return {"withdrawn": True, "deleted": studies.withdraw(study_id, body.completion_code)}

    @router.get("/study/{study_id}", response_class=HTMLResponse, responses=errors(404, 422))
    def page(study_id: str) -> HTMLResponse:
        studies.public_info(study_id)  # 404 (JSON) for an unknown study
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @router.get("/study-admin", response_class=HTMLResponse)
    def admin_page() -> HTMLResponse:
        # The page holds no data: every call it makes sends the admin token typed into it.
        return HTMLResponse(ADMIN_PAGE.read_text(encoding="utf-8"))

    return router
