"""Bad input: the upload corpus (tests/bad_inputs.py) through `decode_image_bytes` and through the real app
server, and malformed parameters on the REST API. Every refusal is a 4xx JSON {"error": ...} that says
what is allowed, and leaves no database rows and no image files behind; the server keeps serving."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from feedback.loop.uploads import UploadLimits, check_image_array, decode_image_bytes
from feedback.record.errors import InputError

try:
    from tests.app_server import ADMIN_TOKEN, BACKBONE, REPO, running_app
    from tests.bad_inputs import BLUE, HEIGHT, RED, WIDTH, corpus, outcome, picture
except ImportError:  # pytest run from inside tests/
    from app_server import ADMIN_TOKEN, BACKBONE, REPO, running_app
    from bad_inputs import BLUE, HEIGHT, RED, WIDTH, corpus, outcome, picture

API = "/api/v1"
CORPUS = corpus()
BY_NAME = {c.name: c for c in CORPUS}
# What a refusal message must mention, by kind (lower case): the file type or the limit that was broken.
MUST_SAY = {
    "empty": "empty", "text": "not an image", "svg": "svg is a vector format", "html": "html", "pdf": "pdf",
    "zip": "zip", "tar.gz": "gzip", "tar": "tar", "unsupported": "not supported", "corrupt": "",
    "truncated": "truncated", "nan": "nan", "bomb": "pixels", "too_many_bytes": "bytes", "size": "pixels",
}


# ------------------------------------------------------------------------------------------ the corpus
def test_corpus_covers_formats_modes_and_bad_kinds():
    kinds = {c.kind for c in CORPUS}
    assert len(CORPUS) >= 40 and len(BY_NAME) == len(CORPUS)
    assert {"png", "jpeg", "webp", "tiff", "bmp", "gif"} <= kinds
    assert set(MUST_SAY) <= kinds
    assert sum(c.expected == "ok" for c in CORPUS) >= 20 and sum(c.expected == "refused" for c in CORPUS) >= 20


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_decode_case(case):
    got, detail = outcome(case, decode_image_bytes)
    assert got == case.expected, detail
    if got == "ok":
        assert detail == ""
    else:
        assert MUST_SAY[case.kind] in detail.lower(), detail
        assert len(detail) < 1000


def test_unsupported_files_name_what_is_allowed():
    for name in ("svg_bare", "zip_with_png", "tar_gz_with_png", "pdf_document", "html_page", "plain_text",
                 "random_bytes", "png_truncated", "empty_file"):
        with pytest.raises(InputError, match="PNG, JPEG, WebP, TIFF, BMP or GIF"):
            decode_image_bytes(BY_NAME[name].data)
    with pytest.raises(InputError, match="SVG is a vector format and is not supported; export it as PNG"):
        decode_image_bytes(BY_NAME["svg_with_xml_declaration"].data)


def test_sixteen_bit_and_float_mid_grey_map_to_128():
    for name in ("png_16bit_grey_mid", "tiff_16bit_grey_mid", "tiff_float_grey_mid", "tiff_int32_grey"):
        out = decode_image_bytes(BY_NAME[name].data)
        assert out.dtype == np.uint8 and (out == 128).all(), name
    rgb16 = decode_image_bytes(BY_NAME["png_16bit_rgb"].data)
    assert tuple(rgb16[0, 0]) == RED and tuple(rgb16[-1, -1]) == BLUE  # v * 257 / 257, exactly


def test_exif_orientation_is_applied():
    stored = decode_image_bytes(BY_NAME["jpeg_rgb"].data)
    turned = decode_image_bytes(BY_NAME["jpeg_exif_rotated"].data)
    assert stored.shape == (HEIGHT, WIDTH, 3) and turned.shape == (WIDTH, HEIGHT, 3)
    assert np.abs(turned.astype(int) - np.rot90(stored, k=-1).astype(int)).mean() < 4  # 90 degrees clockwise


def test_alpha_is_composited_on_the_configured_background():
    black = UploadLimits(background=(0, 0, 0))
    for case in corpus(black):
        if "transparen" in case.name or "rgba" in case.name or "alpha" in case.name:
            got, detail = outcome(case, lambda data: decode_image_bytes(data, black))
            assert got == "ok" and detail == "", (case.name, detail)
    assert tuple(decode_image_bytes(BY_NAME["png_rgba_on_background"].data)[-1, -1]) == (255, 255, 255)
    assert "composited on white" in UploadLimits().describe()
    assert "composited on black" in black.describe()
    half = np.zeros((20, 20, 4), np.uint8)
    half[..., 3] = 128  # black at 50 % over a grey background
    assert tuple(check_image_array(half, UploadLimits(background=(100, 100, 100)))[0, 0]) == (50, 50, 50)


@pytest.mark.parametrize("bad", [{"background": (256, 0, 0)}, {"background": (1, 2)}, {"min_side": 64, "max_side": 32},
                                 {"max_bytes": 0}])
def test_upload_limits_are_checked(bad):
    with pytest.raises(ValueError):
        UploadLimits(**bad)


def test_decompression_bomb_is_refused_before_decoding():
    """In a fresh process: each bomb is refused in well under a second, and the peak memory stays far below
    what decoding the 8000 x 8000 one would take (64 MB grey, 192 MB as RGB)."""
    code = """
