"""The Wiener deconvolution bank (its filters, what it does to blurred images) and the network that gains it."""
from __future__ import annotations

import pytest
import torch

from restoration.backbones.deconv_bank import check_bank, deconvolve_bank, fast_length, wiener_filters
from restoration.backbones.sipl_net import SIPLConfig, SIPLNet, compose_output, self_refine, widen
from restoration.degradations import gaussian_blur
from restoration.metrics import psnr

TINY = SIPLConfig(dim=8, num_blocks=(1, 1, 1, 1), heads=(1, 2, 2, 4), prompt_len=2, prompt_size=4,
                  dictionary_tokens=4)
BANK = (0.8, 1.6, 3.0)


def smooth_image(size: int = 64, seed: int = 0) -> torch.Tensor:
    """A photo-like test image: random blobs at a few scales, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = sum(torch.nn.functional.interpolate(torch.rand(1, 3, s, s, generator=g), size=(size, size), mode="bicubic",
                                            align_corners=False) for s in (4, 8, 16, 32))
    return ((x - x.min()) / (x.max() - x.min())).clamp(0, 1)


def test_the_matching_filter_undoes_a_blur_and_the_others_do_less():
    clean = smooth_image()
    blurred = gaussian_blur(clean, 1.6)
    bank = deconvolve_bank(blurred, BANK)
    assert bank.shape == (1, 3, 3, 64, 64)
    gains = [psnr(bank[:, i].clamp(0, 1), clean) - psnr(blurred, clean) for i in range(3)]
    assert gains[1] > 3.0  # the right kernel: measured +6 dB on this image
    assert gains[1] > gains[0] and gains[1] > gains[2]


def test_filters_pass_the_mean_and_bound_the_gain():
    f = wiener_filters(BANK, 40, 50)
    assert f.shape == (3, 40, 26)
    torch.testing.assert_close(f[:, 0, 0], torch.ones(3))  # DC: the image's mean level passes unchanged
    assert 1.5 < f[0].max() < 2.5 and f[2].max() < 10  # the Laplacian term bounds the amplification
    x = torch.rand(2, 3, 37, 45)
    bank = deconvolve_bank(x, BANK)
    assert bank.shape == (2, 3, 3, 37, 45)
    torch.testing.assert_close(bank.mean(dim=(-2, -1)), x.mean(dim=(-2, -1))[:, None].expand(-1, 3, -1),
                               atol=0.02, rtol=0)


def test_bank_arguments_are_checked():
    assert check_bank([1, 2.5]) == (1.0, 2.5)
    for bad in ((0.1,), (1.0, 1.0), (float("nan"),), (9.0,)):
        with pytest.raises(ValueError, match=r"distinct numbers in \[0.3, 5\]"):
            check_bank(bad)
    assert [fast_length(n) for n in (1, 7, 97, 128, 292)] == [1, 8, 100, 128, 300]
    assert deconvolve_bank(torch.rand(1, 3, 8, 8), ()).shape == (1, 0, 3, 8, 8)


def test_compose_output_without_blend_or_gain_is_the_residual_network():
    x, r = torch.rand(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    bank = torch.rand(1, 2, 3, 8, 8)
    torch.testing.assert_close(compose_output(x, r, torch.zeros(1, 6, 8, 8), bank, torch.zeros(1, 3, 8, 8)), x + r)
    blend = torch.zeros(1, 6, 8, 8)
    blend[:, 3:] = 1  # all of the second deconvolution
    torch.testing.assert_close(compose_output(x, torch.zeros_like(x), blend, bank), bank[:, 1])
    torch.testing.assert_close(compose_output(x, torch.zeros_like(x), gain=torch.ones_like(x)), 2 * x)


def test_a_widened_network_computes_what_it_did_then_learns_more():
    torch.manual_seed(0)
    net = SIPLNet(TINY).eval()
    for pf in net.proxy_fusion:
        torch.nn.init.normal_(pf.privileged_dictionary, std=0.5)
    wide_cfg = SIPLConfig(**{**TINY.to_dict(), "deconv_bank": BANK, "affine_output": True})
    wide, fresh = widen(net, wide_cfg)
    assert sorted({k.split(".")[0] for k in fresh}) == ["bank_embed", "blend_head", "gain_head"]
    assert not wide.training
    x = torch.rand(1, 3, 32, 40)
    with torch.no_grad():
        torch.testing.assert_close(self_refine(wide, x, 1), self_refine(net, x, 1), atol=1e-6, rtol=0)
        for name in fresh:  # a trained head changes the output: the new paths are live
            torch.nn.init.normal_(dict(wide.named_parameters())[name], std=0.1)
        assert (self_refine(wide, x, 1) - self_refine(net, x, 1)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="only gain a deconvolution bank or a gain head.*dim"):
        widen(net, SIPLConfig(**{**wide_cfg.to_dict(), "dim": 16}))
    with pytest.raises(ValueError, match="deconv_bank"):
        widen(wide, SIPLConfig(**{**wide_cfg.to_dict(), "deconv_bank": (1.0,)}))
    with pytest.raises(ValueError, match="affine_output"):
        widen(wide, SIPLConfig(**{**wide_cfg.to_dict(), "affine_output": False}))


def _probe_script():
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("probe_bank_blend",
                                                  Path(__file__).parents[1] / "scripts" / "probe_bank_blend.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_blend_probe_reads_one_weight_per_filter_and_refuses_a_network_without_a_bank(tmp_path, capsys):
    from PIL import Image

    from restoration.backbones.sipl import save_weights
    probe = _probe_script()
    torch.manual_seed(0)
    net = SIPLNet(SIPLConfig(**{**TINY.to_dict(), "deconv_bank": BANK})).eval()
    with torch.no_grad():
        net.blend_head.bias.copy_(torch.tensor([0.1] * 3 + [0.2] * 3 + [0.3] * 3))
    assert probe.blend_means(net, smooth_image(32)) == pytest.approx([0.1, 0.2, 0.3], abs=1e-6)
    image = tmp_path / "photo.png"
    Image.fromarray((smooth_image(40)[0].permute(1, 2, 0) * 255).byte().numpy()).save(image)
    save_weights(net, tmp_path / "bank.safetensors", half=False)
    assert probe.main([str(tmp_path / "bank.safetensors"), str(image), "--size", "32", "--specs", "clean,blur:1.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[1].split()[0] == "clean" and len(lines[2].split()) == 4
    save_weights(SIPLNet(TINY), tmp_path / "plain.safetensors")
    assert probe.main([str(tmp_path / "plain.safetensors"), str(image), "--size", "32"]) == 2
    assert "no deconvolution bank" in capsys.readouterr().err
