"""YOLO v1/v2/v3 heads on a backbone's feature maps; each returns raw (un-activated) predictions.

Raw layouts (decoded by `decode.py`, scored by `losses.py`):
- v1: [N, S, S, B*5 + C]; per box (x, y, w, h, conf), then C class scores for the cell.
- v2: [N, A, H, W, 5 + C]; (tx, ty, tw, th, obj, classes...) per anchor.
- v3: list of three [N, 3, H_i, W_i, 5 + C], strides 8, 16, 32 (finest first).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    """Darknet's conv block: conv (no bias) + BN + leaky ReLU 0.1."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1, inplace=True)
    )


class YoloV1Head(nn.Module):
    """S x S grid, B boxes per cell, C classes; fully connected as in the paper (`fc=True`) or 1x1 conv."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        grid: int = 7,
        boxes: int = 2,
        hidden: int = 256,
        fc: bool = True,
        dropout: float = 0.5,
    ):
        super().__init__()
        self.grid, self.boxes, self.num_classes = grid, boxes, num_classes
        out = boxes * 5 + num_classes
        self.conv = conv_bn(in_channels, hidden)
        self.pool = nn.AdaptiveAvgPool2d(grid)  # any input size -> S x S
        if fc:
            self.out = nn.Sequential(
                nn.Flatten(1),
                nn.Linear(hidden * grid * grid, hidden * 2),
                nn.LeakyReLU(0.1, inplace=True),
                nn.Dropout(dropout),
                nn.Linear(hidden * 2, grid * grid * out),
            )
        else:
            self.out = nn.Conv2d(hidden, out, 1)
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.out(self.pool(self.conv(x)))
        n, s = x.shape[0], self.grid
        return y.view(n, s, s, -1) if self.fc else y.permute(0, 2, 3, 1).contiguous()


class YoloV2Head(nn.Module):
    """Anchors at stride 32 with the passthrough layer: stride-16 features, space-to-depth, concatenated."""

    def __init__(
        self, c16: int, c32: int, num_classes: int, *, anchors: int = 5, hidden: int = 256, passthrough: int = 32
    ):
        super().__init__()
        self.anchors, self.num_classes = anchors, num_classes
        self.top = nn.Sequential(conv_bn(c32, hidden), conv_bn(hidden, hidden))
        self.reduce = conv_bn(c16, passthrough, 1)  # Darknet: 64 channels at full width, then reorg
        self.fuse = conv_bn(hidden + passthrough * 4, hidden)
        self.out = nn.Conv2d(hidden, anchors * (5 + num_classes), 1)

    def forward(self, maps: dict[int, torch.Tensor]) -> torch.Tensor:
        fine = F.pixel_unshuffle(self.reduce(maps[16]), 2)  # reorg: [C, 2H, 2W] -> [4C, H, W]
        y = self.out(self.fuse(torch.cat([fine, self.top(maps[32])], 1)))
        n, _, h, w = y.shape
        return y.view(n, self.anchors, 5 + self.num_classes, h, w).permute(0, 1, 3, 4, 2).contiguous()


class YoloV3Head(nn.Module):
    """Three scales (strides 8/16/32): top-down upsample + concat (FPN style), 3 anchors per scale."""

    def __init__(self, channels: dict[int, int], num_classes: int, *, anchors_per_scale: int = 3, hidden: int = 128):
        super().__init__()
        self.na, self.num_classes = anchors_per_scale, num_classes
        out = anchors_per_scale * (5 + num_classes)
        h32, h16, h8 = hidden * 2, hidden, max(hidden // 2, 8)
        self.block32 = nn.Sequential(conv_bn(channels[32], h32, 1), conv_bn(h32, h32))
        self.lat32 = conv_bn(h32, h16, 1)
        self.block16 = nn.Sequential(conv_bn(channels[16] + h16, h16, 1), conv_bn(h16, h16))
        self.lat16 = conv_bn(h16, h8, 1)
        self.block8 = nn.Sequential(conv_bn(channels[8] + h8, h8, 1), conv_bn(h8, h8))
        self.out32, self.out16, self.out8 = nn.Conv2d(h32, out, 1), nn.Conv2d(h16, out, 1), nn.Conv2d(h8, out, 1)

    def _shape(self, y: torch.Tensor) -> torch.Tensor:
        n, _, h, w = y.shape
        return y.view(n, self.na, 5 + self.num_classes, h, w).permute(0, 1, 3, 4, 2).contiguous()

    def forward(self, maps: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        p32 = self.block32(maps[32])
        up = F.interpolate(self.lat32(p32), size=maps[16].shape[-2:], mode="nearest")
        p16 = self.block16(torch.cat([up, maps[16]], 1))
        up = F.interpolate(self.lat16(p16), size=maps[8].shape[-2:], mode="nearest")
        p8 = self.block8(torch.cat([up, maps[8]], 1))
        return [self._shape(self.out8(p8)), self._shape(self.out16(p16)), self._shape(self.out32(p32))]
