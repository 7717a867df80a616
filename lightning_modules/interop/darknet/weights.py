"""Read and write Darknet `.weights` files for a `DarknetModel`.

Layout (little-endian): int32 major, minor, revision; `seen` images as int64 when
major * 10 + minor >= 2 (int32 before); then float32 arrays, layer by layer in cfg order:
- convolutional: BN beta, gamma, running mean, running var (batch_normalize) or the bias; then kernels
  [filters, c / groups, k, k];
- connected: bias, weights [out, in] (stored [in, out] when major or minor > 1000), then with
  batch_normalize gamma, running mean, running var;
- local: bias [filters, out_h, out_w], then weights [location, filter, c * k * k].
Other layers hold no weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lightning_modules.errors import DataError
from lightning_modules.interop.darknet.layers import ConnectedBlock, ConvBlock, LocalBlock
from lightning_modules.interop.darknet.model import DarknetModel


def _layer_tensors(layer: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) in file order; tensors are the module's own (written to in place on load)."""
    if isinstance(layer, ConvBlock):
        if layer.bn is not None:
            bn = layer.bn
            head = [
                ("bn beta", bn.bias),
                ("bn gamma", bn.weight),
                ("bn mean", bn.running_mean),
                ("bn var", bn.running_var),
            ]
        else:
            head = [("bias", layer.conv.bias)]
        return [*head, ("kernels", layer.conv.weight)]
    if isinstance(layer, ConnectedBlock):
        if layer.bn is not None:
            bn = layer.bn
            return [
                ("bias", bn.bias),
                ("weights", layer.linear.weight),
                ("bn gamma", bn.weight),
                ("bn mean", bn.running_mean),
                ("bn var", bn.running_var),
            ]
        return [("bias", layer.linear.bias), ("weights", layer.linear.weight)]
    if isinstance(layer, LocalBlock):
        return [("bias", layer.bias), ("weights", layer.weight)]
    return []


def _transposed(header: dict[str, int]) -> bool:
    # Darknet: connected weights were stored transposed by versions with major or minor > 1000.
    return header["major"] > 1000 or header["minor"] > 1000


def _seen_is_64(major: int, minor: int) -> bool:
    return major * 10 + minor >= 2 and major < 1000 and minor < 1000


def read_header(path: str | Path) -> tuple[dict[str, int], int]:
    """The header dict and its size in bytes."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(20)
    if len(raw) < 12:
        raise DataError(path, f"not a Darknet weights file: {len(raw)} bytes, the header alone needs 16 or 20")
    major, minor, revision = (int(v) for v in np.frombuffer(raw[:12], "<i4"))
    wide = _seen_is_64(major, minor)
    need = 20 if wide else 16
    if len(raw) < need:
        raise DataError(path, f"truncated header: {len(raw)} bytes, {need} expected")
    seen = int(np.frombuffer(raw[12:need], "<i8" if wide else "<i4")[0])
    return {"major": major, "minor": minor, "revision": revision, "seen": seen}, need


def load_weights(model: DarknetModel, path: str | Path, *, upto: int | None = None) -> dict[str, int]:
    """Load a `.weights` file into `model` (layers with index < `upto`, all by default; Darknet's
    partial backbone files such as `darknet53.conv.74` hold exactly the first 74 layers). The file
    must hold exactly the floats those layers need. Returns the header, also kept as `model.header`."""
    path = Path(path)
    header, offset = read_header(path)
    data = np.fromfile(path, dtype="<f4", offset=offset)
    if (path.stat().st_size - offset) % 4:
        raise DataError(path, f"{path.stat().st_size - offset} bytes after the header is not a whole number of floats")
    pos = 0
    last = len(model.layers) if upto is None else upto
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            if i >= last:
                break
            s = model.infos[i].section
            for name, t in _layer_tensors(layer):
                n = t.numel()
                if pos + n > data.size:
                    raise DataError(
                        path,
                        f"ends too early: layer {i} ({s.type}, cfg line {s.line}) {name} needs "
                        f"{n} floats, only {data.size - pos} left (file has {data.size} floats after the "
                        f"header, the model needs {count_floats(model, upto)})",
                    )
                arr = data[pos : pos + n]
                if name == "weights" and isinstance(layer, ConnectedBlock) and _transposed(header):
                    arr = arr.reshape(t.shape[1], t.shape[0]).T
                t.copy_(torch.from_numpy(np.ascontiguousarray(arr)).reshape(t.shape))
                pos += n
    if pos != data.size:
        raise DataError(
            path,
            f"{data.size - pos} floats left after the last layer: the file has {data.size} "
            f"floats after the header, the cfg needs {pos} (wrong cfg for these weights?)",
        )
    model.header = dict(header)
    return header


def save_weights(
    model: DarknetModel, path: str | Path, *, upto: int | None = None, header: dict[str, int] | None = None
) -> int:
    """Write `model` (layers < `upto`) as Darknet `.weights`; header defaults to `model.header`.
    Returns the number of floats written."""
    header = dict(model.header if header is None else header)
    major, minor = header["major"], header["minor"]
    parts = [
        np.array([major, minor, header["revision"]], "<i4").tobytes(),
        np.array([header["seen"]], "<i8" if _seen_is_64(major, minor) else "<i4").tobytes(),
    ]
    total = 0
    last = len(model.layers) if upto is None else upto
    for i, layer in enumerate(model.layers):
        if i >= last:
            break
        for name, t in _layer_tensors(layer):
            arr = t.detach().to("cpu", torch.float32).numpy()
            if name == "weights" and isinstance(layer, ConnectedBlock) and _transposed(header):
                arr = arr.T
            parts.append(np.ascontiguousarray(arr, "<f4").tobytes())
            total += arr.size
    Path(path).write_bytes(b"".join(parts))
    return total


def count_floats(model: DarknetModel, upto: int | None = None) -> int:
    """Floats a `.weights` file for `model` holds after the header (parameters + BN running stats)."""
    last = len(model.layers) if upto is None else upto
    return sum(t.numel() for i, layer in enumerate(model.layers) if i < last for _, t in _layer_tensors(layer))
