import numpy as np
import pytest
import torch
from PIL import Image

from restoration.io import list_images, load_image, resize_short_side_center_crop, save_image


def test_load_composites_alpha_on_white_and_roundtrips(tmp_path):
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :4, 3] = 255  # left half opaque red, right half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    t = load_image(tmp_path / "a.png")
    assert t.shape == (1, 3, 6, 8) and t.dtype == torch.float32
    assert torch.allclose(t[0, :, 0, 0], torch.tensor([200 / 255, 0, 0]))
    assert torch.allclose(t[0, :, 0, 7], torch.ones(3))
    save_image(t, tmp_path / "out" / "b.png")
    assert torch.allclose(load_image(tmp_path / "out" / "b.png"), t, atol=1 / 255)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (8, 4), (10, 20, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").shape == (1, 3, 8, 4)


def test_resize_short_side_center_crop():
    x = torch.rand(2, 3, 40, 100)
    out = resize_short_side_center_crop(x, 20)
    assert out.shape == (2, 3, 20, 20)
    flat = torch.full((1, 3, 50, 30), 0.4)
    assert torch.allclose(resize_short_side_center_crop(flat, 64), torch.full((1, 3, 64, 64), 0.4), atol=1e-5)


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image file not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(FileNotFoundError, match="image directory not found"):
        list_images(tmp_path / "nope")
    with pytest.raises(ValueError, match="no images in"):
        list_images(tmp_path)
