"""Region marks: boxes a participant draws on a shown image to say where the problem is, and their heat maps.

A vote may carry `regions`: [{"on": "left" | "right" (pairwise) or "1".."K" (a gallery position), "x", "y",
"w", "h", "tag"?}], the box's top-left corner and size as fractions of the image's width and height (so
0 <= x, y; 0 < w, h; x + w <= 1; y + h <= 1), `tag` optional, one of `feedback.record.models.REASON_TAGS`.
`check_regions` returns them as stored on the `Choice` (`on` kept, `position` the candidate's 0-based position
added, numbers rounded to 1e-4); `heatmap` sums the boxes of one condition on a G x G grid (each cell gets the
share of its area a box covers), the analysis's `regions` section.

Pure Python and NumPy (no database).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from feedback.record.errors import InputError
from feedback.record.models import REASON_TAGS

MAX_REGIONS = 20
GRID = 8
_KEYS = {"on", "x", "y", "w", "h", "tag"}
_EPS = 1e-9


def _allowed(k: int) -> str:
    sides = "'left' or 'right'" if k == 2 else f"a gallery position '1'..'{k}'"
    return (f"regions must be a list of at most {MAX_REGIONS} boxes {{\"on\": {sides}, \"x\", \"y\", \"w\", \"h\", "
            f"\"tag\"?}} in [0, 1] image coordinates (0 <= x, y; 0 < w, h; x + w <= 1; y + h <= 1), tag one of "
            f"{', '.join(REASON_TAGS)}")


def check_regions(value: Any, k: int) -> list[dict[str, Any]] | None:
    """The checked boxes of a vote on an item of `k` images (k == 2: left/right), or None for no regions;
    InputError saying what is allowed."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_REGIONS:
        raise InputError(_allowed(k))
    boxes = []
    for n, box in enumerate(value, start=1):
        if not isinstance(box, Mapping) or not {"on", "x", "y", "w", "h"} <= set(box) or set(box) - _KEYS:
            raise InputError(f"region {n}: {_allowed(k)}")
        on = str(box["on"]).strip() if isinstance(box["on"], (str, int)) and not isinstance(box["on"], bool) else ""
        positions = {"left": 0, "right": 1} if k == 2 else {str(p): p - 1 for p in range(1, k + 1)}
        if on not in positions:
            raise InputError(f"region {n}: 'on' is {str(box['on'])[:20]!r}; {_allowed(k)}")
        numbers = {}
        for key in ("x", "y", "w", "h"):
            v = box[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputError(f"region {n}: {key} must be a number; {_allowed(k)}")
            numbers[key] = float(v)
        x, y, w, h = numbers["x"], numbers["y"], numbers["w"], numbers["h"]
        if not (x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 1 + _EPS and y + h <= 1 + _EPS):
            raise InputError(f"region {n}: the box x={x:g}, y={y:g}, w={w:g}, h={h:g} leaves the image; {_allowed(k)}")
        tag = box.get("tag")
        if tag is not None and tag not in REASON_TAGS:
            raise InputError(f"region {n}: tag {str(tag)[:30]!r} is not offered; {_allowed(k)}")
        boxes.append({"on": on, "position": positions[on], **{key: round(numbers[key], 4) for key in numbers},
                      "tag": tag})
    return boxes


def heatmap(boxes: Iterable[Mapping[str, Any]], grid: int = GRID) -> np.ndarray:
    """(grid, grid) float: per cell (row = y, column = x) the summed share of its area that the boxes cover."""
    out = np.zeros((grid, grid))
    edges = np.linspace(0.0, 1.0, grid + 1)
    for box in boxes:
        x0, y0 = box["x"], box["y"]
        x1, y1 = min(1.0, x0 + box["w"]), min(1.0, y0 + box["h"])
        cover_x = np.clip(np.minimum(edges[1:], x1) - np.maximum(edges[:-1], x0), 0, None) * grid
        cover_y = np.clip(np.minimum(edges[1:], y1) - np.maximum(edges[:-1], y0), 0, None) * grid
        out += np.outer(cover_y, cover_x)
    return out


def region_summary(marks: Iterable[tuple[str, Mapping[str, Any]]], grid: int = GRID) -> dict[str, dict[str, Any]]:
    """(condition, box) pairs -> per condition {"boxes": n, "tags": {tag: n}, "grid": G x G heat map (rows top to
    bottom, rounded to 1e-3), "peak": [row, col] of its largest cell}."""
    by_condition: dict[str, list[Mapping[str, Any]]] = {}
    for condition, box in marks:
        by_condition.setdefault(condition, []).append(box)
    report = {}
    for condition, boxes in sorted(by_condition.items()):
        heat = heatmap(boxes, grid)
        tags: dict[str, int] = {}
        for box in boxes:
            key = box.get("tag") or "untagged"
            tags[key] = tags.get(key, 0) + 1
        peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
        report[condition] = {"boxes": len(boxes), "tags": tags, "grid": np.round(heat, 3).tolist(),
                             "peak": [int(peak[0]), int(peak[1])]}
    return report
