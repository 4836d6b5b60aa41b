"""Content-addressed image store: PNG files under DATA_DIR/images/ab/abcdef....png, keyed by sha256.

An image id is the sha256 hex digest (64 lowercase hex characters) of the PNG bytes, so the same
image is stored once and an id always names the same bytes. Writes are atomic (temporary file in the
same folder, fsync, `os.replace`), so a reader never sees half a file, and concurrent writers of the
same image both succeed.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from feedback.record.errors import InputError, NotFound

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGE_ID_PATTERN = re.compile(r"[0-9a-f]{64}")
MAX_PNG_BYTES = 64 * 1024 * 1024


def is_image_id(value: object) -> bool:
    """True when `value` is a well-formed image id (64 lowercase hex characters)."""
    return isinstance(value, str) and IMAGE_ID_PATTERN.fullmatch(value) is not None


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of an RGB image: `array` is uint8 of shape (H, W, 3)."""
    if not isinstance(array, np.ndarray):
        raise InputError(f"expected a numpy array of shape (H, W, 3) and dtype uint8, got {type(array).__name__}")
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        raise InputError(
            f"expected an image array of shape (H, W, 3) and dtype uint8, got shape {array.shape} "
            f"and dtype {array.dtype}"
        )
    buffer = io.BytesIO()
    # Fixed encoder settings so the same pixels give the same bytes (and id) with one Pillow version.
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


class ImageStore:
    """The folder of content-addressed PNGs; holds only its root path."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.root = Path(data_dir).resolve() / "images"
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, image_id: str) -> Path:
        """Where the PNG of `image_id` lives (whether or not it exists); refuses anything but 64 hex chars."""
        if not is_image_id(image_id):
            raise InputError(f"invalid image id {str(image_id)[:80]!r}: expected 64 lowercase hex characters "
                             "(the sha256 of the PNG bytes)")
        return self.root / image_id[:2] / f"{image_id}.png"

    def exists(self, image_id: str) -> bool:
        """True when the image is stored."""
        return self.path_for(image_id).is_file()

    def put_png_bytes(self, data: bytes) -> str:
        """Store PNG bytes as given (after checking they decode); returns the image id. Idempotent."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InputError(f"expected PNG bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) > MAX_PNG_BYTES:
            raise InputError(f"PNG of {len(data)} bytes exceeds the limit of {MAX_PNG_BYTES} bytes")
        if not data.startswith(PNG_SIGNATURE):
            raise InputError("not a PNG: the bytes do not start with the PNG signature; convert the image to PNG")
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.verify()
        except Exception as exc:  # Pillow raises many types for corrupt files
            raise InputError(f"corrupt PNG: {exc}") from None
        image_id = hashlib.sha256(data).hexdigest()
        path = self.path_for(image_id)
        if not path.is_file():
            self._write_atomic(path, data)
        return image_id

    def put_array(self, array: np.ndarray) -> str:
        """Store an RGB uint8 (H, W, 3) array as PNG; returns the image id."""
        return self.put_png_bytes(encode_png(array))

    def get_bytes(self, image_id: str) -> bytes:
        """The PNG bytes of `image_id`; raises NotFound when it is not stored."""
        path = self.path_for(image_id)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"image {image_id} is not in the store") from None

    def get_array(self, image_id: str) -> np.ndarray:
        """The image as an RGB uint8 array of shape (H, W, 3)."""
        with Image.open(io.BytesIO(self.get_bytes(image_id))) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()

    def size_of(self, image_id: str) -> tuple[int, int]:
        """(width, height) in pixels, read from the PNG header."""
        with Image.open(io.BytesIO(self.get_bytes(image_id))) as image:
            return image.size

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, path)
        except BaseException:
            try:
                os.unlink(tmp_name)
            except FileNotFoundError:
                pass
            raise
