"""Geometric self-ensemble: exact for equivariant functions, averages a non-equivariant one, the step around SIPL."""
from __future__ import annotations

import pytest
import torch

from restoration.backbones import create_restorer
from restoration.backbones.sipl import SIPLRestorer
from restoration.backbones.sipl_net import self_refine
from restoration.backbones.steps import SelfEnsemble, self_ensemble
from tests.restoration.backbones.test_sipl import tiny_net


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_equivariant_function_is_unchanged(n):
    x = torch.rand(2, 3, 24, 40)  # not square: rotations swap the sides and must swap them back
    assert torch.allclose(self_ensemble(lambda t: t * 2 + 1, x, n), x * 2 + 1, atol=1e-6)


def test_averages_the_copies_of_a_non_equivariant_function():
    # f adds a ramp along the width: under the horizontal flip it becomes the reversed ramp, so identity +
    # flip averages to the ramp's mean (a constant) while the image itself passes through unchanged
    ramp = torch.linspace(0, 1, 16).view(1, 1, 1, 16)
    x = torch.rand(1, 3, 8, 16)
    once = self_ensemble(lambda t: t + ramp, x, 1)
    twice = self_ensemble(lambda t: t + ramp, x, 2)
    assert torch.allclose(once, x + ramp)
    assert torch.allclose(twice, x + 0.5, atol=1e-6)


@pytest.mark.parametrize("bad", [0, 3, 16, 2.0, True, "2"])
def test_bad_sizes_are_clear_errors(bad):
    with pytest.raises(ValueError, match="ensemble must be one of 1, 2, 4, 8"):
        self_ensemble(lambda t: t, torch.rand(1, 3, 8, 8), bad)


def test_sipl_restorer_ensemble(tmp_path):
    from restoration.backbones.sipl import save_weights

    x = torch.rand(1, 3, 32, 48)
    inner = SIPLRestorer(tiny_net(), rounds=1)
    plain = inner.restore(x)
    r = SelfEnsemble(inner, 4)
    assert r.describe()["ensemble"] == 4 and inner.describe()["ensemble"] == 1
    y = r.restore(x)
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    assert (y - plain).abs().max() > 1e-5  # an untrained net is far from equivariant: the copies differ
    net = tiny_net()
    with torch.no_grad():  # the mean of the four restored copies (identity, flip, quarter turn, both)
        copies = [self_refine(net, x, 1), self_refine(net, x.flip(-1), 1).flip(-1),
                  torch.rot90(self_refine(net, torch.rot90(x, 1, (-2, -1)), 1), -1, (-2, -1)),
                  torch.rot90(self_refine(net, torch.rot90(x.flip(-1), 1, (-2, -1)), 1), -1, (-2, -1)).flip(-1)]
    assert torch.allclose(y, sum(c.clamp(0, 1) for c in copies) / 4, atol=1e-5)
    assert torch.allclose(r.restore_single_pass(x), self_ensemble(inner.restore_single_pass, x, 4))
    with pytest.raises(ValueError, match="ensemble must be one of"):
        SelfEnsemble(inner, 3)
    save_weights(tiny_net(), tmp_path / "tiny.safetensors")
    by_option = create_restorer(str(tmp_path / "tiny.safetensors"), ensemble=2)
    assert isinstance(by_option, SelfEnsemble) and by_option.describe()["ensemble"] == 2
    assert not isinstance(create_restorer(str(tmp_path / "tiny.safetensors"), ensemble=1), SelfEnsemble)
    with pytest.raises(ValueError, match="ensemble must be one of"):
        create_restorer(str(tmp_path / "tiny.safetensors"), ensemble=3)


def test_registry_rejects_the_option_for_classical_backbones():
    with pytest.raises(ValueError, match="do not take option"):
        create_restorer("nlm", ensemble=2)
