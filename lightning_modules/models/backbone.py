"""The uniform backbone interface every model in the zoo returns, and its dropout config.

A `Backbone` is `body` (an nn.Sequential feature extractor whose children are named stages or
layers), `pool` (feature map -> pooled vector [N, F]) and `head` (vector -> logits; its final
layer is always `head.fc`). Detection heads read `feature_maps(x)` at nominal strides 8/16/32.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn

from lightning_modules.config import DropoutConfig
from lightning_modules.config_messages import first_error
from lightning_modules.errors import ConfigError
from lightning_modules.training.checkpoints import load_checkpoint

log = logging.getLogger("visionflow")

LEVELS = (8, 16, 32)


def dropout_or(value: DropoutConfig | Mapping | float | None, default: DropoutConfig) -> DropoutConfig:
    """A model's dropout: `default` (the architecture's own) when None, else the given groups or number."""
    if value is None:
        return default
    if isinstance(value, DropoutConfig):
        return value
    try:
        return DropoutConfig.model_validate(value)
    except ValidationError as exc:
        raise ConfigError(f"{first_error(exc, 'dropout')} (got {value!r})") from None


def scaled(channels: int, width: float) -> int:
    """Channel count under a width multiplier (at least 1)."""
    return max(1, int(round(channels * width)))


def check_width(width: float) -> float:
    if not isinstance(width, (int, float)) or width <= 0:
        raise ConfigError(f"width: {width!r} must be a positive number (1.0 = the paper's channel counts)")
    return float(width)


class BodyBuilder:
    """Collects a body's named layers with the nominal stride and channels after each.

    Nominal strides are those of the default (224-px) layout; `small_input` variants `skip`
    the removed downsampling so that levels 8/16/32 still name the same stages.
    """

    def __init__(self, dropout: DropoutConfig, in_channels: int = 3):
        self.layers: OrderedDict[str, nn.Module] = OrderedDict()
        self.strides: dict[str, int] = {}
        self.channels: dict[str, int] = {}
        self.stride = 1
        self.out_channels = in_channels
        self.stage = 0
        self.block_p = dropout.blocks
        if dropout.input > 0:
            self.add("input_drop", nn.Dropout(dropout.input))

    def add(self, name: str, module: nn.Module, *, stride: int = 1, channels: int | None = None) -> None:
        self.stride *= stride
        if channels is not None:
            self.out_channels = channels
        self.layers[name] = module
        self.strides[name] = self.stride
        self.channels[name] = self.out_channels

    def skip(self, stride: int) -> None:
        """Account for a downsampling that `small_input` removed."""
        self.stride *= stride

    def end_stage(self) -> None:
        self.stage += 1
        if self.block_p > 0:
            self.add(f"drop{self.stage}", nn.Dropout2d(self.block_p))

    def sequential(self) -> nn.Sequential:
        return nn.Sequential(self.layers)


class ConvClassifier(nn.Module):
    """Darknet's classifier: a 1x1 conv on the feature map, then global average pooling.

    Given an already pooled [N, F] vector it applies the same weights as a Linear layer
    (conv-then-average equals average-then-linear), so `head(forward_features(x))` works too.
    """

    def __init__(self, in_channels: int, num_classes: int, p: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(p)
        self.fc = nn.Conv2d(in_channels, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(x)
        if x.ndim == 2:
            return nn.functional.linear(x, self.fc.weight.flatten(1), self.fc.bias)
        return self.fc(x).mean((2, 3))


def global_pool() -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


def linear_head(in_features: int, num_classes: int, p: float) -> nn.Sequential:
    return nn.Sequential(OrderedDict(drop=nn.Dropout(p), fc=nn.Linear(in_features, num_classes)))


class Backbone(nn.Module):
    """Uniform classifier/backbone: forward -> logits, forward_features -> [N, F], feature_maps -> {8,16,32}.

    `feature_strides` gives the real stride of each level: equal to the level normally, 4x smaller
    with `small_input=True` (stem downsampling removed), e.g. {8: 2, 16: 4, 32: 8}, unless a
    `stem_stride` puts it back.
    """

    def __init__(
        self,
        name: str,
        body: BodyBuilder,
        pool: nn.Module,
        head: nn.Module,
        *,
        num_features: int,
        small_input: bool = False,
        stem_stride: int | None = None,
        head_on_map: bool = False,
        torchvision_keys: tuple[tuple[str, str], ...] = (),
    ):
        super().__init__()
        self.name = name
        self.body = body.sequential()
        self.pool = pool
        self.head = head
        self.num_features = num_features
        self.small_input = small_input
        self.head_on_map = head_on_map  # Darknet19: the 1x1 conv runs on the map, as Darknet counts it
        self.torchvision_keys = torchvision_keys  # (torchvision prefix, our prefix), first match wins
        self.levels: dict[int, str] = {}
        for level in LEVELS:
            names = [n for n, s in body.strides.items() if s == level]
            if not names:
                raise ValueError(f"{name}: no body layer at nominal stride {level}")
            self.levels[level] = names[-1]  # deepest layer at that stride
        self.feature_channels = {lv: body.channels[n] for lv, n in self.levels.items()}
        # real stride = nominal x (the stem's real downsampling / the 224-px layout's 4)
        stem = stem_stride or (1 if small_input else 4)
        self.stem_stride = stem
        self.feature_strides = {lv: lv * stem // 4 for lv in LEVELS}

    @property
    def num_classes(self) -> int:
        fc = self.head.fc
        return fc.out_features if isinstance(fc, nn.Linear) else fc.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        return self.head(f if self.head_on_map else self.pool(f))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.body(x))

    def feature_maps(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        wanted = {n: lv for lv, n in self.levels.items()}
        out: dict[int, torch.Tensor] = {}
        for name, layer in self.body.named_children():
            x = layer(x)
            if name in wanted:
                out[wanted[name]] = x
                if len(out) == len(wanted):
                    break  # deeper layers are not needed
        return out

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final layer `head.fc` with a fresh one for `num_classes` outputs."""
        old = self.head.fc
        kw = {"device": old.weight.device, "dtype": old.weight.dtype}
        if isinstance(old, nn.Linear):
            self.head.fc = nn.Linear(old.in_features, num_classes, **kw)
        else:
            self.head.fc = nn.Conv2d(old.in_channels, num_classes, kernel_size=1, **kw)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_features={self.num_features}, feature_strides={self.feature_strides}"


