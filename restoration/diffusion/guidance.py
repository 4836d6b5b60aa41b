"""TTPO stage (iii) rewards: the high-band Bradley-Terry preference loss, the band-limited fidelity loss,
the published timestep schedule, and `make_guided_model_fn`, a wrapper around a model function.

The wrapper takes one gradient step on z_t per call with eps held fixed (no backprop through the
denoiser by default). Moving z_t by -sqrt(a_t) * d with eps fixed moves x0_hat by exactly -d, so the
wrapper returns (x0_hat - d, eps) and any DDIM sampler then steps from the guided state.

Scale: the preference loss is a difference of mean L1 distances, so its raw gradient is tiny and
depends on the image size. Its gradient is therefore RMS-normalised per sample and multiplied by
`scale` (units of z per step: 0.01 ~ 0.5 % of the pixel range per step). The L1 gradient is
sign-like, so too large a scale overshoots: on the shipped prior (8 steps, strength 0.35) 0.02 and
0.05 moved the high band toward the preferred image and away from the rejected one, while 0.1
pushed it away from both. Defaults (strength 0.2, scale 0.01) were chosen on a held-out photo
(mate Storm, noise:25, NLM restoration, piqe selection): strength 0.35 / scale 0.05 lowered PIQE
38.0 -> 20.1 but cost 4.0 dB PSNR; strength 0.2 / scale 0.01 gave PIQE 9.1 at -0.7 dB, and beat
unguided denoising at the same strength on PIQE (14.0). The fidelity loss is
1/2 * sum of squared (band-limited) deviations, whose gradient is the deviation itself, so
`fidelity_weight` is the fraction of the deviation from the restored image removed per step.

Ties and missing rejected images: no rejected image -> the preference term becomes a preferred-only
pull, mean_p |H(x0_hat) - H(x_pref)|_1; no preferred image (or a tie) -> no preference term at all,
fidelity only (so with t <= 100 the step is unguided).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ModelFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class GuidanceConfig:
    """scale: size of the normalised preference step on x0_hat per denoising step (z units).
    fidelity_weight: fraction of the (band-limited) deviation from the reference removed per step.
    cutoff: std of the Gaussian low-pass transfer function, in cycles per pixel (0.5 = Nyquist);
    H = 1 - low-pass. backprop: differentiate through the denoiser (slower, exact gradient on z_t).
    """

    # defaults (and RefineConfig.strength 0.05) picked by `scripts/tune_refine.py` on 19 tuning photos
    # (the 15 validation photos, scikit-image coffee/chelsea/rocket/astronaut; docs/results/tpo/tuning.json) for
    # the shipped SIPL weights: of the settings whose refined image beats the restored one on piqe for at least
    # 80 % of the photos (16 of 19), the one that loses the least PSNR (-0.29 dB)
    scale: float = 0.0075
    fidelity_weight: float = 0.5
    cutoff: float = 0.1
    backprop: bool = False

    def __post_init__(self) -> None:
        if self.scale < 0 or self.fidelity_weight < 0:
            raise ValueError("scale and fidelity_weight must be >= 0")
        if not 0 < self.cutoff <= 0.5:
            raise ValueError(f"cutoff must be in (0, 0.5] cycles/pixel, got {self.cutoff}")


def gaussian_lowpass(x: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Low band of x (..., H, W): FFT multiply by exp(-f^2 / (2 cutoff^2)), f in cycles/pixel."""
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h, device=x.device).view(-1, 1)
    fx = torch.fft.rfftfreq(w, device=x.device).view(1, -1)
    transfer = torch.exp(-(fy**2 + fx**2) / (2 * cutoff**2))
    return torch.fft.irfft2(torch.fft.rfft2(x.float()) * transfer, s=(h, w))


def high_pass(x: torch.Tensor, cutoff: float) -> torch.Tensor:
    """H(x) = x - gaussian_lowpass(x): the high band TTPO's preference loss compares."""
    return x - gaussian_lowpass(x, cutoff)


