"""Reading an LR range test (lightning_modules/training/lr_range.py): smoothing, divergence cut, suggestion."""

import math
import random

import pytest
import torch
from torch import nn

from lightning_modules.training import lr_range


def _sweep(n: int = 100, lo: float = 1e-6, hi: float = 1.0, best: float = 1e-2, noise: float = 0.1, seed: int = 0):
    """A from-scratch sweep: flat, a dip at `best`, then a blow-up; noisy like small batches."""
    rng = random.Random(seed)
    lrs = [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
    losses = []
    for lr in lrs:
        d = math.log10(lr / best)
        base = 2.3 - 0.3 * math.exp(-((d / 0.5) ** 2)) + (3.0 * d**2 if d > 0 else 0.0)
        losses.append(base + rng.gauss(0, noise))
    return lrs, losses


def test_centred_smoothing_has_no_lag_and_skips_non_finite():
    v = [5.0, 4.0, 3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    s = lr_range.smooth(v, 3)
    assert min(range(len(s)), key=s.__getitem__) == 4  # the minimum stays where it is
    assert lr_range.smooth([2.0] * 6, 5) == [2.0] * 6
    s = lr_range.smooth([1.0, math.nan, 3.0], 3)
    assert s[0] == 1.0 and math.isnan(s[1]) and s[2] == 3.0


def test_divergence_cut():
    assert lr_range.diverged_at([3.0, 2.0, 1.0, 2.0, 3.9, 4.1, 9.0]) == 5  # 4.1 > 4 x the best (1.0)
    assert lr_range.diverged_at([3.0, 2.0, math.inf, 1.0]) == 2
    assert lr_range.diverged_at([1.0, 1.1]) == 2


@pytest.mark.parametrize("lo", [1e-6, 1e-4])
def test_suggestion_finds_the_dip_whatever_the_sweep_starts_at(lo):
    lrs, losses = _sweep(lo=lo)
    s = lr_range.suggest(lrs, losses)
    assert 10**-2.5 <= s.lr_min_loss <= 10**-1.5  # the dip at 1e-2, through the noise
    assert s.lr == pytest.approx(s.lr_min_loss / 10)
    assert s.used < len(lrs)  # the blow-up was cut off


def test_suggestion_ignores_the_blow_up_even_when_it_dips_back():
    lrs, losses = _sweep(noise=0.0)
    losses[-3:] = [0.1, 0.1, 0.1]  # after NaN-level losses nothing counts, however low
    losses[-10] = math.nan
    s = lr_range.suggest(lrs, losses)
    assert s.lr_min_loss < lrs[-10]


def test_too_short_a_sweep_is_refused():
    with pytest.raises(ValueError, match="at least 3 steps"):
        lr_range.suggest([1e-3, 1e-2], [2.0, 1.0])


def test_recording_losses_sees_every_step_and_restores_the_module():
    import pytorch_lightning as L

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return (self.lin(batch[0]) - batch[1]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.TensorDataset(torch.randn(32, 2), torch.randn(32, 1))
    module = Tiny()
    with lr_range.recording_losses(module) as losses:
        L.Trainer(
            max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
        ).fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    assert len(losses) == 5 and all(math.isfinite(x) and x > 0 for x in losses)
    assert "training_step" not in vars(module)  # the class's method again
