"""A corpus of uploads, good and bad, for `feedback.loop.uploads.decode_image_bytes` and the REST API.

`corpus(limits)` returns `Case`s: (name, kind, data, expected) with expected "ok" or "refused", plus for
"ok" cases the decoded shape and a few probe pixels. Every image has the same picture: a 48x32 (W x H)
blue field (40, 120, 200) with a red (220, 40, 40) 8x8 block in the top-left corner, so orientation and
colour can be checked after decoding. Transparent variants make the blue field fully transparent, so it
comes out as the limits' background. Everything is generated in memory from a fixed seed.

Run `python scripts/bad_input_report.py` for counts by kind and outcome.
"""

from __future__ import annotations

import functools
import io
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from PIL import Image

from feedback.loop.uploads import UploadLimits

WIDTH, HEIGHT, BLOCK = 48, 32, 8
RED, BLUE = (220, 40, 40), (40, 120, 200)
Probe = tuple[tuple[int, int], tuple[int, int, int]]  # ((y, x), expected RGB)


class Case(NamedTuple):
    name: str
    kind: str
    data: bytes
    expected: str  # "ok" or "refused"
    shape: tuple[int, ...] | None = None  # decoded (H, W, 3) for "ok" cases
    probes: tuple[Probe, ...] = ()
    tolerance: int = 3  # per channel, for lossy formats larger


# ------------------------------------------------------------------------------------------ pictures
def picture(alpha: bool = False) -> np.ndarray:
    """(32, 48, 3|4) uint8: blue field, red top-left block; with alpha the blue field is transparent."""
    rgb = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    rgb[:] = BLUE
    rgb[:BLOCK, :BLOCK] = RED
    if not alpha:
        return rgb
    a = np.zeros((HEIGHT, WIDTH, 1), np.uint8)
    a[:BLOCK, :BLOCK] = 255
    return np.concatenate([rgb, a], axis=2)


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def _upright(colours: tuple = (RED, BLUE)) -> tuple[Probe, ...]:
    """Probes of the picture as stored: block colour top-left, field colour bottom-right."""
    return ((0, 0), colours[0]), ((HEIGHT - 1, WIDTH - 1), colours[1])


