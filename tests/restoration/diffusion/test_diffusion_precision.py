"""The prior's compute precision (bf16 / fp16 autocast) and memory format: recorded, checked, close to float32."""
from __future__ import annotations

import pytest
import torch

from feedback.loop.engine import EngineSettings
from restoration.diffusion.candidates import (
    CandidateConfig,
    CandidateMeta,
    generate_candidates,
    regenerate,
)
from restoration.diffusion.pixel import PixelPriorConfig, build_pixel_unet, pixel_prior_from_unet
from restoration.diffusion.priors import check_precision, resolve_precision

TINY = PixelPriorConfig(block_out_channels=(16, 32), norm_num_groups=8, pixel_unshuffle=2)


@pytest.fixture()
def tiny_prior():
    torch.manual_seed(0)
    return pixel_prior_from_unet(build_pixel_unet(TINY).eval(), TINY)


@pytest.fixture(scope="module")
def restored():
    g = torch.Generator().manual_seed(5)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(32, 32), mode="bilinear")
    return (0.2 + 0.6 * smooth).clamp(0, 1)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def test_precision_names_are_checked():
    assert check_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16, got 'int8'"):
        check_precision("int8")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("half", "cpu")
    assert resolve_precision("fp16", "cpu") == "fp16"
    assert resolve_precision("auto", "cpu") in ("bf16", "fp32")
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, float16"):
        EngineSettings(dtype="bf16")


def test_channels_last_gives_the_same_candidates(tiny_prior, restored):
    cfg = CandidateConfig(num_candidates=3, steps=2, seed=1)
    plain = torch.cat([c.image for c in generate_candidates(restored, tiny_prior, cfg)])
    tiny_prior.set_inference_format(channels_last=True)
    assert tiny_prior.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    fast = torch.cat([c.image for c in generate_candidates(restored, tiny_prior, cfg)])
    assert (plain - fast).abs().max() < 1e-5


def test_bf16_candidates_are_close_to_float32_and_regenerate_exactly(tiny_prior, restored):
    cfg = CandidateConfig(num_candidates=4, steps=3, seed=2)
    full = generate_candidates(restored, tiny_prior, cfg)
    tiny_prior.set_inference_format(precision="bf16")
    half = generate_candidates(restored, tiny_prior, cfg)
    assert [c.meta.precision for c in full] == ["fp32"] * 4 and [c.meta.precision for c in half] == ["bf16"] * 4
    assert tiny_prior.describe()["precision"] == "bf16"
    a, b = torch.cat([c.image for c in full]), torch.cat([c.image for c in half])
    assert a.dtype == b.dtype == torch.float32
    assert 30 < _psnr(a, b) < 200  # close, but really computed in bfloat16
    # regeneration follows the recorded precision, whatever the prior is set to now
    tiny_prior.set_inference_format(precision="fp32")
    again = regenerate(half[1].meta, restored, tiny_prior)
    assert (again - half[1].image).abs().max() < 1e-4 < (again - full[1].image).abs().max()
    assert tiny_prior.precision == "fp32"
    assert (regenerate(full[1].meta, restored, tiny_prior) - full[1].image).abs().max() < 1e-5


def test_records_without_precision_read_as_float32(tiny_prior, restored):
    meta = generate_candidates(restored, tiny_prior, CandidateConfig(num_candidates=1, steps=2))[0].meta
    old = {k: v for k, v in meta.to_dict().items() if k != "precision"}
    assert CandidateMeta.from_dict(old) == meta


def test_compile_mode_is_checked_and_gives_the_same_candidates(tiny_prior, restored, monkeypatch):
    """The wiring: the prior runs torch.compile's module with the asked mode. Inductor's C++ compilation takes
    minutes on 2 cores, so the test compiles with dynamo's "eager" backend; `restoration.bench --compile`
    measures the real one."""
    with pytest.raises(ValueError, match="compile must be one of none, default, reduce-overhead, max-autotune"):
        tiny_prior.set_inference_format(compile_mode="fast")
    assert tiny_prior.compile_mode == "none"
    cfg = CandidateConfig(num_candidates=2, steps=2, seed=3)
    eager = torch.cat([c.image for c in generate_candidates(restored, tiny_prior, cfg)])
    real_compile, modes, traced = torch.compile, [], []

    def compile_eagerly(module, mode=None):
        modes.append(mode)

        def backend(graph_module, example_inputs):
            traced.append(len(example_inputs))
            return graph_module.forward

        return real_compile(module, backend=backend)

    monkeypatch.setattr(torch, "compile", compile_eagerly)
    tiny_prior.set_inference_format(compile_mode="reduce-overhead")
    compiled = torch.cat([c.image for c in generate_candidates(restored, tiny_prior, cfg)])
    assert modes == ["reduce-overhead"] and traced, "the U-Net ran through torch.compile"
    assert tiny_prior.compile_mode == "reduce-overhead"
    assert (eager - compiled).abs().max() < 1e-5
    tiny_prior.set_inference_format(compile_mode="none")
    assert tiny_prior._compiled is None


def test_app_refuses_an_unknown_compile_mode_before_it_starts(tmp_path):
    from app import main

    with pytest.raises(SystemExit, match="--compile: compile must be one of none, default"):
        main(["--compile", "fast", "--data-dir", str(tmp_path / "data")])
    assert not (tmp_path / "data").exists()  # stopped before any database or folder was made
