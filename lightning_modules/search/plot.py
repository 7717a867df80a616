"""figures/search.png: every trial of a search on parallel coordinates, and its value against each parameter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_modules.search.config import SearchConfig
from lightning_modules.search.space import ParamSpec


def plot_search(rows: list[dict[str, Any]], cfg: SearchConfig, out: Path) -> Path | None:
    """Parallel coordinates (one line per trial, colored by value; pruned dashed) and value vs each param.

    Our own plot rather than optuna.visualization: that one leaves pruned trials out. Outlying values
    (a diverged trial's loss) are clipped to Tukey's fences, so they do not flatten the rest.
    """
    shown = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED") and r["value"] is not None and r["params"]]
    if not shown:
        return None
    import matplotlib  # heavy: loaded only when there is something to plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: must follow matplotlib.use("Agg")
    import numpy as np  # lazy: only when there is something to plot (see above)

    keys = list(cfg.space)
    logs = {k: _log_scale(cfg.space[k], [r["params"].get(k) for r in shown]) for k in keys}
    raw = np.array([r["value"] for r in shown], dtype=float)
    q1, q3 = np.percentile(raw, [25, 75])
    values = np.clip(raw, q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)).tolist()
    clipped = int((np.array(values) != raw).sum())
    columns = [_axis([r["params"].get(k) for r in shown], logs[k]) for k in keys]
    columns.append(_axis(values, False))
    lo, hi = min(values), max(values) if max(values) > min(values) else min(values) + 1
    norm = plt.Normalize(lo, hi)
    cmap = plt.get_cmap("viridis_r" if cfg.direction == "minimize" else "viridis")  # better = brighter
    n = len(keys)
    fig = plt.figure(figsize=(max(8, 2.2 * (n + 1)), 8))
    ax = fig.add_subplot(2, 1, 1)
    for i, r in enumerate(shown):
        pruned = r["state"] == "PRUNED"
        ax.plot(
            range(n + 1),
            [c[0][i] for c in columns],
            color=cmap(norm(values[i])),
            lw=1.2 if pruned else 2.2,
            ls="--" if pruned else "-",
            alpha=0.6 if pruned else 0.95,
            marker="o",
            ms=3,
        )
    for j, (_, labels) in enumerate(columns):
        ax.axvline(j, color="0.7", lw=0.8)
        for y, text in labels:
            ax.text(j + 0.02, y, text, fontsize=7, va="center")
    ax.set_xticks(range(n + 1), [*keys, cfg.metric])
    ax.set_yticks([])
    ax.set_title(
        f"{cfg.name}: {len(shown)} trials ({sum(r['state'] == 'PRUNED' for r in shown)} pruned, dashed)"
        + (f"; {clipped} outlying {cfg.metric} clipped" if clipped else "")
    )
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=cfg.metric)
    for j, key in enumerate(keys):
        _scatter(
            fig.add_subplot(2, n, n + j + 1),
            shown,
            values,
            key,
            cfg.metric if j == 0 else None,
            logs[key],
            lambda v: cmap(norm(v)),
        )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _scatter(
    sub, shown: list[dict[str, Any]], values: list[float], key: str, ylabel: str | None, xlog: bool, color
) -> None:
    """Value against one parameter: completed trials as dots, pruned ones as crosses."""
    from matplotlib.ticker import NullFormatter  # heavy: only when plotting

    for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
        pts = [(r["params"].get(key), v) for r, v in zip(shown, values) if r["state"] == state]
        if pts:
            xs, ys = zip(*pts)
            sub.scatter([_plottable(x) for x in xs], ys, marker=marker, label=state.lower(), c=[color(y) for y in ys])
    if xlog:
        sub.set_xscale("log")
        sub.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on narrow panels
    sub.set_xlabel(key, fontsize=8)
    if ylabel:
        sub.set_ylabel(ylabel)
        sub.legend(fontsize=7)
    sub.tick_params(labelsize=7)


def _log_scale(spec: ParamSpec, values: list[Any]) -> bool:
    """A log range, or listed positive numbers spanning two decades or more (learning rates)."""
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values):
        return False
    return spec.log or max(values) / min(values) >= 100


def _axis(raw: list[Any], log_scale: bool) -> tuple[list[float], list[tuple[float, str]]]:
    """Values scaled to 0..1 for one parallel-coordinates axis, and a few (position, label) ticks."""
    import numpy as np  # with matplotlib, only when plotting

    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
        levels = sorted({str(v) for v in raw})
        pos = {v: i / max(1, len(levels) - 1) for i, v in enumerate(levels)}
        return [pos[str(v)] for v in raw], [(p, v) for v, p in pos.items()]
    x = np.array(raw, dtype=float)
    if log_scale:  # only ever asked for positive values (_log_scale)
        x = np.log10(x)
    lo, hi = float(x.min()), float(x.max())
    scaled = [(v - lo) / (hi - lo) if hi > lo else 0.5 for v in x]
    ticks = [(0.0, lo), (1.0, hi)] if hi > lo else [(0.5, lo)]
    fmt = (lambda v: f"{10**v:.3g}") if log_scale else (lambda v: f"{v:.3g}")
    return scaled, [(p, fmt(v)) for p, v in ticks]


def _plottable(x: Any) -> Any:
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)