def _png(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    """A PNG from its parts (IHDR fields and compressed IDAT data); chunks get correct CRCs."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _exif_rotated(fmt: str, orientation: int = 6, **options) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(picture()), fmt, exif=exif.tobytes(), **options)


def _palette(img: Image.Image) -> Image.Image:
    return img.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)


def _frames(fmt: str, **options) -> bytes:
    """Two frames, the first the picture, the second all green: the decoder must take the first."""
    first, second = Image.fromarray(picture()), Image.new("RGB", (WIDTH, HEIGHT), (0, 200, 0))
    if fmt == "GIF":
        first, second = _palette(first), _palette(second)
    return encode(first, fmt, save_all=True, append_images=[second], **options)


# ------------------------------------------------------------------------------------------ good images
def image_cases(limits: UploadLimits | None = None) -> list[Case]:
    """Every allowed format and colour mode; each decodes to the picture (or its rotation)."""
    limits = limits or UploadLimits()
    bg = limits.background
    rgb, rgba = Image.fromarray(picture()), Image.fromarray(picture(alpha=True))
    grey = rgb.convert("L")
    g_red, g_blue = grey.getpixel((0, 0)), grey.getpixel((WIDTH - 1, HEIGHT - 1))
    grey_probes = _upright(((g_red,) * 3, (g_blue,) * 3))
    shape = (HEIGHT, WIDTH, 3)
    alpha_probes = _upright((RED, bg))

    def case(name: str, kind: str, data: bytes, probes=None, tolerance: int = 3, shape=shape) -> Case:
        return Case(name, kind, data, "ok", shape, probes or _upright(), tolerance)

    palette = _palette(rgb)
    p_transparent = palette.copy()
    blue_index = p_transparent.getpixel((WIDTH - 1, HEIGHT - 1))
    la = Image.merge("LA", (grey, rgba.getchannel("A")))
    sixteen = np.full((HEIGHT, WIDTH), 32768, np.uint16)  # mid grey in 16 bits -> 128
    rgb16 = picture().astype(">u2") * 257
    rows16 = b"".join(b"\x00" + row.tobytes() for row in rgb16)
    floats = np.full((HEIGHT, WIDTH), 0.5, np.float32)
    wide_floats = np.tile(np.linspace(0.0, 1000.0, WIDTH, dtype=np.float32), (HEIGHT, 1))  # beyond 0..255: stretched
    int32 = np.full((HEIGHT, WIDTH), 32768, np.int32)
    bilevel = Image.fromarray(picture()[..., 0] > 128)  # red block (220) white, field (40) black
    # exif orientation 6: the viewer turns the stored image 90 degrees clockwise, so the red block that is
    # stored top-left is shown top-right and the image is 32 wide, 48 tall.
    turned = (((0, HEIGHT - 1), RED), ((WIDTH - 1, 0), BLUE))
    # orientation 3: turned 180 degrees, the block is bottom-right
    upside_down = (((HEIGHT - 1, WIDTH - 1), RED), ((0, 0), BLUE))
    mid = ((((HEIGHT // 2, WIDTH // 2), (128, 128, 128))),)
    return [
        case("png_rgb", "png", encode(rgb, "PNG")),
        case("png_rgba_on_background", "png", encode(rgba, "PNG"), alpha_probes),
        case("png_grey_l", "png", encode(grey, "PNG"), grey_probes),
        case("png_grey_alpha_la", "png", encode(la, "PNG"), _upright(((g_red,) * 3, bg))),
        case("png_palette_p", "png", encode(palette, "PNG"), tolerance=12),
        case("png_palette_transparency", "png", encode(p_transparent, "PNG", transparency=blue_index),
             alpha_probes, tolerance=12),
        case("png_rgb_colour_key", "png", encode(rgb, "PNG", transparency=BLUE), alpha_probes),
        case("png_16bit_grey_mid", "png", encode(Image.fromarray(sixteen), "PNG"), mid),
        case("png_16bit_rgb", "png", _png(WIDTH, HEIGHT, 16, 2, zlib.compress(rows16))),
        case("png_bilevel_1", "png", encode(bilevel, "PNG"), _upright(((255,) * 3, (0,) * 3))),
        case("png_exif_rotated", "png", _exif_rotated("PNG", 3), upside_down),
        case("apng_first_frame", "png", _frames("PNG")),
        case("jpeg_rgb", "jpeg", encode(rgb, "JPEG", quality=95), tolerance=20),
        case("jpeg_grey", "jpeg", encode(grey, "JPEG", quality=95), grey_probes, tolerance=20),
        case("jpeg_progressive", "jpeg", encode(rgb, "JPEG", quality=95, progressive=True), tolerance=20),
        case("jpeg_cmyk", "jpeg", encode(rgb.convert("CMYK"), "JPEG", quality=95), tolerance=20),
        case("jpeg_exif_rotated", "jpeg", _exif_rotated("JPEG", 6, quality=95), turned, 20,
             shape=(WIDTH, HEIGHT, 3)),
        case("jpeg_mpo_multi_picture", "jpeg", encode(rgb, "MPO", quality=95, save_all=True,
                                                      append_images=[Image.new("RGB", rgb.size)]), tolerance=20),
        case("webp_lossless", "webp", encode(rgb, "WEBP", lossless=True)),
        case("webp_lossy", "webp", encode(rgb, "WEBP", quality=95), tolerance=30),
        case("webp_rgba", "webp", encode(rgba, "WEBP", lossless=True), alpha_probes),
        case("webp_animated_first_frame", "webp", _frames("WEBP", lossless=True)),
        case("webp_exif_rotated", "webp", _exif_rotated("WEBP", 6, lossless=True), turned, shape=(WIDTH, HEIGHT, 3)),
        case("tiff_rgb", "tiff", encode(rgb, "TIFF")),
        case("tiff_rgb_lzw", "tiff", encode(rgb, "TIFF", compression="tiff_lzw")),
        case("tiff_rgba", "tiff", encode(rgba, "TIFF"), alpha_probes),
        case("tiff_cmyk", "tiff", encode(rgb.convert("CMYK"), "TIFF")),
        case("tiff_16bit_grey_mid", "tiff", encode(Image.fromarray(sixteen), "TIFF"), mid),
        case("tiff_int32_grey", "tiff", encode(Image.fromarray(int32), "TIFF"), mid),
        case("tiff_float_grey_mid", "tiff", encode(Image.fromarray(floats), "TIFF"), mid),
        case("tiff_float_wide_range_stretched", "tiff", encode(Image.fromarray(wide_floats), "TIFF"),
             (((0, 0), (0, 0, 0)), ((0, WIDTH - 1), (255, 255, 255)))),
        case("tiff_multipage_first_page", "tiff", _frames("TIFF")),
        case("bmp_rgb", "bmp", encode(rgb, "BMP")),
        case("bmp_palette", "bmp", encode(palette, "BMP"), tolerance=12),
        case("bmp_grey", "bmp", encode(grey, "BMP"), grey_probes),
        case("gif_palette", "gif", encode(palette, "GIF"), tolerance=12),
        case("gif_transparent", "gif", encode(p_transparent, "GIF", transparency=blue_index), alpha_probes, 12),
        case("gif_animated_first_frame", "gif", _frames("GIF"), tolerance=12),
        case("png_smallest_side", "size", encode(Image.new("RGB", (limits.min_side,) * 2, RED), "PNG"),
             (((0, 0), RED),), shape=(limits.min_side, limits.min_side, 3)),
    ]


# ------------------------------------------------------------------------------------------ bad files
@functools.lru_cache(maxsize=4)
def _zero_png(width: int, height: int) -> bytes:
    """A real decompression bomb: an all-black grey PNG, a few kB per megapixel compressed."""
    row = b"\x00" * (width + 1)
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return _png(width, height, 8, 0, body)


def _patched(data: bytes, at: int, value: bytes) -> bytes:
    return data[:at] + value + data[at + len(value):]


def _archive(kind: str, member: bytes) -> bytes:
    buf = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("photo.png", member)
    else:
        with tarfile.open(fileobj=buf, mode="w:gz" if kind == "tar.gz" else "w") as t:
            info = tarfile.TarInfo("photo.png")
            info.size = len(member)
            t.addfile(info, io.BytesIO(member))
    return buf.getvalue()


def bad_cases(limits: UploadLimits | None = None) -> list[Case]:
    """Files that must be refused: not images, broken images, bombs and sizes beyond `limits`."""
    limits = limits or UploadLimits()
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(picture())
    png, jpeg, gif = encode(rgb, "PNG"), encode(rgb, "JPEG"), encode(_palette(rgb), "GIF")
    webp, tiff, bmp = encode(rgb, "WEBP"), encode(rgb, "TIFF"), encode(rgb, "BMP")
    sof = jpeg.find(b"\xff\xc0")
    idat = png.find(b"IDAT") + 4
    svg = (b'<svg xmlns="http://www.w3.org/2000/svg" width="48" height="32">'
           b'<rect width="48" height="32" fill="#2878c8"/></svg>')
    wide = limits.max_side + 1
    # too many pixels with the longer side at its limit (when max_side**2 <= max_pixels a side is too long instead)
    tall = limits.max_pixels // limits.max_side + 1
    nan = np.full((HEIGHT, WIDTH), np.nan, np.float32)
    refused: list[tuple[str, str, bytes]] = [
        ("empty_file", "empty", b""),
        ("plain_text", "text", b"This is not an image.\nJust some words.\n" * 4),
        ("csv_text", "text", b"x,y,value\n1,2,3\n4,5,6\n"),
        ("svg_with_xml_declaration", "svg", b'<?xml version="1.0" encoding="UTF-8"?>\n' + svg),
        ("svg_bare", "svg", svg),
        ("html_page", "html", b"<!DOCTYPE html>\n<html><body><img src='photo.png'></body></html>"),
        ("xml_document", "text", b'<?xml version="1.0"?>\n<photo><title>x</title></photo>'),
        ("pdf_document", "pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"),
        ("zip_with_png", "zip", _archive("zip", png)),
        ("tar_gz_with_png", "tar.gz", _archive("tar.gz", png)),
        ("tar_with_png", "tar", _archive("tar", png)),
        ("heic_header", "unsupported", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)),
        ("ico_icon", "unsupported", encode(rgb, "ICO")),
        ("ppm_image", "unsupported", encode(rgb, "PPM")),
        ("psd_header", "unsupported", b"8BPS\x00\x01" + bytes(64)),
        ("random_bytes", "corrupt", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()),
        ("png_signature_only", "corrupt", png[:8]),
        ("png_garbage_idat", "corrupt", png[:idat] + rng.integers(0, 256, len(png) - idat, np.uint8).tobytes()),
        ("png_bad_crc", "corrupt", _patched(png, idat + 6, bytes([png[idat + 6] ^ 0xFF]))),
        ("jpeg_broken_header", "corrupt", _patched(jpeg, sof + 2, b"\x00\x02")),
        ("tiff_lab_mode", "unsupported", encode(Image.new("LAB", (WIDTH, HEIGHT), (50, 0, 0)), "TIFF")),
        ("tiff_float_nan", "nan", encode(Image.fromarray(nan), "TIFF")),
        ("png_truncated", "truncated", png[: len(png) // 2]),
        ("jpeg_truncated", "truncated", jpeg[: len(jpeg) // 2]),
        ("gif_truncated", "truncated", gif[: len(gif) // 2]),
        ("webp_truncated", "truncated", webp[: len(webp) // 2]),
        ("tiff_truncated", "truncated", tiff[: len(tiff) // 2]),
        ("bmp_truncated", "truncated", bmp[: len(bmp) // 2]),
        ("bomb_png_header_100000px", "bomb", _png(100_000, 100_000, 8, 2, zlib.compress(b"\x00" * 64))),
        ("bomb_png_real_8000px", "bomb", _zero_png(8000, 8000)),
        ("bomb_jpeg_header_65500px", "bomb", _patched(jpeg, sof + 5, struct.pack(">HH", 65500, 65500))),
        ("bomb_gif_header_65535px", "bomb", _patched(gif, 6, b"\xff\xff\xff\xff")),
        ("too_many_bytes", "too_many_bytes", png + bytes(limits.max_bytes + 1 - len(png))),
        ("side_below_minimum", "size", encode(Image.new("RGB", (limits.min_side - 1, 64), RED), "PNG")),
        ("one_pixel", "size", encode(Image.new("RGB", (1, 1), RED), "PNG")),
        ("side_above_maximum", "size", encode(Image.new("L", (wide, limits.min_side)), "PNG")),
        ("too_many_pixels", "size", encode(Image.new("L", (limits.max_side, tall)), "PNG")),
    ]
    return [Case(name, kind, data, "refused") for name, kind, data in refused]


def corpus(limits: UploadLimits | None = None) -> list[Case]:
    """All cases: the good images first, then the bad files."""
    return image_cases(limits) + bad_cases(limits)


def check_decoded(case: Case, array: np.ndarray) -> list[str]:
    """What is wrong with the decoded array of an "ok" case (empty when it is as expected)."""
    problems = []
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        return [f"expected RGB uint8 (H, W, 3), got {array.dtype} {array.shape}"]
    if case.shape is not None and array.shape != case.shape:
        problems.append(f"shape {array.shape}, expected {case.shape}")
        return problems
    for (y, x), colour in case.probes:
        got = tuple(int(v) for v in array[y, x])
        if max(abs(a - b) for a, b in zip(got, colour)) > case.tolerance:
            problems.append(f"pixel ({y}, {x}) is {got}, expected {colour} +- {case.tolerance}")
    return problems


def outcome(case: Case, decode: Callable[[bytes], np.ndarray]) -> tuple[str, str]:
    """Run one case -> (actual outcome "ok"/"refused", detail: the refusal message or the problems found)."""
    from feedback.record.errors import InputError

    try:
        array = decode(case.data)
    except InputError as exc:
        return "refused", exc.message
    return "ok", "; ".join(check_decoded(case, array))
