"""Region marks' heat maps: where people saw problems, per condition (the analysis's `regions` section).

A vote may carry `regions`: boxes a participant drew on a shown image, checked and stored by the record
(`feedback.record.regions.check_regions`, re-exported here): [{"on", "position", "x", "y", "w", "h", "tag"}], the
box's top-left corner and size as fractions of the image's width and height on the candidate at `position`.
`heatmap` sums the boxes of one condition on a G x G grid (each cell gets the share of its area a box covers);
`region_summary` is the analysis's `regions` section.

Pure Python and NumPy (no database).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from feedback.record.regions import MAX_REGIONS, check_regions

__all__ = ["GRID", "MAX_REGIONS", "check_regions", "heatmap", "region_summary"]

GRID = 8


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
