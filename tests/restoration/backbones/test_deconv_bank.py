"""The Wiener deconvolution bank the post-deconvolution step chooses among: its filters, what they do to blur."""
from __future__ import annotations

import torch

from restoration.backbones.deconv_bank import deconvolve_bank, fast_length, wiener_filters
from restoration.degradations import gaussian_blur
from restoration.metrics import psnr

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


def test_fast_lengths_and_an_empty_bank():
    assert [fast_length(n) for n in (1, 7, 97, 128, 292)] == [1, 8, 100, 128, 300]
    assert deconvolve_bank(torch.rand(1, 3, 8, 8), ()).shape == (1, 0, 3, 8, 8)
