"""Degradation (He et al. 2016): a deeper plain net trains worse; a deeper residual net does not.

Four roles train on the same data with the same budget (epochs, batch, optimiser, schedule; no augmentation
at the default size, so the training loss measures optimisation): a shallow and a deep plain net, a shallow
and a deep residual net (plain-18/34 and ResNet-18/34 by default; the paper size trains the paper's CIFAR
nets, 20/56 layers). The declared rules (`Params.rules`, fixed before any run) compare each family's final
training loss, deep over shallow, with 1 (no depth effect): above 1 for the plain pair, below 1 for the
residual pair, for the whole 95% interval over seeds.

The text also reports a descriptive, budget-robust measure (how much of its first-epoch loss the deep net
removed relative to the shallow one); it was chosen after seeing runs (shares of 72% and 5% at 10 epochs),
so it is not part of the verdict.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

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
    paper,
    pct,
    ratio,
    setup_axes,
    signed_pct,
    tiny,
)
from lightning_modules.studies.criteria import Rule

# Roles (the variants' names) and the networks they train by default: He et al.'s ImageNet pair at 18/34
# layers; the paper size trains its CIFAR pair at 20/56 (section 4.2).
ROLES = ("plain-shallow", "plain-deep", "residual-shallow", "residual-deep")
NETS = dict(zip(ROLES, ("plain18", "plain34", "resnet18", "resnet34")))
PAPER_NETS = dict(zip(ROLES, ("plain20", "plain56", "resnet20", "resnet56")))


class Params(StudyParams):
    # He et al. 2016 (Fig. 1 and 4): plain-34 ends at a higher training error than plain-18, ResNet-34 at a
    # lower one than ResNet-18. The null is "depth changes nothing": a final-loss ratio of 1.
    rules: list[Rule] = Field(
        default_factory=lambda: [
            Rule(
                claim="the deeper plain net trains worse",
                figure="plain.deep_over_shallow",
                op=">",
                threshold=1.0,
            ),
            Rule(
                claim="the deeper residual net trains better",
                figure="residual.deep_over_shallow",
                op="<",
                threshold=1.0,
            ),
        ]
    )
    nets: dict[str, str] = Field(
        default_factory=lambda: dict(NETS),
        description="the network each role trains (model.name); e.g. plain-deep=plain18 makes the plain pair "
        "one network, whose comparison must then come out 'not distinguishable'",
    )

    @field_validator("nets")
    @classmethod
    def _every_role(cls, nets: dict[str, str]) -> dict[str, str]:
        if set(nets) != set(ROLES):
            raise ValueError(f"nets must map exactly {', '.join(ROLES)} to a model name")
        return nets

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
            role,
            (f"model.name={params.nets[role]}",),
            {"model": params.nets[role], "family": role.split("-")[0], "depth": role.split("-")[1]},
        )
        for role in ROLES
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
    nets = results.params.nets
    for m in ROLES:
        final, low, acc = _losses(results, m)
        numbers[f"{m}.final_train_loss"], numbers[f"{m}.min_train_loss"], numbers[f"{m}.final_val_acc1"] = (
            final,
            low,
            acc,
        )
    parts, degrades = [], {}
    for family in ("plain", "residual"):
        shallow, deep = f"{family}-shallow", f"{family}-deep"
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
            f"{nets[deep]} ends at train loss {fmt(a)} vs {nets[shallow]} {fmt(b)} ({signed_pct(a, b)}, {ends}) and "
            f"removed {pct(progress)} as much of its first-epoch loss as {nets[shallow]}: the deeper {family} net "
            f"{verb}"
        )
    same_depth = ratio(numbers["residual-deep.final_train_loss"], numbers["plain-deep.final_train_loss"])
    numbers["residual_deep_over_plain_deep"] = same_depth
    epochs = max((len(v.history) for v in results.ok), default=0)
    text = (
        f"Same data and budget ({epochs} epoch{'s' if epochs != 1 else ''}): "
        + "; ".join(parts)
        + ". "
        + f"At the deeper depth the shortcuts change the final train loss by "
        f"{signed_pct(numbers['residual-deep.final_train_loss'], numbers['plain-deep.final_train_loss'])}. "
        + f"(Descriptive, not the verdict: 'degrades' is removing less than {floor:.0%} as much of the "
        f"first-epoch training loss as the shallower net; final losses within {tol:.0%} count as equal.)"
        + failed_note(results)
    )
    return {"numbers": numbers, "text": text}


def plot(results: StudyResults, path: Path) -> Path:
    plt = setup_axes()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {
        "plain-shallow": ("tab:blue", "--"),
        "plain-deep": ("tab:blue", "-"),
        "residual-shallow": ("tab:orange", "--"),
        "residual-deep": ("tab:orange", "-"),
    }
    for v in results.ok:
        color, ls = styles.get(v.name, (None, "-"))
        epochs = [r["epoch"] for r in v.history]
        label = f"{v.name} ({v.tags.get('model', '?')})"
        axes[0].plot(epochs, v.curve("train_loss"), color=color, ls=ls, marker="o", ms=3, label=label)
        axes[1].plot(epochs, v.curve("val_acc1"), color=color, ls=ls, marker="o", ms=3, label=label)
    axes[0].set_title("training loss (epoch mean)")
    axes[1].set_title("validation top-1")
    return finish(fig, axes, path, "Degradation: plain vs residual, shallow vs deep", legend_size=9)


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
    # He et al. section 4.2: plain/ResNet-20/56 on CIFAR-10, batch 128, SGD lr 0.1 momentum 0.9 wd 1e-4,
    # 64k iterations (164 epochs of 50k images), flip + crop augmentation. Our schedule is cosine where the
    # paper divides the LR by 10 at 32k and 48k iterations.
    sizes={
        **tiny(train_batches=2, epochs=2),
        **paper(
            "model.small_input=true",
            "data.image_size=32",
            "data.batch_size=128",
            "data.augment=true",
            "optim.lr=0.1",
            "optim.weight_decay=0.0001",
            "trainer.max_epochs=164",
            params={"nets": PAPER_NETS},
        ),
    },
)
