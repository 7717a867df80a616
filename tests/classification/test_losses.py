"""Loss registry: each loss equals the torch functional computed by hand on the right target form."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.classification.losses import LOSS_REGISTRY, build_loss
from lightning_modules.errors import ConfigError

K = 5


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, K, generator=g), torch.tensor([0, 1, 2, 3, 4, 1])


def expected(name, logits, target):
    onehot = torch.zeros(len(target), K)
    onehot[torch.arange(len(target)), target] = 1.0
    probs = torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True)
    return {
        "mse": F.mse_loss(probs, onehot),
        "mae": F.l1_loss(probs, onehot),
        "smooth_l1": F.smooth_l1_loss(probs, onehot),
        "bce": F.binary_cross_entropy(torch.sigmoid(logits), onehot),
        "nll": F.nll_loss(torch.log(probs), target),
        "hinge": F.multi_margin_loss(logits, target),
        "soft_margin": F.soft_margin_loss(logits, onehot * 2 - 1),
        "cross_entropy": F.cross_entropy(logits, target),
    }[name]


@pytest.mark.parametrize("name", list(LOSS_REGISTRY))
def test_loss_values_and_gradients(name, batch):
    logits, target = batch
    logits = logits.clone().requires_grad_(True)
    value = build_loss(name, num_classes=K)(logits, target)
    assert value.ndim == 0
    torch.testing.assert_close(value, expected(name, logits.detach(), target), rtol=1e-5, atol=1e-6)
    value.backward()
    assert logits.grad.abs().sum() > 0


def test_seed_list_is_registered():
    assert set(LOSS_REGISTRY) == {"mse", "mae", "smooth_l1", "bce", "nll", "hinge", "soft_margin", "cross_entropy"}


def test_hand_computed_hinge_and_soft_margin():
    logits, target = torch.tensor([[2.0, 0.5, -1.0]]), torch.tensor([0])
    # multi-class margin: mean over j != y of max(0, 1 - x_y + x_j) / K -> (0 + 0) / 3
    assert build_loss("hinge", num_classes=3)(logits, target).item() == 0.0
    # one-vs-all soft margin with targets (+1, -1, -1)
    manual = (
        torch.log1p(torch.exp(-2.0 * torch.ones(1)))
        + torch.log1p(torch.exp(torch.tensor(0.5)))
        + torch.log1p(torch.exp(torch.tensor(-1.0)))
    ) / 3
    torch.testing.assert_close(build_loss("soft_margin", num_classes=3)(logits, target), manual.squeeze())


def test_label_smoothing(batch):
    logits, target = batch
    eps = 0.1
    ce = build_loss("cross_entropy", num_classes=K, label_smoothing=eps)(logits, target)
    torch.testing.assert_close(ce, F.cross_entropy(logits, target, label_smoothing=eps))
    soft = F.one_hot(target, K).float() * (1 - eps) + eps / K
    # cross entropy with smoothing == cross entropy against the smoothed distribution
    torch.testing.assert_close(ce, -(soft * F.log_softmax(logits, 1)).sum(1).mean())
    mse = build_loss("mse", num_classes=K, label_smoothing=eps)(logits, target)
    torch.testing.assert_close(mse, F.mse_loss(logits.softmax(1), soft))
    bce = build_loss("bce", num_classes=K, label_smoothing=eps)(logits, target)
    torch.testing.assert_close(bce, F.binary_cross_entropy_with_logits(logits, soft))
    for name in ("nll", "hinge", "soft_margin"):
        with pytest.raises(ConfigError, match="label_smoothing"):
            build_loss(name, num_classes=K, label_smoothing=eps)


def test_bad_names_and_values():
    with pytest.raises(ConfigError, match="cross_entropy"):
        build_loss("focal", num_classes=K)
    with pytest.raises(ConfigError, match="num_classes"):
        build_loss("mse", num_classes=1)
    with pytest.raises(ConfigError, match="label_smoothing"):
        build_loss("cross_entropy", num_classes=K, label_smoothing=1.0)
