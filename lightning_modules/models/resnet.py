"""ResNet-18/34 from torchvision's blocks, and He et al.'s plain nets (same layers, no shortcuts).

Layer names match torchvision's ResNet (conv1, bn1, relu, maxpool, layer1..4 inside `body`,
fc as `head.fc`), so torchvision ImageNet weights load with `load_torchvision_weights`.
`small_input=True` uses a 3x3 stride-1 stem and no max-pool (the CIFAR layout): every feature
map is then 4x larger, i.e. levels 8/16/32 have real strides 2/4/8. `stem_stride` sets the stem's
downsampling without changing any weight's shape: a detector on a small-input backbone uses 4
(3x3 stride-2 conv + max-pool), so its levels sit at the usual strides 8/16/32 at a quarter of the cost.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, conv1x1

from lightning_modules.errors import ConfigError
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

TORCHVISION_KEYS = (("fc.", "head.fc."), ("", "body."))


class PlainBlock(BasicBlock):
    """BasicBlock without the identity shortcut: relu(bn2(conv2(relu(bn1(conv1(x)))))).

    He et al. 2016's "plain" baseline: no `+ identity`, hence no downsample projection either.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__(inplanes, planes, stride, downsample=None)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)))


def make_layer(inplanes: int, planes: int, blocks: int, stride: int, plain: bool) -> nn.Sequential:
    """torchvision's ResNet._make_layer for BasicBlock (or PlainBlock)."""
    if plain:
        return nn.Sequential(
            *[PlainBlock(inplanes if i == 0 else planes, planes, stride if i == 0 else 1) for i in range(blocks)]
        )
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))
    layers = [BasicBlock(inplanes, planes, stride, downsample)]
    layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def init_like_torchvision(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


def _build(
    name: str,
    layers: list[int],
    plain: bool,
    num_classes: int,
    width: float,
    dropout: DropoutConfig | None,
    small_input: bool,
    stem_stride: int | None = None,
) -> Backbone:
    width = check_width(width)
    stem_stride = stem_stride or (1 if small_input else 4)
    if stem_stride not in (1, 2, 4) or (not small_input and stem_stride == 1):
        raise ConfigError(f"{name}: stem_stride {stem_stride} is not one of 2, 4 (or 1 with small_input)")
    dropout = dropout_or(dropout, DropoutConfig())
    c = [scaled(n, width) for n in (64, 128, 256, 512)]
    b = BodyBuilder(dropout)
    k = 3 if small_input else 7
    conv_stride = min(stem_stride, 2)
    conv = nn.Conv2d(3, c[0], kernel_size=k, stride=conv_stride, padding=k // 2, bias=False)
    b.add("conv1", conv, stride=2, channels=c[0])  # nominal strides: those of the 224-px layout
    b.add("bn1", nn.BatchNorm2d(c[0]))
    b.add("relu", nn.ReLU(inplace=True))
    if stem_stride == 4:
        b.add("maxpool", nn.MaxPool2d(kernel_size=3, stride=2, padding=1), stride=2)
    else:
        b.skip(2)
    inplanes = c[0]
    for i, (planes, blocks) in enumerate(zip(c, layers)):
        stride = 1 if i == 0 else 2
        b.add(f"layer{i + 1}", make_layer(inplanes, planes, blocks, stride, plain), stride=stride, channels=planes)
        b.end_stage()
        inplanes = planes
    head = linear_head(c[3], num_classes, dropout.classifier)
    model = Backbone(
        name,
        b,
        global_pool(),
        head,
        num_features=c[3],
        small_input=small_input,
        stem_stride=stem_stride,
        torchvision_keys=() if plain else TORCHVISION_KEYS,
    )
    init_like_torchvision(model.body)
    return model


def resnet18(
    num_classes: int = 1000,
    width: float = 1.0,
    dropout: DropoutConfig | None = None,
    small_input: bool = False,
    stem_stride: int | None = None,
) -> Backbone:
    return _build("resnet18", [2, 2, 2, 2], False, num_classes, width, dropout, small_input, stem_stride)


def resnet34(
    num_classes: int = 1000,
    width: float = 1.0,
    dropout: DropoutConfig | None = None,
    small_input: bool = False,
    stem_stride: int | None = None,
) -> Backbone:
    return _build("resnet34", [3, 4, 6, 3], False, num_classes, width, dropout, small_input, stem_stride)


def plain18(
    num_classes: int = 1000,
    width: float = 1.0,
    dropout: DropoutConfig | None = None,
    small_input: bool = False,
    stem_stride: int | None = None,
) -> Backbone:
    return _build("plain18", [2, 2, 2, 2], True, num_classes, width, dropout, small_input, stem_stride)


def plain34(
    num_classes: int = 1000,
    width: float = 1.0,
    dropout: DropoutConfig | None = None,
    small_input: bool = False,
    stem_stride: int | None = None,
) -> Backbone:
    return _build("plain34", [3, 4, 6, 3], True, num_classes, width, dropout, small_input, stem_stride)
