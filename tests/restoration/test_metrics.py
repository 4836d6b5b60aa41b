import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from restoration.metrics import psnr, ssim


def _pair(seed: int = 0, size: int = 40):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, size, size + 5, generator=g)
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # some structure so SSIM is not trivial
    y = (x + 0.08 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return x, y


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).double().numpy()


def test_psnr_matches_skimage():
    x, y = _pair()
    ours = psnr(y, x)
    assert ours.shape == (2,)
    for i in range(2):
        ref = peak_signal_noise_ratio(_hwc(x[i]), _hwc(y[i]), data_range=1.0)
        assert abs(float(ours[i]) - ref) < 1e-4


def test_ssim_matches_skimage():
    x, y = _pair(1)
    ours = ssim(y, x)
    for i in range(2):
        ref = structural_similarity(
            _hwc(x[i]),
            _hwc(y[i]),
            data_range=1.0,
            channel_axis=-1,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert abs(float(ours[i]) - ref) < 1e-5


def test_identity_and_ordering():
    x, y = _pair(2)
    assert float(ssim(x, x)[0]) == pytest.approx(1.0, abs=1e-6)
    assert float(psnr(x, x)[0]) == pytest.approx(100.0)  # MSE floor keeps it finite
    worse = (x + 2.0 * (y - x)).clamp(0, 1)
    assert float(psnr(worse, x)[0]) < float(psnr(y, x)[0])
    assert float(ssim(worse, x)[0]) < float(ssim(y, x)[0])


def test_errors():
    x, _ = _pair()
    with pytest.raises(ValueError, match="same shape"):
        psnr(x, x[:, :, :-1])
    with pytest.raises(ValueError, match="at least 11"):
        ssim(x[..., :8, :8], x[..., :8, :8])
