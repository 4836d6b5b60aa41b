import pytest
import torch
from safetensors.torch import save_file

from restoration.backbones import (
    available_backbones,
    create_restorer,
    get_restorer,
    is_sipl_backbone,
    registry,
)
from restoration.backbones.classical import ClassicalRestorer


def test_available_backbones_lists_default_and_baselines():
    names = available_backbones()
    assert names[0] == "sipl"
    for name in ("sipl_ablation", "classical", "nlm", "wiener", "richardson_lucy", "bicubic", "dehaze"):
        assert name in names


def test_unknown_name_lists_valid_ones_and_suggests():
    with pytest.raises(ValueError) as err:
        create_restorer("wienr")
    msg = str(err.value)
    assert "did you mean 'wiener'" in msg
    assert "sipl, sipl_ablation, classical" in msg
    with pytest.raises(ValueError, match="valid names"):
        create_restorer("zzz")


def test_classical_names_and_options():
    r = create_restorer("classical", degradation="noise:15+blur:1.5")
    assert isinstance(r, ClassicalRestorer) and r.method == "auto"
    assert [op.method for op in r.plan] == ["wiener", "nlm"]
    assert create_restorer("RICHARDSON_LUCY").method == "richardson_lucy"
    assert create_restorer("nlm", rounds=None).method == "nlm"  # None options are ignored
    with pytest.raises(ValueError, match="do not take option.*rounds.*allowed: degradation"):
        create_restorer("nlm", rounds=2)


def test_get_restorer_caches_per_name_and_options():
    registry.clear_restorer_cache()
    a = get_restorer("nlm", degradation="noise:25")
    assert get_restorer("nlm", degradation="noise:25") is a
    assert get_restorer("nlm", degradation="noise:50") is not a
    assert get_restorer("dehaze") is not a


def test_missing_paths_and_shipped_weights(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        create_restorer(str(tmp_path / "nothing.safetensors"))
    monkeypatch.setitem(registry.SIPL_WEIGHTS, "sipl", tmp_path / "sipl.safetensors")
    with pytest.raises(FileNotFoundError, match="shipped weights for backbone 'sipl'"):
        create_restorer("sipl")


def test_sipl_metadata_routes_to_sipl_loader(tmp_path, monkeypatch):
    sipl_file = tmp_path / "mine.safetensors"
    save_file({"w": torch.zeros(1)}, str(sipl_file), metadata={"arch": "sipl"})
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(1)}, str(other))
    assert registry.is_sipl_checkpoint(sipl_file) and is_sipl_backbone(str(sipl_file))
    assert not registry.is_sipl_checkpoint(other) and not is_sipl_backbone(str(other))
    assert is_sipl_backbone("sipl") and not is_sipl_backbone("nlm")

    calls = []
    monkeypatch.setattr(
        registry, "_load_sipl", lambda path, device, options: calls.append((path, options)) or "ok"
    )
    assert create_restorer(str(sipl_file), rounds=1) == "ok"
    assert calls == [(sipl_file, {"rounds": 1})]


@pytest.mark.skipif(
    not registry.SIPL_WEIGHTS["sipl"].is_file(), reason="shipped SIPL weights not present in assets/"
)
def test_shipped_sipl_loads_through_registry():
    pytest.importorskip("restoration.backbones.sipl")
    registry.clear_restorer_cache()
    r = get_restorer("sipl")
    assert r.name == "sipl" and len(r.weights_hash) == 64
    assert get_restorer("sipl") is r
    x = torch.rand(1, 3, 36, 28, generator=torch.Generator().manual_seed(0))
    out = r.restore(x)
    assert out.shape == x.shape and 0 <= float(out.min()) <= float(out.max()) <= 1
    assert r.restore_single_pass(x).shape == x.shape


def test_sipl_weights_file_loads_through_registry(tmp_path):
    sipl = pytest.importorskip("restoration.backbones.sipl")
    from restoration.backbones.sipl_net import SIPLConfig, SIPLNet

    torch.manual_seed(0)
    net = SIPLNet(SIPLConfig(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, dictionary_tokens=4))
    path = tmp_path / "tiny_sipl.safetensors"
    sipl.save_weights(net, path)
    assert is_sipl_backbone(str(path))
    r = create_restorer(str(path), rounds=1)
    assert isinstance(r, sipl.SIPLRestorer) and r.rounds == 1
    assert r.restore_single_pass(torch.rand(1, 3, 24, 24)).shape == (1, 3, 24, 24)
    with pytest.raises(ValueError, match="SIPL backbones do not take option.*overlap"):
        create_restorer(str(path), overlap=8)


def test_told_haze_a_sipl_backbone_ends_with_dehazing(tmp_path, monkeypatch):
    """`degradation=SPEC` (as the classical baselines are told): a spec with haze makes a SIPL backbone, shipped name
    or file, end with dark channel prior dehazing at `TOLD_DEHAZE`; other specs, or none, change nothing."""
    sipl = pytest.importorskip("restoration.backbones.sipl")
    from restoration.backbones.classical import estimate_haze
    from restoration.backbones.steps import TOLD_DEHAZE, ToldDegradation
    from tests.restoration.backbones.test_sipl import tiny_net

    path = tmp_path / "blind.safetensors"
    sipl.save_weights(tiny_net(), path)
    monkeypatch.setitem(registry.SIPL_WEIGHTS, "sipl", path)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.4
    blind = create_restorer("sipl", post=None)
    assert not isinstance(blind, ToldDegradation)
    assert blind.describe()["told"] is None and blind.describe()["told_dehaze"] is None
    for spec in ("rain+haze", "haze:1.5,0.8+noise:10"):
        told = create_restorer("sipl", post=None, degradation=spec)
        assert told.describe()["told"] == spec and told.describe()["told_dehaze"] == {"omega": 0.75, "t0": 0.4}
        assert told.name == "sipl" and told.weights_hash == blind.weights_hash
        y = blind.restore(x)
        assert torch.allclose(told.restore(x), estimate_haze(y).dehaze(y, 0.75, 0.4), atol=1e-6)
        assert not torch.allclose(told.restore(x), y, atol=1e-3)
        y = blind.restore_single_pass(x)
        assert torch.allclose(told.restore_single_pass(x), estimate_haze(y).dehaze(y, 0.75, 0.4), atol=1e-6)
    for spec in ("noise:25", "none"):
        plain = create_restorer("sipl", post=None, degradation=spec)
        assert plain.describe()["told"] == spec and plain.describe()["told_dehaze"] is None
        assert torch.equal(plain.restore(x), blind.restore(x))
    with pytest.raises(ValueError, match="unknown degradation 'hazee'"):
        create_restorer("sipl", degradation="hazee")
    by_path = create_restorer(str(path), degradation="haze")  # a file by path: the same
    assert by_path.dehaze == TOLD_DEHAZE
    with pytest.raises(ValueError, match="unknown degradation"):
        create_restorer(str(path), degradation="fog")
