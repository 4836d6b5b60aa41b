"""Stage (ii): metric table, z-score fusion direction, clear errors, human selections."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from restoration import selection
from restoration.selection import (
    MetricUnavailableError,
    fuse_zscores,
    get_metric,
    human_selection,
    metric_info,
    select_by_metrics,
    select_from_scores,
)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    flat = torch.full((1, 3, 64, 64), 0.5)
    noisy = (flat + 0.3 * torch.randn(1, 3, 64, 64, generator=g)).clamp(0, 1)
    mid = (flat + 0.05 * torch.randn(1, 3, 64, 64, generator=g)).clamp(0, 1)
    return torch.cat([flat, mid, noisy])


def test_table_rows():
    piqe = metric_info("piqe")
    assert (piqe.kind, piqe.lower_better, piqe.needs_weights) == ("NR", True, False)
    assert metric_info("psnr").kind == "FR" and not metric_info("psnr").lower_better
    musiq = metric_info("musiq")
    assert musiq.needs_weights and any(f.endswith(".pth") for f in musiq.weight_files)


def test_fusion_direction_follows_lower_better():
    s = {"m": torch.tensor([3.0, 1.0, 2.0])}
    assert select_from_scores(["a", "b", "c"], fuse_zscores(s, {"m": True}), "m").preferred_ids == ("b",)
    assert select_from_scores(["a", "b", "c"], fuse_zscores(s, {"m": False}), "m").preferred_ids == ("a",)
    # two metrics: z-scores, not raw values, are averaged (a huge-range metric does not dominate)
    two = {"big": torch.tensor([1000.0, 0.0, 500.0]), "small": torch.tensor([0.0, 0.3, 0.2])}
    fused = fuse_zscores(two, {"big": False, "small": False})
    assert torch.allclose(fused.sum(), torch.tensor(0.0, dtype=torch.float64), atol=1e-9)
    sel = select_from_scores(["a", "b", "c"], fused, "big+small", top_k=1, bottom_k=1)
    assert sel.preferred_ids == ("c",) and sel.rejected_ids == ("b",)


def test_tie_when_all_equal():
    sel = select_from_scores(["a", "b"], fuse_zscores({"m": torch.tensor([1.0, 1.0])}, {"m": True}), "m")
    assert sel.tie and sel.rejected_ids == ()


def test_real_metric_selection_picks_lowest_piqe(images):
    sel = select_by_metrics(images, ["flat", "mid", "noisy"], ["piqe"], top_k=1, bottom_k=1)
    raw = sel.raw_scores["piqe"]
    assert sel.selector == "piqe" and not sel.tie
    assert sel.preferred_ids == (min(raw, key=raw.get),)
    assert sel.rejected_ids == (max(raw, key=raw.get),)
    # entropy is higher-better: the noisy image has the most entropy
    assert select_by_metrics(images, ["flat", "mid", "noisy"], ["entropy"]).preferred_ids == ("noisy",)
    # full-reference metric against the flat image: flat itself (psnr = inf) best, noisy worst
    fr = select_by_metrics(images, ["flat", "mid", "noisy"], ["psnr"], reference=images[:1])
    assert fr.preferred_ids == ("flat",) and fr.rejected_ids == ("noisy",)
    with pytest.raises(ValueError, match="full-reference"):
        select_by_metrics(images, ["a", "b", "c"], ["psnr"])


def test_metrics_are_cached():
    assert get_metric("piqe") is get_metric("piqe")


def test_unknown_metric_did_you_mean():
    with pytest.raises(ValueError, match=r"unknown quality metric 'musik'; did you mean 'musiq'"):
        metric_info("musik")


def test_missing_weights_error_names_metric_and_file(monkeypatch, tmp_path):
    monkeypatch.setattr(selection, "weight_dirs", lambda: [tmp_path])
    get_metric.cache_clear()
    with pytest.raises(MetricUnavailableError, match=r"'musiq' needs weights .*musiq_koniq_ckpt.*\.pth"):
        get_metric("musiq")
    get_metric.cache_clear()


def test_human_selection():
    sel = human_selection(["c2"], ["c5"])
    assert (sel.preferred_ids, sel.rejected_ids, sel.tie, sel.selector) == (("c2",), ("c5",), False, "human")
    assert human_selection([], [], tie=True).tie
    with pytest.raises(ValueError, match="both preferred and rejected"):
        human_selection(["a"], ["a"])
    with pytest.raises(ValueError, match="at least one preferred"):
        human_selection([], ["a"])