def _l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference per pair: a (B, 1, ...), b (1, P, ...) -> (B, P)."""
    return (a - b).abs().flatten(2).mean(-1)


def preference_loss(
    x0: torch.Tensor, preferred: torch.Tensor, rejected: torch.Tensor | None, cutoff: float
) -> torch.Tensor:
    """Per-sample L_pref (B,) for x0 (B, C, h, w) against preferred (P, C, h, w) and rejected (R, ...).

    L_pref = mean over (p, r) of -log sigmoid(|H(x0) - H(x_r)|_1 - |H(x0) - H(x_p)|_1); without
    rejected images, the preferred-only pull mean_p |H(x0) - H(x_p)|_1.
    """
    hx = high_pass(x0, cutoff).unsqueeze(1)
    d_pref = _l1(hx, high_pass(preferred, cutoff).unsqueeze(0))  # (B, P)
    if rejected is None or rejected.shape[0] == 0:
        return d_pref.mean(1)
    d_rej = _l1(hx, high_pass(rejected, cutoff).unsqueeze(0))  # (B, R)
    margin = d_rej.unsqueeze(1) - d_pref.unsqueeze(2)  # (B, P, R): every preferred x rejected pair
    return -F.logsigmoid(margin).flatten(1).mean(1)


def fidelity_loss(x0: torch.Tensor, reference: torch.Tensor, cutoff: float, band: torch.Tensor) -> torch.Tensor:
    """Per-sample 1/2 * sum of squared deviations (B,); band (B,) is 1 for full band, 0 for low band only."""
    diff = x0 - reference
    low = gaussian_lowpass(diff, cutoff)
    b = band.view(-1, 1, 1, 1).to(diff.dtype)
    return 0.5 * (b * diff + (1 - b) * low).pow(2).flatten(1).sum(1)


def ttpo_schedule(t: torch.Tensor, num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w_pref, w_fid, full_band) per sample for timesteps t (B,), on the published 0..1000 scale.

    t > 700: fidelity only, full band; 100 < t <= 700: 0.5 L_pref + low-band fidelity;
    t <= 100: 0.5 L_pref only.
    """
    t1000 = t.float() * (1000.0 / num_train_timesteps)
    high, mid = t1000 > 700, (t1000 > 100) & (t1000 <= 700)
    w_pref = torch.where(high, 0.0, 0.5)
    w_fid = (high | mid).float()
    return w_pref, w_fid, high.float()


def _rms_normalise(g: torch.Tensor) -> torch.Tensor:
    rms = g.pow(2).flatten(1).mean(1).sqrt().view(-1, 1, 1, 1)
    return torch.where(rms > 0, g / rms.clamp(min=1e-12), torch.zeros_like(g))


def make_guided_model_fn(
    model_fn: ModelFn,
    alphas_cumprod: torch.Tensor,
    reference: torch.Tensor,
    preferred: torch.Tensor | None,
    rejected: torch.Tensor | None,
    config: GuidanceConfig = GuidanceConfig(),
) -> ModelFn:
    """Wrap model_fn(z_t, t) -> (x0_hat, eps) with TTPO reward guidance (all tensors in z space).

    reference: (1 or B, C, h, w) the restored image; preferred (P, ...), rejected (R, ...) or None.
    """
    T = alphas_cumprod.shape[0]
    has_pref = preferred is not None and preferred.shape[0] > 0

    def guided(z_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w_pref_host, w_fid_host, full = ttpo_schedule(t.cpu(), T)  # t is on the host in the samplers: no sync
        use_pref = has_pref and bool((w_pref_host > 0).any())
        use_fid = config.fidelity_weight > 0 and bool((w_fid_host > 0).any())
        w_pref, w_fid, full = (v.to(z_t.device, non_blocking=True) for v in (w_pref_host, w_fid_host, full))
        if config.backprop:
            with torch.enable_grad():
                z_in = z_t.detach().requires_grad_(True)
                x0, eps = model_fn(z_in, t)
                g_pref, g_fid = _grads(x0, z_in, use_pref, use_fid, w_fid, full)
            a = alphas_cumprod[t.to(alphas_cumprod.device, non_blocking=True)].view(-1, 1, 1, 1)
            g_fid = g_fid * a.sqrt()  # dL/dz_t ~ dL/dx0 / sqrt(a): back to x0 units, so weights mean the same
            x0, eps = x0.detach(), eps.detach()
        else:
            x0, eps = model_fn(z_t, t)
            with torch.enable_grad():
                x0_in = x0.detach().requires_grad_(True)
                g_pref, g_fid = _grads(x0_in, x0_in, use_pref, use_fid, w_fid, full)
        step = config.scale * w_pref.view(-1, 1, 1, 1) * _rms_normalise(g_pref)
        step = step + config.fidelity_weight * g_fid
        return x0 - step, eps

    def _grads(x0, wrt, use_pref, use_fid, w_fid, full):
        zero = torch.zeros_like(wrt)
        g_pref, g_fid = zero, zero
        if use_pref:
            loss = preference_loss(x0, preferred, rejected, config.cutoff)
            (g_pref,) = torch.autograd.grad(loss.sum(), wrt, retain_graph=True)
        if use_fid:
            loss = (w_fid * fidelity_loss(x0, reference, config.cutoff, full)).sum()
            (g_fid,) = torch.autograd.grad(loss, wrt)
        return g_pref.detach(), g_fid.detach()

    return guided
