"""Tests for restoration/degradations.py: shapes, ranges, determinism, physics sanity, the spec parser."""

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

from restoration.degradations import (
    DEGRADATIONS,
    DegradationRecord,
    DegradationStep,
    add_gaussian_noise,
    add_haze,
    bicubic_downsample,
    degrade,
    format_spec,
    gaussian_blur,
    jpeg,
    low_light,
    motion_blur,
    parse_spec,
)
from restoration.kernels import gaussian_kernel, motion_kernel
from restoration.training.mixture import NOT_IN_MIXTURE, MixtureShares, random_spec, random_step

ALL_SPECS = [
    "none",
    "noise:25",
    "blur:2.0",
    "motion:15",
    "motion:9,45",
    "sr:2",
    "sr:4",
    "jpeg:30",
    "rain",
    "snow",
    "haze",
    "lowlight",
    "lowlight:0.3,2,10",
    "blur:2.0+jpeg:30",
    "rain+haze",
    "lowlight+haze+rain+snow",
]


def _image(b: int = 2, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    """A smooth-ish textured test image (B,3,H,W) in [0.1, 0.9] with real high frequencies."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((b, 3, max(1, h // 4), max(1, w // 4)), generator=g)
    smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    fine = torch.rand((b, 3, h, w), generator=g)
    return (0.1 + 0.8 * (0.6 * smooth + 0.4 * fine)).clamp(0, 1)


def _high_freq_energy(x: torch.Tensor) -> float:
    return float((x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean())


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / (a - b).pow(2).mean()))


# ---- shapes, ranges, determinism ------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ALL_SPECS)
@pytest.mark.parametrize("size", [(32, 32), (37, 45)])
def test_shape_and_range(spec, size):
    x = _image(2, *size)
    y, record = degrade(x, spec, seed=3)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert torch.isfinite(y).all()
    if spec != "none":
        assert not torch.equal(y, x)
    json.dumps(record.to_dict())


def test_every_table_entry_is_covered_and_tiny_images_work():
    x = _image(1, 5, 7)
    for name in DEGRADATIONS:
        y, _ = degrade(x, name, seed=0)
        assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1


@pytest.mark.parametrize("spec", ["noise:25", "rain", "snow", "haze", "lowlight:0.3,1.5,10", "rain+haze+noise"])
def test_determinism_and_global_rng_independence(spec):
    x = _image()
    torch.manual_seed(0)
    a, _ = degrade(x, spec, seed=7)
    torch.manual_seed(12345)
    torch.rand(100)
    b, _ = degrade(x, spec, seed=7)
    c, _ = degrade(x, spec, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_input_is_not_modified():
    x = _image()
    before = x.clone()
    degrade(x, "lowlight:0.3,1.5,5+haze+rain+snow+noise+blur+motion+sr:2+jpeg:20", seed=0)
    assert torch.equal(x, before)


def test_deterministic_ops_ignore_seed():
    x = _image()
    for spec in ["blur:1.5", "motion:7,30", "sr:2", "jpeg:40"]:
        assert torch.equal(degrade(x, spec, 1)[0], degrade(x, spec, 2)[0])


def test_batch_items_get_different_realisations():
    x = _image(1).repeat(3, 1, 1, 1)
    for spec in ["noise:25", "rain", "snow", "haze"]:
        y, _ = degrade(x, spec, seed=0)
        assert not torch.equal(y[0], y[1]) and not torch.equal(y[1], y[2]), spec


def test_record_round_trip():
    x = _image()
    for spec in ["noise", "rain+haze", "sr:4", "lowlight+noise:10+jpeg:20"]:
        y, record = degrade(x, spec, seed=11)
        again = DegradationRecord.from_dict(json.loads(json.dumps(record.to_dict())))
        y2, record2 = degrade(x, again.spec, again.seed)
        assert torch.equal(y, y2)
        assert record2 == record
    _, record = degrade(x, "sr:4", seed=0)
    assert record.steps == [{"name": "sr", "scale": 4, "low_res_size": [8, 8]}]
    _, record = degrade(x, "motion", seed=0)
    assert record.spec == "motion:15,0" and record.steps[0] == {"name": "motion", "length": 15.0, "angle": 0.0}


# ---- the physics of each degradation ---------------------------------------------------------------------------


def test_noise_sigma_in_255_units():
    x = torch.full((4, 3, 64, 64), 0.5)
    y, _ = degrade(x, "noise:25", seed=0)
    std = float((y - x).std())
    assert abs(std - 25 / 255) < 0.05 * 25 / 255
    g = torch.Generator().manual_seed(0)
    assert abs(float((add_gaussian_noise(x, 10, g) - x).std()) - 10 / 255) < 0.05 * 10 / 255


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.5])
def test_gaussian_kernel(sigma):
    k = gaussian_kernel(sigma)
    assert k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
    assert math.isclose(float(k.sum()), 1.0, abs_tol=1e-5)
    assert torch.allclose(k, k.T) and torch.allclose(k, k.flip(0))


@pytest.mark.parametrize("length,angle", [(1, 0), (5, 0), (15, 30), (8.5, -100)])
def test_motion_kernel(length, angle):
    k = motion_kernel(length, angle)
    assert k.shape[0] % 2 == 1 and float(k.min()) >= 0
    assert math.isclose(float(k.sum()), 1.0, abs_tol=1e-5)
    if angle == 0 and length > 1:
        c = k.shape[0] // 2
        assert math.isclose(float(k[c].sum()), 1.0, abs_tol=1e-5)  # horizontal: all mass in the centre row
    nonzero = int((k > 1e-4).sum())
    assert nonzero >= min(length, 2)


def test_blurs_lower_high_frequency_energy():
    x = _image(2, 48, 48)
    e = _high_freq_energy(x)
    assert _high_freq_energy(gaussian_blur(x, 1.0)) < 0.5 * e
    assert _high_freq_energy(gaussian_blur(x, 2.0)) < _high_freq_energy(gaussian_blur(x, 1.0))
    assert _high_freq_energy(motion_blur(x, 9, 0)) < 0.5 * e
    # Horizontal motion smooths along rows more than along columns.
    m = motion_blur(x, 9, 0)
    assert (m[..., 1:] - m[..., :-1]).pow(2).mean() < 0.5 * (m[..., 1:, :] - m[..., :-1, :]).pow(2).mean()
    # A flat image stays flat (reflect padding, kernels sum to 1).
    flat = torch.full((1, 3, 20, 20), 0.4)
    assert torch.allclose(gaussian_blur(flat, 3.0), flat, atol=1e-6)
    assert torch.allclose(motion_blur(flat, 15, 33), flat, atol=1e-6)


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("size", [(32, 32), (37, 50)])
def test_bicubic_downsample_size(scale, size):
    x = _image(2, *size)
    small = bicubic_downsample(x, scale)
    assert small.shape == (2, 3, size[0] // scale, size[1] // scale)
    assert 0 <= float(small.min()) and float(small.max()) <= 1
    y, record = degrade(x, f"sr:{scale}", seed=0)
    assert y.shape == x.shape
    assert record.steps[0]["low_res_size"] == [size[0] // scale, size[1] // scale]
    assert _high_freq_energy(y) < _high_freq_energy(x)


def test_jpeg_quality_orders_psnr():
    x = _image(2, 64, 64)
    q10, q50, q95 = jpeg(x, 10), jpeg(x, 50), jpeg(x, 95)
    assert not torch.equal(q50, x)
    assert _psnr(q10, x) < _psnr(q50, x) < _psnr(q95, x)
    assert torch.allclose(q50 * 255, (q50 * 255).round(), atol=1e-4)  # decoded 8-bit values


def test_haze_brightens_and_lowers_contrast():
    x = _image(2, 48, 48)
    y, record = degrade(x, "haze:2,0.9", seed=0)
    assert float(y.mean()) > float(x.mean())
    assert float(y.std()) < float(x.std())
    assert 0 < record.steps[0]["mean_transmission"] < 1
    g = torch.Generator().manual_seed(0)
    hazy, t = add_haze(x, 1.0, 0.9, g)
    assert t.shape == (2, 1, 48, 48) and float(t.min()) >= math.exp(-1.0) - 1e-6 and float(t.max()) <= 1
    assert torch.allclose(hazy, (x * t + 0.9 * (1 - t)).clamp(0, 1))  # I = J t + A (1 - t)


def test_lowlight_lowers_mean():
    x = _image()
    y, _ = degrade(x, "lowlight", seed=0)
    assert float(y.mean()) < 0.5 * float(x.mean())
    assert torch.allclose(low_light(x, 0.3, 1.5), 0.3 * x**1.5)


def test_rain_and_snow_add_bright_sparse_structures():
    x = torch.full((2, 3, 64, 64), 0.3)
    for spec in ["rain", "snow"]:
        y, _ = degrade(x, spec, seed=0)
        changed = float(((y - x).abs() > 0.05).float().mean())
        assert float(y.mean()) > 0.3 and 0.005 < changed < 0.6, (spec, changed)
        assert float((y - x).min()) >= -1e-6  # only brightens


def test_composite_applies_in_order():
    x = _image()
    g = torch.Generator().manual_seed(5)
    expected = jpeg(add_gaussian_noise(gaussian_blur(x, 1.0), 15, g), 40)
    y, record = degrade(x, "blur:1+noise:15+jpeg:40", seed=5)
    assert torch.equal(y, expected)
    assert [s["name"] for s in record.steps] == ["blur", "noise", "jpeg"]
    # order matters: jpeg then noise differs from noise then jpeg
    assert not torch.equal(degrade(x, "noise:15+jpeg:40", 5)[0], degrade(x, "jpeg:40+noise:15", 5)[0])


# ---- parsing -------------------------------------------------------------------------------------------------------


def test_parse_defaults_and_round_trip():
    assert parse_spec("") == [] and parse_spec("none") == [] and parse_spec(" None ") == []
    assert parse_spec("noise") == [DegradationStep("noise", (25.0,))]
    assert parse_spec("noise:25") == parse_spec("noise")
    assert parse_spec("blur:2.0+jpeg:30") == [DegradationStep("blur", (2.0,)), DegradationStep("jpeg", (30.0,))]
    assert parse_spec("motion:15") == [DegradationStep("motion", (15.0, 0.0))]
    assert parse_spec(" rain + haze ") == parse_spec("rain+haze")
    for spec in ALL_SPECS + ["noise:23.4", "blur:0.123456789", "rain:0.0035,12,-7"]:
        steps = parse_spec(spec)
        assert parse_spec(format_spec(steps)) == steps
    assert format_spec([]) == "none"
    assert format_spec(parse_spec("sr")) == "sr:4"
    for info in DEGRADATIONS.values():
        assert len(info.arg_names) == len(info.defaults) == len(info.ranges) and info.doc
        for d, (lo, hi) in zip(info.defaults, info.ranges):
            assert lo <= d <= hi


@pytest.mark.parametrize(
    "spec,fragment",
    [
        ("nosie:25", "did you mean 'noise'"),
        ("foo", "unknown degradation 'foo'"),
        ("noise:abc", "not a number"),
        ("noise:nan", "not finite"),
        ("jpeg:0", "out of range"),
        ("jpeg:30.5", "integer"),
        ("sr:3", "not one of 2, 4"),
        ("blur:-1", "out of range"),
        ("noise+", "empty step"),
        ("+noise", "empty step"),
        ("noise:", "empty argument"),
        ("motion:15,", "empty argument"),
        ("noise:1,2", "at most 1 argument"),
    ],
)
def test_parse_errors_name_the_problem_and_list_allowed(spec, fragment):
    with pytest.raises(ValueError) as info:
        parse_spec(spec)
    message = str(info.value)
    assert fragment in message
    for name in DEGRADATIONS:
        assert name in message
    assert "default" in message and "0..255" in message  # argument meaning and ranges are listed


def test_degrade_rejects_bad_input():
    with pytest.raises(ValueError, match="B, 3, H, W"):
        degrade(torch.rand(3, 8, 8), "noise", 0)
    with pytest.raises(ValueError, match="float"):
        degrade(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "noise", 0)
    with pytest.raises(ValueError, match="allowed"):
        degrade(_image(), "noise+bogus", 0)
    with pytest.raises(TypeError, match="seed"):
        degrade(_image(), "noise", 1.5)
    with pytest.raises(ValueError, match="seed"):
        degrade(_image(), "noise", -1)


# ---- training mixture -------------------------------------------------------------------------------------------


def test_random_spec_parses_and_matches_mixture():
    rng = random.Random(0)
    specs = [random_spec(rng) for _ in range(2000)]
    assert specs[:20] == [random_spec(r) for r in [random.Random(0)] for _ in range(20)]  # seeded
    counts = {"pure_noise": 0, "noise_combo": 0}
    names_seen = set()
    for spec in specs:
        steps = parse_spec(spec)
        assert format_spec(steps) == spec  # concrete, canonical args
        names = [s.name for s in steps]
        names_seen.update(names)
        if names == ["noise"]:
            counts["pure_noise"] += 1
            assert 5 <= steps[0].args[0] <= 55
        elif names in (["blur", "noise"], ["noise", "blur"], ["noise", "jpeg"]):
            counts["noise_combo"] += 1
        for s in steps:
            if s.name == "lowlight":
                assert s.args[2] > 0  # low light always carries sensor noise in the mixture
            if s.name == "blur":
                assert 0.5 <= s.args[0] <= 3
            if s.name == "jpeg":
                assert 10 <= s.args[0] <= 60
    assert 0.35 < counts["pure_noise"] / len(specs) < 0.45
    assert 0.11 < counts["noise_combo"] / len(specs) < 0.19
    assert 0.03 < specs.count("none") / len(specs) < 0.07
    assert names_seen == set(DEGRADATIONS) - NOT_IN_MIXTURE
    x = _image(1)
    for spec in specs[:40]:
        y, _ = degrade(x, spec, seed=1)
        assert y.shape == x.shape


def test_mixture_shares_reweight_the_mixture_and_refuse_bad_shares():
    rng = random.Random(0)
    clean_heavy = MixtureShares(clean=0.5, noise=0.5, noise_combo=0.0, single=0.0, composite=0.0)
    specs = [random_spec(rng, clean_heavy) for _ in range(1000)]
    assert {parse_spec(s)[0].name for s in specs if s != "none"} == {"noise"}
    assert 0.45 < specs.count("none") / len(specs) < 0.55
    assert MixtureShares.parse(MixtureShares().format()) == MixtureShares()
    for bad, match in (("0.5,0.5", "expected 5"), ("a,b,c,d,e", "not numbers"), ("0.5,0.5,0.5,0,0", "sum to 1"),
                       ("-0.1,0.5,0.3,0.2,0.1", ">= 0"), ("nan,0.5,0.3,0.1,0.1", ">= 0")):
        with pytest.raises(ValueError, match=match):
            MixtureShares.parse(bad)


def test_random_step_draws_in_the_training_ranges_and_names_the_allowed():
    rng = random.Random(0)
    for _ in range(50):
        step = random_step("haze", rng)
        beta, airlight = step.args
        assert step.name == "haze" and 0.6 <= beta <= 2.5 and 0.7 <= airlight <= 1.0
        assert parse_spec(format_spec([step])) == [step]
    with pytest.raises(ValueError, match="no training range for 'fog'.*allowed: noise"):
        random_step("fog", rng)
