"""Darknet-19 (YOLOv2), Darknet-53 (YOLOv3) and the YOLOv1 24-conv extractor.

Every conv is conv (no bias) + batch norm + leaky ReLU(0.1), as in Darknet's cfg files.
`small_input=True` removes the first two downsamplings (real strides 4x smaller).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from lightning_modules.models.backbone import (
    Backbone,
    BodyBuilder,
    ConvClassifier,
    DropoutConfig,
    check_width,
    dropout_or,
    global_pool,
    linear_head,
    scaled,
)


def conv_bn_act(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False),
            bn=nn.BatchNorm2d(cout),
            act=nn.LeakyReLU(0.1, inplace=True),
        )
    )


class Residual(nn.Module):
    """Darknet-53 block: x + conv3x3(conv1x1(x)) with half the channels in between, linear shortcut."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = conv_bn_act(channels, channels // 2 or 1, 1)
        self.conv2 = conv_bn_act(channels // 2 or 1, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=0.1, mode="fan_out", nonlinearity="leaky_relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


# (filters, kernel, stride) per conv, "M" = 2x2/2 max-pool.
DARKNET19 = [
    (32, 3, 1),
    "M",
    (64, 3, 1),
    "M",
    (128, 3, 1),
    (64, 1, 1),
    (128, 3, 1),
    "M",
    (256, 3, 1),
    (128, 1, 1),
    (256, 3, 1),
    "M",
    (512, 3, 1),
    (256, 1, 1),
    (512, 3, 1),
    (256, 1, 1),
    (512, 3, 1),
    "M",
    (1024, 3, 1),
    (512, 1, 1),
    (1024, 3, 1),
    (512, 1, 1),
    (1024, 3, 1),
]

YOLOV1 = [
    (64, 7, 2),
    "M",
    (192, 3, 1),
    "M",
    (128, 1, 1),
    (256, 3, 1),
    (256, 1, 1),
    (512, 3, 1),
    "M",
    *[(256, 1, 1), (512, 3, 1)] * 4,
    (512, 1, 1),
    (1024, 3, 1),
    "M",
    *[(512, 1, 1), (1024, 3, 1)] * 2,
    (1024, 3, 1),
    (1024, 3, 2),
    (1024, 3, 1),
    (1024, 3, 1),
]


def _plain_body(spec: list, width: float, dropout: DropoutConfig, small_input: bool) -> BodyBuilder:
    """A body from a conv/max-pool list; a stage ends at each downsampling and at the end."""
    b = BodyBuilder(dropout)
    cin, convs, pools, downs = 3, 0, 0, 0
    for item in spec:
        if item == "M":
            pools += 1
            downs += 1
            if small_input and downs <= 2:
                b.skip(2)
            else:
                b.add(f"pool{pools}", nn.MaxPool2d(2, 2), stride=2)
            b.end_stage()
            continue
        filters, k, stride = item
        cout = scaled(filters, width)
        convs += 1
        real = stride
        if stride > 1:
            downs += 1
            real = 1 if small_input and downs <= 2 else stride
        b.add(f"conv{convs}", conv_bn_act(cin, cout, k, real), stride=stride, channels=cout)  # nominal stride
        if stride > 1:
            b.end_stage()
        cin = cout
    b.end_stage()
    return b


def darknet19(
    num_classes: int = 1000, width: float = 1.0, dropout: DropoutConfig | None = None, small_input: bool = False
) -> Backbone:
    """YOLOv2's classifier: 19 convs (the last a 1x1 to the classes, on the 7x7 map) and 5 max-pools."""
    width = check_width(width)
    dropout = dropout_or(dropout, DropoutConfig())
    b = _plain_body(DARKNET19, width, dropout, small_input)
    head = ConvClassifier(b.out_channels, num_classes, dropout.classifier)
    model = Backbone(
        "darknet19", b, global_pool(), head, num_features=b.out_channels, small_input=small_input, head_on_map=True
    )
    _init(model.body)
    return model


def yolov1(
    num_classes: int = 1000, width: float = 1.0, dropout: DropoutConfig | None = None, small_input: bool = False
) -> Backbone:
    """YOLOv1's 24 conv layers (final stride 64) + global average pool + Linear as a classifier.

    YOLOv1 pretrained only its first 20 convs on ImageNet; here all 24 form the body, and
    levels 8/16/32 are the deepest layers before each of the last max-pools / the stride-2 conv.
    """
    width = check_width(width)
    dropout = dropout_or(dropout, DropoutConfig())
    b = _plain_body(YOLOV1, width, dropout, small_input)
    model = Backbone(
        "yolov1",
        b,
        global_pool(),
        linear_head(b.out_channels, num_classes, dropout.classifier),
        num_features=b.out_channels,
        small_input=small_input,
    )
    _init(model.body)
    return model


def darknet53(
    num_classes: int = 1000, width: float = 1.0, dropout: DropoutConfig | None = None, small_input: bool = False
) -> Backbone:
    """YOLOv3's backbone: 52 convs (stem + 5 x (stride-2 conv + residual blocks)) + the 1000-way layer."""
    width = check_width(width)
    dropout = dropout_or(dropout, DropoutConfig())
    b = BodyBuilder(dropout)
    cin = scaled(32, width)
    b.add("conv0", conv_bn_act(3, cin, 3), channels=cin)
    for i, (filters, blocks) in enumerate(zip((64, 128, 256, 512, 1024), (1, 2, 8, 8, 4))):
        cout = scaled(filters, width)
        stride = 1 if small_input and i < 2 else 2
        layers = OrderedDict(down=conv_bn_act(cin, cout, 3, stride))
        layers.update((f"res{j + 1}", Residual(cout)) for j in range(blocks))
        b.add(f"stage{i + 1}", nn.Sequential(layers), stride=2, channels=cout)
        b.end_stage()
        cin = cout
    model = Backbone(
        "darknet53",
        b,
        global_pool(),
        linear_head(cin, num_classes, dropout.classifier),
        num_features=cin,
        small_input=small_input,
    )
    _init(model.body)
    return model
