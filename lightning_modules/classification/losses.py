"""Classification loss registry: every loss takes (logits [N, K], target class indices [N]).

Each one turns the targets into the form its torch function expects:
- mse, mae, smooth_l1: softmax probabilities vs one-hot (regression losses used for classification);
- bce: per-class sigmoid vs one-hot (`binary_cross_entropy_with_logits`, one-vs-all);
- nll: log_softmax then `nll_loss`;
- hinge: multi-class margin loss (Crammer-Singer style, `multi_margin_loss`);
- soft_margin: one-vs-all logistic loss with +-1 targets (`soft_margin_loss`);
- cross_entropy: `cross_entropy`, optionally with label smoothing.
label_smoothing > 0 softens the one-hot targets of mse/mae/smooth_l1/bce and cross_entropy;
it is undefined for nll, hinge and soft_margin (ConfigError).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.errors import ConfigError


class ClassificationLoss(nn.Module):
    """Base: keeps num_classes/label_smoothing and builds (smoothed) one-hot targets."""

    name = ""
    smoothing_ok = True

    def __init__(self, num_classes: int, label_smoothing: float = 0.0):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"loss {self.name}: num_classes {num_classes!r} must be an integer >= 2")
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"loss {self.name}: label_smoothing {label_smoothing!r} is not in [0, 1)")
        if label_smoothing > 0 and not self.smoothing_ok:
            raise ConfigError(f"loss {self.name}: label_smoothing is not defined for it; use 0 or another loss")
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)

    def one_hot(self, target: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        y = F.one_hot(target, self.num_classes).to(dtype)
        if self.label_smoothing:
            y = y * (1 - self.label_smoothing) + self.label_smoothing / self.num_classes
        return y

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, label_smoothing={self.label_smoothing}"


class _ProbabilityRegression(ClassificationLoss):
    fn: Callable[..., torch.Tensor]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return type(self).fn(logits.softmax(dim=1), self.one_hot(target, logits.dtype))


class MSELoss(_ProbabilityRegression):
    name, fn = "mse", F.mse_loss


class MAELoss(_ProbabilityRegression):
    name, fn = "mae", F.l1_loss


class SmoothL1Loss(_ProbabilityRegression):
    name, fn = "smooth_l1", F.smooth_l1_loss


class BCELoss(ClassificationLoss):
    name = "bce"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, self.one_hot(target, logits.dtype))


class NLLLoss(ClassificationLoss):
    name, smoothing_ok = "nll", False

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(F.log_softmax(logits, dim=1), target)


class HingeLoss(ClassificationLoss):
    name, smoothing_ok = "hinge", False

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.multi_margin_loss(logits, target)


class SoftMarginLoss(ClassificationLoss):
    name, smoothing_ok = "soft_margin", False

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.soft_margin_loss(logits, 2 * self.one_hot(target, logits.dtype) - 1)


class CrossEntropyLoss(ClassificationLoss):
    name = "cross_entropy"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)


LOSS_REGISTRY: dict[str, type[ClassificationLoss]] = {
    cls.name: cls
    for cls in (MSELoss, MAELoss, SmoothL1Loss, BCELoss, NLLLoss, HingeLoss, SoftMarginLoss, CrossEntropyLoss)
}


def build_loss(name: str, *, num_classes: int, label_smoothing: float = 0.0) -> ClassificationLoss:
    """The loss module for `name`; call it as loss(logits [N, K], target indices [N]) -> scalar."""
    try:
        cls = LOSS_REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"loss {name!r} is unknown; choose one of: {', '.join(LOSS_REGISTRY)}") from None
    return cls(num_classes, label_smoothing)
