"""VGG-16 (with or without batch norm) from torchvision's layer config and `make_layers`.

`body` children keep torchvision's `features` indices ("0".."30"), the classifier keeps
`classifier` indices with the last Linear named `fc`, so torchvision weights load by prefix.
`pool` is torchvision's AdaptiveAvgPool2d((7, 7)) + flatten, hence `num_features` =
512*width*49 and any input >= 32 px works. The head is VGG's whole classifier
(fc6, fc7, fc8); `reset_classifier` replaces fc8 only. `small_input=True` drops the first two
max-pools (real strides 4x smaller).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from lightning_modules.models.backbone import Backbone, BodyBuilder, DropoutConfig, check_width, dropout_or, scaled

TORCHVISION_KEYS = (("features.", "body."), ("classifier.6.", "head.fc."), ("classifier.", "head."))


def _init_like_torchvision(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.constant_(m.bias, 0)


def _build(
    name: str, batch_norm: bool, num_classes: int, width: float, dropout: DropoutConfig | None, small_input: bool
) -> Backbone:
    width = check_width(width)
    dropout = dropout_or(dropout, DropoutConfig(classifier=0.5))  # torchvision's default
    cfg = [v if v == "M" else scaled(v, width) for v in cfgs["D"]]
    features = make_layers(cfg, batch_norm=batch_norm)
    b = BodyBuilder(dropout)
    pools = 0
    for i, layer in enumerate(features):
        if isinstance(layer, nn.MaxPool2d):
            pools += 1
            if small_input and pools <= 2:
                b.skip(2)
            else:
                b.add(str(i), layer, stride=2)
            b.end_stage()
        else:
            b.add(str(i), layer, channels=layer.out_channels if isinstance(layer, nn.Conv2d) else None)
    in_features, hidden, p = cfg[-2] * 7 * 7, scaled(4096, width), dropout.classifier
    head = nn.Sequential(
        OrderedDict(
            [
                ("0", nn.Linear(in_features, hidden)),
                ("1", nn.ReLU(True)),
                ("2", nn.Dropout(p)),
                ("3", nn.Linear(hidden, hidden)),
                ("4", nn.ReLU(True)),
                ("5", nn.Dropout(p)),
                ("fc", nn.Linear(hidden, num_classes)),
            ]
        )
    )
    pool = nn.Sequential(nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(1))
    model = Backbone(
        name, b, pool, head, num_features=in_features, small_input=small_input, torchvision_keys=TORCHVISION_KEYS
    )
    _init_like_torchvision(model)
    return model


def vgg16(
    num_classes: int = 1000, width: float = 1.0, dropout: DropoutConfig | None = None, small_input: bool = False
) -> Backbone:
    return _build("vgg16", False, num_classes, width, dropout, small_input)


def vgg16_bn(
    num_classes: int = 1000, width: float = 1.0, dropout: DropoutConfig | None = None, small_input: bool = False
) -> Backbone:
    return _build("vgg16_bn", True, num_classes, width, dropout, small_input)
