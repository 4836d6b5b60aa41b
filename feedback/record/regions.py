"""Region marks, checked: boxes a person draws on a shown image to say where the problem is.

A vote or a choice may carry `regions`: [{"on", "x", "y", "w", "h", "tag"?}]. `on` names the image the box was drawn
on: 'left' | 'right' on a pairwise study item, or a position '1'..'K' (a study gallery's position, or an
interactive round's tile: the candidate's 1-based display position). x, y is the box's top-left corner and w, h its
size, as fractions of the image's width and height (so 0 <= x, y; 0 < w, h; x + w <= 1; y + h <= 1); `tag` is
optional, one of `feedback.record.models.REASON_TAGS`. `check_regions` returns them as stored on the `Choice`
(`on` kept, `position` the image's 0-based position added, numbers rounded to 1e-4), or raises an InputError that
says what is allowed. The heat maps of the analysis live in `feedback.studies.regions`.

Pure Python (no database): the record checks what it stores, and the loop and the studies share this check.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from feedback.record.errors import InputError
from feedback.record.models import REASON_TAGS

MAX_REGIONS = 20
_KEYS = {"on", "x", "y", "w", "h", "tag"}
_EPS = 1e-9


def _sides(k: int, named_sides: bool) -> dict[str, int]:
    """What `on` may say on an item of `k` images -> the image's 0-based position."""
    if k == 2 and named_sides:
        return {"left": 0, "right": 1}
    return {str(p): p - 1 for p in range(1, k + 1)}


def _allowed(k: int, named_sides: bool = True) -> str:
    sides = ("'left' or 'right'" if k == 2 and named_sides else
             "'1'" if k == 1 else f"a position '1'..'{k}'")
    return (f"regions must be a list of at most {MAX_REGIONS} boxes {{\"on\": {sides}, \"x\", \"y\", \"w\", \"h\", "
            f"\"tag\"?}} in [0, 1] image coordinates (0 <= x, y; 0 < w, h; x + w <= 1; y + h <= 1), tag one of "
            f"{', '.join(REASON_TAGS)}")


def check_regions(value: Any, k: int, *, named_sides: bool = True) -> list[dict[str, Any]] | None:
    """The checked boxes of a vote on an item of `k` images, or None for no regions; InputError saying what is
    allowed. `named_sides`: a pairwise item (k == 2) names its images 'left' and 'right' (study items); False: `on`
    is always a position '1'..'k' (the tiles of an interactive round)."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_REGIONS:
        raise InputError(_allowed(k, named_sides))
    positions = _sides(k, named_sides)
    boxes = []
    for n, box in enumerate(value, start=1):
        if not isinstance(box, Mapping) or not {"on", "x", "y", "w", "h"} <= set(box) or set(box) - _KEYS:
            raise InputError(f"region {n}: {_allowed(k, named_sides)}")
        on = str(box["on"]).strip() if isinstance(box["on"], (str, int)) and not isinstance(box["on"], bool) else ""
        if on not in positions:
            raise InputError(f"region {n}: 'on' is {str(box['on'])[:20]!r}; {_allowed(k, named_sides)}")
        numbers = {}
        for key in ("x", "y", "w", "h"):
            v = box[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputError(f"region {n}: {key} must be a number; {_allowed(k, named_sides)}")
            numbers[key] = float(v)
        x, y, w, h = numbers["x"], numbers["y"], numbers["w"], numbers["h"]
        if not (x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 1 + _EPS and y + h <= 1 + _EPS):
            raise InputError(f"region {n}: the box x={x:g}, y={y:g}, w={w:g}, h={h:g} leaves the image; "
                             f"{_allowed(k, named_sides)}")
        tag = box.get("tag")
        if tag is not None and tag not in REASON_TAGS:
            raise InputError(f"region {n}: tag {str(tag)[:30]!r} is not offered; {_allowed(k, named_sides)}")
        boxes.append({"on": on, "position": positions[on], **{key: round(numbers[key], 4) for key in numbers},
                      "tag": tag})
    return boxes
