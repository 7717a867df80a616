"""Dropout on a small training set: does it overfit less, and does it need more iterations?

Each variant sets the same probability p for the block dropout (Dropout2d after every stage) and the
classifier dropout (models.DropoutConfig). The training set is small and not augmented, so p = 0
overfits. Numbers per p, from the job's history:
- gap: train top-1 - val top-1 at the last epoch (train top-1 is measured while training, i.e. with
  dropout active, as the job logs it), and the val loss - train loss gap;
- best val top-1;
- iterations (optimizer steps) and epochs until val top-1 first reaches a bar common to all p:
  `converge_fraction` x the lowest best val top-1 of the variants (so every run reaches it; a run's
  own best would reward a run that learns little, early).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from lightning_modules.studies.base import (
    Study,
    StudyParams,
    StudyResults,
    Variant,
    best,
    epochs_to,
    failed_note,
    finish,
    fmt,
    last,
    paper,
    pct,
    setup_axes,
    tiny,
)
from lightning_modules.studies.criteria import Rule


def _name(p: float) -> str:
    return f"p{p:g}"


class Params(StudyParams):
    # Srivastava et al. 2014: dropout reduces overfitting (a smaller train-val gap) and training takes
    # longer to converge. Null: no difference between the smallest and the largest p.
    rules: list[Rule] = Field(
        default_factory=lambda: [
            Rule(claim="dropout overfits less", figure="gap_reduction", op=">", threshold=0.0),
            Rule(claim="dropout needs more iterations to converge", figure="iterations_ratio", op=">", threshold=1.0),
        ]
    )
    p: list[Annotated[float, Field(ge=0, lt=1)]] = Field(
        default_factory=lambda: [0.0, 0.2, 0.5], description="dropout probabilities compared (blocks and classifier)"
    )
    converge_fraction: float = Field(
        0.9, gt=0, le=1, description="converged: the epoch a run first reaches this share of its best val top-1"
    )


def variants(params: Params) -> list[Variant]:
    return [Variant(_name(p), (f"model.dropout={{blocks: {p}, classifier: {p}}}",), {"p": str(p)}) for p in params.p]


def verdict(results: StudyResults) -> dict:
    frac = results.params.converge_fraction
    numbers: dict[str, float | None] = {}
    runs = []
    for p in results.params.p:
        try:
            v = results.get(_name(p))
        except KeyError:
            continue
        if v.ok:
            runs.append((p, _name(p), v))
    tops = [best(v.curve("val_acc1")) for _, _, v in runs]
    bar = frac * min(t for t in tops if t is not None) if any(t is not None for t in tops) else None
    numbers["converge_bar_val_acc1"] = bar
    for _p, k, v in runs:
        acc, tacc = v.curve("val_acc1"), v.curve("train_acc1")
        final_train, final_val = last(tacc), last(acc)
        gap = None if final_train is None or final_val is None else final_train - final_val
        vl, tl = last(v.curve("val_loss")), last(v.curve("train_loss"))
        ep = epochs_to(acc, bar)
        steps = None if ep is None else v.history[ep - 1].get("global_step")
        numbers.update(
            {
                f"{k}.acc_gap": gap,
                f"{k}.loss_gap": None if vl is None or tl is None else vl - tl,
                f"{k}.best_val_acc1": best(acc),
                f"{k}.final_train_acc1": last(tacc),
                f"{k}.final_val_acc1": last(acc),
                f"{k}.epochs_to_converge": None if ep is None else float(ep),
                f"{k}.iterations_to_converge": None if steps is None else float(steps),
            }
        )
    parts = [
        f"p={p:g}: train-val top-1 gap {pct(numbers[f'{k}.acc_gap'])}, best val {pct(numbers[f'{k}.best_val_acc1'])}, "
        f"{fmt(numbers[f'{k}.iterations_to_converge'])} iterations to val top-1 {pct(bar)}"
        for p, k, _ in runs
    ]
    text = "; ".join(parts) + "."
    if len(runs) >= 2:
        (p0, k0, _), (p1, k1, _) = runs[0], runs[-1]
        g0, g1 = numbers[f"{k0}.acc_gap"], numbers[f"{k1}.acc_gap"]
        i0, i1 = numbers[f"{k0}.iterations_to_converge"], numbers[f"{k1}.iterations_to_converge"]
        less = None if g0 is None or g1 is None else g1 < g0
        more = None if i0 is None or i1 is None else i1 > i0
        numbers["gap_reduction"] = None if g0 is None or g1 is None else g0 - g1
        numbers["iterations_ratio"] = None if i0 is None or i1 is None or i0 == 0 else i1 / i0
        numbers["claim_less_overfitting"] = None if less is None else float(less)
        numbers["claim_more_iterations"] = None if more is None else float(more)
        text += (
            f" Claim 'dropout overfits less': {_yes(less)} (gap {pct(g1)} at p={p1:g} vs {pct(g0)} at p={p0:g}). "
            f"Claim 'dropout needs more iterations to converge': {_yes(more)} "
            f"({fmt(i1)} vs {fmt(i0)} iterations to the common bar, {frac:.0%} of the lowest best val top-1). "
            "Train top-1 is measured with dropout active."
        )
    return {"numbers": numbers, "text": text + failed_note(results)}


def _yes(flag: bool | None) -> str:
    return "n/a" if flag is None else ("confirmed" if flag else "not confirmed")


def plot(results: StudyResults, path: Path) -> Path:
    plt = setup_axes()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, v in enumerate(results.ok):
        color = plt.get_cmap("viridis")(i / max(1, len(results.ok) - 1))
        epochs = [r["epoch"] for r in v.history]
        axes[0].plot(epochs, v.curve("train_acc1"), color=color, ls="--", label=f"{v.name} train")
        axes[0].plot(epochs, v.curve("val_acc1"), color=color, marker="o", ms=3, label=f"{v.name} val")
        axes[1].plot(epochs, v.curve("train_loss"), color=color, ls="--", label=f"{v.name} train")
        axes[1].plot(epochs, v.curve("val_loss"), color=color, marker="o", ms=3, label=f"{v.name} val")
    axes[0].set_title("top-1 (dashed: train, with dropout active)")
    axes[1].set_title("loss")
    return finish(fig, axes, path, "Dropout on a small training set")


STUDY = Study(
    name="dropout",
    title="Dropout on a small training set",
    question="Does dropout reduce overfitting, and does it take more iterations to converge?",
    config="study-dropout.yaml",
    dataset="transfer",
    variants=variants,
    verdict=verdict,
    plot=plot,
    params=Params,
    sizes={**tiny(train_batches=1, epochs=2), **paper("trainer.max_epochs=60")},
)
