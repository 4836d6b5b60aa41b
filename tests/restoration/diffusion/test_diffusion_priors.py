"""Diffusion priors: pixel save/load round trip, latent adapter end to end, clear missing-weights errors."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from restoration.diffusion.candidates import CandidateConfig, generate_candidates
from restoration.diffusion.pixel import PixelPriorConfig, build_pixel_unet, save_pixel_prior
from restoration.diffusion.priors import PriorNotFoundError, load_prior
from restoration.diffusion.refine import RefineConfig, reward_guided_denoise

TINY = PixelPriorConfig(block_out_channels=(16, 32), norm_num_groups=8, pixel_unshuffle=2)


def test_pixel_prior_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    unet = build_pixel_unet(TINY).eval()
    save_pixel_prior(tmp_path / "prior", unet, TINY, card={"training": {"steps": 0}}, half=False)
    for f in ("unet/config.json", "unet/diffusion_pytorch_model.safetensors",
              "scheduler/scheduler_config.json", "README.md", "card.json"):
        assert (tmp_path / "prior" / f).is_file(), f
    prior = load_prior(str(tmp_path / "prior"))
    assert prior.kind == "pixel" and prior.pixel_unshuffle == 2
    assert len(prior.weights_hash) == 64 and prior.card["training"]["steps"] == 0
    z = torch.randn(2, 3, 18, 26)  # reflected by 8 px (34 x 42), not a multiple of 4: eps pads and crops back
    t = torch.tensor([10, 400])
    assert prior.edge_pad == 8
    with torch.no_grad():
        x = torch.nn.functional.pad(torch.nn.functional.pad(z, (8, 8, 8, 8), mode="reflect"), (0, 2, 0, 2),
                                    mode="reflect")
        ref = torch.nn.functional.pixel_shuffle(unet(torch.nn.functional.pixel_unshuffle(x, 2), t).sample,
                                                2)[..., 8:26, 8:34]
        assert torch.allclose(prior.eps(z, t), ref, atol=1e-5)
    # same weights -> same hash; a different folder with other weights -> other hash
    assert load_prior(str(tmp_path / "prior")).weights_hash == prior.weights_hash
    save_pixel_prior(tmp_path / "other", build_pixel_unet(TINY), TINY, half=False)
    assert load_prior(str(tmp_path / "other")).weights_hash != prior.weights_hash


def test_missing_prior_names_path_and_files(tmp_path, monkeypatch):
    with pytest.raises(PriorNotFoundError, match=r"nowhere/' not found: .*unet/"):
        load_prior(str(tmp_path / "nowhere") + "/")
    from restoration.diffusion import priors

    monkeypatch.setattr(priors, "DEFAULT_PRIOR_DIR", tmp_path / "assets_prior")
    with pytest.raises(PriorNotFoundError, match=r"assets_prior \(train one with .*scheduler_config.json"):
        load_prior("default")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PriorNotFoundError, match=r"missing scheduler config and unet weights.*unet/"):
        load_prior(str(tmp_path / "empty"))
    with pytest.raises(PriorNotFoundError, match="Hugging Face cache"):
        load_prior("no-such-user/no-such-model-xyz")


def test_unreadable_weights_give_clear_error(tmp_path):
    save_pixel_prior(tmp_path / "p", build_pixel_unet(TINY), TINY)
    (tmp_path / "p" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(PriorNotFoundError, match="could not read diffusion prior"):
        load_prior(str(tmp_path / "p"))


def _save_tiny_latent(folder):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
        norm_num_groups=8, layers_per_block=1, sample_size=32,
    )
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8,
    )
    vae.save_pretrained(folder / "vae")
    unet.save_pretrained(folder / "unet")
    DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(folder / "scheduler")


def test_latent_prior_end_to_end(tmp_path):
    _save_tiny_latent(tmp_path / "sd")
    prior = load_prior(str(tmp_path / "sd"))
    assert prior.kind == "latent" and prior.prompt_embeds.shape == (1, 77, 16)
    x = torch.rand(1, 3, 35, 45, generator=torch.Generator().manual_seed(0))  # VAE pads to 36x46
    z = prior.encode(x)
    assert z.shape == (1, 4, 18, 23)  # odd latent width: eps pads to the UNet's multiple and crops
    assert prior.eps(z, torch.tensor([100])).shape == z.shape
    assert prior.decode(z, (35, 45)).shape == (1, 3, 35, 45)
    cands = generate_candidates(x, prior, CandidateConfig(num_candidates=3, steps=2))
    assert [c.image.shape for c in cands] == [(1, 3, 35, 45)] * 3
    assert all(c.meta.prior_id.startswith("local:") and c.meta.weights_hash == prior.weights_hash for c in cands)
    out = reward_guided_denoise(x, cands[0].image, cands[1].image, prior, RefineConfig(steps=2))
    assert out.shape == (1, 3, 35, 45) and torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1


def test_user_pixel_checkpoint_single_folder_layout(tmp_path):
    """A plain diffusers DDPM folder (config.json + weights + scheduler_config.json at the root)."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    unet.save_pretrained(tmp_path / "ddpm")
    DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction").save_pretrained(tmp_path / "ddpm")
    prior = load_prior(str(tmp_path / "ddpm"))
    assert prior.kind == "pixel" and prior.pixel_unshuffle == 1 and prior.prediction_type == "v_prediction"
    assert next(prior.unet.parameters()).dtype == torch.float32
    x = torch.rand(1, 3, 15, 17)
    cands = generate_candidates(x, prior, CandidateConfig(num_candidates=2, steps=2))
    assert cands[0].image.shape == (1, 3, 15, 17) and cands[0].meta.prior_id == "local:ddpm"
