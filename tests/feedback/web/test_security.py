"""Security of the app in-process (REST, study routes and the Gradio mount over a tiny engine).

Access matrix: every operation of /openapi.json is classified (public, session, participant, admin) and
called with no token, a malformed/unknown token, another session's token, the owner's token and the admin
token. Images come only from the content store (traversal and malformed ids are 4xx, never a file); the
Gradio mount serves no file outside the image folder and copies none into its cache on request. Engine
routes are rate-limited per session (429 + Retry-After), and every response carries the security headers.
"""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from feedback.loop.ratelimit import RateLimit, RateLimited, RateLimiter
from feedback.record.errors import InputError
from feedback.record.images import ImageStore

try:
    from app_server import create_study, png_bytes
    from inprocess_app import ADMIN, ADMIN_TOKEN, tiny_app, tiny_service
except ImportError:
    from tests.app_server import create_study, png_bytes
    from tests.inprocess_app import ADMIN, ADMIN_TOKEN, tiny_app, tiny_service

API = "/api/v1"
BURST = 6  # engine requests a session may make before 429 (the rate is 1 per minute: no refill during a test)
SECURITY_HEADERS = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer",
                    "x-frame-options": "SAMEORIGIN", "content-security-policy": "frame-ancestors 'self'"}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def env(tmp_path_factory, prior):
    """The app and its objects: session A (owner) with a round, choice and image; session B; a study with
    participants P (owner) and Q."""
    folder = tmp_path_factory.mktemp("security")
    service = tiny_service(folder, prior)
    app = tiny_app(service, rate_limit=RateLimit(per_minute=1, burst=BURST))
    with TestClient(app) as client:
        sessions = {}
        for name in ("A", "B", "limited"):
            body = client.post(f"{API}/sessions", json={"annotator": name}).json()
            sessions[name] = (body["session_id"], _bearer(body["token"]))
        sid, auth = sessions["A"]
        r = client.post(f"{API}/sessions/{sid}/rounds", headers=auth, data={"seed": "5"},
                        files={"image": ("x.png", png_bytes(32), "image/png")})
        assert r.status_code == 200, r.text
        rnd = r.json()
        cands = [c["id"] for c in rnd["candidates"]]
        r = client.post(f"{API}/rounds/{rnd['round_id']}/choices", headers=auth,
                        json={"preferred": cands[:1], "rejected": cands[1:]})
        assert r.status_code == 200, r.text
        study = {"name": "security", "images": [rnd["input"]["id"]], "conditions": ["nlm", "bicubic"],
                 "consent_text": "ok", "consent_version": "v1", "attention_checks": 0, "repeat_share": 0}
        study_id = create_study(client, study, admin_token=ADMIN_TOKEN)["study_id"]
        participants = {}
        for name in ("P", "Q", "W"):  # W withdraws (its rows are deleted), so P's stay for the other checks
            body = client.post(f"{API}/studies/{study_id}/participants", json={"consent_version": "v1"}).json()
            participants[name] = (body["participant_id"], _bearer(body["token"]))
        yield {"client": client, "service": service, "folder": folder, "sessions": sessions, "round": rnd,
               "study_id": study_id, "participants": participants}