import json, resource, time
from feedback.record.errors import InputError
from feedback.loop.uploads import decode_image_bytes
from tests.bad_inputs import bad_cases
cases = [c for c in bad_cases() if c.kind == "bomb"]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
seconds = {}
for c in cases:
    t0 = time.perf_counter()
    try:
        decode_image_bytes(c.data)
    except InputError:
        seconds[c.name] = time.perf_counter() - t0
grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"seconds": seconds, "grown_mib": grown_kib / 1024, "count": len(cases)}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts["count"] == len(facts["seconds"]) >= 4  # every bomb refused
    assert max(facts["seconds"].values()) < 1.0, facts
    assert facts["grown_mib"] < 32, facts


# ------------------------------------------------------------------------------------------ arrays (the UI)
def test_check_image_array_converts_odd_arrays():
    limits = UploadLimits()
    assert (check_image_array(np.full((20, 30), 0.5, np.float32), limits) == 128).all()
    assert (check_image_array(np.full((20, 30), 32768, np.uint16), limits) == 128).all()
    assert (check_image_array(np.full((20, 30, 1), 7, np.uint8), limits) == 7).all()
    assert (check_image_array(np.ones((20, 30, 3), bool), limits) == 255).all()
    assert (check_image_array(np.full((20, 30, 3), 200.0), limits) == 200).all()  # floats in 0..255 as 8-bit
    grey_alpha = np.zeros((20, 30, 2), np.uint8)  # black, fully transparent -> background
    assert (check_image_array(grey_alpha, limits) == 255).all()
    ramp = np.tile(np.arange(30, dtype=np.int64) * 10**6, (20, 1))  # no white level: stretched
    out = check_image_array(ramp, limits)
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255
    rgb = check_image_array(picture(alpha=True), limits)
    assert tuple(rgb[0, 0]) == RED and tuple(rgb[-1, -1]) == (255, 255, 255)
    assert check_image_array(picture(), limits).flags["C_CONTIGUOUS"]


@pytest.mark.parametrize("array, needle", [
    (np.full((20, 30, 3), np.nan, np.float32), "nan"),
    (np.full((20, 30), np.inf), "infinite"),
    (np.zeros((20, 30, 5), np.uint8), "c = 1, 2, 3 or 4"),
    (np.zeros((3, 20, 30), np.uint8), "channels last"),
    (np.zeros((20, 30, 3, 1), np.uint8), "shape"),
    (np.zeros((20, 30, 3), complex), "integers or floats"),
    (np.zeros((20, 30, 3), object), "integers or floats"),
    (np.zeros((8, 30, 3), np.uint8), "sides must be"),
    (np.zeros((0, 0, 3), np.uint8), "sides must be"),
    ([[0, 1], [2, 3]], "image array"),
])
def test_check_image_array_refuses_odd_arrays(array, needle):
    with pytest.raises(InputError) as err:
        check_image_array(array)
    assert needle in err.value.message.lower()


# ------------------------------------------------------------------------------------------ end to end
APP_LIMITS = UploadLimits(max_side=1024, max_pixels=1024 * 1024)  # app.py's defaults (--max-side 1024)
KEPT_TABLES = ("sessions", "annotators", "alembic_version")  # new sessions are expected; nothing else


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("bad_inputs") / "data") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=300) as c:
        yield c


