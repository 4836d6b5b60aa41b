"""ncnn model files (`.param` text + `.bin` weights) -> PyTorch tensors, and the RRDBNet (ESRGAN) state dict they hold.

The `.param` file lists the layers in network order (ncnn's own format: magic 7767517, "layers blobs", then one line
per layer: type, name, input/output counts and blobs, `key=value` parameters, `-233xx=n,v1,...` arrays for key xx).
The `.bin` file is the weights of the weight-bearing layers in that order, nothing else:

- Convolution: a 4-byte storage tag, then `6=` (weight_data_size) weights laid out (out, in, kh, kw) as in PyTorch,
  then, when `5=1`, `0=` (num_output) float32 biases. Tag 0x01306B47 means float16 weights (padded to 4 bytes),
  tag 0 float32; the quantized storages are refused.
- PReLU: `0=` (num_slope) float32 slopes, no tag.

`read_ncnn` checks that the weights use every byte of the file. Pure functions; no ncnn runtime is needed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

PARAM_MAGIC = 7767517
TAG_FP16 = 0x01306B47
TAG_FP32 = 0
#: Layer types that carry no weights (the graph's wiring and parameter-free operations).
WEIGHTLESS = frozenset({"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle", "ReLU",
                        "Sigmoid", "Crop", "Padding", "Reshape", "Permute", "Noop"})
#: Weight-bearing layer types this reader understands.
WEIGHTED = frozenset({"Convolution", "PReLU"})
_ARRAY_KEY = 23300  # ncnn writes array parameter k as -(23300 + k)


class NcnnFormatError(ValueError):
    """A .param/.bin pair that is not what it should be (names the file and what was wrong)."""


@dataclass
class NcnnLayer:
    """One layer of the .param file: type, name, parameters by ncnn key, and its weights (float32 tensors)."""

    kind: str
    name: str
    params: dict[int, int | float | list[float]]
    weights: dict[str, torch.Tensor] = field(default_factory=dict)

    def param(self, key: int, default: int | float = 0) -> int | float:
        value = self.params.get(key, default)
        if isinstance(value, list):
            raise NcnnFormatError(f"layer {self.name}: parameter {key} is an array, expected a number")
        return value


def _number(text: str) -> int | float:
    return float(text) if re.search(r"[.eEn]", text) else int(text)


def parse_param(text: str, source: str = "<param>") -> list[NcnnLayer]:
    """The layers of an ncnn .param text, in network order (weights empty); NcnnFormatError if malformed."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if len(lines) < 2 or lines[0] != [str(PARAM_MAGIC)]:
        raise NcnnFormatError(f"{source}: not an ncnn .param file (first line must be {PARAM_MAGIC})")
    try:
        layer_count, _blob_count = (int(v) for v in lines[1])
    except ValueError:
        raise NcnnFormatError(f"{source}: line 2 must be 'layer_count blob_count', got {' '.join(lines[1])!r}") from None
    if layer_count != len(lines) - 2:
        raise NcnnFormatError(f"{source}: header says {layer_count} layers, the file lists {len(lines) - 2}")
    layers = []
    for number, parts in enumerate(lines[2:], start=3):
        try:
            kind, name, n_in, n_out = parts[0], parts[1], int(parts[2]), int(parts[3])
            params: dict[int, int | float | list[float]] = {}
            for item in parts[4 + n_in + n_out:]:
                key_text, _, value = item.partition("=")
                key = int(key_text)
                if key <= -_ARRAY_KEY:
                    count, *values = value.split(",")
                    if int(count) != len(values):
                        raise ValueError(f"array {key} says {count} values, has {len(values)}")
                    params[-key - _ARRAY_KEY] = [float(v) for v in values]
                else:
                    params[key] = _number(value)
        except (IndexError, ValueError) as exc:
            raise NcnnFormatError(f"{source} line {number}: cannot parse layer ({exc})") from None
        layers.append(NcnnLayer(kind, name, params))
    return layers