def _map_key(model: Backbone, key: str) -> str | None:
    for tv_prefix, our_prefix in model.torchvision_keys:
        if key.startswith(tv_prefix):
            return our_prefix + key[len(tv_prefix) :]
    return None


def load_torchvision_weights(model: Backbone, state_dict_or_path: Mapping[str, torch.Tensor] | str | Path) -> Backbone:
    """Load a torchvision state dict (e.g. ImageNet weights saved by the user) into `model`.

    Works for models built from torchvision classes (vgg16, vgg16_bn, resnet18, resnet34).
    If only the classifier's shape differs (another class count) it is left as initialised.
    A model on the meta device gets the loaded tensors assigned (no double allocation).
    """
    source = str(state_dict_or_path) if isinstance(state_dict_or_path, (str, Path)) else "state dict"
    if not model.torchvision_keys:
        raise ConfigError(f"{model.name} has no torchvision counterpart; cannot load {source}")
    if isinstance(state_dict_or_path, (str, Path)):
        state = load_checkpoint(Path(state_dict_or_path), "model.torchvision_weights file")
        if isinstance(state, Mapping) and "state_dict" in state:
            state = state["state_dict"]
    else:
        state = state_dict_or_path
    ours = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unexpected, mismatched, skipped = [], [], []
    for key, value in state.items():
        new = _map_key(model, key)
        if new is None or new not in ours:
            unexpected.append(key)
        elif ours[new].shape != value.shape:
            (skipped if new.startswith("head.fc.") else mismatched).append(
                f"{key} {tuple(value.shape)} vs {tuple(ours[new].shape)}"
            )
        else:
            mapped[new] = value
    missing = [k for k in ours if k not in mapped and not k.startswith("head.fc.")]
    if unexpected or mismatched or missing:
        problems = [
            f"unexpected keys {unexpected[:5]}" if unexpected else "",
            f"shape mismatches {mismatched[:5]}" if mismatched else "",
            f"missing keys {missing[:5]}" if missing else "",
        ]
        raise ConfigError(f"{source}: does not fit {model.name} ({'; '.join(p for p in problems if p)})")
    if skipped:
        log.info("%s: classifier shape differs (%s); keeping a fresh classifier", source, skipped[0])
    assign = any(p.is_meta for p in model.parameters())
    model.load_state_dict(mapped, strict=False, assign=assign)
    if assign and model.head.fc.weight.is_meta:  # classifier not loaded: give it real, fresh tensors
        device = next(iter(mapped.values())).device
        model.head.fc = model.head.fc.to_empty(device=device)
        model.head.fc.reset_parameters()
    return model
