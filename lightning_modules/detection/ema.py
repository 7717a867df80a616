"""EMA of the weights for detection training: Lightning's WeightAveraging with YOLOv5's decay ramp.

decay_t = decay * (1 - exp(-t / tau)) after t updates: the first averages follow the fast-moving
weights closely, later ones average over ~1 / (1 - decay) steps. WeightAveraging swaps the average
in for validation and writes it as the checkpoint's `state_dict` (the raw weights go to
`current_model_state`, so a resumed run continues both).
"""

from __future__ import annotations

import math

import torch
from pytorch_lightning.callbacks import WeightAveraging


class RampedEMA(WeightAveraging):
    def __init__(self, decay: float = 0.9999, tau: float = 2000.0):
        def avg_fn(averaged: torch.Tensor, current: torch.Tensor, num_averaged) -> torch.Tensor:
            d = decay * (1.0 - math.exp(-float(num_averaged) / tau))
            return averaged * d + current * (1.0 - d)

        super().__init__(avg_fn=avg_fn, use_buffers=True)
        self.decay, self.tau = decay, tau
