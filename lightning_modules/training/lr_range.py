"""Reading an LR range test: the raw per-step losses -> a smoothed curve -> a suggested learning rate.

Lightning's `Tuner.lr_find` sweeps the LR and records a smoothed loss, but its smoothing starts from 0
and divides by 1 - beta^(step + 1) with the step already counted, so the first ~50 points read far
below the real loss (Lightning issue #14167); with a short sweep the curve seems to *rise* from the
smallest LR and its steepest-slope suggestion (a gradient taken against the linear LR) lands in that
artefact. We record the raw loss of every step ourselves (`recording_losses`), smooth it with a
centred moving average (no lag, so the minimum stays where it is), cut the sweep where the loss blows
up, and suggest one tenth of the LR at the lowest loss (fastai's `lr_min` rule): the lowest point is
already at the edge of stability, and a short sweep from scratch is often flat until just before it,
which leaves the steepest-slope and "valley" rules to pick from noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytorch_lightning as L


@contextmanager
def recording_losses(module: L.LightningModule) -> Iterator[list[float]]:
    """Yields a list that receives the raw loss of every training step of `module` inside the block.

    lr_find swaps the trainer's callbacks for its own while it sweeps, so a callback would see
    nothing; wrapping this module's `training_step` (undone on exit) does.
    """
    losses: list[float] = []
    step = module.training_step

    def recorded(*args, **kwargs):
        out = step(*args, **kwargs)
        loss = out["loss"] if isinstance(out, dict) else out
        losses.append(float(loss.detach()) if loss is not None else math.nan)
        return out

    module.training_step = recorded
    try:
        yield losses
    finally:
        del module.training_step  # back to the class's method


def smooth(losses: list[float], window: int) -> list[float]:
    """Centred moving average over `window` steps (fewer at the ends); non-finite values are skipped."""
    half = max(0, window // 2)
    out = []
    for i in range(len(losses)):
        near = [x for x in losses[max(0, i - half) : i + half + 1] if math.isfinite(x)]
        out.append(sum(near) / len(near) if near and math.isfinite(losses[i]) else math.nan)
    return out


def diverged_at(curve: list[float], factor: float = 4.0) -> int:
    """Index after the last usable point: the first non-finite value or one `factor` x above the best."""
    best = math.inf
    for i, x in enumerate(curve):
        if not math.isfinite(x) or x > factor * best:
            return i
        best = min(best, x)
    return len(curve)


@dataclass(frozen=True)
class Suggestion:
    lr: float  # the suggested learning rate: lr_min_loss / divisor
    lr_min_loss: float  # the LR at the smoothed loss's minimum, just before the loss turns up
    smoothed: list[float]
    used: int  # points before the loss diverged


def suggest(lrs: list[float], losses: list[float], window_fraction: float = 0.1, divisor: float = 10.0) -> Suggestion:
    """The LR to use from a sweep's raw per-step `losses` at learning rates `lrs` (same length)."""
    n = min(len(lrs), len(losses))
    if n < 3:
        raise ValueError(f"an LR range test needs at least 3 steps, got {n}")
    curve = smooth(losses[:n], max(3, round(window_fraction * n)))
    used = diverged_at(curve)
    finite = [i for i in range(used) if math.isfinite(curve[i])]
    if not finite:
        raise ValueError("the loss was not finite at the smallest learning rates")
    lowest = min(finite, key=lambda i: curve[i])
    return Suggestion(lr=float(lrs[lowest]) / divisor, lr_min_loss=float(lrs[lowest]), smoothed=curve, used=used)


def plot(lrs: list[float], losses: list[float], s: Suggestion, path) -> None:
    """Raw and smoothed loss against the LR (log axis), with both picks marked."""
    import matplotlib  # lazy: matplotlib loads at draw time, Agg chosen before pyplot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: must follow matplotlib.use("Agg")

    n = len(s.smoothed)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(lrs[:n], losses[:n], color="0.75", lw=0.8, label="loss per step")
    ax.plot(lrs[:n], s.smoothed, color="tab:blue", label="smoothed")
    ax.axvline(s.lr, color="tab:red", ls="--", label=f"suggested {s.lr:.3g} (lowest / 10)")
    ax.axvline(s.lr_min_loss, color="tab:orange", ls=":", label=f"lowest loss at {s.lr_min_loss:.3g}")
    finite = [x for x in s.smoothed[: s.used] if math.isfinite(x)]
    if finite:  # keep the blow-up from flattening the interesting part
        lo, hi = min(finite), max(finite)
        ax.set_ylim(lo - 0.1 * (hi - lo + 1e-9), hi + 0.3 * (hi - lo + 1e-9))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
