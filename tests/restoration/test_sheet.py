"""The contact sheet: layout, labels, and a detail row that is an exact nearest-neighbour enlargement."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from restoration.sheet import candidate_label, contact_sheet, detail_window


def _images(n, h=40, w=48):
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 3, h, w, generator=g) * 0.2 + 0.4
    out = []
    for i in range(n):
        img = base.clone()
        img[..., 20:30, 30:40] = torch.rand(1, 3, 10, 10, generator=g)  # the busy window
        out.append((f"image {i}", (img + 0.05 * i).clamp(0, 1)))
    return out


def test_layout_labels_and_sizes():
    images = _images(7)
    sheet, layout = contact_sheet(images, columns=3, detail=16, zoom=2)
    overview = [t for t in layout if t.row == "overview"]
    detail = [t for t in layout if t.row == "detail"]
    assert [t.label for t in overview] == [t.label for t in detail] == [label for label, _ in images]
    for t in overview:
        assert (t.box[2] - t.box[0], t.box[3] - t.box[1]) == (48, 40)
    for t in detail:
        assert (t.box[2] - t.box[0], t.box[3] - t.box[1]) == (32, 32)
    boxes = [t.box for t in layout]
    for i, a in enumerate(boxes):  # no two cells overlap, all inside the sheet
        assert 0 <= a[0] < a[2] <= sheet.size[0] and 0 <= a[1] < a[3] <= sheet.size[1]
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
    # each label is drawn: dark pixels right below its cell
    arr = np.asarray(sheet)
    for t in layout:
        strip = arr[t.box[3] + 2 : t.box[3] + 14, t.box[0] : t.box[0] + 40]
        assert (strip.min(-1) < 100).any(), t.label


def test_detail_is_the_busiest_window_enlarged_by_nearest_neighbour():
    images = _images(2)
    top, left = detail_window(images[1][1], 16)
    assert 14 <= top <= 20 and 24 <= left <= 30  # covers the busy 20:30, 30:40 patch
    sheet, layout = contact_sheet(images, columns=2, detail=16, zoom=3)
    cell = [t for t in layout if t.row == "detail"][1]
    got = np.asarray(sheet)[cell.box[1] : cell.box[3], cell.box[0] : cell.box[2]]
    crop = (images[1][1][0, :, top : top + 16, left : left + 16].clamp(0, 1) * 255).round().byte()
    want = crop.permute(1, 2, 0).numpy().repeat(3, 0).repeat(3, 1)
    assert np.array_equal(got, want)


def test_large_images_are_shrunk_in_the_overview_only():
    images = [("a", torch.rand(1, 3, 600, 400)), ("b", torch.rand(1, 3, 600, 400))]
    sheet, layout = contact_sheet(images, thumb=300)
    over, det = layout[0], layout[2]
    assert (over.box[2] - over.box[0], over.box[3] - over.box[1]) == (200, 300)
    assert det.box[2] - det.box[0] == 100 * 2  # side = a quarter of 400, at 2x


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least one"):
        contact_sheet([])
    with pytest.raises(ValueError, match="must be"):
        contact_sheet([("a", torch.rand(1, 3, 32, 32)), ("b", torch.rand(1, 3, 16, 32))])
    assert candidate_label("c2", 0.25, 7) == "c2 s=0.25 seed 7" and candidate_label("restored", None, None) == "restored"
