"""Activation registry: every name builds, shapes are kept, the binary step still passes gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_modules.errors import ConfigError
from lightning_modules.models.activations import ACTIVATIONS, build_activation, swap_activations

SEED_LIST = ["identity", "binary_step", "sigmoid", "tanh", "relu", "leaky_relu", "softmax"]


def test_seed_list_is_registered():
    assert set(SEED_LIST) <= set(ACTIVATIONS)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_every_activation_keeps_shape_and_is_fresh(name):
    act = build_activation(name)
    x = torch.randn(2, 4, 3, 3)
    assert act(x).shape == x.shape
    assert build_activation(name) is not act


def test_values():
    x = torch.tensor([[-2.0, -0.5, 0.0, 0.5, 2.0]])
    assert torch.equal(build_activation("binary_step")(x), torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0]]))
    torch.testing.assert_close(build_activation("leaky_relu")(x), torch.where(x > 0, x, 0.1 * x))  # Darknet's slope
    torch.testing.assert_close(build_activation("identity")(x), x)
    s = build_activation("softmax")(torch.randn(2, 5, 3, 3))
    torch.testing.assert_close(s.sum(dim=1), torch.ones(2, 3, 3))  # over channels


def test_binary_step_has_straight_through_gradient():
    x = torch.tensor([-2.0, -0.5, 0.3, 0.9, 3.0], requires_grad=True)
    build_activation("binary_step")(x).sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))  # identity inside |x| <= 1


def test_unknown_activation_lists_choices():
    with pytest.raises(ConfigError) as err:
        build_activation("swish2")
    assert all(name in str(err.value) for name in SEED_LIST)


def test_swap_replaces_relu_and_can_swap_again():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Sequential(nn.LeakyReLU(0.1)), nn.Flatten())
    assert swap_activations(net, "tanh") == 2
    assert isinstance(net[1], nn.Tanh) and isinstance(net[2][0], nn.Tanh)
    assert swap_activations(net, "sigmoid") == 2  # modules made by the registry are found again
    assert isinstance(net[1], nn.Sigmoid)
    with pytest.raises(ConfigError):
        swap_activations(net, "nope")
