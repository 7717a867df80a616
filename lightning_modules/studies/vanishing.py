"""Vanishing gradients: per-layer gradient norms of 18-layer nets, at initialisation and after training.

Variants: the plain net (models/deep.py, no normalisation) with sigmoid, tanh and ReLU (the only
difference is the activation swap, `model.activation`), the plain net with batch norm and ReLU, and
the residual net with ReLU. The numbers come from each job's GradientFlowMonitor
(RUN_DIR/gradient_flow.jsonl): step 0 is the gradient at initialisation (the first batch), the last
record the gradient after training. The ratio is first-layer norm / last-layer norm (the classifier),
as the monitor logs it (`train/grad_norm/first_over_last`); far below 1 means the gradient vanishes on its
way back to the input.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field

from lightning_modules.studies.base import (
    Study,
    StudyParams,
    StudyResults,
    Variant,
    failed_note,
    fmt,
    last,
    paper,
    ratio,
    save,
    setup_axes,
    tiny,
)
from lightning_modules.studies.criteria import Rule

VARIANTS = {
    "sigmoid": ("deep_plain", "sigmoid"),
    "tanh": ("deep_plain", "tanh"),
    "relu": ("deep_plain", "relu"),
    "relu_bn": ("deep_plain_bn", "relu"),
    "residual": ("deep_residual", "relu"),
}


class Params(StudyParams):
    # A sigmoid's slope is at most 1/4, so through 18 plain layers the gradient shrinks by orders of magnitude
    # (Glorot & Bengio 2010; the seed's vanishing-gradient lesson); a residual net's identity paths carry it
    # back undiminished (He et al. 2016). Threshold: the first layer gets less than 1% of the last's.
    rules: list[Rule] = Field(
        default_factory=lambda: [
            Rule(
                claim="the plain sigmoid net's gradient vanishes at initialisation",
                figure="sigmoid.init_log10_first_over_last",
                op="<",
                threshold=-2.0,
            ),
            Rule(
                claim="the residual net's gradient does not vanish",
                figure="residual.init_log10_first_over_last",
                op=">",
                threshold=-2.0,
            ),
        ]
    )
    variants: list[str] = Field(default_factory=lambda: list(VARIANTS), description="the nets compared")
    depth: Literal[18, 34] = Field(18, description="weight layers of every net (models/deep.py)")
    vanish_below: float = Field(
        1e-2, gt=0, description="a layer's gradient vanishes below this share of the last layer's"
    )


def variants(params: Params) -> list[Variant]:
    return [
        Variant(name, (f"model.name={net}", f"model.activation={act}"), {"model": net, "activation": act})
        for name, (model, act) in VARIANTS.items()
        if name in params.variants
        for net in [model if params.depth == 18 else f"{model}34"]
    ]


def _profiles(results: StudyResults) -> dict[str, dict]:
    """Per variant: the init and final records of the gradient-flow file."""
    out = {}
    for v in results.ok:
        records = v.gradient_flow()
        if records:
            out[v.name] = {"init": records[0], "trained": records[-1], "result": v}
    return out


def verdict(results: StudyResults) -> dict:
    vanish = results.params.vanish_below
    numbers: dict[str, float | None] = {}
    prof = _profiles(results)
    init_parts, trained_parts = [], []
    for name, p in prof.items():
        init, trained = p["init"]["norms"], p["trained"]["norms"]
        r0, r1 = ratio(init[0], init[-1]), ratio(trained[0], trained[-1])
        # The classifier's gradient scale differs from a conv's; first / last hidden layer shows the decay
        # through the hidden layers alone.
        h0, h1 = ratio(init[0], init[-2]), ratio(trained[0], trained[-2])
        numbers[f"{name}.init_first_over_last"] = r0
        # orders of magnitude: what varies across seeds is the exponent, so the interval is taken on it
        numbers[f"{name}.init_log10_first_over_last"] = math.log10(r0) if r0 is not None and r0 > 0 else None
        numbers[f"{name}.trained_first_over_last"] = r1
        numbers[f"{name}.init_first_over_last_hidden"] = h0
        numbers[f"{name}.trained_first_over_last_hidden"] = h1
        numbers[f"{name}.trained_step"] = float(p["trained"]["step"])
        numbers[f"{name}.layers"] = float(len(init))
        numbers[f"{name}.val_acc1"] = last(p["result"].curve("val_acc1"))
        init_parts.append(f"{name} {fmt(r0)} [{fmt(h0)}]")
        trained_parts.append(f"{name} {fmt(r1)} [{fmt(h1)}]")
    first_over_last = {n: r for n in prof if (r := numbers[f"{n}.init_first_over_last"]) is not None}
    ranked = sorted(first_over_last, key=lambda n: first_over_last[n])
    vanishing = [n for n in ranked if first_over_last[n] < vanish]
    layers = int(max((numbers[f"{n}.layers"] or 0 for n in prof), default=0))
    steps = int(max((numbers[f"{n}.trained_step"] or 0 for n in prof), default=0))
    numbers["vanishing_variants"] = float(len(vanishing))
    text = (
        f"Gradient norm of the first layer / the last layer (classifier) of {layers}-layer nets, in brackets "
        f"first / last hidden layer. At initialisation: "
        + "; ".join(init_parts)
        + ". "
        + (f"After {steps} steps: " + "; ".join(trained_parts) + ". " if trained_parts else "")
        + (
            f"At initialisation the gradient reaching the first layer is below {fmt(vanish)} of the last "
            f"layer's (vanishes) for: {', '.join(vanishing) or 'none'}; not for: "
            f"{', '.join(n for n in ranked if n not in vanishing) or 'none'}. "
            f"Smallest ratio: {ranked[0]} ({fmt(numbers[f'{ranked[0]}.init_first_over_last'])}), largest: "
            f"{ranked[-1]} ({fmt(numbers[f'{ranked[-1]}.init_first_over_last'])})."
            if ranked
            else ""
        )
        + failed_note(results)
    )
    return {"numbers": numbers, "text": text, "ranking_init": ranked}


def plot(results: StudyResults, path: Path) -> Path:
    plt = setup_axes()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for name, p in _profiles(results).items():
        for ax, key in zip(axes, ("init", "trained")):
            norms = p[key]["norms"]
            ax.plot(range(1, len(norms) + 1), norms, marker="o", ms=3, label=name)
    for ax, title in zip(axes, ("at initialisation (step 0)", "after training (last monitored step)")):
        ax.set_yscale("log")
        ax.set_xlabel("weight layer (1 = input side, last = classifier)")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("gradient L2 norm")
    from matplotlib.ticker import MaxNLocator  # lazy: after setup_axes chose the backend

    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend()
    fig.suptitle("Vanishing gradient: per-layer gradient norm by depth")
    return save(fig, path)


STUDY = Study(
    name="vanishing_gradient",
    title="Vanishing gradient",
    question="Do gradients vanish on their way back through deep plain nets, and do ReLU, batch norm and "
    "shortcuts stop it?",
    config="study-vanishing.yaml",
    dataset="imagenet",
    variants=variants,
    verdict=verdict,
    plot=plot,
    params=Params,
    # At paper size: 34-layer nets (past the 20+ layers of the lesson), full width, 10 epochs.
    sizes={
        **tiny(3, 1, "trainer.grad_monitor_every_n_steps=2"),
        **paper("trainer.max_epochs=10", params={"depth": 34}),
    },
)