# ------------------------------------------------------------------------------------------ access matrix
# label -> (who may call it, request builder). "session": the owning session or the admin; "participant":
# the enrolled participant or the admin; "admin": the admin token only; "public": anyone, no token needed.
def _request(env, label: str) -> tuple[str, str, dict]:
    sid = env["sessions"]["A"][0]
    rnd = env["round"]
    study, (pid, _) = env["study_id"], env["participants"]["P"]
    cands = [c["id"] for c in rnd["candidates"]]
    png = {"files": {"image": ("x.png", png_bytes(32, seed=2), "image/png")}, "data": {"seed": "1"}}
    table = {
        "GET /api/v1/health": ("GET", f"{API}/health", {}),
        "POST /api/v1/sessions": ("POST", f"{API}/sessions", {"json": {"annotator": "someone"}}),
        "POST /api/v1/sessions/{session_id}/rounds": ("POST", f"{API}/sessions/{sid}/rounds", png),
        "GET /api/v1/sessions": ("GET", f"{API}/sessions", {}),
        "GET /api/v1/sessions/{session_id}/rounds": ("GET", f"{API}/sessions/{sid}/rounds", {}),
        "GET /api/v1/sessions/{session_id}/download": ("GET", f"{API}/sessions/{sid}/download", {}),
        "GET /api/v1/sessions/{session_id}/progress": ("GET", f"{API}/sessions/{sid}/progress", {}),
        "POST /api/v1/sessions/{session_id}/cancel": ("POST", f"{API}/sessions/{sid}/cancel", {}),
        "GET /api/v1/rounds/{round_id}": ("GET", f"{API}/rounds/{rnd['round_id']}", {}),
        "POST /api/v1/rounds/{round_id}/choices": ("POST", f"{API}/rounds/{rnd['round_id']}/choices",
                                                   {"json": {"preferred": cands[:1], "rejected": cands[1:]}}),
        "POST /api/v1/rounds/{round_id}/auto": ("POST", f"{API}/rounds/{rnd['round_id']}/auto", {}),
        "POST /api/v1/rounds/{round_id}/refine": ("POST", f"{API}/rounds/{rnd['round_id']}/refine", {}),
        "GET /api/v1/images/{id}": ("GET", f"{API}/images/{rnd['restored']['id']}", {}),
        "GET /api/v1/export": ("GET", f"{API}/export", {}),
        "POST /api/v1/studies": ("POST", f"{API}/studies", {"json": {"name": "x"}}),  # invalid: never computed
        "GET /api/v1/studies": ("GET", f"{API}/studies", {}),
        "GET /api/v1/studies/{study_id}": ("GET", f"{API}/studies/{study}", {}),
        "GET /api/v1/studies/{study_id}/status": ("GET", f"{API}/studies/{study}/status", {}),
        "GET /api/v1/studies/{study_id}/analysis": ("GET", f"{API}/studies/{study}/analysis?n_resamples=10", {}),
        "GET /api/v1/studies/{study_id}/export": ("GET", f"{API}/studies/{study}/export", {}),
        "POST /api/v1/studies/{study_id}/participants": (
            "POST", f"{API}/studies/{study}/participants", {"json": {"consent_version": "v1"}}),
        "GET /api/v1/studies/{study_id}/participants/{participant_id}/next": (
            "GET", f"{API}/studies/{study}/participants/{pid}/next", {}),
        "POST /api/v1/studies/{study_id}/participants/{participant_id}/items/{k}/vote": (
            "POST", f"{API}/studies/{study}/participants/{pid}/items/1/vote", {"json": {"choice": "left"}}),
        "POST /api/v1/studies/{study_id}/participants/{participant_id}/withdraw": (
            "POST", f"{API}/studies/{study}/participants/{env['participants']['W'][0]}/withdraw", {}),
        # withdrawal is authorised by the participant's completion code (a 50-bit secret), not a token
        "POST /api/v1/studies/{study_id}/withdraw": (
            "POST", f"{API}/studies/{study}/withdraw", {"json": {"completion_code": "AAAAAAAAAA"}}),
        "GET /study/{study_id}": ("GET", f"/study/{study}", {}),
        "GET /study-admin": ("GET", "/study-admin", {}),
    }
    return table[label]