def _post(client: httpx.Client, url: str, **kwargs) -> httpx.Response:
    """POST, waiting out a per-session rate limit (429 + Retry-After) where the app has one."""
    for _ in range(30):
        r = client.post(url, **kwargs)
        if r.status_code != 429:
            return r
        time.sleep(float(r.headers.get("retry-after", "1")))
    return r


def _session(client: httpx.Client) -> tuple[str, dict[str, str]]:
    r = _post(client, f"{API}/sessions", json={"annotator": "bad-input"})
    assert r.status_code == 200, r.text
    return r.json()["session_id"], {"Authorization": f"Bearer {r.json()['token']}"}


def _upload(client, data: bytes, fields: dict | None = None, session=None) -> httpx.Response:
    session_id, headers = session or _session(client)  # a fresh session each: no rate limit in the way
    return _post(client, f"{API}/sessions/{session_id}/rounds", headers=headers,
                 data={"backbone": BACKBONE, "candidates": "2", "seed": "3", **(fields or {})},
                 files={"image": ("upload.bin", data, "application/octet-stream")})


def _footprint(server) -> dict[str, int]:
    """Row counts of every table except sessions/annotators, and the number of files in the image store."""
    with sqlite3.connect(server.db_path) as db:
        tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
        counts = {t: db.execute(f'select count(*) from "{t}"').fetchone()[0] for t in tables if t not in KEPT_TABLES}
    counts["image files"] = sum(1 for p in (server.data_dir / "images").rglob("*") if p.is_file())
    return counts


def _assert_4xx_json(r: httpx.Response, needle: str = "") -> str:
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    message = r.json()["error"]
    assert isinstance(message, str) and message and needle.lower() in message.lower(), message
    return message


def _healthy(client) -> None:
    assert client.get(f"{API}/health").json()["status"] == "ok"
    assert client.get("/").status_code == 200  # the Gradio page beside the API


def test_refused_uploads_leave_nothing_behind(client, server):
    before = _footprint(server)
    refused = [c for c in corpus(APP_LIMITS) if c.expected == "refused"]
    for case in refused:
        r = _upload(client, case.data)
        message = _assert_4xx_json(r)
        if case.kind != "too_many_bytes":  # refused by the body-size middleware: 413, its own message
            assert MUST_SAY[case.kind] in message.lower(), (case.name, message)
    _healthy(client)
    assert _footprint(server) == before


@pytest.fixture(scope="module")
def good_round(client, server):
    """Two "ok" corpus cases end to end (each a restore + diffusion run); returns the plain PNG's round."""
    rotated = _upload(client, BY_NAME["jpeg_exif_rotated"].data)
    assert rotated.status_code == 200, rotated.text
    session = _session(client)
    plain = _upload(client, BY_NAME["png_rgb"].data, session=session)
    assert plain.status_code == 200, plain.text
    return session, plain.json(), rotated.json()


def test_good_uploads_end_to_end(client, good_round):
    (_sid, headers), plain, rotated = good_round
    assert len(plain["candidates"]) == 3
    png = client.get(plain["input"]["url"], headers=headers)
    assert png.status_code == 200
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content))), picture())
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    upright = np.asarray(Image.open(io.BytesIO(client.get(rotated["input"]["url"], headers=admin).content)))
    assert upright.shape == (WIDTH, HEIGHT, 3)  # stored upright: 32 wide, 48 tall, the red block top-right
    assert np.abs(upright[0, -1].astype(int) - RED).max() < 30 and np.abs(upright[-1, 0].astype(int) - BLUE).max() < 30


