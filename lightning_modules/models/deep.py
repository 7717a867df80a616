"""Deep nets of 18 weight layers for the vanishing-gradient study: plain, plain + batch norm, residual.

All three have the same weight layers in the same order (a 3x3 stem conv, 16 3x3 convs in four
stages of 64/128/256/512 x width channels, the classifier), so their gradient norms line up layer by
layer on one depth axis:

- `deep_plain`: conv -> activation, no normalisation (the setting where sigmoid/tanh gradients vanish);
- `deep_plain_bn`: conv -> batch norm -> activation;
- `deep_residual`: He et al.'s basic blocks (two conv + BN, an identity shortcut added before the
  second activation); downsampling shortcuts are parameter-free (subsample + zero channels, their
  "option A"), so the residual net has no weight layer the plain ones lack.

The hidden activation is ReLU; `build_model(..., activation=NAME)` swaps every one of them (the
variants of the study differ only by that swap). The init is He's (kaiming normal, fan_in) for
every variant, so the activation is the only difference between the plain variants.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

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

CHANNELS = (64, 128, 256, 512)
CONVS_PER_STAGE = 4  # 1 stem + 4 x 4 convs + classifier = 18 weight layers


class ConvUnit(nn.Module):
    """conv3x3 -> (batch norm) -> activation."""

    def __init__(self, cin: int, cout: int, stride: int = 1, bn: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=not bn)
        self.bn = nn.BatchNorm2d(cout) if bn else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class PadShortcut(nn.Module):
    """He et al.'s option A: identity, subsampled by `stride`, with extra channels zero-filled."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, cout - cin

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


class ResidualUnit(nn.Module):
    """act(bn2(conv2(act(bn1(conv1(x))))) + shortcut(x)): two weight layers."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = PadShortcut(cin, cout, stride)
        self.act2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


def _stage(cin: int, cout: int, stride: int, kind: str, convs: int = CONVS_PER_STAGE) -> nn.Sequential:
    """One stage: the first unit changes channels and stride, the others keep them."""
    if kind == "residual":
        return nn.Sequential(
            *[ResidualUnit(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(convs // 2)]
        )
    bn = kind == "plain_bn"
    return nn.Sequential(*[ConvUnit(cin if i == 0 else cout, cout, stride if i == 0 else 1, bn) for i in range(convs)])


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _build(
    name: str,
    kind: str,
    num_classes: int,
    width: float,
    dropout: DropoutConfig | None,
    small_input: bool,
    convs: int = CONVS_PER_STAGE,
) -> Backbone:
    width = check_width(width)
    dropout = dropout_or(dropout, DropoutConfig())
    c = [scaled(n, width) for n in CHANNELS]
    b = BodyBuilder(dropout)
    # Same layout as the ResNets: stem at stride 2 (+ max-pool), or stride 1 without pool for small inputs.
    b.add("stem", ConvUnit(3, c[0], 1 if small_input else 2, bn=kind != "plain"), stride=2, channels=c[0])
    if small_input:
        b.skip(2)
    else:
        b.add("maxpool", nn.MaxPool2d(kernel_size=3, stride=2, padding=1), stride=2)
    cin = c[0]
    for i, cout in enumerate(c):
        stride = 1 if i == 0 else 2
        b.add(f"layer{i + 1}", _stage(cin, cout, stride, kind, convs), stride=stride, channels=cout)
        b.end_stage()
        cin = cout
    model = Backbone(
        name,
        b,
        global_pool(),
        linear_head(c[3], num_classes, dropout.classifier),
        num_features=c[3],
        small_input=small_input,
    )
    _init(model.body)
    return model


def deep_plain(
    num_classes: int = 1000, width: float = 1.0, dropout: DropoutConfig | None = None, small_input: bool = False
) -> Backbone:
    return _build("deep_plain", "plain", num_classes, width, dropout, small_input)


def deep_plain_bn(
    num_classes: int = 1000, width: float = 1.0, dropout: DropoutConfig | None = None, small_input: bool = False
) -> Backbone:
    return _build("deep_plain_bn", "plain_bn", num_classes, width, dropout, small_input)


def deep_residual(
    num_classes: int = 1000, width: float = 1.0, dropout: DropoutConfig | None = None, small_input: bool = False
) -> Backbone:
    return _build("deep_residual", "residual", num_classes, width, dropout, small_input)


# 34 weight layers (8 convs per stage): the paper-size vanishing study, past the 20 layers of its lesson.
def deep_plain34(
    num_classes: int = 1000, width: float = 1.0, dropout: DropoutConfig | None = None, small_input: bool = False
) -> Backbone:
    return _build("deep_plain34", "plain", num_classes, width, dropout, small_input, convs=8)


def deep_plain_bn34(
    num_classes: int = 1000, width: float = 1.0, dropout: DropoutConfig | None = None, small_input: bool = False
) -> Backbone:
    return _build("deep_plain_bn34", "plain_bn", num_classes, width, dropout, small_input, convs=8)


def deep_residual34(
    num_classes: int = 1000, width: float = 1.0, dropout: DropoutConfig | None = None, small_input: bool = False
) -> Backbone:
    return _build("deep_residual34", "residual", num_classes, width, dropout, small_input, convs=8)


def weight_layers(model: nn.Module) -> int:
    """Conv and linear layers (what "18 layers" counts)."""
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())


__all__ = [
    "deep_plain",
    "deep_plain_bn",
    "deep_residual",
    "deep_plain34",
    "deep_plain_bn34",
    "deep_residual34",
    "weight_layers",
]