WITHDRAW_NOW = "POST /api/v1/studies/{study_id}/participants/{participant_id}/withdraw"
ACCESS = {
    "GET /api/v1/health": "public",
    "POST /api/v1/sessions": "public",
    "POST /api/v1/sessions/{session_id}/rounds": "session",
    "GET /api/v1/sessions": "self",  # any session: the sessions of its own annotator
    "GET /api/v1/sessions/{session_id}/rounds": "session",
    "GET /api/v1/sessions/{session_id}/download": "session",
    "GET /api/v1/sessions/{session_id}/progress": "session",
    "POST /api/v1/sessions/{session_id}/cancel": "session",
    "GET /api/v1/rounds/{round_id}": "session",
    "POST /api/v1/rounds/{round_id}/choices": "session",
    "POST /api/v1/rounds/{round_id}/auto": "session",
    "POST /api/v1/rounds/{round_id}/refine": "session",
    "GET /api/v1/images/{id}": "session",
    "GET /api/v1/export": "admin",
    "POST /api/v1/studies": "admin",
    "GET /api/v1/studies": "admin",
    "GET /api/v1/studies/{study_id}": "public",
    "GET /api/v1/studies/{study_id}/status": "admin",
    "GET /api/v1/studies/{study_id}/analysis": "admin",
    "GET /api/v1/studies/{study_id}/export": "admin",
    "POST /api/v1/studies/{study_id}/participants": "public",
    "GET /api/v1/studies/{study_id}/participants/{participant_id}/next": "participant",
    "POST /api/v1/studies/{study_id}/participants/{participant_id}/items/{k}/vote": "participant",
    "POST /api/v1/studies/{study_id}/participants/{participant_id}/withdraw": "participant",
    "POST /api/v1/studies/{study_id}/withdraw": "public",
    "GET /study/{study_id}": "public",
    "GET /study-admin": "public",
}


def test_every_operation_is_in_the_access_matrix(env):
    spec = env["client"].get("/openapi.json").json()
    found = {f"{method.upper()} {path}" for path, ops in spec["paths"].items() for method in ops}
    assert found == set(ACCESS), "a route was added or removed: classify it in ACCESS"
    for label, kind in ACCESS.items():
        path, method = label.split(" ", 1)[1], label.split(" ", 1)[0].lower()
        declared = spec["paths"][path][method]
        # the document says which operations need the bearer token, and that they answer 401/403
        assert bool(declared.get("security")) == (kind != "public"), label
        if kind != "public":
            assert {"401", "403"} <= set(declared["responses"]), label


def _call(env, label: str, headers: dict[str, str] | None):
    method, url, kwargs = _request(env, label)
    return env["client"].request(method, url, headers=headers or {}, **kwargs)


@pytest.mark.parametrize("label", [k for k, v in ACCESS.items() if v != "public"])
@pytest.mark.parametrize("caller", ["none", "malformed", "unknown"])
def test_no_valid_token_is_401(env, label, caller):
    headers = {"none": None, "malformed": {"Authorization": "Token abc"},
               "unknown": _bearer("not-a-token-of-this-app")}[caller]
    r = _call(env, label, headers)
    assert r.status_code == 401, (label, caller, r.text)
    assert r.json()["error"] and r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("label", [k for k, v in ACCESS.items() if v not in ("public", "self")])
def test_another_sessions_token_is_refused(env, label):
    kind = ACCESS[label]
    others = [env["sessions"]["B"][1]]  # a plain session that owns nothing here
    if kind == "participant":
        others.append(env["participants"]["Q"][1])  # another participant of the same study
    if kind == "admin":
        others += [env["sessions"]["A"][1], env["participants"]["P"][1]]  # owners are not admins
    for headers in others:
        r = _call(env, label, headers)
        assert r.status_code in (403, 404), (label, r.status_code, r.text)
        assert r.json()["error"]


@pytest.mark.parametrize("label", list(ACCESS))
def test_owner_and_admin_are_allowed(env, label):
    kind = ACCESS[label]
    owner = {"session": env["sessions"]["A"][1], "self": env["sessions"]["A"][1],
             "participant": env["participants"]["P"][1]}.get(kind)
    if label == WITHDRAW_NOW:
        owner = env["participants"]["W"][1]
    for headers in ([owner] if owner else []) + [ADMIN]:
        r = _call(env, label, headers)
        assert r.status_code not in (401, 403), (label, r.text)
        if label == WITHDRAW_NOW and headers is ADMIN:
            assert r.status_code in (200, 404), r.text  # W has withdrawn itself already: its rows are gone
            continue
        if kind == "self" and headers is ADMIN:
            assert r.status_code == 400 and "no annotator" in r.json()["error"]
        elif label == "POST /api/v1/studies":
            assert r.status_code == 400  # the definition is invalid on purpose; access was granted
        elif label == "POST /api/v1/studies/{study_id}/withdraw":
            assert r.status_code == 404  # no participant has that code
        else:
            assert r.status_code == 200, (label, r.text)


