"""Darknet's layers as PyTorch modules, literally: its padding rules for maxpool, its element order for
reorg, its shortcut between maps of different sizes, and its crop layer's [0, 1] -> [-1, 1] remap."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.interop.darknet import cfg as C
from lightning_modules.interop.darknet.cfg import Section
from lightning_modules.interop.darknet.shapes import Shape

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
