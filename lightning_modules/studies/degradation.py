"""Degradation (He et al. 2016): a deeper plain net trains worse; a deeper residual net does not.

plain-18, plain-34, ResNet-18 and ResNet-34 train on the same data with the same budget (epochs,
batch, optimiser, schedule; no augmentation, so the training loss measures optimisation). The verdict
compares the training loss (history `train_loss`, the epoch mean) of the 34-layer net with the
18-layer one of each family at the end; and decides "degrades" on a measure that depends less on the
budget: how much of its first-epoch loss the deep net removed relative to the shallow one (a deep net
that is merely slower to start still makes progress; a degraded one barely moves). Measured on the
embedded data: at 10 epochs resnet34 still ends above resnet18 but has made 72% of its progress, while
plain34 has made 5%; at 30 epochs the shares are 103% and 9%.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from lightning_modules.studies.base import (
    Study,
    StudyParams,
    StudyResults,
    Variant,
    best,
    failed_note,
    finish,
    fmt,
    last,
    pct,
    ratio,
    setup_axes,
    signed_pct,
    tiny,
)

MODELS = ("plain18", "plain34", "resnet18", "resnet34")


class Params(StudyParams):
    tolerance: float = Field(0.02, ge=0, description="final losses within this relative gap count as equal")
    progress_floor: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="the deeper net degrades when it removes less than this share of the shallow net's "
        "first-epoch loss",
    )


def variants(params: Params) -> list[Variant]:
    return [
        Variant(
            m,
            (f"model.name={m}",),
            {"model": m, "family": "plain" if m.startswith("plain") else "residual", "depth": m[-2:]},
        )
        for m in MODELS
    ]


def _losses(results: StudyResults, name: str) -> tuple[float | None, float | None, float | None]:
    try:
        v = results.get(name)
    except KeyError:
        return None, None, None
    if not v.ok:
        return None, None, None
    return last(v.curve("train_loss")), best(v.curve("train_loss"), "min"), last(v.curve("val_acc1"))


def _drop(results: StudyResults, name: str) -> float | None:
    """First-epoch train loss minus final train loss (how far training got)."""
    try:
        v = results.get(name)
    except KeyError:
        return None
    losses = [x for x in v.curve("train_loss") if x is not None] if v.ok else []
    return losses[0] - losses[-1] if losses else None


def verdict(results: StudyResults) -> dict:
    tol, floor = results.params.tolerance, results.params.progress_floor
    numbers: dict[str, float | None] = {}
    for m in MODELS:
        final, low, acc = _losses(results, m)
        numbers[f"{m}.final_train_loss"], numbers[f"{m}.min_train_loss"], numbers[f"{m}.final_val_acc1"] = (
            final,
            low,
            acc,
        )
    parts, degrades = [], {}
    for family, shallow, deep in (("plain", "plain18", "plain34"), ("residual", "resnet18", "resnet34")):
        a, b = numbers[f"{deep}.final_train_loss"], numbers[f"{shallow}.final_train_loss"]
        r = ratio(a, b)
        numbers[f"{family}.deep_over_shallow"] = r
        worse = None if r is None else r > 1 + tol
        numbers[f"{family}.deeper_trains_worse"] = None if worse is None else float(worse)
        # Budget-robust: the share of its first-epoch loss the deep net removed, relative to the shallow
        # one. A deep net that is only slower still gets far; a degraded one barely moves.
        base = _drop(results, shallow)
        progress = ratio(_drop(results, deep), base) if base is not None and base > 0 else None
        numbers[f"{family}.deep_progress_vs_shallow"] = progress
        degrades[family] = None if progress is None else progress < floor
        verdict_ = degrades[family]
        numbers[f"{family}.degrades"] = None if verdict_ is None else float(verdict_)
        verb = {None: "n/a", True: "degrades", False: "does not degrade"}[degrades[family]]
        ends = "n/a" if worse is None else ("higher" if worse else "not higher")
        parts.append(
            f"{deep} ends at train loss {fmt(a)} vs {shallow} {fmt(b)} ({signed_pct(a, b)}, {ends}) and "
            f"removed {pct(progress)} as much of its first-epoch loss as {shallow}: the deeper {family} net {verb}"
        )
    same_depth = ratio(numbers["resnet34.final_train_loss"], numbers["plain34.final_train_loss"])
    numbers["resnet34_over_plain34"] = same_depth
    reproduced = degrades.get("plain") is True and degrades.get("residual") is False
    numbers["reproduced"] = None if None in degrades.values() else float(reproduced)
    epochs = max((len(v.history) for v in results.ok), default=0)
    text = (
        f"Same data and budget ({epochs} epoch{'s' if epochs != 1 else ''}): "
        + "; ".join(parts)
        + ". "
        + f"At 34 layers the shortcuts change the final train loss by "
        f"{signed_pct(numbers['resnet34.final_train_loss'], numbers['plain34.final_train_loss'])}. "
        + (
            "He et al.'s degradation finding is reproduced: depth degrades the plain net but not the residual one."
            if reproduced
            else "He et al.'s finding is not reproduced at this budget "
            f"(plain degrades: {degrades.get('plain')}, residual degrades: {degrades.get('residual')})."
        )
        + f" (A deeper net degrades when it removes less than {floor:.0%} as much of its first-epoch training "
        f"loss as the shallower one in the same budget; final losses within {tol:.0%} count as equal.)"
        + failed_note(results)
    )
    return {"numbers": numbers, "text": text}


def plot(results: StudyResults, path: Path) -> Path:
    plt = setup_axes()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {
        "plain18": ("tab:blue", "--"),
        "plain34": ("tab:blue", "-"),
        "resnet18": ("tab:orange", "--"),
        "resnet34": ("tab:orange", "-"),
    }
    for v in results.ok:
        color, ls = styles.get(v.name, (None, "-"))
        epochs = [r["epoch"] for r in v.history]
        axes[0].plot(epochs, v.curve("train_loss"), color=color, ls=ls, marker="o", ms=3, label=v.name)
        axes[1].plot(epochs, v.curve("val_acc1"), color=color, ls=ls, marker="o", ms=3, label=v.name)
    axes[0].set_title("training loss (epoch mean)")
    axes[1].set_title("validation top-1")
    return finish(fig, axes, path, "Degradation: plain vs residual, 18 vs 34 layers", legend_size=9)


STUDY = Study(
    name="degradation",
    title="Degradation: plain vs residual depth",
    question="Does a deeper plain net train worse than a shallower one while a deeper residual net does not?",
    config="study-degradation.yaml",
    dataset="imagenet",
    variants=variants,
    verdict=verdict,
    plot=plot,
    params=Params,
    sizes=tiny(train_batches=2, epochs=2),
)