@pytest.mark.parametrize("label", [k for k, v in ACCESS.items() if v == "public"])
def test_public_operations_need_no_token(env, label):
    r = _call(env, label, None)
    assert r.status_code not in (401, 403), (label, r.text)


def test_parent_round_of_another_session_is_refused(env):
    client, rnd = env["client"], env["round"]
    sid_b, auth_b = env["sessions"]["B"]
    upload = {"files": {"image": ("x.png", png_bytes(32), "image/png")}}
    r = client.post(f"{API}/sessions/{sid_b}/rounds", headers=auth_b, data={"parent_round_id": rnd["round_id"]},
                    **upload)
    assert r.status_code == 403, r.text
    r = client.post(f"{API}/sessions/{sid_b}/rounds", headers=ADMIN, data={"parent_round_id": rnd["round_id"]},
                    **upload)
    assert r.status_code == 400 and "another session" in r.json()["error"]


# ------------------------------------------------------------------------------------------ images, files
def _bad_image_ids(real: str) -> list[str]:
    return ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
            "%2e%2e/%2e%2e/etc/passwd", "..", "%2e%2e", "/etc/passwd", "%2Fetc%2Fpasswd", "..%5C..%5Cetc%5Cpasswd",
            real[:63], real + "0", real.upper(), real + ".png", f"{real[:2]}/{real}.png", f"{real[:2]}%2F{real}.png",
            "~root", "%00" + real[1:], real[:63] + "%00", "../pseudonym_salt", "..%2Fttpo.sqlite3"]


def test_malformed_image_ids_are_4xx_never_a_file(env):
    client, real = env["client"], env["round"]["restored"]["id"]
    secret = (env["folder"] / "data" / "pseudonym_salt").read_bytes()
    for bad in _bad_image_ids(real):
        r = client.get(f"{API}/images/{bad}", headers=ADMIN)
        assert 400 <= r.status_code < 500, (bad, r.status_code)
        assert r.headers["content-type"].startswith("application/json"), bad
        assert b"root:" not in r.content and secret not in r.content and not r.content.startswith(b"\x89PNG")
    assert client.get(f"{API}/images/{real}", headers=ADMIN).status_code == 200  # the well-formed id works


def test_image_store_refuses_anything_but_a_sha256(tmp_path):
    store = ImageStore(tmp_path)
    for bad in ("../x", "/etc/passwd", "a" * 63, "a" * 65, "A" * 64, "g" * 64, "a" * 62 + "/.", "", None):
        with pytest.raises(InputError):
            store.path_for(bad)


def test_gradio_serves_no_file_outside_the_image_folder(env):
    client, service = env["client"], env["service"]
    data = env["folder"] / "data"
    real = env["round"]["restored"]["id"]
    outside = ["/etc/passwd", str(data / "pseudonym_salt"), str(data / "ttpo.sqlite3"),
               f"{service.images.root}/../pseudonym_salt", f"{service.images.root}/%2e%2e/ttpo.sqlite3",
               str(env["folder"] / "prior" / "prior_config.json"), str(Path(__file__).resolve()), "app.py",
               "../../../../etc/passwd", str(service.images.root)]
    for path in outside:
        for prefix in ("/gradio_api/file=", "/file="):
            r = client.get(prefix + path)
            assert r.status_code in (403, 404), (prefix, path, r.status_code)
            assert b"root:" not in r.content and b"SQLite" not in r.content
    # inside the store: served (by content hash, as the Gradio gallery shows it)
    assert client.get(f"/gradio_api/file={service.images.path_for(real)}").status_code == 200


