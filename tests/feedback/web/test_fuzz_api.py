"""Fuzz the REST API from its own OpenAPI document with schemathesis, in-process (ASGI), with the admin token.

Every operation gets MAX_EXAMPLES generated requests (valid and invalid ones; derandomized, so CI runs the same
cases); about half of them use ids of real objects (a session, a round with candidates and a choice, an image,
a study and a participant) so the fuzzer reaches the engine, not only the 404 paths. Checks: no 5xx, and every
status code, content type, required header and JSON body is one the document declares; a route that declares
the bearer scheme refuses a request without it; an undeclared method gets 405.
Each operation runs its own Hypothesis test over schemathesis' case strategy (positive and negative cases):
schemathesis' lazy pytest fixture loader does not work with pytest 9, and this keeps one test id per route.
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi import checks as openapi_checks

from feedback.loop.ratelimit import RateLimit

try:
    from app_server import create_study, png_bytes
    from inprocess_app import ADMIN, ADMIN_TOKEN, tiny_app, tiny_service
except ImportError:
    from tests.app_server import create_study, png_bytes
    from tests.inprocess_app import ADMIN, ADMIN_TOKEN, tiny_app, tiny_service

MAX_EXAMPLES = 25
#: Every operation of GET /openapi.json; test_every_route_is_fuzzed fails when this list is out of date.
OPERATIONS = [
    "GET /api/v1/health", "POST /api/v1/sessions", "POST /api/v1/sessions/{session_id}/rounds",
    "GET /api/v1/sessions", "GET /api/v1/sessions/{session_id}/rounds", "GET /api/v1/sessions/{session_id}/download",
    "GET /api/v1/sessions/{session_id}/progress", "POST /api/v1/sessions/{session_id}/cancel",
    "GET /api/v1/rounds/{round_id}", "POST /api/v1/rounds/{round_id}/choices", "POST /api/v1/rounds/{round_id}/auto",
    "POST /api/v1/rounds/{round_id}/refine", "GET /api/v1/images/{id}", "GET /api/v1/export",
    "POST /api/v1/studies", "GET /api/v1/studies", "GET /api/v1/studies/{study_id}",
    "GET /api/v1/studies/{study_id}/status",
    "GET /api/v1/studies/{study_id}/analysis", "GET /api/v1/studies/{study_id}/export",
    "POST /api/v1/studies/{study_id}/participants", "GET /api/v1/studies/{study_id}/participants/{participant_id}/next",
    "POST /api/v1/studies/{study_id}/participants/{participant_id}/items/{k}/vote",
    "POST /api/v1/studies/{study_id}/participants/{participant_id}/withdraw",
    "POST /api/v1/studies/{study_id}/withdraw", "GET /study/{study_id}", "GET /study-admin",
]
CHECKS = [schemathesis.checks.not_a_server_error, openapi_checks.status_code_conformance,
          openapi_checks.content_type_conformance, openapi_checks.response_headers_conformance,
          openapi_checks.response_schema_conformance, openapi_checks.ignored_auth,
          openapi_checks.unsupported_method]


def _seed_objects(client: TestClient) -> dict[str, str]:
    """Real ids for the path parameters: a session with a round (candidates + a choice) and a study participant."""
    r = client.post("/api/v1/sessions", json={"annotator": "fuzz"})
    session_id = r.json()["session_id"]
    r = client.post(f"/api/v1/sessions/{session_id}/rounds", headers=ADMIN, data={"seed": "3"},
                    files={"image": ("x.png", png_bytes(32), "image/png")})
    assert r.status_code == 200, r.text
    rnd = r.json()
    r = client.post(f"/api/v1/rounds/{rnd['round_id']}/choices", headers=ADMIN,
                    json={"preferred": [rnd["candidates"][0]["id"]], "rejected": [rnd["candidates"][1]["id"]]})
    assert r.status_code == 200, r.text
    study = {"name": "fuzz", "images": [rnd["input"]["id"]], "conditions": ["nlm", "bicubic"],
             "consent_text": "ok", "consent_version": "v1", "attention_checks": 0, "repeat_share": 0}
    study_id = create_study(client, study, admin_token=ADMIN_TOKEN)["study_id"]
    r = client.post(f"/api/v1/studies/{study_id}/participants", json={"consent_version": "v1"})
    assert r.status_code == 200, r.text
    return {"session_id": session_id, "round_id": rnd["round_id"], "id": rnd["restored"]["id"],
            "study_id": study_id, "participant_id": r.json()["participant_id"], "k": "1"}


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, prior):
    service = tiny_service(tmp_path_factory.mktemp("fuzz"), prior)
    app = tiny_app(service, rate_limit=RateLimit(per_minute=0))  # off: let the fuzzer reach the engine
    with TestClient(app) as client:
        real = _seed_objects(client)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)

    @schema.hook
    def flatmap_path_parameters(_context, path_parameters):
        # Half the cases keep the generated ids (mostly 404s), half name real objects.
        known = {k: real[k] for k in (path_parameters or {}) if k in real}
        return st.sampled_from([path_parameters, {**path_parameters, **known}]) if known else st.just(path_parameters)

    @schema.hook
    def flatmap_body(context, body):
        # Round creation: sometimes a decodable PNG instead of random bytes, so restoration runs as well.
        if context.operation.path.endswith("/rounds") and isinstance(body, dict):
            return st.sampled_from([body, {**body, "image": png_bytes(24, seed=1)}])
        return st.just(body)

    return schema


def test_every_route_is_fuzzed(api_schema):
    found = {f"{op.ok().method.upper()} {op.ok().path}" for op in api_schema.get_all_operations()}
    assert found == set(OPERATIONS), "a route was added or removed: update OPERATIONS (and the access matrix)"


@pytest.mark.parametrize("label", OPERATIONS)
def test_operation_conforms_to_its_openapi(api_schema, label):
    method, path = label.split(" ", 1)
    operation = api_schema[path][method]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case):
        case.call_and_validate(headers=ADMIN, checks=CHECKS)

    fuzz()
