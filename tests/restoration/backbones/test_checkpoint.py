import pickle

import pytest
import torch
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact
from spandrel.architectures.DnCNN import DnCNN

from restoration.backbones import create_restorer, weights_sha256
from restoration.backbones.checkpoint import SpandrelRestorer, load_state_dict


def _compact(upscale: int = 1) -> Compact:
    torch.manual_seed(0)
    model = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=upscale)
    with torch.no_grad():  # small weights: output = input + a small learned residual
        for p in model.parameters():
            p.mul_(0.1)
    return model.eval()


def _save(model: torch.nn.Module, path, fmt: str):
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        save_file(sd, str(path))
    else:
        torch.save(sd, str(path))
    return path


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_compact_loads_and_matches_direct_call(tmp_path, fmt):
    model = _compact()
    path = _save(model, tmp_path / f"tiny.{fmt}", fmt)
    restorer = create_restorer(str(path))
    assert isinstance(restorer, SpandrelRestorer)
    assert restorer.weights_hash == weights_sha256(path)
    assert restorer.describe()["architecture"] == "Compact"
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = restorer.restore(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    with torch.no_grad():
        ref = model(x).clamp(0, 1)
    assert torch.allclose(out, ref, atol=1e-5)


def test_tiled_checkpoint_close_to_untiled(tmp_path):
    path = _save(_compact(), tmp_path / "tiny.safetensors", "safetensors")
    x = torch.rand(1, 3, 80, 72, generator=torch.Generator().manual_seed(2))
    whole = SpandrelRestorer.from_file(path, tile=0).restore(x)
    tiled = SpandrelRestorer.from_file(path, tile=32, overlap=12).restore(x)
    assert tiled.shape == whole.shape
    assert float((tiled - whole).abs().max()) < 2e-2


def test_super_resolution_model_keeps_input_size(tmp_path):
    path = _save(_compact(upscale=2), tmp_path / "sr2.pth", "pth")
    restorer = create_restorer(str(path))
    assert restorer.scale == 2
    out = restorer.restore(torch.rand(2, 3, 32, 30))
    assert out.shape == (2, 3, 32, 30)


def test_grayscale_model_runs_per_channel(tmp_path):
    torch.manual_seed(0)
    model = DnCNN(in_nc=1, out_nc=1, nc=4, nb=9, act_mode="R")
    path = _save(model, tmp_path / "dncnn.pth", "pth")
    x = torch.rand(1, 3, 32, 32)
    out = create_restorer(str(path)).restore(x)
    with torch.no_grad():
        ref = model(x.reshape(3, 1, 32, 32)).clamp(0, 1).reshape(1, 3, 32, 32)
    assert torch.allclose(out, ref, atol=1e-5)


class Payload:
    """A pickled object whose unpickling would run code (writes a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class CustomConfig:
    def __init__(self):
        self.width = 8


def test_pickle_needing_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"weight": Payload(str(marker))}, f, protocol=2)
    with pytest.raises(ValueError, match="refusing to load .*evil.pth"):
        create_restorer(str(evil))
    assert not marker.exists()

    custom = tmp_path / "custom.pth"
    torch.save({"config": CustomConfig(), "body.0.weight": torch.zeros(1)}, str(custom))
    with pytest.raises(ValueError, match="refusing to load .*custom.pth.*safetensors"):
        load_state_dict(custom)


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        create_restorer(str(tmp_path / "missing.pth"))
    unknown = tmp_path / "unknown.safetensors"
    save_file({"foo.weight": torch.zeros(2, 2)}, str(unknown))
    with pytest.raises(ValueError, match="unrecognised architecture in .*unknown.safetensors.*supported"):
        create_restorer(str(unknown))
    bad_suffix = tmp_path / "model.onnx"
    bad_suffix.write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported file type '.onnx'"):
        load_state_dict(bad_suffix)
