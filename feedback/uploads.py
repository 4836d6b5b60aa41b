"""Decoding and checking an uploaded image before anything else touches it.

An upload is bytes in one of a few common formats (or an RGB array from the UI); the result is an
RGB uint8 array (H, W, 3). Limits on bytes, pixels and side lengths are checked before pixels are
decoded, so a decompression bomb or a huge photo is refused cheaply with a message a person can act on.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from feedback.errors import InputError

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")


@dataclass(frozen=True)
class UploadLimits:
    """max_bytes: size of the encoded file; max_pixels: width * height; min_side / max_side: pixels."""

    max_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 1024 * 1024
    min_side: int = 16
    max_side: int = 2048

    def describe(self) -> str:
        return (f"{', '.join(ALLOWED_FORMATS)}; at most {self.max_bytes // (1024 * 1024)} MiB, "
                f"{self.max_pixels} pixels, sides {self.min_side}..{self.max_side} px")


def _check_size(width: int, height: int, limits: UploadLimits) -> None:
    if min(width, height) < limits.min_side or max(width, height) > limits.max_side:
        raise InputError(f"image is {width}x{height} px; sides must be {limits.min_side}..{limits.max_side} px "
                         "(crop or resize it first)")
    if width * height > limits.max_pixels:
        raise InputError(f"image is {width}x{height} = {width * height} pixels; at most {limits.max_pixels} "
                         "pixels are allowed (resize it first)")


def _to_rgb(img: Image.Image) -> np.ndarray:
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def decode_image_bytes(data: bytes, limits: UploadLimits = UploadLimits()) -> np.ndarray:
    """Encoded image bytes -> RGB uint8 (H, W, 3); InputError for empty, oversized, corrupt or unknown files."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"expected image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise InputError("the uploaded file is empty; send an image file (" + limits.describe() + ")")
    if len(data) > limits.max_bytes:
        raise InputError(f"the uploaded file has {len(data)} bytes; at most {limits.max_bytes} are allowed")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(bytes(data))) as img:
                if img.format not in ALLOWED_FORMATS:
                    raise InputError(f"unsupported image format {img.format!r}; allowed: {', '.join(ALLOWED_FORMATS)}")
                _check_size(img.width, img.height, limits)
                img.load()
                return _to_rgb(img)
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError("the uploaded file is not an image that can be read; allowed: " + limits.describe()) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"image refused: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for truncated or corrupt files
        raise InputError(f"corrupt image file: {exc}") from None


def check_image_array(array: np.ndarray, limits: UploadLimits = UploadLimits()) -> np.ndarray:
    """An RGB(A)/grey array from the UI -> RGB uint8 (H, W, 3), with the same size limits as files."""
    if not isinstance(array, np.ndarray) or array.ndim not in (2, 3):
        raise InputError("expected an image array of shape (H, W) or (H, W, 3|4)")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.shape[2] == 4:
        array = array[..., :3]
    if array.shape[2] != 3:
        raise InputError(f"expected 3 colour channels, got {array.shape[2]}")
    _check_size(array.shape[1], array.shape[0], limits)
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and float(np.nanmax(array)) <= 1.0:
            array = array * 255.0
        array = np.clip(np.nan_to_num(array), 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(array)
