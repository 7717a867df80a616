"""Is the challenger really better than the champion? A paired bootstrap over the test images.

Both models are scored on the same held-out images; resampling the images (with replacement) and
recomputing both scores on each resample gives the distribution of the difference. The challenger is
promoted only when the 95% interval of the difference lies above zero, so two models of equal quality
(whose difference is noise of the sample) never swap places on a lucky draw.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

RESAMPLES = 1000
Score = Callable[[np.ndarray], float]  # image indices (a resample, repeats allowed) -> the metric on them


@dataclass(frozen=True)
class Interval:
    """The challenger's score minus the champion's: on all images, and the bootstrap's 95% interval."""

    challenger: float
    champion: float
    difference: float
    low: float
    high: float
    images: int
    resamples: int

    @property
    def better(self) -> bool:
        return self.low > 0

    def describe(self) -> str:
        scores = f"{self.challenger:.4f} vs {self.champion:.4f}, difference {self.difference:+.4f}"
        interval = f"95% interval [{self.low:+.4f}, {self.high:+.4f}]"
        return f"{scores}, {interval} over {self.images} test images ({self.resamples} paired resamples)"


def paired_bootstrap(
    challenger: Score, champion: Score, images: int, *, resamples: int = RESAMPLES, seed: int = 0
) -> Interval:
    """Percentile interval of challenger - champion over `resamples` resamples of the `images` indices."""
    if images <= 0:
        raise ValueError("a paired bootstrap needs at least one image")
    rng = np.random.default_rng(seed)
    everything = np.arange(images)
    diffs = np.empty(resamples)
    for r in range(resamples):
        idx = rng.integers(0, images, images)
        diffs[r] = challenger(idx) - champion(idx)
    low, high = np.percentile(diffs, [2.5, 97.5])
    mine, theirs = challenger(everything), champion(everything)
    return Interval(mine, theirs, mine - theirs, float(low), float(high), images, resamples)


def accuracy(correct: list[bool] | np.ndarray) -> Score:
    """Top-1 on a resample, from each image's right/wrong."""
    hits = np.asarray(correct, dtype=float)
    return lambda idx: float(hits[idx].mean())
