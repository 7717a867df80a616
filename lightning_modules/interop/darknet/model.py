"""Build a PyTorch model from a Darknet cfg. `DarknetModel` follows the cfg literally: the same layer
indices (route/shortcut refer to them) and Darknet's layers (layers.py); shapes come from shapes.py."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lightning_modules.interop.darknet import cfg as C
from lightning_modules.interop.darknet.cfg import DarknetCfg, Section
from lightning_modules.interop.darknet.layers import (
    ConnectedBlock,
    ConvBlock,
    Crop,
    GlobalAvgPool,
    Head,
    LocalBlock,
    MaxPool,
    Reorg,
    Route,
    Shortcut,
    Softmax,
    Upsample,
)
from lightning_modules.interop.darknet.shapes import LayerInfo, infer_layers, input_hw, load_cfg


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
        self.cfg = load_cfg(cfg)
        self.infos = infer_layers(self.cfg, size)
        self.input_size = input_hw(size, self.cfg.net)
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
