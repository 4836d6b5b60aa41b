"""Decoding and checking an uploaded image before anything else touches it.

An upload is bytes in one of the allowed formats (PNG, JPEG, WebP, TIFF, BMP, GIF) or an array from the
UI; the result is always an RGB uint8 array (H, W, 3):
- limits on bytes, pixels and side lengths are checked from the header, before pixels are decoded, so a
  decompression bomb or a huge photo is refused cheaply with a message a person can act on;
- or, when the caller asks to fit (`fit=True`), a photo larger than the limits is downscaled to fit them
  (aspect ratio kept, Lanczos; a JPEG is decoded at a reduced scale first), up to `fit_max_pixels` of input,
  and the size it had is reported (`Decoded.original_size`);
- the EXIF orientation is applied (the array is upright, as a photo viewer shows it);
- an animation (GIF, WebP, APNG) gives its first frame; a multi-page TIFF its first page;
- transparent pixels are composited on `UploadLimits.background` (white unless configured);
- 16-bit files (Pillow mode I;16) are scaled by 255 / 65535; float samples in [0, 1] by 255; other samples
  in 0..255 are taken as 8-bit values, integers in 0..65535 as 16-bit, and any other range (signed or
  32-bit integers, HDR floats) is stretched from its min..max; NaN or infinite samples are refused;
- a file that is not an allowed image is named when it can be recognised (SVG, PDF, ZIP, HTML, ...).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from feedback.record.errors import InputError

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")
FORMAT_NAMES = "PNG, JPEG, WebP, TIFF, BMP or GIF"
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I;16S")


@dataclass(frozen=True)
class UploadLimits:
    """What an upload may be and how it is flattened.

    max_bytes: size of the encoded file; max_pixels: width * height; min_side / max_side: pixels;
    background: RGB (0..255) that transparent pixels are composited on (white by default);
    fit_max_pixels: the largest input (width * height) that fitting downscales rather than refuses;
    upscaling: why the limits are smaller than the server's (`for_output_scale`), said with every size error.
    """

    max_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 1024 * 1024
    min_side: int = 16
    max_side: int = 2048
    background: tuple[int, int, int] = (255, 255, 255)
    fit_max_pixels: int = 64 * 1024 * 1024  # 8192 x 8192; a 50 Mpx phone photo fits
    upscaling: str = ""

    def __post_init__(self) -> None:
        if (min(self.max_bytes, self.max_pixels, self.min_side, self.fit_max_pixels) < 1
                or self.min_side > self.max_side):
            raise ValueError(f"upload limits must be positive with min_side <= max_side, got {self}")
        bg = tuple(self.background)
        if len(bg) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in bg):
            raise ValueError(f"background must be three integers in 0..255 (RGB), got {self.background!r}")
        object.__setattr__(self, "background", bg)

    def for_output_scale(self, scale: int) -> UploadLimits:
        """The limits of an input that a backbone will upscale by `scale`, so that its output meets these: sides up
        to max_side // scale, max_pixels // scale**2 pixels (min_side and the rest unchanged). InputError when no
        input of at least min_side px a side would fit."""
        if not isinstance(scale, int) or scale < 1:
            raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
        if scale == 1:
            return self
        side, pixels = self.max_side // scale, self.max_pixels // (scale * scale)
        if side < self.min_side or pixels < self.min_side * self.min_side:
            raise InputError(f"x{scale} upscaling cannot fit the upload limits (sides up to {self.max_side} px, "
                             f"{self.max_pixels} pixels) from an input of at least {self.min_side} px a side")
        why = (f"x{scale} upscaling: its output must fit sides up to {self.max_side} px and {self.max_pixels} "
               "pixels")
        return replace(self, max_side=side, max_pixels=pixels, upscaling=why)

    def background_name(self) -> str:
        return {(255, 255, 255): "white", (0, 0, 0): "black"}.get(self.background, f"RGB {self.background}")

    def describe(self) -> str:
        mib = self.max_bytes / (1024 * 1024)
        return (f"{FORMAT_NAMES} (first frame of an animation); at most {mib:g} MiB, {self.max_pixels} pixels, "
                f"sides {self.min_side}..{self.max_side} px; transparent areas are composited on "
                f"{self.background_name()}")


# ------------------------------------------------------------------------------------------ what is this file?
def _text_kind(head: bytes) -> str | None:
    """A message for text uploads (SVG, HTML, XML, plain text); None for binary data."""
    if b"\x00" in head:
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not merely a multi-byte character cut by the head's end
            return None
        text = head[:exc.start].decode("utf-8")
    lower = text.lstrip("\ufeff \t\r\n").lower()
    if "<svg" in lower[:4096] and lower.startswith("<"):
        return "SVG is a vector format and is not supported; export it as PNG"
    if lower.startswith(("<!doctype html", "<html")) or "<html" in lower[:512]:
        return "this is an HTML page, not an image; save the image itself (e.g. right click, 'Save image as')"
    if lower.startswith("<?xml"):
        return "this is an XML document, not an image"
    printable = sum(c.isprintable() or c in "\t\r\n" for c in text)
    if text and printable >= 0.95 * len(text):
        return "this is a text file, not an image"
    return None


_MAGIC = (  # (offset, prefix, message); checked in order
    (0, b"%PDF-", "a PDF document is not an image; export the page as PNG or JPEG"),
    (0, b"%!PS", "PostScript/EPS is not supported; export it as PNG"),
    (0, b"PK\x03\x04", "a ZIP archive (or an Office document) is not an image; upload one image file"),
    (0, b"PK\x05\x06", "a ZIP archive is not an image; upload one image file"),
    (0, b"\x1f\x8b", "a gzip-compressed file (e.g. .tar.gz) is not an image; upload one image file"),
    (0, b"BZh", "a bzip2-compressed file is not an image; upload one image file"),
    (0, b"\xfd7zXZ\x00", "an xz-compressed file is not an image; upload one image file"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive is not an image; upload one image file"),
    (0, b"Rar!\x1a\x07", "a RAR archive is not an image; upload one image file"),
    (257, b"ustar", "a tar archive is not an image; upload one image file"),
    (0, b"8BPS", "Photoshop (PSD) files are not supported; export the image as PNG"),
    (0, b"\x00\x00\x01\x00", "ICO icons are not supported; export the image as PNG"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000 is not supported; export the image as PNG or JPEG"),
    (0, b"\xffO\xffQ", "JPEG 2000 is not supported; export the image as PNG or JPEG"),
    (0, b"v/1\x01", "OpenEXR is not supported; export the image as 16-bit PNG or TIFF"),
    (0, b"qoif", "QOI is not supported; export the image as PNG"),
)
_CONTAINERS = (  # allowed formats by signature, for files Pillow could not read
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)


def identify_unsupported(data: bytes) -> str:
    """Why `data` (which Pillow could not open as an allowed format) is refused, naming the file type if known."""
    head = bytes(data[:8192])
    for offset, prefix, message in _MAGIC:
        if head[offset:offset + len(prefix)] == prefix:
            return message
    if head[4:8] == b"ftyp":
        brand = head[8:12].decode("latin-1").strip().lower()
        if brand in ("heic", "heix", "hevc", "heif", "mif1", "msf1", "avif", "avis"):
            return f"{'AVIF' if brand.startswith('avi') else 'HEIC/HEIF'} images are not supported; export as JPEG or PNG"
        return "this looks like a video or MP4/QuickTime file, not an image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "the WebP file is corrupt or uses features that cannot be read"
    if len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"1234567" and head[2:3] in b" \t\r\n":
        return "PNM/PPM/PGM files are not supported; export the image as PNG"
    for prefix, name in _CONTAINERS:
        if head.startswith(prefix):
            hint = "; save it as 8- or 16-bit RGB" if name == "TIFF" else ""
            return f"the file starts like a {name} but cannot be read (corrupt, truncated or an unusual layout{hint})"
    return _text_kind(head) or "the file is not an image in a supported format"


# ------------------------------------------------------------------------------------------ pixels
def _why(limits: UploadLimits) -> str:
    return f" ({limits.upscaling})" if limits.upscaling else ""


def _check_size(width: int, height: int, limits: UploadLimits) -> None:
    if min(width, height) < limits.min_side or max(width, height) > limits.max_side:
        raise InputError(f"image is {width}x{height} pixels; sides must be {limits.min_side}..{limits.max_side} "
                         f"pixels{_why(limits)} (crop or resize it first)")
    if width * height > limits.max_pixels:
        raise InputError(f"image is {width}x{height} = {width * height} pixels; at most {limits.max_pixels} "
                         f"pixels are allowed{_why(limits)} (resize it first)")


def fit_size(width: int, height: int, limits: UploadLimits) -> tuple[int, int]:
    """The largest (width, height) with the same aspect ratio within max_side and max_pixels: (width, height)
    itself when it is within them. InputError when the image is over `fit_max_pixels`, or would end up with a
    side under min_side (a long, thin strip)."""
    if min(width, height) < limits.min_side:
        _check_size(width, height, limits)  # the usual message: too small is not fixed by downscaling
    if width * height > limits.fit_max_pixels:
        raise InputError(f"image is {width}x{height} = {width * height} pixels; at most {limits.fit_max_pixels} "
                         f"pixels can be downscaled to fit (resize it first)")
    scale = min(1.0, limits.max_side / max(width, height), (limits.max_pixels / (width * height)) ** 0.5)
    if scale >= 1.0:
        return width, height
    w, h = max(1, int(width * scale)), max(1, int(height * scale))  # rounded down: never over a limit
    if min(w, h) < limits.min_side:
        raise InputError(f"image is {width}x{height} pixels; downscaled to fit sides of at most {limits.max_side} "
                         f"px{_why(limits)} it would be {w}x{h}, under the {limits.min_side} px minimum "
                         "(crop it first)")
    return w, h


def resize_rgb(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (size[1], size[0], 3) uint8, Lanczos (antialiased when downscaling)."""
    if (array.shape[1], array.shape[0]) == tuple(size):
        return array
    return np.asarray(Image.fromarray(array).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)).copy()


def scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Samples of any real dtype -> uint8 with the same shape (rules in the module docstring)."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        raise InputError(f"image samples must be integers or floats, got dtype {values.dtype}")
    if values.size == 0:
        return values.astype(np.uint8)
    x = values.astype(np.float64)
    if not np.isfinite(x).all():
        raise InputError("the image has NaN or infinite sample values; only finite values can be shown")
    low, high = float(x.min()), float(x.max())
    if np.issubdtype(values.dtype, np.floating) and low >= 0 and high <= 1:
        x = x * 255.0
    elif 0 <= low and high <= 255:
        pass  # 8-bit values stored in a wider type
    elif np.issubdtype(values.dtype, np.integer) and low >= 0 and high <= 65535:
        x = x * (255.0 / 65535.0)  # 16-bit
    else:  # no agreed white level (signed or 32-bit integers, HDR floats): stretch the range
        x = (x - low) * (255.0 / (high - low)) if high > low else np.zeros_like(x)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _composite(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """(H, W, 4) uint8 straight (not premultiplied) alpha -> (H, W, 3) uint8 over an opaque background."""
    alpha = rgba[..., 3:4].astype(np.uint32)
    bg = np.asarray(background, np.uint32)
    out = (rgba[..., :3].astype(np.uint32) * alpha + bg * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
    """A loaded, upright Pillow image of any mode -> RGB uint8 (H, W, 3)."""
    if img.mode in (*_SIXTEEN_BIT_MODES, "I", "F"):
        samples = np.asarray(img)
        if img.mode in _SIXTEEN_BIT_MODES:
            samples = samples.astype(np.uint16)  # 16-bit whatever the range of this image's values
            grey = np.rint(samples * (255.0 / 65535.0)).astype(np.uint8)
        else:
            grey = scale_to_uint8(samples)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode in ("LAB", "HSV"):  # Pillow's convert copies these channels as if they were R, G, B
        raise InputError(f"colour mode {img.mode} is not supported; save the image as RGB")
    try:
        if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
            return _composite(np.asarray(img.convert("RGBA"), dtype=np.uint8), background)
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (ValueError, OSError) as exc:
        raise InputError(f"colour mode {img.mode} cannot be converted to RGB ({exc}); save the image as 8-bit "
                         "RGB") from None


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; an unreadable EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - broken metadata in an otherwise readable photo is not worth refusing
        return img


@dataclass(frozen=True)
class Decoded:
    """An upload as the pipeline takes it: RGB uint8 (H, W, 3), and the (width, height) it had, upright, when
    it was downscaled to fit the limits (None when it is as received)."""

    array: np.ndarray
    original_size: tuple[int, int] | None = None

    def facts(self) -> dict[str, list[int]] | None:
        """For a round's record: {"original_size": [w, h], "size": [w, h]} when downscaled, else None."""
        if self.original_size is None:
            return None
        return {"original_size": list(self.original_size), "size": [self.array.shape[1], self.array.shape[0]]}


def decode_upload(image: bytes | np.ndarray, limits: UploadLimits = UploadLimits(), fit: bool = False) -> Decoded:
    """Image bytes (`decode_image_bytes`) or a UI array (`check_image_array`) -> Decoded. With fit=True an image
    over max_side / max_pixels is downscaled to fit them instead of refused (see `fit_size`)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decode_bytes(image, limits, fit)
    return _decode_array(image, limits, fit)


def _target_size(width: int, height: int, limits: UploadLimits, fit: bool) -> tuple[int, int]:
    """The size an image of width x height becomes: `fit_size` when fitting, else itself once `_check_size` passes."""
    if fit:
        return fit_size(width, height, limits)
    _check_size(width, height, limits)
    return width, height


def decode_image_bytes(data: bytes, limits: UploadLimits = UploadLimits()) -> np.ndarray:
    """Encoded image bytes -> RGB uint8 (H, W, 3), upright, alpha composited on `limits.background`.

    InputError (saying what is allowed) for empty, oversized, corrupt, truncated or unsupported files."""
    return _decode_bytes(data, limits, fit=False).array


def _decode_bytes(data: bytes, limits: UploadLimits, fit: bool) -> Decoded:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"expected image bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) == 0:
        raise InputError(f"the uploaded file is empty; send an image file ({limits.describe()})")
    if len(data) > limits.max_bytes:
        raise InputError(f"the uploaded file has {len(data)} bytes; at most {limits.max_bytes} are allowed "
                         f"({limits.describe()})")
    try:
        # Image.open reads only the header; the size checks run before any pixel is decoded. Only the allowed
        # formats' parsers see the bytes (a multi-picture JPEG from a phone camera opens as Pillow's "MPO").
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as img:
            stored = (img.width, img.height)
            target = _target_size(*stored, limits, fit)
            if target != stored:
                img.draft("RGB", target)  # a JPEG decodes at 1/2, 1/4 or 1/8 scale, still at least `target`
            img.load()
            upright = _upright(img)
            array = _to_rgb(upright, limits.background)
            if target == stored:
                return Decoded(array)
            turned = upright.size != img.size  # the EXIF orientation swapped the sides
            original = stored[::-1] if turned else stored
            return Decoded(resize_rgb(array, target[::-1] if turned else target), original)
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"{identify_unsupported(data)}; allowed: {limits.describe()}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"image refused before decoding (possible decompression bomb): {exc} At most "
                         f"{limits.max_pixels} pixels are allowed") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for truncated or corrupt files
        raise InputError(f"the image file is corrupt or truncated ({str(exc)[:200]}); allowed: "
                         f"{limits.describe()}") from None


def check_image_array(array: np.ndarray, limits: UploadLimits = UploadLimits()) -> np.ndarray:
    """An image array from the UI -> RGB uint8 (H, W, 3), with the same size limits as files.

    Accepts channels-last (H, W) grey, (H, W, 1) grey, (H, W, 2) grey + alpha, (H, W, 3) RGB or (H, W, 4)
    RGBA, of bool, integer or float samples (scaled as in the module docstring); alpha is composited on
    `limits.background`."""
    return _decode_array(array, limits, fit=False).array


def _decode_array(array: np.ndarray, limits: UploadLimits, fit: bool) -> Decoded:
    if not isinstance(array, np.ndarray):
        raise InputError(f"expected an image array, got {type(array).__name__}")
    channels = array.shape[2] if array.ndim == 3 else 1
    if array.ndim not in (2, 3) or channels not in (1, 2, 3, 4):
        raise InputError(f"expected an image array of shape (H, W) or (H, W, C) with C = 1, 2, 3 or 4 "
                         f"(channels last), got shape {array.shape}")
    stored = (array.shape[1], array.shape[0])
    target = _target_size(*stored, limits, fit)
    values = scale_to_uint8(array)
    if values.ndim == 2:
        values = values[..., None]
    if channels in (1, 2):
        values = np.concatenate([np.repeat(values[..., :1], 3, axis=2), values[..., 1:]], axis=2)
    if values.shape[2] == 4:
        values = _composite(values, limits.background)
    values = np.ascontiguousarray(values)
    return Decoded(values) if target == stored else Decoded(resize_rgb(values, target), stored)
