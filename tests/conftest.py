"""Fixtures shared by several test files: a tiny seeded pixel prior and a headless Debian Chromium."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from restoration.diffusion.pixel import PixelPriorConfig, build_pixel_unet, pixel_prior_from_unet

#: A tiny pixel prior (16/32 channels, pixel-unshuffle x2): fast on a CPU, untrained.
TINY_PRIOR = PixelPriorConfig(block_out_channels=(16, 32), norm_num_groups=8, pixel_unshuffle=2)
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def prior():
    """The tiny prior with seeded random weights, id `pixel:test`."""
    torch.manual_seed(0)
    return pixel_prior_from_unet(build_pixel_unet(TINY_PRIOR), TINY_PRIOR, prior_id="pixel:test")


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by Playwright (never a downloaded browser); skips when either is missing."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing: install the distribution's chromium package to run browser tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright for Python is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                    "--disable-component-update", "--no-first-run"])
        yield b
        b.close()