def test_gradio_event_cannot_pull_a_server_file_into_its_cache(env):
    import gradio.utils

    client = env["client"]
    secret = env["folder"] / f"secret-{uuid.uuid4().hex}.txt"
    secret.write_text("do not serve")
    payload = {"data": [{"path": str(secret), "meta": {"_type": "gradio.FileData"}}, "none", "nlm", 1, True, "",
                        False]}
    r = client.post("/gradio_api/call/restore", json=payload)
    assert r.status_code == 200, r.text
    stream = client.get(f"/gradio_api/call/restore/{r.json()['event_id']}").text
    assert "event: error" in stream and "not uploaded by a user" in stream
    cache = Path(gradio.utils.get_upload_folder())
    assert not list(cache.rglob(secret.name)), "the file was copied into Gradio's servable cache"


def test_uploaded_html_is_never_served_as_a_page(env):
    client = env["client"]
    for name, body, kind in (("evil.html", b"<script>alert(1)</script>", "text/html"),
                             ("evil.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>1</script></svg>',
                              "image/svg+xml")):
        r = client.post("/gradio_api/upload", files={"files": (name, body, kind)})
        assert r.status_code == 200, r.text
        served = client.get(f"/gradio_api/file={r.json()[0]}")
        assert served.headers["content-disposition"].startswith("attachment")
        assert "html" not in served.headers["content-type"] and "svg" not in served.headers["content-type"]
        assert served.headers["x-content-type-options"] == "nosniff"


# ------------------------------------------------------------------------------------------ rate limits
def test_rate_limiter_token_bucket():
    now = [0.0]
    limiter = RateLimiter(RateLimit(per_minute=6, burst=2), clock=lambda: now[0])  # one token per 10 s
    limiter.take("a")
    limiter.take("a")
    with pytest.raises(RateLimited) as err:
        limiter.take("a")
    assert err.value.retry_after == 10
    limiter.take("b")  # another session has its own bucket
    now[0] = 4.0
    with pytest.raises(RateLimited) as err:
        limiter.take("a")
    assert err.value.retry_after == 6
    now[0] = 10.0
    limiter.take("a")
    now[0] = 1000.0  # refills up to the burst, not beyond
    limiter.take("a")
    limiter.take("a")
    with pytest.raises(RateLimited):
        limiter.take("a")
    with pytest.raises(InputError), limiter.metered("c"):  # refused work gives its token back
        raise InputError("bad")
    for _ in range(2):
        with limiter.metered("c"):
            pass
    with pytest.raises(RateLimited), limiter.metered("c"):
        pass
    off = RateLimiter(RateLimit(per_minute=0))
    for _ in range(100):
        off.take("a")
    with pytest.raises(ValueError):
        RateLimit(per_minute=-1)
    with pytest.raises(ValueError):
        RateLimit(per_minute=math.inf)


def test_engine_routes_answer_429_with_retry_after(env):
    client = env["client"]
    sid, auth = env["sessions"]["limited"]
    rnd = env["round"]

    def create(headers, seed):
        return client.post(f"{API}/sessions/{sid}/rounds", headers=headers, data={"seed": str(seed), "candidates": "1"},
                           files={"image": ("x.png", png_bytes(24, seed=seed), "image/png")})

    # refused input costs nothing: garbage does not use up the bucket
    for _ in range(BURST + 2):
        bad = client.post(f"{API}/sessions/{sid}/rounds", headers=auth, files={"image": ("x.png", b"xx", "image/png")})
        assert bad.status_code == 400, bad.text
    made = [create(auth, seed) for seed in range(BURST)]
    assert [r.status_code for r in made] == [200] * BURST, [r.text for r in made]
    limited = create(auth, 99)
    assert limited.status_code == 429, limited.text
    assert "error" in limited.json() and 1 <= int(limited.headers["retry-after"]) <= 60
    assert limited.headers["x-content-type-options"] == "nosniff"
    # per session: auto/refine of this session are limited too, other sessions are not
    own_round = made[0].json()["round_id"]
    assert client.post(f"{API}/rounds/{own_round}/auto", headers=auth).status_code == 429
    assert client.post(f"{API}/rounds/{own_round}/refine", headers=auth).status_code == 429
    assert client.get(f"{API}/rounds/{own_round}", headers=auth).status_code == 200  # reads are not limited
    other = client.post(f"{API}/rounds/{rnd['round_id']}/auto", headers=env["sessions"]["A"][1])
    assert other.status_code == 200, other.text


