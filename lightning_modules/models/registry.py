"""Model registry: backbone name -> builder, and `build_model`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

from lightning_modules.errors import ConfigError
from lightning_modules.models.activations import swap_activations
from lightning_modules.models.backbone import Backbone, DropoutConfig
from lightning_modules.models.cifar_resnet import plain20, plain56, resnet20, resnet56
from lightning_modules.models.darknet import darknet19, darknet53, yolov1
from lightning_modules.models.deep import (
    deep_plain,
    deep_plain34,
    deep_plain_bn,
    deep_plain_bn34,
    deep_residual,
    deep_residual34,
)
from lightning_modules.models.resnet import plain18, plain34, resnet18, resnet34
from lightning_modules.models.vgg import vgg16, vgg16_bn

# Each builder: (num_classes, width, dropout, small_input) -> Backbone with its own activation.
MODEL_REGISTRY: dict[str, Callable[..., Backbone]] = {
    "vgg16": vgg16,
    "vgg16_bn": vgg16_bn,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "plain18": plain18,
    "plain34": plain34,
    "plain20": plain20,  # the CIFAR-10 nets of He et al. section 4.2 (32-px input)
    "plain56": plain56,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "darknet19": darknet19,
    "darknet53": darknet53,
    "yolov1": yolov1,
    "deep_plain": deep_plain,
    "deep_plain_bn": deep_plain_bn,
    "deep_residual": deep_residual,
    "deep_plain34": deep_plain34,
    "deep_plain_bn34": deep_plain_bn34,
    "deep_residual34": deep_residual34,
}


def build_model(
    name: str,
    *,
    num_classes: int = 1000,
    width: float = 1.0,
    activation: str | None = None,
    dropout: DropoutConfig | Mapping | float | None = None,
    small_input: bool = False,
    stem_stride: int | None = None,
) -> Backbone:
    """Build a registered backbone.

    activation: None (or "default") keeps the architecture's own (ReLU for VGG/ResNets, leaky
    ReLU 0.1 for the Darknets); a name from ACTIVATIONS replaces every hidden activation.
    dropout: see DropoutConfig; None keeps the architecture's defaults.
    stem_stride: the stem's downsampling (ResNet/plain only); None keeps the layout's own.
    """
    try:
        builder = MODEL_REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"model {name!r} is unknown; choose one of: {', '.join(MODEL_REGISTRY)}") from None
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes: {num_classes!r} must be a positive integer")
    extra = {}
    if stem_stride is not None:
        if "stem_stride" not in inspect.signature(builder).parameters:
            raise ConfigError(f"model {name!r} has no stem_stride option (ResNet and plain nets have)")
        extra["stem_stride"] = stem_stride
    model = builder(num_classes=num_classes, width=width, dropout=dropout, small_input=bool(small_input), **extra)
    if activation not in (None, "default"):
        swap_activations(model, activation)
        model.activation = activation
    else:
        model.activation = "default"
    return model
