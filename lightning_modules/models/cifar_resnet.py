"""He et al. 2016's CIFAR-10 nets (section 4.2): plain-20/56 and ResNet-20/56, for the degradation study at
its paper's scale.

6n+2 weight layers: a 3x3 conv with 16 filters, three stages of n basic blocks with 16, 32 and 64 filters
(the first block of stages 2 and 3 halves the map), global average pooling and a linear classifier.
n = 3 gives 20 layers, n = 9 gives 56. The plain nets are the same layers without the shortcuts.
One deviation: a stage's first shortcut is a 1x1 projection (the paper's option B) where the paper's
CIFAR nets pad zeros (option A); the plain nets, which the degradation claim is about, are unaffected.
"""

from __future__ import annotations

from torch import nn

from lightning_modules.models.backbone import (
    Backbone,
    BodyBuilder,
    DropoutConfig,
    check_width,
    dropout_or,
    global_pool,
    linear_head,
    scaled,
)
from lightning_modules.models.resnet import init_like_torchvision, make_layer

CIFAR_DEPTHS = {20: 3, 56: 9}  # layers -> blocks per stage (6n + 2)


def _build(name: str, depth: int, plain: bool, num_classes: int, width: float, dropout: DropoutConfig | None):
    width = check_width(width)
    dropout = dropout_or(dropout, DropoutConfig())
    c = [scaled(n, width) for n in (16, 32, 64)]
    b = BodyBuilder(dropout)
    # Nominal strides name the three stages levels 8/16/32, like every backbone here (their real strides on a
    # 32-px input are 1/2/4: the stem does not downsample).
    b.add("conv1", nn.Conv2d(3, c[0], kernel_size=3, stride=1, padding=1, bias=False), stride=2, channels=c[0])
    b.add("bn1", nn.BatchNorm2d(c[0]))
    b.add("relu", nn.ReLU(inplace=True))
    b.skip(4)
    inplanes = c[0]
    for i, planes in enumerate(c):
        stride = 1 if i == 0 else 2
        layer = make_layer(inplanes, planes, CIFAR_DEPTHS[depth], stride, plain)
        b.add(f"layer{i + 1}", layer, stride=stride, channels=planes)
        b.end_stage()
        inplanes = planes
    head = linear_head(c[2], num_classes, dropout.classifier)
    model = Backbone(name, b, global_pool(), head, num_features=c[2], small_input=True, stem_stride=1)
    # The stem keeps the 32-px input whole, so the three stages sit at real strides 1, 2 and 4: a CIFAR net
    # is a classifier, not a detector backbone (the ImageNet-layout nets keep the 8/16/32 contract).
    model.feature_strides = {8: 1, 16: 2, 32: 4}
    init_like_torchvision(model.body)
    return model


def plain20(num_classes: int = 10, width: float = 1.0, dropout: DropoutConfig | None = None, small_input: bool = True):
    return _build("plain20", 20, True, num_classes, width, dropout)


def plain56(num_classes: int = 10, width: float = 1.0, dropout: DropoutConfig | None = None, small_input: bool = True):
    return _build("plain56", 56, True, num_classes, width, dropout)


def resnet20(num_classes: int = 10, width: float = 1.0, dropout: DropoutConfig | None = None, small_input: bool = True):
    return _build("resnet20", 20, False, num_classes, width, dropout)


def resnet56(num_classes: int = 10, width: float = 1.0, dropout: DropoutConfig | None = None, small_input: bool = True):
    return _build("resnet56", 56, False, num_classes, width, dropout)