def test_rate_limit_command_line_options():
    from app import parse_args

    a = parse_args([])
    assert (a.rate_limit, a.rate_burst) == (RateLimit.per_minute, RateLimit.burst)
    assert a.rate_limit >= 10 and a.rate_burst >= 5  # a person clicking never meets the limit
    assert parse_args(["--rate-limit", "0"]).rate_limit == 0  # off
    for bad in (["--rate-limit", "-1"], ["--rate-burst", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


# ------------------------------------------------------------------------------------------ headers
def _assert_security_headers(r) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert r.headers.get(name) == value, (r.request.url, name, r.headers.get(name))


def test_security_headers_on_every_kind_of_response(env):
    client, rnd = env["client"], env["round"]
    auth = env["sessions"]["A"][1]
    json_responses = [client.get(f"{API}/health"), client.get(f"{API}/rounds/{rnd['round_id']}", headers=auth),
                      client.get(f"{API}/rounds/{rnd['round_id']}"),  # 401
                      client.get(f"{API}/no-such-route"), client.get("/openapi.json"),
                      client.post(f"{API}/sessions", json={}),  # 422
                      client.post(f"{API}/sessions", content=b"x", headers={"content-length": str(10**9)})]  # 413
    assert [r.status_code for r in json_responses] == [200, 200, 401, 404, 200, 422, 413]
    for r in json_responses:
        _assert_security_headers(r)
        assert r.headers["cache-control"] == "no-store", r.request.url
    export = client.get(f"{API}/export", headers=ADMIN)
    assert export.headers["content-type"].startswith("application/x-ndjson")
    assert export.headers["cache-control"] == "no-store"
    image = client.get(f"{API}/images/{rnd['restored']['id']}", headers=auth)
    _assert_security_headers(image)
    assert image.headers["cache-control"] == "private, max-age=31536000, immutable"  # kept as the route set it
    for page in ("/", f"/study/{env['study_id']}", "/study-admin", "/docs"):
        r = client.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), page
        _assert_security_headers(r)
    _assert_security_headers(client.get("/config"))  # Gradio's own JSON
    _assert_security_headers(client.get("/gradio_api/file=/etc/passwd"))  # and its refusals


def test_gradio_page_still_served(env):
    client = env["client"]
    page = client.get("/")
    assert page.status_code == 200 and "gradio" in page.text.lower()
    config = client.get("/config")
    assert config.status_code == 200 and config.json()["mode"] == "blocks"
    named = client.get("/gradio_api/info").json()["named_endpoints"]
    assert named["/restore"]
    # the page sends its region boxes with a choice; the admin tab's live view ticks only once a study is picked
    assert "regions" in [p["parameter_name"] for p in named["/submit_choice"]["parameters"]]
    assert "regions" in [p["parameter_name"] for p in named["/submit_tie"]["parameters"]]
    timers = [c for c in config.json()["components"] if c["type"] == "timer"]
    assert len(timers) == 1 and timers[0]["props"]["active"] is False and "/admin_live" in named


def test_unknown_api_paths_are_json_404_and_wrong_methods_405(env):
    client = env["client"]
    r = client.get(f"{API}/nothing/here", headers=ADMIN)
    assert r.status_code == 404 and "error" in r.json()
    r = client.delete(f"{API}/rounds/{env['round']['round_id']}", headers=ADMIN)
    assert r.status_code == 405 and r.headers["allow"] == "GET" and "error" in r.json()


def test_an_unexpected_error_is_a_json_500_with_the_security_headers(env, monkeypatch):
    def broken(_round_id):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(env["service"], "get_round", broken)
    rnd, auth = env["round"], env["sessions"]["A"][1]
    with TestClient(env["client"].app, raise_server_exceptions=False) as client:
        r = client.get(f"{API}/rounds/{rnd['round_id']}", headers=auth)
    assert r.status_code == 500
    assert r.json() == {"error": "internal error (RuntimeError); the request was not completed"}
    _assert_security_headers(r)
