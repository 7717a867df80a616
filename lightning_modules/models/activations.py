"""Activation registry: pick a hidden-layer non-linearity by name, swap it into any backbone."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lightning_modules.errors import ConfigError


class _StepSTE(torch.autograd.Function):
    """Heaviside step forward, straight-through (clipped identity) gradient backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class BinaryStep(nn.Module):
    """Step function 1[x > 0] with a straight-through gradient.

    The true derivative of a step is zero everywhere (undefined at 0), so with it no
    gradient reaches earlier layers and the net cannot train. We pass the incoming
    gradient through unchanged where |x| <= 1 (the straight-through estimator of
    Bengio et al. 2013 / Hubara et al. 2016) and zero it outside.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _StepSTE.apply(x)


def _softmax() -> nn.Module:
    """Softmax over channels (dim 1).

    Sensible on an output layer (class probabilities) or as channel attention; as a hidden
    activation it makes channels compete and shrinks every value below 1, so deep nets with it
    train poorly. It is here for the seed's activation comparison.
    """
    return nn.Softmax(dim=1)


# Darknet's leaky ReLU slope is 0.1 (torch's default is 0.01).
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "identity": nn.Identity,
    "binary_step": BinaryStep,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "softmax": _softmax,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "elu": nn.ELU,
}

# Marks modules made here, so a second swap finds them as well as the built-in ReLUs.
_MARK = "_visionflow_activation"


def build_activation(name: str) -> nn.Module:
    """A fresh activation module for `name` (see ACTIVATIONS)."""
    try:
        factory = ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"activation {name!r} is unknown; choose one of: {', '.join(ACTIVATIONS)}") from None
    module = factory()
    setattr(module, _MARK, True)
    return module


def is_activation(module: nn.Module) -> bool:
    """True for the architectures' own ReLU/LeakyReLU and for modules made by build_activation."""
    return isinstance(module, (nn.ReLU, nn.LeakyReLU)) or getattr(module, _MARK, False)


def swap_activations(module: nn.Module, name: str) -> int:
    """Replace every activation inside `module` by a fresh `build_activation(name)`; returns how many."""
    build_activation(name)  # fail early on a bad name, even if there is nothing to replace
    count = 0
    for parent in module.modules():
        for child_name, child in list(parent.named_children()):
            if is_activation(child):
                setattr(parent, child_name, build_activation(name))
                count += 1
    return count