ROUND_FIELDS = [
    ({"degradation": "bogus:3"}, "allowed: noise"),
    ({"degradation": "noise:9999"}, "out of range"),
    ({"degradation": "noise:"}, "empty argument"),
    ({"degradation": "noise:abc"}, "not a number"),
    ({"degradation": "noise:nan"}, "not finite"),
    ({"degradation": "noise:1,2,3"}, "at most 1 argument"),
    ({"degradation": "sr:8"}, "one of 2, 4"),
    ({"degradation": "+"}, "empty step"),
    ({"degradation": "noise:5+" * 40 + "noise:5"}, "at most 200"),
    ({"backbone": "nope"}, "available: "),
    ({"backbone": "/etc/passwd"}, "available: "),
    ({"backbone": "x" * 500}, "available: "),
    ({"candidates": "0"}, "candidates must be an integer in [1, "),
    ({"candidates": "99"}, "candidates must be an integer in [1, "),
    ({"candidates": "1.5"}, "candidates must be an integer in [1, "),
    ({"candidates": "two"}, "candidates must be an integer in [1, "),
    ({"candidates": "nan"}, "candidates must be an integer in [1, "),
    ({"seed": "-1"}, "seed must be an integer in [0, 2147483647]"),
    ({"seed": "2147483648"}, "seed must be an integer in [0, 2147483647]"),
    ({"seed": "1e3"}, "seed must be an integer in [0, 2147483647]"),
    ({"seed": "9" * 60}, "seed must be an integer in [0, 2147483647]"),
    ({"parent_round_id": "nope"}, "round"),
    ({"parent_round_id": "x" * 2000}, "round"),
]


def test_bad_round_fields(client, server, good_round):
    (_sid, _h), plain, _rotated = good_round
    before = _footprint(server)
    image = BY_NAME["png_rgb"].data
    for fields, needle in ROUND_FIELDS:
        message = _assert_4xx_json(_upload(client, image, fields), needle)
        assert len(message) < 2500, (fields, len(message))  # a long input is not echoed back whole
    foreign = _upload(client, image, {"parent_round_id": plain["round_id"]})  # another session's round
    assert foreign.status_code in (400, 403) and "another session" in foreign.json()["error"]
    _healthy(client)
    assert _footprint(server) == before


def test_bad_choice_auto_and_refine_bodies(client, server, good_round):
    (_sid, headers), plain, _rotated = good_round
    url = f"{API}/rounds/{plain['round_id']}"
    a, b = plain["candidates"][0]["id"], plain["candidates"][1]["id"]
    choices = [
        ({"preferred": "abc", "rejected": [b]}, "valid list"),
        ({"preferred": [1], "rejected": [b]}, "string"),
        ({"preferred": [a], "rejected": [a]}, "both preferred and rejected"),
        ({"preferred": [], "rejected": []}, "at least one"),
        ({"preferred": [a], "rejected": [b], "tags": ["ugly"]}, "allowed: "),
        ({"preferred": [a], "rejected": [b], "decision_ms": -1}, "decision_ms must be an integer in [0, "),
        ({"preferred": [a], "rejected": [b], "decision_ms": 10**30}, "decision_ms must be an integer in [0, "),
        ({"preferred": [a], "rejected": ["y" * 5000]}, "are not candidates of round"),
        ({"prefered": [a], "rejected": [b]}, "unknown field(s) 'prefered'; allowed: preferred, rejected"),
    ]
    auto = [
        ({"metrics": ["nope"]}, "unknown quality metric"),
        ({"metrics": ["x" * 3000]}, "unknown quality metric"),
        ({"metrics": []}, "at least one"),
        ({"metrics": ["piqe", "piqe"]}, "once"),
        ({"metrics": "piqe"}, "valid list"),
        ({"metric": ["piqe"]}, "allowed: metrics"),
    ]
    refine = [
        (b'{"strength": 0}', "strength must be in (0, 1]"),
        (b'{"strength": 1.5}', "strength must be in (0, 1]"),
        (b'{"strength": NaN}', "strength must be in (0, 1]"),
        (b'{"steps": 0}', "1..100"),
        (b'{"steps": 100000}', "1..100"),
        (b'{"steps": "x"}', "steps"),
        (b'{"guidance_scale": -1}', "[0, 10]"),
        (b'{"guidance_scale": Infinity}', "[0, 10]"),
        (b'{"strenght": 0.5}', "allowed: strength, steps, guidance_scale"),
        (b'{"fidelity_weight": 1}', "allowed: strength, steps, guidance_scale"),
    ]
    before = _footprint(server)
    for body, needle in choices:
        message = _assert_4xx_json(_post(client, f"{url}/choices", json=body, headers=headers), needle)
        assert len(message) < 500, message
    for body, needle in auto:
        message = _assert_4xx_json(_post(client, f"{url}/auto", json=body, headers=headers), needle)
        assert len(message) < 500, message
    for raw, needle in refine:
        _assert_4xx_json(_post(client, f"{url}/refine", content=raw,
                               headers={**headers, "content-type": "application/json"}), needle)
    _healthy(client)
    assert _footprint(server) == before