def _take(data: memoryview, offset: int, count: int, dtype: str, what: str) -> tuple[np.ndarray, int]:
    size = count * np.dtype(dtype).itemsize
    if offset + size > len(data):
        raise NcnnFormatError(f"{what}: needs {size} bytes at offset {offset}, the file ends at {len(data)}")
    return np.frombuffer(data[offset:offset + size], dtype=np.dtype(dtype).newbyteorder("<")), offset + size


def _read_convolution(layer: NcnnLayer, data: memoryview, offset: int, source: str) -> int:
    out, size = int(layer.param(0)), int(layer.param(6))
    kw = int(layer.param(1))
    kh = int(layer.param(11, kw))
    if out <= 0 or kw <= 0 or size <= 0 or size % (out * kh * kw):
        raise NcnnFormatError(f"{source}: layer {layer.name}: weight_data_size {size} is not "
                              f"num_output {out} x in x {kh} x {kw}")
    if layer.param(8) or int(layer.param(7, 1)) != 1:
        raise NcnnFormatError(f"{source}: layer {layer.name}: int8 or grouped convolutions are not supported")
    what = f"{source}: layer {layer.name}"
    (tag,), offset = _take(data, offset, 1, "u4", what)
    if tag == TAG_FP16:
        weight, offset = _take(data, offset, size, "f2", what)
        offset += (-size * 2) % 4  # fp16 weights are padded to a multiple of 4 bytes
    elif tag == TAG_FP32:
        weight, offset = _take(data, offset, size, "f4", what)
    else:
        raise NcnnFormatError(f"{what}: storage tag 0x{int(tag):08X} at offset {offset - 4} is not float16 "
                              f"(0x{TAG_FP16:08X}) or float32 (0); quantized weights are not supported")
    layer.weights["weight"] = torch.from_numpy(weight.astype(np.float32)).reshape(out, size // (out * kh * kw), kh, kw)
    if layer.param(5):
        bias, offset = _take(data, offset, out, "f4", what)
        layer.weights["bias"] = torch.from_numpy(bias.astype(np.float32))
    return offset


def read_ncnn(param_path: str | Path, bin_path: str | Path) -> list[NcnnLayer]:
    """Layers of an ncnn model with their weights (float32), in network order.

    NcnnFormatError (naming the file) for an unknown weight-bearing layer type, an unsupported storage tag, a file
    too short for its layers, or bytes left over after the last layer.
    """
    param_path, bin_path = Path(param_path), Path(bin_path)
    layers = parse_param(param_path.read_text(encoding="ascii", errors="replace"), str(param_path))
    data = memoryview(bin_path.read_bytes())
    offset = 0
    for layer in layers:
        if layer.kind == "Convolution":
            offset = _read_convolution(layer, data, offset, str(bin_path))
        elif layer.kind == "PReLU":
            slope, offset = _take(data, offset, int(layer.param(0)), "f4", f"{bin_path}: layer {layer.name}")
            layer.weights["weight"] = torch.from_numpy(slope.astype(np.float32))
        elif layer.kind not in WEIGHTLESS:
            raise NcnnFormatError(f"{param_path}: layer {layer.name} has type {layer.kind}, which this reader does "
                                  f"not know (weights: {', '.join(sorted(WEIGHTED))}; "
                                  f"without weights: {', '.join(sorted(WEIGHTLESS))})")
    if offset != len(data):
        raise NcnnFormatError(f"{bin_path}: the layers use {offset} bytes, the file has {len(data)} "
                              f"({len(data) - offset} left over): it does not belong to {param_path.name}")
    return layers


def _check_conv(layer: NcnnLayer, name: str, out: int, cin: int, leaky: bool) -> None:
    w = layer.weights["weight"]
    if tuple(w.shape) != (out, cin, 3, 3) or "bias" not in layer.weights:
        raise NcnnFormatError(f"layer {layer.name} ({name}): expected a 3x3 convolution {cin}->{out} with bias, got "
                              f"weights {tuple(w.shape)}{'' if 'bias' in layer.weights else ' without bias'}")
    stride, dilation, pad = int(layer.param(3, 1)), int(layer.param(2, 1)), int(layer.param(4, 0))
    if (stride, dilation, pad) != (1, 1, 1):
        raise NcnnFormatError(f"layer {layer.name} ({name}): stride {stride}, dilation {dilation}, pad {pad}; "
                              "RRDBNet needs 1, 1, 1")
    activation = int(layer.param(9, 0))
    slope = layer.params.get(10, [])
    if leaky != (activation == 2 and slope == [0.2]):
        want = "LeakyReLU(0.2)" if leaky else "no activation"
        raise NcnnFormatError(f"layer {layer.name} ({name}): activation {activation} {slope}, RRDBNet has {want}")


def rrdbnet_state_dict(layers: list[NcnnLayer]) -> dict[str, torch.Tensor]:
    """The RRDBNet (ESRGAN, BasicSR key names) state dict of an ncnn export, checked layer by layer.

    Network order: conv_first; per block, three dense blocks of five convolutions (conv1-4 with LeakyReLU 0.2);
    conv_body; per nearest x2 Interp, conv_up{i} (LeakyReLU); conv_hr (LeakyReLU); conv_last. The layer shapes,
    activations and the count of convolutions must all fit; NcnnFormatError says which layer does not.
    """
    convs = [layer for layer in layers if layer.kind == "Convolution"]
    interps = [layer for layer in layers if layer.kind == "Interp"]
    if any(layer.kind not in WEIGHTLESS | {"Convolution"} for layer in layers):
        raise NcnnFormatError("not an RRDBNet: it has layers other than convolutions and wiring")
    n_up = len(interps)
    if any(int(i.param(0)) != 1 or i.params.get(1) != 2.0 or i.params.get(2) != 2.0 for i in interps):
        raise NcnnFormatError("not an RRDBNet: its upsampling layers are not nearest x2 Interp")
    blocks, rest = divmod(len(convs) - 4 - n_up, 15)
    if rest or blocks < 1 or n_up < 1:
        raise NcnnFormatError(f"not an RRDBNet: {len(convs)} convolutions and {n_up} x2 upsamplings do not make "
                              "conv_first + 15 per block + conv_body + one per upsampling + conv_hr + conv_last")
    nf = convs[0].weights["weight"].shape[0]
    gc = convs[1].weights["weight"].shape[0]
    names: list[tuple[str, int, int, bool]] = [("conv_first", nf, 3, False)]
    for b in range(blocks):
        for r in range(1, 4):
            names += [(f"body.{b}.rdb{r}.conv{c}", gc, nf + (c - 1) * gc, True) for c in range(1, 5)]
            names.append((f"body.{b}.rdb{r}.conv5", nf, nf + 4 * gc, False))
    names.append(("conv_body", nf, nf, False))
    names += [(f"conv_up{i}", nf, nf, True) for i in range(1, n_up + 1)]
    names += [("conv_hr", nf, nf, True), ("conv_last", 3, nf, False)]
    # each conv_up follows its Interp: the order the .param file lists them in must say so
    order = [layer.name for layer in layers if layer.kind in ("Convolution", "Interp")]
    for i, interp in enumerate(interps):
        after = order[order.index(interp.name) + 1]
        if after != convs[len(names) - 2 - n_up + i].name:
            raise NcnnFormatError(f"not an RRDBNet: Interp {interp.name} is not followed by conv_up{i + 1}")
    state = {}
    for layer, (name, out, cin, leaky) in zip(convs, names):
        _check_conv(layer, name, out, cin, leaky)
        state[f"{name}.weight"] = layer.weights["weight"]
        state[f"{name}.bias"] = layer.weights["bias"]
    return state
