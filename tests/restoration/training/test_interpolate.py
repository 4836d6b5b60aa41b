"""Weight-space ensemble of two SIPL weight files: the line between them, and the command that writes it."""
from __future__ import annotations

import json

import pytest
import torch

from restoration.backbones.hashing import weights_sha256
from restoration.backbones.sipl import load_network, read_metadata, save_weights
from restoration.backbones.sipl_net import SIPLConfig, SIPLNet
from restoration.training.interpolate import main, weight_space_ensemble

TINY = SIPLConfig(dim=8, num_blocks=(1, 1, 1, 1), heads=(1, 2, 2, 4), prompt_len=2, prompt_size=4,
                  dictionary_tokens=4)


def net(seed: int, config: SIPLConfig = TINY) -> SIPLNet:
    torch.manual_seed(seed)
    n = SIPLNet(config)
    for pf in n.proxy_fusion or []:
        torch.nn.init.normal_(pf.privileged_dictionary)
    return n.eval()


def test_ends_and_middle_of_the_line():
    a, b = net(0), net(1)
    for alpha, want in ((0.0, a), (1.0, b)):
        got = weight_space_ensemble(a, b, alpha)
        for (k, x), y in zip(want.state_dict().items(), got.state_dict().values()):
            assert torch.allclose(x, y, atol=1e-7), k
    mid = weight_space_ensemble(a, b, 0.25).state_dict()
    for k, x in a.state_dict().items():
        assert torch.allclose(mid[k], 0.75 * x + 0.25 * b.state_dict()[k], atol=1e-6), k
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():  # a real mix: neither end's output
        y = weight_space_ensemble(a, b, 0.5)(x)
        assert not torch.allclose(y, a(x)) and not torch.allclose(y, b(x))


def test_refuses_bad_alpha_and_different_networks():
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        weight_space_ensemble(net(0), net(1), 1.5)
    other = net(1, SIPLConfig(**{**TINY.to_dict(), "proxy_fusion": False}))
    with pytest.raises(ValueError, match="differ in config.*proxy_fusion"):
        weight_space_ensemble(net(0), other, 0.5)


def test_command_writes_the_mix_with_its_parents(tmp_path, capsys):
    save_weights(net(0), tmp_path / "a.safetensors", {"steps": 10})
    save_weights(net(1), tmp_path / "b.safetensors", {"steps": 20, "init": "a.safetensors"})
    assert main([str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--alpha", "0.5",
                 "--out", str(tmp_path / "c.safetensors")]) == 0
    facts = json.loads(read_metadata(tmp_path / "c.safetensors")["facts"])["weight_space_ensemble"]
    assert facts["alpha"] == 0.5 and facts["second"]["facts"]["steps"] == 20
    assert facts["first"]["sha256"] == weights_sha256(tmp_path / "a.safetensors")
    a, b, c = (load_network(tmp_path / f"{n}.safetensors") for n in "abc")
    k = "patch_embed.weight"
    assert torch.allclose(c.state_dict()[k], (a.state_dict()[k] + b.state_dict()[k]) / 2, atol=1e-3)
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "a.safetensors"), str(tmp_path / "missing.safetensors"), "--alpha", "0.5",
              "--out", str(tmp_path / "d.safetensors")])
    assert e.value.code == 2 and "not found" in capsys.readouterr().err
    assert not (tmp_path / "d.safetensors").exists()
