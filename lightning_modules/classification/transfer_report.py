"""Transfer learning, measured: the three differences the textbook names, from two learning curves.

- start:     val accuracy after the first epoch (transfer starts higher);
- slope:     mean gain in val accuracy per epoch over the first `early` epochs (it climbs faster);
- asymptote: best val accuracy reached (it ends higher).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

METRIC = "val_acc1"


@dataclass(frozen=True)
class CurveStats:
    start: float
    slope: float
    asymptote: float
    epochs: int


def curve(history: list[dict], metric: str = METRIC) -> list[float]:
    """The metric per epoch, in epoch order (epochs without it are skipped)."""
    rows = sorted((h for h in history if h.get(metric) is not None), key=lambda h: h["epoch"])
    return [float(h[metric]) for h in rows]


def curve_stats(history: list[dict], early: int = 3, metric: str = METRIC) -> CurveStats:
    values = curve(history, metric)
    if not values:
        raise ValueError(f"no {metric} in the history: nothing to measure")
    k = min(early, len(values))
    # Gain per epoch from "before training" is unknown, so the slope runs from epoch 1 to epoch k.
    slope = (values[k - 1] - values[0]) / (k - 1) if k > 1 else 0.0
    return CurveStats(start=values[0], slope=slope, asymptote=max(values), epochs=len(values))


def compare(with_transfer: list[dict], scratch: list[dict], early: int = 3, metric: str = METRIC) -> dict:
    """Both curves' stats and the transfer - scratch differences (val top-1, or val_map for a detector)."""
    t, s = curve_stats(with_transfer, early, metric), curve_stats(scratch, early, metric)
    return {
        "transfer": asdict(t),
        "scratch": asdict(s),
        "gain_start": t.start - s.start,
        "gain_slope": t.slope - s.slope,
        "gain_asymptote": t.asymptote - s.asymptote,
        "early_epochs": early,
    }


def plot(curves: dict[str, list[dict]], out: Path, metric: str = METRIC, title: str = "transfer vs scratch") -> Path:
    """Every named history's curve on one plot (the metric per epoch)."""
    import matplotlib  # lazy: matplotlib loads at draw time, Agg chosen before pyplot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: must follow matplotlib.use("Agg")

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, history in curves.items():
        values = curve(history, metric)
        ax.plot(range(1, len(values) + 1), values, marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
