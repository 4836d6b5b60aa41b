"""Fitting a photo larger than the upload limits: the size arithmetic, the decoders (JPEG at a reduced scale,
EXIF orientation, alpha, arrays), and a round that records both sizes (service, page handler, REST API)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from feedback.loop.engine import EngineSettings, RefineSettings, RoundSettings
from feedback.loop.service import FeedbackService
from feedback.loop.uploads import UploadLimits, decode_image_bytes, decode_upload, fit_size
from feedback.record.db import open_database
from feedback.record.errors import InputError
from feedback.record.models import Round, SourceImage
from feedback.web import ui
from feedback.web.api import build_api

LIMITS = UploadLimits(max_pixels=128 * 128, min_side=16, max_side=128)


def _photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth colour image with some texture: downscaling it by any method gives nearly the same result."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x / width, y / height, 0.5 + 0.4 * np.sin(x / 23.0) * np.cos(y / 17.0)], -1)
    img = img + 0.02 * rng.standard_normal(img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _encode(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10 * np.log10(255.0**2 / mse) if mse else float("inf")


def test_fit_size_keeps_the_aspect_ratio_within_every_limit():
    assert fit_size(100, 60, LIMITS) == (100, 60)  # within: unchanged
    assert fit_size(512, 256, LIMITS) == (128, 64)  # max_side binds
    assert fit_size(128, 128, LIMITS) == (128, 128)
    square = UploadLimits(max_pixels=100 * 100, min_side=16, max_side=1000)
    assert fit_size(400, 400, square) == (100, 100)  # max_pixels binds
    w, h = fit_size(1365, 1074, UploadLimits(max_pixels=1024 * 1024, max_side=1024))
    assert w <= 1024 and h <= 1024 and w >= 1023 and abs(w / h - 1365 / 1074) < 2e-3
    with pytest.raises(InputError, match=r"would be 128x1, under the 16 px minimum \(crop it first\)"):
        fit_size(4000, 20, LIMITS)
    with pytest.raises(InputError, match="sides must be 16..128"):  # too small is not fixed by downscaling
        fit_size(10, 400, LIMITS)
    with pytest.raises(InputError, match="at most 1000000 pixels can be downscaled to fit"):
        fit_size(2000, 1000, UploadLimits(max_side=128, max_pixels=128 * 128, fit_max_pixels=1_000_000))


def test_a_large_jpeg_is_decoded_small_and_matches_a_full_resize():
    photo = _photo(1000, 600)
    data = _encode(photo, "JPEG", quality=95)
    with pytest.raises(InputError, match="sides must be 16..128"):  # without fit: refused, as before
        decode_image_bytes(data, LIMITS)
    decoded = decode_upload(data, LIMITS, fit=True)
    assert decoded.array.shape == (76, 128, 3) and decoded.array.dtype == np.uint8
    assert decoded.original_size == (1000, 600)
    assert decoded.facts() == {"original_size": [1000, 600], "size": [128, 76]}
    # JPEG's reduced-scale decode (draft) then Lanczos: close to Lanczos from the full decode
    reference = np.asarray(Image.fromarray(photo).resize((128, 76), Image.Resampling.LANCZOS))
    assert _psnr(decoded.array, reference) > 30


def test_fitting_follows_the_exif_orientation_and_composites_alpha():
    stored = _photo(600, 300)  # stored landscape, EXIF says "rotate 90 degrees clockwise to view"
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="JPEG", quality=95, exif=exif)
    decoded = decode_upload(buf.getvalue(), LIMITS, fit=True)
    assert decoded.original_size == (300, 600) and decoded.array.shape == (128, 64, 3)  # upright: portrait
    upright = np.rot90(stored, k=-1)  # rotated clockwise, as a viewer shows it
    reference = np.asarray(Image.fromarray(np.ascontiguousarray(upright)).resize((64, 128), Image.Resampling.LANCZOS))
    assert _psnr(decoded.array, reference) > 30

    rgba = np.zeros((300, 300, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, 150:, 3] = 255  # left half transparent, right half opaque red
    decoded = decode_upload(_encode(rgba, "PNG"), LIMITS, fit=True)
    assert decoded.array.shape == (128, 128, 3) and decoded.original_size == (300, 300)
    assert (decoded.array[:, :40] == 255).all()  # composited on white before resampling: no dark fringe
    assert (decoded.array[:, -40:] == [255, 0, 0]).all()


def test_an_image_within_the_limits_is_left_alone_and_arrays_fit_too():
    small = _photo(100, 50)
    png = decode_upload(_encode(small, "PNG"), LIMITS, fit=True)
    assert png.original_size is None and png.facts() is None and np.array_equal(png.array, small)
    big = _photo(300, 150)
    fitted = decode_upload(big, LIMITS, fit=True)
    assert fitted.array.shape == (64, 128, 3) and fitted.original_size == (300, 150)
    with pytest.raises(InputError, match="sides must be 16..128"):
        decode_upload(big, LIMITS, fit=False)
    with pytest.raises(InputError, match="expected an image array"):
        decode_upload(np.zeros((300, 300, 5), np.uint8), LIMITS, fit=True)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    data = tmp_path_factory.mktemp("fit")
    settings = EngineSettings(backbone="nlm", round=RoundSettings(num_candidates=2, steps=2),
                              refine=RefineSettings(steps=2))
    return FeedbackService(open_database(data_dir=data), str(data), settings, limits=LIMITS)


def test_a_fitted_round_records_both_sizes(service, tmp_path):
    session_id = service.create_session("Ada")[0]
    data = _encode(_photo(400, 200), "JPEG", quality=95)
    with pytest.raises(InputError, match="sides must be 16..128"):
        service.start_round(session_id, data, generate=False)
    view = service.start_round(session_id, data, generate=False, fit=True)
    assert view.params["upload"] == {"original_size": [400, 200], "size": [128, 64]}
    with service.db.sessions.begin() as s:
        rnd = s.get(Round, view.round_id)
        src = s.get(SourceImage, rnd.source_image_id)
        assert (src.width, src.height) == (128, 64) and rnd.params["upload"]["original_size"] == [400, 200]
    assert Image.open(service.images.path_for(view.input_image_id)).size == (128, 64)
    plain = service.start_round(session_id, _encode(_photo(100, 50), "PNG"), generate=False, fit=True)
    assert "upload" not in plain.params  # nothing downscaled: nothing recorded

    # the page: the box is ticked by default, and the status says what happened
    state = {"session_id": session_id}
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    _state, input_path, *_rest = ui.restore(service, state, str(path), "none", "nlm", 1)
    msg = _rest[1]
    assert msg.startswith("Downscaled from 400x200 to 128x64 pixels to fit the upload limits.")
    assert Image.open(input_path).size == (128, 64)
    with pytest.raises(Exception, match="sides must be 16..128"):
        ui.restore(service, state, str(path), "none", "nlm", 1, False)

    # the REST API: fit is a form field, off by default; the round says it was downscaled
    client = TestClient(build_api(service))
    sid, token = service.create_session("Grace")
    headers = {"Authorization": f"Bearer {token}"}
    url = f"/api/v1/sessions/{sid}/rounds"
    files = {"image": ("photo.jpg", data, "image/jpeg")}
    refused = client.post(url, files=files, data={"candidates": "1"}, headers=headers)
    assert refused.status_code == 400 and "sides must be 16..128" in refused.json()["error"]
    ok = client.post(url, files=files, data={"candidates": "1", "fit": "true"}, headers=headers)
    assert ok.status_code == 200, ok.text
    assert ok.json()["upload"] == {"original_size": [400, 200], "size": [128, 64]}
    small = client.post(url, files={"image": ("s.png", _encode(_photo(100, 50), "PNG"), "image/png")},
                        data={"candidates": "1", "fit": "true"}, headers=headers)
    assert small.status_code == 200 and small.json()["upload"] is None
