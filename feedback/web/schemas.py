"""The REST API's bodies and documented errors: pydantic request and response models, and `errors()`.

Every JSON body the routes of `feedback.web.api` read or answer is a model here, so the OpenAPI document
(/openapi.json) describes it; request bodies with settings derive from `KnownFields`, which refuses unknown
fields. `errors(...)` gives a route's OpenAPI error responses (each a JSON {"error": str}), for the study
routes (`feedback.web.study_api`) as well; `AUTH`, `INPUT` and `ENGINE` group the codes routes share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field, model_validator


class KnownFields(BaseModel):
    """A JSON body that refuses unknown fields, naming the allowed ones: a misspelt setting must not be ignored."""

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: Any) -> Any:
        if isinstance(data, dict) and (unknown := [str(k)[:40] for k in data if k not in cls.model_fields]):
            raise ValueError(f"unknown field(s) {', '.join(map(repr, unknown[:5]))}; allowed: "
                             f"{', '.join(cls.model_fields)}")
        return data


class SessionIn(BaseModel):
    annotator: str = Field(description="a name or nickname; stored only as a salted pseudonym")


class SessionOut(BaseModel):
    session_id: str
    token: str


class ImageRef(BaseModel):
    id: str = Field(description="sha256 of the PNG bytes")
    url: str


class CandidateRef(BaseModel):
    id: str = Field(description="candidate id to use in choices")
    url: str
    image_id: str
    position: int


class UploadFit(BaseModel):
    original_size: list[int] = Field(description="[width, height] of the upload, upright")
    size: list[int] = Field(description="[width, height] it was downscaled to, the round's input")


class RoundOut(BaseModel):
    round_id: str
    round_index: int
    parent_round_id: str | None
    status: str
    input: ImageRef
    restored: ImageRef = Field(description="the round's start image: restored (round 0) or refined (later)")
    candidates: list[CandidateRef] = Field(description="display order; includes the start image")
    upload: UploadFit | None = Field(None, description="present when the upload was downscaled to fit (fit=true)")
    scale_mode: str = Field("same_size", description="'upscale': the backbone enlarged the input by `scale` and the "
                                                     "round is at that size; 'same_size': restored at the input's size")
    scale: int = Field(1, description="the backbone's scale (output / input size of the model itself)")


class SessionSummary(BaseModel):
    session_id: str
    created_at: str
    rounds: int
    last_round_at: str | None
    current: bool = Field(description="the session of the calling token")


class SessionsOut(BaseModel):
    sessions: list[SessionSummary] = Field(description="the calling session's annotator's sessions, newest first "
                                                       "(metadata only: each session's images need its own token)")


class SessionRound(BaseModel):
    round_id: str
    round_index: int
    parent_round_id: str | None
    status: str
    created_at: str
    backbone: str
    prior: str | None
    candidates: int
    choice: str | None = Field(description="kind of the round's live choice (null: none yet)")
    selector: str | None
    pairs: int
    superseded: int = Field(description="earlier choices of the round that a later one replaced")
    next_round_id: str | None
    input: ImageRef
    start: ImageRef | None
    refined: ImageRef | None


class SessionRoundsOut(BaseModel):
    session_id: str
    rounds: list[SessionRound] = Field(description="oldest first")


class StageProgress(BaseModel):
    stage: str = Field(description="restore, candidates or refine")
    step: int = Field(description="network evaluations done (restorer or diffusion U-Net)")
    total: int | None = Field(description="steps this stage takes (null until one such stage has completed)")
    elapsed_s: float
    eta_s: float | None = Field(description="estimated seconds left (null while `total` is unknown)")
    fraction: float | None
    cancelled: bool


class ProgressOut(BaseModel):
    running: list[StageProgress] = Field(description="the session's running stages (empty: none)")


class CancelOut(BaseModel):
    cancelled: int = Field(description="running stages told to stop; each stops at its next step, its request "
                                       "answers 409 and nothing of it is stored")


class ChoiceIn(KnownFields):
    preferred: list[str] = []
    rejected: list[str] = []
    tie: bool = False
    skip: bool = False
    tags: list[str] = []
    decision_ms: int | None = None
    zoom_count: int | None = Field(None, description="zoom, pan and compare interactions before the choice")
    viewport: list[int] | None = Field(None, description="[width, height] of the viewport in CSS pixels")
    dpr: float | None = Field(None, description="the device pixel ratio")
    regions: Any = Field(None, description="where the problem is: [{\"on\": \"<k>\" (the k-th candidate in display "
                                           "order, from 1), \"x\", \"y\", \"w\", \"h\" in [0, 1] image "
                                           "coordinates, \"tag\"?: a reason tag}], at most 20 boxes")


class ChoiceOut(BaseModel):
    choice_id: str
    pairs: int
    kind: str
    created: bool
    superseded: int = Field(0, description="earlier choices of the round this one replaced (kept, marked "
                                           "superseded; export, analysis and refine read only the latest)")
    regions: int = Field(0, description="region marks stored with the choice")


class AutoIn(KnownFields):
    metrics: list[str] | None = None


class AutoOut(ChoiceOut):
    preferred: list[str]
    rejected: list[str]
    selector: str
    scores: dict[str, dict[str, float]]


class RefineIn(KnownFields):
    strength: float | None = None
    steps: int | None = None
    guidance_scale: float | None = None


class RefineOut(BaseModel):
    image: ImageRef
    round_id: str = Field(description="the next round, which starts from the refined image")
    refinement_id: str
    candidates: list[CandidateRef]
    seconds: float


class ErrorOut(BaseModel):
    error: str = Field(description="what was wrong and what is allowed")


_ERRORS = {
    400: "invalid input (the message says what is allowed)",
    401: "missing or unknown token",
    403: "the token has no access to this object (another session's, or not the admin token)",
    404: "unknown id",
    409: "conflicts with what is recorded (e.g. no choice yet, an idempotency key reused)",
    413: "request body too large",
    422: "malformed request (wrong types, missing fields)",
    429: "too many expensive requests from this session; retry after Retry-After seconds",
    503: "the engine queue is full; retry after Retry-After seconds",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"},
                                "required": True}}
AUTH, INPUT, ENGINE = (401, 403), (400, 413, 422), (429, 503)


def errors(*codes: int | Sequence[int]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` of the given error codes, each a JSON {"error": str} body (on HTML routes as well)."""
    flat = sorted({c for code in codes for c in ((code,) if isinstance(code, int) else code)})
    body = {"application/json": {"schema": ErrorOut.model_json_schema()}}
    return {c: {"description": _ERRORS[c], "content": body, **({"headers": _RETRY_AFTER} if c in (429, 503) else {})}
            for c in flat}
