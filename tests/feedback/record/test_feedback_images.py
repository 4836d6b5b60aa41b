"""The content-addressed image store: ids are sha256 of PNG bytes, dedup, atomic writes, no path traversal."""

from __future__ import annotations

import hashlib
import io
import threading

import numpy as np
import pytest
from PIL import Image

from feedback.record.errors import InputError, NotFound
from feedback.record.images import ImageStore, encode_png, is_image_id


def image(seed: int, h: int = 32, w: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture
def images(tmp_path) -> ImageStore:
    return ImageStore(tmp_path / "data")


def stored_files(store: ImageStore) -> list:
    return sorted(p for p in store.root.rglob("*") if p.is_file())


def test_id_is_sha256_of_png_and_path_is_sharded(images: ImageStore) -> None:
    image_id = images.put_array(image(0))
    path = images.path_for(image_id)
    assert is_image_id(image_id) and image_id == hashlib.sha256(path.read_bytes()).hexdigest()
    assert path == images.root / image_id[:2] / f"{image_id}.png"
    assert images.get_bytes(image_id) == path.read_bytes()
    np.testing.assert_array_equal(images.get_array(image_id), image(0))
    assert images.size_of(image_id) == (48, 32)


def test_same_image_is_stored_once(images: ImageStore) -> None:
    first = images.put_array(image(1))
    assert images.put_array(image(1)) == first
    assert images.put_png_bytes(encode_png(image(1))) == first
    other = images.put_array(image(2))
    assert other != first
    assert len(stored_files(images)) == 2  # and no temporary files left behind


def test_concurrent_writers_of_one_image_all_succeed(images: ImageStore) -> None:
    data = encode_png(image(3, 64, 64))
    ids: list[str] = []
    threads = [threading.Thread(target=lambda: ids.append(images.put_png_bytes(data))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and len(ids) == 8
    assert [p.name for p in stored_files(images)] == [f"{ids[0]}.png"]


@pytest.mark.parametrize("bad_id", [
    "../../etc/passwd", "/etc/passwd", "a" * 63, "a" * 65, "A" * 64, "g" * 64, "aa/" + "a" * 61,
    "a" * 64 + "/../x", "a" * 62 + "..", "", None, 123,
])
def test_path_for_refuses_anything_but_64_hex(images: ImageStore, bad_id) -> None:
    with pytest.raises(InputError):
        images.path_for(bad_id)
    with pytest.raises(InputError):
        images.get_bytes(bad_id)


def test_unknown_image_raises_not_found(images: ImageStore) -> None:
    with pytest.raises(NotFound):
        images.get_bytes("0" * 64)
    assert not images.exists("0" * 64)


@pytest.mark.parametrize("bad", [
    image(4).astype(np.float32), image(4)[..., :2], image(4)[..., 0], np.zeros((0, 4, 3), np.uint8), [[1, 2, 3]],
])
def test_put_array_wants_uint8_hxwx3(images: ImageStore, bad) -> None:
    with pytest.raises(InputError, match=r"\(H, W, 3\)"):
        images.put_array(bad)


def test_put_png_bytes_rejects_non_png_and_corrupt_data(images: ImageStore) -> None:
    jpeg = io.BytesIO()
    Image.fromarray(image(5)).save(jpeg, format="JPEG")
    with pytest.raises(InputError, match="not a PNG"):
        images.put_png_bytes(jpeg.getvalue())
    truncated = encode_png(image(5))[:60]
    with pytest.raises(InputError, match="corrupt PNG"):
        images.put_png_bytes(truncated)
    with pytest.raises(InputError):
        images.put_png_bytes("not bytes")  # type: ignore[arg-type]
    assert stored_files(images) == []
