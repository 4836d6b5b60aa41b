"""REST API over `FeedbackService` (FastAPI, OpenAPI at /openapi.json). Routes only; the service does the work.

Contract (every error is JSON {"error": "..."}; input errors are 4xx, unknown ids 404, a full engine queue 503):
  POST /api/v1/sessions                      {"annotator"} -> {"session_id", "token"}
  POST /api/v1/sessions/{session_id}/rounds  multipart image + degradation, backbone, prior, candidates, seed,
                                             parent_round_id, fit, hint, upscale -> {"round_id", "restored",
                                             "candidates", "scale_mode", "scale"}
  GET  /api/v1/sessions                       the calling session's annotator's sessions (metadata, newest first)
  GET  /api/v1/sessions/{session_id}/rounds  the session's rounds with input, start and refined images
  GET  /api/v1/sessions/{session_id}/download  application/zip: session.json + images/<id>.png
  GET  /api/v1/sessions/{session_id}/progress  running stages: step, total, seconds left
  POST /api/v1/sessions/{session_id}/cancel  stop them at their next step (they answer 409, store nothing)
  GET  /api/v1/rounds/{round_id}             the round, its candidates (display order) and status
  POST /api/v1/rounds/{round_id}/choices     {"preferred", "rejected", "tie", "skip", "tags", "decision_ms",
                                             "regions": [{"on": "<k>", "x", "y", "w", "h", "tag"?}]} (+ Idempotency-
                                             Key header) -> {"choice_id", "pairs", "superseded", "regions"}; a new
                                             choice supersedes the round's previous one (kept, marked); regions:
                                             boxes on the k-th candidate (display order, from 1) in [0, 1] image
                                             coordinates, at most 20, tag a reason tag (feedback.record.regions)
  POST /api/v1/rounds/{round_id}/auto        {"metrics"} -> the metric selector's choice and scores
  POST /api/v1/rounds/{round_id}/refine      {} -> {"image", "round_id" (the next round), "candidates"}
  GET  /api/v1/images/{id}                   image/png
  GET  /api/v1/export?format=jsonl           one preference pair per line (admin token)
  GET  /api/v1/health                        {"status", "engine_ready", "priors", "backbones": [{"name", "kind",
                                              "architecture", "scale", "weights_sha256", ...}]}
Round creation, auto and refine are rate-limited per session (429 + Retry-After; feedback.loop.ratelimit).
Unknown /api/v1 paths answer 404 (405 for a known path with another method), never the Gradio UI.
Candidates include the round's start image (restored or refined) as one candidate, at a shuffled position:
TTPO compares it with the diffusion samples. Refine also generates the next round's candidates.
Every call after session creation sends `Authorization: Bearer <token>`; the admin token may access everything.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, File, Form, Header, Query, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from feedback.loop.engine import RefineSettings
from feedback.loop.gate import Busy
from feedback.loop.ratelimit import RateLimit, RateLimited, RateLimiter
from feedback.loop.service import FeedbackService
from feedback.loop.sessions import AuthError, Principal
from feedback.loop.views import RoundView
from feedback.record.choices import ChoiceInput, ChoiceKind
from feedback.record.errors import Conflict, InputError, NotFound
from feedback.web.schemas import (
    AUTH,
    ENGINE,
    INPUT,
    AutoIn,
    AutoOut,
    CancelOut,
    ChoiceIn,
    ChoiceOut,
    ProgressOut,
    RefineIn,
    RefineOut,
    RoundOut,
    SessionIn,
    SessionOut,
    SessionRoundsOut,
    SessionsOut,
    errors,
)
from feedback.web.security import SecurityHeadersMiddleware, with_security_headers

PREFIX = "/api/v1"


def _image(image_id: str) -> dict[str, str]:
    return {"id": image_id, "url": f"{PREFIX}/images/{image_id}"}


def _round_out(view: RoundView) -> dict[str, Any]:
    return {"round_id": view.round_id, "round_index": view.round_index, "parent_round_id": view.parent_round_id,
            "status": view.status, "input": _image(view.input_image_id), "restored": _image(view.start_image_id),
            "candidates": [{"id": c.id, "image_id": c.image_id, "url": f"{PREFIX}/images/{c.image_id}",
                            "position": c.position} for c in view.candidates],
            "upload": view.params.get("upload"), "scale_mode": view.params.get("scale_mode", "same_size"),
            "scale": view.params.get("scale", view.params.get("backbone", {}).get("scale", 1))}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map feedback errors to status codes; every error body is {"error": "..."}."""

    @app.exception_handler(AuthError)
    async def _auth(_r: Request, exc: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.message, headers)

    @app.exception_handler(NotFound)
    async def _not_found(_r: Request, exc: NotFound) -> JSONResponse:
        return _error(404, exc.message)

    @app.exception_handler(Conflict)
    async def _conflict(_r: Request, exc: Conflict) -> JSONResponse:
        return _error(409, exc.message)

    @app.exception_handler(InputError)
    async def _input(_r: Request, exc: InputError) -> JSONResponse:
        return _error(409 if isinstance(exc, Conflict) else 400, exc.message)

    @app.exception_handler(Busy)
    async def _busy(_r: Request, exc: Busy) -> JSONResponse:
        return _error(503, exc.message, {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(RateLimited)
    async def _rate_limited(_r: Request, exc: RateLimited) -> JSONResponse:
        return _error(429, exc.message, {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: {e.get('msg')}"
                 for e in exc.errors()]
        return _error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_r: Request, exc: Exception) -> JSONResponse:
        # Starlette answers unhandled errors outside every middleware: add the security headers here.
        response = _error(500, f"internal error ({type(exc).__name__}); the request was not completed")
        response.raw_headers[:] = with_security_headers(list(response.raw_headers))
        return response


# Declares the bearer scheme in the OpenAPI document; `principal` reads the header itself for precise errors.
bearer = HTTPBearer(auto_error=False, description="a session token (POST /api/v1/sessions), a study participant "
                                                  "token, or the admin token")


def principal(request: Request,
              _declared: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None) -> Principal:
    """The caller, from `Authorization: Bearer <token>` (a session token or the admin token)."""
    token = None
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError("the Authorization header must be 'Bearer <token>'", 401)
        token = value.strip()
    return request.app.state.feedback_service.authenticate(token)


Who = Annotated[Principal, Depends(principal)]


def build_router(service: FeedbackService, limiter: RateLimiter) -> APIRouter:
    """The /api/v1 routes over one service instance; `limiter` meters the engine routes per session."""
    router = APIRouter(prefix=PREFIX)

    def metered(who: Principal, what: str) -> AbstractContextManager[None]:
        return limiter.metered(who.session_id or "admin", what)

    @router.get("/health")
    def health() -> dict[str, Any]:
        worker = service.worker
        return {"status": "ok", "engine_ready": worker.ready.is_set(), "engine_error": worker.warmup_error,
                "code_version": worker.code_version, "priors": worker.prior_names(),
                "backbones": worker.backbone_facts()}

    @router.post("/sessions", response_model=SessionOut, responses=errors(INPUT))
    def create_session(body: SessionIn) -> dict[str, str]:
        session_id, token = service.create_session(body.annotator)
        return {"session_id": session_id, "token": token}

    @router.post("/sessions/{session_id}/rounds", response_model=RoundOut, responses=errors(AUTH, 404, INPUT, ENGINE))
    def create_round(session_id: str, who: Who, image: Annotated[UploadFile, File()],
                     degradation: Annotated[str | None, Form()] = None,
                     backbone: Annotated[str | None, Form(description="a name from GET /api/v1/health 'backbones' "
                                                                       "(default: the process's backbone)")] = None,
                     prior: Annotated[str | None, Form(description="a name from GET /api/v1/health 'priors' "
                                                                   "(default: the process's prior)")] = None,
                     candidates: Annotated[str | None, Form()] = None,
                     seed: Annotated[str | None, Form()] = None,
                     parent_round_id: Annotated[str | None, Form()] = None,
                     fit: Annotated[bool, Form(description="downscale an image larger than the upload limits "
                                                           "(GET /api/v1/health 'limits') to fit them instead of "
                                                           "refusing it; the round's params record both sizes")]
                     = False,
                     hint: Annotated[str | None, Form(description="a degradation spec the restorer is told (e.g. "
                                                                   "'haze'); empty: blind. Recorded in the round's "
                                                                   "params")] = None,
                     upscale: Annotated[bool, Form(description="real super-resolution by a backbone of scale s > 1 "
                                                               "(GET /api/v1/health 'backbones'): the restoration is "
                                                               "s x the upload's size, and so are the candidates and "
                                                               "refinement; the output must fit the upload limits. "
                                                               "Default: restore at the upload's size")]
                     = False) -> dict[str, Any]:
        service.check_session(who, session_id)
        if parent_round_id:  # lineage stays inside one session: no linking to another session's rounds
            service.check_round(who, parent_round_id)
            if service.get_round(parent_round_id).session_id != session_id:
                raise InputError("parent_round_id names a round of another session")
        with metered(who, "rounds"):
            data = image.file.read(service.limits.max_bytes + 1)
            view = service.start_round(session_id, data, degradation=degradation, backbone=backbone,
                                       candidates=candidates, seed=seed, parent_round_id=parent_round_id or None,
                                       prior=prior, fit=fit, hint=hint, upscale=upscale)
        return _round_out(view)

    @router.get("/sessions", response_model=SessionsOut, responses=errors(AUTH, 400, 422))
    def list_sessions(who: Who) -> dict[str, Any]:
        if who.session_id is None:
            raise InputError("the admin token has no annotator; list a session's rounds with its id")
        return {"sessions": service.annotator_sessions(who.session_id)}

    @router.get("/sessions/{session_id}/rounds", response_model=SessionRoundsOut, responses=errors(AUTH, 404, 422))
    def list_rounds(session_id: str, who: Who) -> dict[str, Any]:
        service.check_session(who, session_id)
        rounds = [{**{k: r[k] for k in ("round_id", "round_index", "parent_round_id", "status", "created_at",
                                        "backbone", "prior", "candidates", "choice", "selector", "pairs",
                                        "superseded", "next_round_id")},
                   "input": _image(r["input_image"]), "start": r["start_image"] and _image(r["start_image"]),
                   "refined": r["refined_image"] and _image(r["refined_image"])}
                  for r in service.history(session_id)]
        return {"session_id": session_id, "rounds": rounds}

    @router.get("/sessions/{session_id}/download", response_class=FileResponse,
                responses={200: {"content": {"application/zip": {}}}, **errors(AUTH, 404, 422)})
    def download_session(session_id: str, who: Who) -> FileResponse:
        service.check_session(who, session_id)
        folder = tempfile.mkdtemp(prefix="ttpo-session-")
        try:
            path = service.session_zip(session_id, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return FileResponse(path, media_type="application/zip", filename=Path(path).name,
                            background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))

    @router.get("/sessions/{session_id}/progress", response_model=ProgressOut, responses=errors(AUTH, 404, 422))
    def session_progress(session_id: str, who: Who) -> dict[str, Any]:
        service.check_session(who, session_id)
        return {"running": service.progress(session_id)}

    @router.post("/sessions/{session_id}/cancel", response_model=CancelOut, responses=errors(AUTH, 404, 422))
    def cancel(session_id: str, who: Who) -> dict[str, Any]:
        service.check_session(who, session_id)
        return {"cancelled": service.cancel(session_id)}

    @router.get("/rounds/{round_id}", response_model=RoundOut, responses=errors(AUTH, 404, 422))
    def get_round(round_id: str, who: Who) -> dict[str, Any]:
        service.check_round(who, round_id)
        return _round_out(service.get_round(round_id))

    @router.post("/rounds/{round_id}/choices", response_model=ChoiceOut, responses=errors(AUTH, 404, 409, INPUT))
    async def create_choice(round_id: str, body: ChoiceIn, who: Who,
                            idempotency_key: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        kind = ChoiceKind.SKIP if body.skip else ChoiceKind.TIE if body.tie else ChoiceKind.PAIRWISE
        choice = ChoiceInput(kind, body.preferred, body.rejected, tags=body.tags, decision_ms=body.decision_ms,
                             idempotency_key=idempotency_key, zoom_count=body.zoom_count, viewport=body.viewport,
                             device_pixel_ratio=body.dpr, regions=body.regions)
        # The vote's one write transaction, in one worker-thread hop (async: the answer is checked against
        # ChoiceOut on the event loop, not in a further hop); it checks the session (who=) inside.
        view = await run_in_threadpool(service.record_choice, round_id, choice, who)
        return {"choice_id": view.choice_id, "pairs": view.pairs, "kind": view.kind, "created": view.created,
                "superseded": view.superseded, "regions": view.regions}

    @router.post("/rounds/{round_id}/auto", response_model=AutoOut, responses=errors(AUTH, 404, 409, INPUT, ENGINE))
    def auto_choice(round_id: str, who: Who, body: Annotated[AutoIn | None, Body()] = None) -> dict[str, Any]:
        service.check_round(who, round_id)
        with metered(who, "automatic selections"):
            view = service.auto_choose(round_id, (body.metrics if body else None))
        return {"choice_id": view.choice_id, "pairs": view.pairs, "kind": view.kind, "created": view.created,
                "preferred": view.preferred, "rejected": view.rejected, "selector": view.selector,
                "scores": view.scores}

    @router.post("/rounds/{round_id}/refine", response_model=RefineOut,
                 responses=errors(AUTH, 404, 409, INPUT, ENGINE))
    def refine(round_id: str, who: Who, body: Annotated[RefineIn | None, Body()] = None) -> dict[str, Any]:
        service.check_round(who, round_id)
        settings = service.worker.settings.refine
        if body is not None:
            changes = {k: v for k, v in body.model_dump().items() if v is not None}
            settings = RefineSettings(**{**settings.to_dict(), **changes})
        with metered(who, "refinements"):
            result = service.refine(round_id, settings)
        nxt = _round_out(result.next_round)
        return {"image": _image(result.image_id), "round_id": nxt["round_id"], "refinement_id": result.refinement_id,
                "candidates": nxt["candidates"], "seconds": result.seconds}

    @router.get("/images/{id}", response_class=Response,
                responses={200: {"content": {"image/png": {}}}, **errors(AUTH, 404, 422)})
    def get_image(id: str, who: Who) -> Response:  # noqa: A002 - the contract names the path parameter `id`
        data = service.image_bytes(who, id)
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=31536000, immutable"})

    @router.get("/export", response_class=StreamingResponse,
                responses={200: {"content": {"application/x-ndjson": {}}, "description": "one pair per line"},
                           **errors(AUTH, 400, 422)})
    def export(who: Who, format: Annotated[str, Query()] = "jsonl") -> StreamingResponse:
        service.require_admin(who)
        if format != "jsonl":
            raise InputError(f"unknown export format {format[:20]!r}; allowed: jsonl")
        lines = (json.dumps(row, separators=(",", ":")) + "\n" for row in service.export_jsonl())
        # only each round's latest choice is exported; the header says how many earlier ones were left out
        return StreamingResponse(lines, media_type="application/x-ndjson",
                                 headers={"X-Superseded-Choices": str(service.superseded_choices())})

    return router


def install_not_found(app: FastAPI) -> None:
    """Last route: unknown /api/v1 paths get a JSON 404 (405 + Allow for a known path and another method)
    instead of falling through to the Gradio mount. Install it after every /api/v1 router."""
    methods = ("GET", "POST", "PUT", "PATCH", "DELETE")

    @app.api_route(f"{PREFIX}/{{rest:path}}", methods=[*methods, "HEAD", "OPTIONS"], include_in_schema=False)
    def not_found(request: Request) -> JSONResponse:
        earlier = app.router.routes[:app.router.routes.index(fallback)]  # the API's own routes, not the mount
        allowed = [m for m in methods
                   if any(r.matches({**request.scope, "method": m})[0] == Match.FULL for r in earlier)]
        if allowed:
            return _error(405, f"method {request.method} is not allowed here; allowed: {', '.join(allowed)}",
                          {"Allow": ", ".join(allowed)})
        return _error(404, f"no API route {request.scope['path'][:100]!r}; see /openapi.json")

    fallback = app.router.routes[-1]


class BodyLimitMiddleware:
    """Refuses a declared oversized request body on the API (413) before it is read; the service checks the bytes
    it reads as well. A plain ASGI middleware: a request passes through it at the cost of one header lookup."""

    def __init__(self, app: Any, max_image: int) -> None:
        self.app, self.max_image = app, max_image
        self.max_body = max_image + 64 * 1024  # the image plus the form fields

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX):
            length = next((value for name, value in scope["headers"] if name == b"content-length"), b"")
            if length.isdigit() and int(length) > self.max_body:
                response = _error(413, f"request body of {length.decode()} bytes is too large; images up to "
                                       f"{self.max_image} bytes are accepted")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_api(service: FeedbackService, rate_limit: RateLimit = RateLimit(),
              routers: Sequence[APIRouter] = ()) -> FastAPI:
    """The FastAPI app with the REST routes (plus `routers`, e.g. the study routes), error handlers, per-session
    rate limits and security headers (Gradio is mounted beside them by app.py)."""
    app = FastAPI(title="ttpo-lab feedback API", version="1", description=__doc__)
    app.state.feedback_service = service
    app.state.rate_limiter = limiter = RateLimiter(rate_limit)
    app.add_middleware(BodyLimitMiddleware, max_image=service.limits.max_bytes)
    app.add_middleware(SecurityHeadersMiddleware)  # outermost: also on 413 answers and the Gradio mount
    install_error_handlers(app)
    app.include_router(build_router(service, limiter))
    for router in routers:
        app.include_router(router)
    install_not_found(app)
    return app
