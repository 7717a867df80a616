"""Epochs: one long run on a small training set, without early stopping; where should it have stopped?

The val loss curve shows underfitting (falling), the optimum (its minimum) and overfitting (rising
while the train loss keeps falling). Early stopping is then replayed on the curve exactly as
Lightning's EarlyStopping(monitor="val/loss", mode="min", patience=p, min_delta=0) decides: an epoch
improves when its val loss is strictly below the best so far; after p epochs in a row without
improvement training stops. The job itself runs with early stopping off, so the whole curve (and
what early stopping saved or lost) is visible.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from lightning_modules.studies.base import (
    Study,
    StudyParams,
    StudyResults,
    Variant,
    failed_note,
    finish,
    fmt,
    paper,
    pct,
    setup_axes,
    tiny,
)
from lightning_modules.studies.criteria import Rule


class Params(StudyParams):
    # Training past the val-loss optimum overfits: the val loss is higher at the last epoch than at its
    # minimum. Null: no rise.
    rules: list[Rule] = Field(
        default_factory=lambda: [
            Rule(claim="training too long overfits", figure="overfit_rise", op=">", threshold=0.0),
        ]
    )
    epochs: int = Field(30, gt=0, description="the long run's epochs (no early stopping)")
    patience: int = Field(5, ge=1, description="epochs without val/loss improvement before early stopping")


def variants(params: Params) -> list[Variant]:
    return [
        Variant(
            "long",
            (f"trainer.max_epochs={params.epochs}", "trainer.early_stopping_patience=null"),
            {"epochs": str(params.epochs)},
        )
    ]


def early_stop_epoch(val_loss: list[float | None], patience: int) -> tuple[int | None, int | None]:
    """(epoch where EarlyStopping would stop, best epoch it would keep), 1-based; (None, best) if never."""
    best, best_epoch, wait = float("inf"), None, 0
    for epoch, v in enumerate(val_loss, start=1):
        if v is None:
            continue
        if v < best:
            best, best_epoch, wait = v, epoch, 0
        else:
            wait += 1
            if wait >= patience:
                return epoch, best_epoch
    return None, best_epoch


def verdict(results: StudyResults) -> dict:
    patience = results.params.patience
    numbers: dict[str, float | None] = {}
    runs = results.ok
    if not runs:
        return {
            "numbers": {"optimum_epoch": None, "early_stop_epoch": None},
            "text": "No finished run." + failed_note(results),
        }
    v = runs[0]
    vl, tl, acc = v.curve("val_loss"), v.curve("train_loss"), v.curve("val_acc1")
    valid = [(i + 1, x) for i, x in enumerate(vl) if x is not None]
    opt_epoch, opt_loss = min(valid, key=lambda r: r[1]) if valid else (None, None)
    n = len(vl)
    stop, kept = early_stop_epoch(vl, patience)

    def at(curve, e):
        return curve[e - 1] if e else None

    end_acc = at(acc, n)
    numbers.update(
        {
            "epochs": float(n),
            "patience": float(patience),
            "optimum_epoch": None if opt_epoch is None else float(opt_epoch),
            "val_loss_first": at(vl, 1),
            "val_loss_optimum": opt_loss,
            "val_loss_last": at(vl, n),
            "train_loss_first": at(tl, 1),
            "train_loss_optimum": at(tl, opt_epoch),
            "train_loss_last": at(tl, n),
            "val_acc1_optimum": at(acc, opt_epoch),
            "val_acc1_last": end_acc,
            "best_val_acc1": max((a for a in acc if a is not None), default=None),
            "early_stop_epoch": None if stop is None else float(stop),
            "early_stop_kept_epoch": None if kept is None else float(kept),
            "early_stop_val_acc1": at(acc, kept),
            "overfit_rise": None if opt_loss is None or at(vl, n) is None else at(vl, n) - opt_loss,
        }
    )
    overfits = opt_epoch is not None and opt_epoch < n and (numbers["overfit_rise"] or 0) > 0
    text = (
        f"{n} epochs without early stopping. Underfitting: val loss falls from {fmt(at(vl, 1))} (epoch 1) to its "
        f"optimum {fmt(opt_loss)} at epoch {opt_epoch} (val top-1 {pct(at(acc, opt_epoch))}). "
    )
    if overfits:
        text += (
            f"Overfitting after it: the train loss keeps falling ({fmt(at(tl, opt_epoch))} -> {fmt(at(tl, n))}) "
            f"while the val loss rises by {fmt(numbers['overfit_rise'])} to {fmt(at(vl, n))} at epoch {n} "
            f"(val top-1 {pct(end_acc)}). "
        )
    else:
        text += f"No overfitting within {n} epochs: the val loss is lowest at the last epoch. "
    scores = [-1.0 if a is None else a for a in acc]
    acc_epoch = max(range(1, n + 1), key=lambda e: scores[e - 1]) if n else None
    numbers["best_val_acc1_epoch"] = None if acc_epoch is None else float(acc_epoch)
    if acc_epoch is not None and acc_epoch != opt_epoch:
        text += f"Val top-1 is highest at epoch {acc_epoch} ({pct(acc[acc_epoch - 1])}), not at the val-loss optimum. "
    if stop is not None:
        text += (
            f"EarlyStopping(patience={patience}) on val/loss would have stopped at epoch {stop} keeping the "
            f"epoch-{kept} checkpoint (val top-1 {pct(at(acc, kept))}), {n - stop} epochs "
            f"({(n - stop) / n:.0%}) earlier."
        )
    else:
        text += f"EarlyStopping(patience={patience}) would not have stopped within {n} epochs."
    return {"numbers": numbers, "text": text + failed_note(results)}


def plot(results: StudyResults, path: Path) -> Path:
    plt = setup_axes()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    patience = results.params.patience
    for v in results.ok[:1]:
        epochs = [r["epoch"] for r in v.history]
        vl = v.curve("val_loss")
        axes[0].plot(epochs, v.curve("train_loss"), marker="o", ms=3, label="train loss")
        axes[0].plot(epochs, vl, marker="o", ms=3, label="val loss")
        axes[1].plot(epochs, v.curve("train_acc1"), marker="o", ms=3, label="train top-1")
        axes[1].plot(epochs, v.curve("val_acc1"), marker="o", ms=3, label="val top-1")
        valid = [(e, x) for e, x in zip(epochs, vl) if x is not None]
        stop, _ = early_stop_epoch(vl, patience)
        for ax in axes:
            if valid:
                ax.axvline(min(valid, key=lambda r: r[1])[0], color="green", ls="--", label="optimum (min val loss)")
            if stop is not None:
                ax.axvline(stop, color="red", ls=":", label=f"early stopping (patience {patience})")
    axes[0].set_title("loss")
    axes[1].set_title("top-1")
    return finish(fig, axes, path, "Epochs: underfitting -> optimum -> overfitting", legend_size=8)


STUDY = Study(
    name="epochs",
    title="Epochs and early stopping",
    question="How many epochs: where does underfitting turn into overfitting, and where would early stopping cut?",
    config="study-epochs.yaml",
    dataset="imagenet",
    variants=variants,
    verdict=verdict,
    plot=plot,
    params=Params,
    sizes={**tiny(train_batches=1, params={"epochs": 3, "patience": 1}), **paper(params={"epochs": 100})},
)
