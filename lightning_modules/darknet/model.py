"""Build a PyTorch model from a Darknet cfg, and count parameters and BFLOPs the way Darknet does.

Shapes are inferred layer by layer without allocating anything (`infer_layers`), so `summary` of a
600 MB network costs nothing. `DarknetModel` follows the cfg literally: the same layer indices
(route/shortcut refer to them), Darknet's padding rules for maxpool, its element order for reorg, its
shortcut between maps of different sizes, and its crop layer's [0, 1] -> [-1, 1] remap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.darknet import cfg as C
from lightning_modules.darknet.cfg import DarknetCfg, Section

Shape = tuple[int, int, int]  # (channels, height, width)


@dataclass
class LayerInfo:
    """What Darknet prints for a layer, plus where its inputs come from."""

    index: int
    section: Section
    in_shape: Shape
    out_shape: Shape
    params: int = 0
    bflops: float = 0.0
    sources: tuple[int, ...] = ()  # route/shortcut inputs (absolute layer indices)

    @property
    def type(self) -> str:
        return self.section.type


def _as_hw(size: int | tuple[int, int] | None, net: C.Net) -> tuple[int, int]:
    if size is None:
        return net.height, net.width
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def _index(section: Section, i: int, ref: int) -> int:
    """Darknet's indexing: negative is relative to the current layer, otherwise absolute."""
    j = i + ref if ref < 0 else ref
    if not 0 <= j < i:
        raise section.fail(f"layer {i} refers to layer {ref} (-> {j}), which is not an earlier layer")
    return j


def _conv_out(n: int, size: int, stride: int, pad: int, dilation: int = 1) -> int:
    return (n + 2 * pad - dilation * (size - 1) - 1) // stride + 1


def _infer_one(s: Section, i: int, shape: Shape, prev: list[LayerInfo]) -> LayerInfo:
    c, h, w = shape
    info = LayerInfo(i, s, shape, shape)
    if isinstance(s, C.Convolutional):
        if c % s.groups or s.filters % s.groups:
            raise s.fail(f"channels {c} and filters {s.filters} must be divisible by groups={s.groups}")
        oh = _conv_out(h, s.size, s.stride_y, s.padding, s.dilation)
        ow = _conv_out(w, s.size, s.stride_x, s.padding, s.dilation)
        nweights = (c // s.groups) * s.filters * s.size * s.size
        info.out_shape = (s.filters, oh, ow)
        info.params = nweights + (2 if s.batch_normalize else 1) * s.filters
        info.bflops = 2.0 * nweights * oh * ow / 1e9
    elif isinstance(s, C.Local):
        pad = s.size // 2 if s.pad else 0
        oh, ow = _conv_out(h, s.size, s.stride, pad), _conv_out(w, s.size, s.stride, pad)
        nweights = c * s.filters * s.size * s.size * oh * ow  # one kernel per output location
        info.out_shape = (s.filters, oh, ow)
        info.params = nweights + s.filters * oh * ow
        info.bflops = 2.0 * nweights / 1e9
    elif isinstance(s, C.Connected):
        inputs = c * h * w
        info.out_shape = (s.output, 1, 1)
        info.params = inputs * s.output + s.output + (s.output if s.batch_normalize else 0)
        info.bflops = 2.0 * inputs * s.output / 1e9
    elif isinstance(s, C.Maxpool):
        info.out_shape = (c, (h + s.padding - s.size) // s.stride_y + 1, (w + s.padding - s.size) // s.stride_x + 1)
    elif isinstance(s, C.Avgpool):
        info.out_shape = (c, 1, 1)
    elif isinstance(s, C.Route):
        if not s.layers:
            raise s.fail("route without layers=")
        info.sources = tuple(_index(s, i, r) for r in s.layers)
        shapes = [prev[j].out_shape for j in info.sources]
        if len({sh[1:] for sh in shapes}) != 1:
            raise s.fail(f"layer {i} routes maps of different sizes: {shapes}")
        if any(sh[0] % s.groups for sh in shapes) or not 0 <= s.group_id < s.groups:
            raise s.fail(f"groups={s.groups} group_id={s.group_id} do not divide the routed channels {shapes}")
        info.in_shape = shapes[0]
        info.out_shape = (sum(sh[0] for sh in shapes) // s.groups, *shapes[0][1:])
    elif isinstance(s, C.Shortcut):
        if len(s.from_) != 1:
            raise s.fail("shortcut needs exactly one from= layer")
        info.sources = (_index(s, i, s.from_[0]),)
        _check_shortcut(s, prev[info.sources[0]].out_shape, shape)
    elif isinstance(s, C.Upsample):
        k = s.stride
        info.out_shape = (c, h * k, w * k) if k > 0 else (c, h // -k, w // -k)
    elif isinstance(s, C.Reorg):
        k = s.stride
        if s.reverse:
            if c % (k * k):
                raise s.fail(f"reverse reorg needs channels ({c}) divisible by stride^2")
            info.out_shape = (c // (k * k), h * k, w * k)
        else:
            if h % k or w % k:
                raise s.fail(f"reorg stride {k} does not divide the input size {h}x{w}")
            info.out_shape = (c * k * k, h // k, w // k)
    elif isinstance(s, C.Crop):
        info.out_shape = (c, min(s.crop_height, h), min(s.crop_width, w))
    elif isinstance(s, C.Softmax):
        if (c * h * w) % s.groups:
            raise s.fail(f"groups={s.groups} does not divide the {c * h * w} inputs")
        if s.tree:
            raise s.fail("hierarchical (tree) softmax is not supported")
    elif isinstance(s, C.Yolo):
        mask = s.mask or list(range(s.num))
        if c != len(mask) * (s.classes + 5):
            raise s.fail(
                f"the layer before has {c} filters; {len(mask)} masks x (classes {s.classes} + 5) "
                f"= {len(mask) * (s.classes + 5)} expected"
            )
        if len(s.anchors) < 2 * s.num or max(mask, default=0) >= len(s.anchors) // 2:
            raise s.fail(f"mask {mask} / num {s.num} do not match the {len(s.anchors) // 2} anchors")
    elif isinstance(s, C.Region):
        if c != s.num * (s.coords + 1 + s.classes):
            raise s.fail(
                f"the layer before has {c} filters; num {s.num} x (coords {s.coords} + 1 + classes "
                f"{s.classes}) = {s.num * (s.coords + 1 + s.classes)} expected"
            )
    elif isinstance(s, C.Detection):
        want = s.side * s.side * ((1 + s.coords) * s.num + s.classes)
        if c * h * w != want:
            raise s.fail(f"{c * h * w} inputs; side^2 x ((1 + coords) x num + classes) = {want} expected")
    return info


def _check_shortcut(s: Section, add: Shape, out: Shape) -> None:
    # Darknet adds maps of different sizes by striding/sampling; the ratios must be whole numbers.
    (_, h1, w1), (_, h2, w2) = add, out
    big, small = (w1, w2) if w1 >= w2 else (w2, w1)
    bigh, smallh = (h1, h2) if w1 >= w2 else (h2, h1)
    if small == 0 or big % small or bigh % smallh or big // small != bigh // smallh:
        raise s.fail(f"cannot add a {add} map to a {out} map")


def infer_layers(cfg: DarknetCfg, size: int | tuple[int, int] | None = None) -> list[LayerInfo]:
    """Shapes, parameters and BFLOPs of every layer at input `size` (default: the cfg's)."""
    h, w = _as_hw(size, cfg.net)
    if h <= 0 or w <= 0 or cfg.net.channels <= 0:
        raise C.DataError(f"{cfg.path}:{cfg.net.line}", "[net] needs width, height and channels (or pass size)")
    shape: Shape = (cfg.net.channels, h, w)
    infos: list[LayerInfo] = []
    for i, s in enumerate(cfg.layers):
        info = _infer_one(s, i, shape, infos)
        if min(info.out_shape) <= 0:
            raise s.fail(
                f"layer {i} gets input {info.in_shape} and would output {info.out_shape}; "
                f"input size {h}x{w} is too small for this cfg"
            )
        infos.append(info)
        shape = info.out_shape
    return infos


def _load(cfg: str | Path | DarknetCfg) -> DarknetCfg:
    return cfg if isinstance(cfg, DarknetCfg) else C.parse_cfg(cfg)


def summary(cfg_path: str | Path | DarknetCfg, size: int | tuple[int, int] | None = None) -> dict[str, Any]:
    """Darknet's printout as a dict: `layers`, `params`, `bflops` (2 x multiply-adds of conv, local
    and connected layers), `bflops_by_type`, `input_size` [h, w]."""
    cfg = _load(cfg_path)
    infos = infer_layers(cfg, size)
    layers = []
    by_type: dict[str, float] = {}
    for info in infos:
        s = info.section
        layers.append(
            {
                "index": info.index,
                "type": info.type,
                "line": s.line,
                "filters": getattr(s, "filters", getattr(s, "output", None)),
                "size": getattr(s, "size", None),
                "stride": getattr(s, "stride", None),
                "input_shape": list(info.in_shape),
                "output_shape": list(info.out_shape),
                "bflops": info.bflops,
                "params": info.params,
                **({"sources": list(info.sources)} if info.sources else {}),
            }
        )
        if info.bflops:
            by_type[info.type] = by_type.get(info.type, 0.0) + info.bflops
    return {
        "cfg": cfg.path,
        "input_size": list(_as_hw(size, cfg.net)),
        "channels": cfg.net.channels,
        "layers": layers,
        "params": sum(i.params for i in infos),
        "bflops": sum(i.bflops for i in infos),
        "bflops_by_type": by_type,
    }


def format_summary(d: dict[str, Any]) -> str:
    """Darknet-style table."""
    lines = [
        f"{'layer':>5} {'type':<14}{'filters':>8} {'size/strd':>10} {'input':>16}    {'output':>16} "
        f"{'BFLOPs':>8} {'params':>11}"
    ]
    for r in d["layers"]:
        ss = f"{r['size']}x{r['size']}/{r['stride']}" if r["size"] else (f"/{r['stride']}" if r["stride"] else "")
        shp = lambda t: f"{t[2]}x{t[1]}x{t[0]}"  # noqa: E731  Darknet prints w x h x c
        src = f" <- {','.join(map(str, r['sources']))}" if "sources" in r else ""
        lines.append(
            f"{r['index']:>5} {r['type']:<14}{r['filters'] or '':>8} {ss:>10} "
            f"{shp(r['input_shape']):>16} -> {shp(r['output_shape']):>16} "
            f"{r['bflops']:>8.3f} {r['params']:>11,}{src}"
        )
    lines.append(
        f"input {d['input_size'][1]}x{d['input_size'][0]}x{d['channels']}: "
        f"{d['params']:,} parameters, {d['bflops']:.3f} BFLOPs"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Modules


_ACTIVATIONS = {
    "linear": lambda x: x,
    "leaky": lambda x: F.leaky_relu(x, 0.1),
    "relu": F.relu,
    "relu6": lambda x: x.clamp(0, 6),
    "logistic": torch.sigmoid,
    "tanh": torch.tanh,
    "elu": F.elu,
    "selu": F.selu,
    "swish": F.silu,
    "mish": F.mish,
    "hard_mish": lambda x: torch.where(x > 0, x, torch.where(x > -2, x * x / 2 + x, torch.zeros_like(x))),
    "gelu": lambda x: F.gelu(x, approximate="tanh"),
    "relie": lambda x: torch.where(x > 0, x, 0.01 * x),
    "ramp": lambda x: x * (x > 0) + 0.1 * x,
    "loggy": lambda x: 2 * torch.sigmoid(x) - 1,
    "plse": lambda x: torch.where(x < -4, 0.01 * (x + 4), torch.where(x > 4, 0.01 * (x - 4) + 1, 0.125 * x + 0.5)),
    "hardtan": lambda x: x.clamp(-1, 1),
    "lhtan": lambda x: torch.where(x < 0, 0.001 * x, torch.where(x > 1, 0.001 * (x - 1) + 1, x)),
}


class Activation(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ACTIVATIONS[self.name](x)

    def extra_repr(self) -> str:
        return self.name


class ConvBlock(nn.Module):
    """conv (+ BN, which then replaces the conv bias) + activation."""

    def __init__(self, s: C.Convolutional, c: int):
        super().__init__()
        self.conv = nn.Conv2d(
            c, s.filters, s.size, (s.stride_y, s.stride_x), s.padding, s.dilation, s.groups, bias=not s.batch_normalize
        )
        self.bn = nn.BatchNorm2d(s.filters) if s.batch_normalize else None
        self.act = Activation(s.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.act(self.bn(x) if self.bn is not None else x)


class LocalBlock(nn.Module):
    """Locally connected layer with Darknet's weight layout: [location, filter, c * k * k]."""

    def __init__(self, s: C.Local, in_shape: Shape, out_shape: Shape):
        super().__init__()
        c = in_shape[0]
        n, oh, ow = out_shape
        self.size, self.stride, self.pad = s.size, s.stride, (s.size // 2 if s.pad else 0)
        self.weight = nn.Parameter(torch.empty(oh * ow, n, c * s.size * s.size))
        self.bias = nn.Parameter(torch.empty(n, oh, ow))
        self.act = Activation(s.activation)
        bound = (c * s.size * s.size) ** -0.5
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cols = F.unfold(x, self.size, padding=self.pad, stride=self.stride)  # [B, c*k*k, L]
        y = torch.einsum("bkl,lnk->bnl", cols, self.weight)
        return self.act(y.reshape(x.shape[0], *self.bias.shape) + self.bias)


class ConnectedBlock(nn.Module):
    """Fully connected on the flattened (c, h, w) input; output shaped [B, n, 1, 1] like Darknet's."""

    def __init__(self, s: C.Connected, inputs: int):
        super().__init__()
        self.linear = nn.Linear(inputs, s.output, bias=not s.batch_normalize)
        self.bn = nn.BatchNorm1d(s.output) if s.batch_normalize else None
        self.act = Activation(s.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x.flatten(1))
        if self.bn is not None:
            y = self.bn(y)
        return self.act(y)[:, :, None, None]


class MaxPool(nn.Module):
    """Darknet pads `padding` in total, padding // 2 on the top/left and the rest bottom/right."""

    def __init__(self, s: C.Maxpool):
        super().__init__()
        self.size, self.stride, self.padding = s.size, (s.stride_y, s.stride_x), s.padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.padding // 2
        if self.padding:
            x = F.pad(x, (a, self.padding - a, a, self.padding - a), value=float("-inf"))
        return F.max_pool2d(x, self.size, self.stride)


class GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)


class Route(nn.Module):
    """Concatenate the routed maps along channels; with groups, take chunk `group_id` of each."""

    def __init__(self, s: C.Route):
        super().__init__()
        self.groups, self.group_id = s.groups, s.group_id

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        if self.groups > 1:
            xs = [x.chunk(self.groups, 1)[self.group_id] for x in xs]
        return xs[0] if len(xs) == 1 else torch.cat(xs, 1)


class Shortcut(nn.Module):
    """out = alpha * previous + beta * layers[from], over the overlapping channels; when the sizes
    differ Darknet strides through the larger map (ResNet cfgs without projection shortcuts)."""

    def __init__(self, s: C.Shortcut):
        super().__init__()
        self.alpha, self.beta = s.alpha, s.beta
        self.act = Activation(s.activation)

    def forward(self, x: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
        if x.shape == add.shape:
            y = x + add if self.alpha == 1 and self.beta == 1 else self.alpha * x + self.beta * add
            return self.act(y)
        (c1, h1, w1), (c2, h2, w2) = add.shape[1:], x.shape[1:]
        stride, sample = max(w1 // w2, 1), max(w2 // w1, 1)
        c, h, w = min(c1, c2), min(h1, h2), min(w1, w2)
        y = x.clone()
        dst = (slice(None), slice(0, c), slice(0, h * sample, sample), slice(0, w * sample, sample))
        src = add[:, :c, 0 : h * stride : stride, 0 : w * stride : stride]
        y[dst] = self.alpha * y[dst] + self.beta * src
        return self.act(y)


class Upsample(nn.Module):
    def __init__(self, s: C.Upsample):
        super().__init__()
        self.stride, self.scale = s.stride, s.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.stride
        if k > 0:
            y = x.repeat_interleave(k, 2).repeat_interleave(k, 3)
        else:  # Darknet's reverse upsample sums each k x k block
            k = -k
            b, c, h, w = x.shape
            y = x[:, :, : h // k * k, : w // k * k].reshape(b, c, h // k, k, w // k, k).sum((3, 5))
        return y * self.scale if self.scale != 1 else y


def _reorg_index(w: int, h: int, c: int, stride: int, forward: bool) -> torch.Tensor:
    """Gather index reproducing Darknet's `reorg_cpu(x, w, h, c, batch, stride, forward, out)`."""
    out_c = c // (stride * stride)
    k = torch.arange(c).view(c, 1, 1)
    j = torch.arange(h).view(1, h, 1)
    i = torch.arange(w).view(1, 1, w)
    in_index = i + w * (j + h * k)
    offset = k // out_c
    w2 = i * stride + offset % stride
    h2 = j * stride + offset // stride
    out_index = w2 + w * stride * (h2 + h * stride * (k % out_c))
    if forward:  # out[out_index] = x[in_index]
        idx = torch.empty(c * h * w, dtype=torch.long)
        idx[out_index.flatten()] = in_index.flatten()
        return idx
    return out_index.flatten()  # out[in_index] = x[out_index]


class Reorg(nn.Module):
    """YOLOv2's passthrough layer in Darknet's element order.

    mode "pjreddie" (also AlexeyAB's `[reorg_old]`): reorg_cpu(input, w, h, c, ..., 0) with the input
    dims, the order the released YOLOv2 weights were trained with. mode "alexeyab" (AlexeyAB's
    `[reorg]`): reorg_cpu(input, out_w, out_h, out_c, ..., 0), a plain space-to-depth.
    """

    def __init__(self, s: C.Reorg, mode: str = "pjreddie"):
        super().__init__()
        if mode not in ("pjreddie", "alexeyab"):
            raise ValueError(f"reorg mode must be 'pjreddie' or 'alexeyab', not {mode!r}")
        self.stride, self.reverse, self.mode = s.stride, bool(s.reverse), mode
        self._cache: dict[tuple, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        k = self.stride
        out = (c // (k * k), h * k, w * k) if self.reverse else (c * k * k, h // k, w // k)
        dims = (w, h, c) if self.mode == "pjreddie" else (out[2], out[1], out[0])
        key = (*dims, str(x.device))
        if key not in self._cache:
            self._cache[key] = _reorg_index(*dims, k, self.reverse).to(x.device)
        return x.reshape(b, -1)[:, self._cache[key]].reshape(b, *out)


class Crop(nn.Module):
    """Inference-time Darknet crop: centre crop, then x * 2 - 1 unless noadjust."""

    def __init__(self, s: C.Crop):
        super().__init__()
        self.h, self.w, self.adjust = s.crop_height, s.crop_width, not s.noadjust

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = min(self.h, x.shape[2]), min(self.w, x.shape[3])
        dh, dw = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
        x = x[:, :, dh : dh + h, dw : dw + w]
        return x * 2 - 1 if self.adjust else x


class Softmax(nn.Module):
    def __init__(self, s: C.Softmax):
        super().__init__()
        self.groups, self.temperature = s.groups, s.temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (x / self.temperature if self.temperature != 1 else x).reshape(x.shape[0], self.groups, -1)
        return y.softmax(-1).reshape(x.shape)


class Head(nn.Module):
    """region / yolo / detection: passes its input through raw; `section` holds anchors, mask,
    classes, num... for the decoder. Darknet's logistic/softmax at inference is left to the decoder."""

    def __init__(self, s: Section):
        super().__init__()
        self.section = s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        s = self.section
        return f"{s.type}, classes={getattr(s, 'classes', '')}"


def _module(info: LayerInfo, reorg: str) -> nn.Module:
    s = info.section
    if isinstance(s, C.Convolutional):
        return ConvBlock(s, info.in_shape[0])
    if isinstance(s, C.Local):
        return LocalBlock(s, info.in_shape, info.out_shape)
    if isinstance(s, C.Connected):
        return ConnectedBlock(s, info.in_shape[0] * info.in_shape[1] * info.in_shape[2])
    if isinstance(s, C.Maxpool):
        return MaxPool(s)
    if isinstance(s, C.Avgpool):
        return GlobalAvgPool()
    if isinstance(s, C.Route):
        return Route(s)
    if isinstance(s, C.Shortcut):
        return Shortcut(s)
    if isinstance(s, C.Upsample):
        return Upsample(s)
    if isinstance(s, C.Reorg):
        if reorg == "pjreddie" and info.in_shape[0] % (s.stride * s.stride):
            # Darknet reads the input as [c / stride^2, h * stride, w * stride]
            raise s.fail(f"pjreddie reorg needs channels ({info.in_shape[0]}) divisible by stride^2")
        return Reorg(s, reorg)
    if isinstance(s, C.Crop):
        return Crop(s)
    if isinstance(s, C.Softmax):
        return Softmax(s)
    if isinstance(s, C.Dropout):
        return nn.Dropout(s.probability)
    if isinstance(s, (C.Yolo, C.Region, C.Detection)):
        return Head(s)
    if isinstance(s, C.Cost):
        return nn.Identity()
    raise s.fail("no module for this section")  # pragma: no cover - every parsed type is handled


class DarknetModel(nn.Module):
    """The network of a Darknet cfg. `layers[i]` is Darknet's layer i.

    forward(x) returns the raw inputs of the head layers (list, one per yolo layer; one item for
    region/detection) when the cfg has any, else the last layer's output. Fully convolutional cfgs
    run on any input size the cfg allows; connected/local layers fix the size to the one built for.
    """

    def __init__(
        self, cfg: str | Path | DarknetCfg, size: int | tuple[int, int] | None = None, reorg: str = "pjreddie"
    ):
        super().__init__()
        self.cfg = _load(cfg)
        self.infos = infer_layers(self.cfg, size)
        self.input_size = _as_hw(size, self.cfg.net)
        self.layers = nn.ModuleList(_module(info, reorg) for info in self.infos)
        self.head_indices = [i.index for i in self.infos if i.type in C.HEAD_TYPES]
        needed = {j for info in self.infos for j in info.sources}
        self._keep = [i in needed for i in range(len(self.infos))]
        # Darknet file header; `load_weights` replaces it with the file's, `save_weights` writes it.
        self.header = {"major": 0, "minor": 2, "revision": 0, "seen": 0}

    @property
    def heads(self) -> list[Section]:
        return [self.infos[i].section for i in self.head_indices]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        saved: dict[int, torch.Tensor] = {}
        heads = []
        for i, (info, layer) in enumerate(zip(self.infos, self.layers)):
            if isinstance(layer, Route):
                x = layer([saved[j] for j in info.sources])
            elif isinstance(layer, Shortcut):
                x = layer(x, saved[info.sources[0]])
            else:
                x = layer(x)
            if self._keep[i]:
                saved[i] = x
            if isinstance(layer, Head):
                heads.append(x)
        return heads if heads else x


def build_model(
    cfg: str | Path | DarknetCfg, size: int | tuple[int, int] | None = None, reorg: str = "pjreddie"
) -> DarknetModel:
    """Parse (if needed) and build. Use `with torch.device("meta"):` to build without memory."""
    return DarknetModel(cfg, size, reorg)
