"""Activations and classification losses on one small task: accuracy and speed of convergence.

Not the full cross product: one activation sweep with cross-entropy and one loss sweep with ReLU
(the ReLU + cross-entropy job is shared). Numbers per choice: best and final val top-1, and the
epochs until val top-1 first reaches its sweep's bar, halfway between chance (1 / classes) and the
sweep's best accuracy, so every choice of a sweep is timed against the same bar. A variant that
diverges (NaN) is reported as failed, not as a broken study.
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
    epochs_to,
    failed_note,
    finish,
    last,
    paper,
    pct,
    setup_axes,
    tiny,
)
from lightning_modules.studies.criteria import Rule

BASE_ACTIVATION, BASE_LOSS = "relu", "cross_entropy"


def _act_name(a: str) -> str:
    return f"act-{a}"


def _loss_name(loss: str) -> str:
    return _act_name(BASE_ACTIVATION) if loss == BASE_LOSS else f"loss-{loss}"


class Params(StudyParams):
    # The classic claims: ReLU trains deep nets better than the saturating sigmoid (Glorot et al. 2011), and
    # cross-entropy trains a classifier better than squared error (Golik et al. 2013). Null: no difference
    # in best val top-1.
    rules: list[Rule] = Field(
        default_factory=lambda: [
            Rule(claim="ReLU beats sigmoid", figure="activation.relu_minus_sigmoid", op=">", threshold=0.0),
            Rule(claim="cross-entropy beats MSE", figure="loss.cross_entropy_minus_mse", op=">", threshold=0.0),
        ]
    )
    activations: list[str] = Field(
        default_factory=lambda: ["identity", "binary_step", "sigmoid", "tanh", "relu", "leaky_relu"],
        description="activation functions compared (names in models.activations)",
    )
    losses: list[str] = Field(
        default_factory=lambda: ["cross_entropy", "nll", "mse", "hinge", "soft_margin"],
        description="losses compared (names in classification.losses)",
    )


def variants(params: Params) -> list[Variant]:
    out = [
        Variant(
            _act_name(a),
            (f"model.activation={a}", f"loss.name={BASE_LOSS}"),
            {"activation": a, "loss": BASE_LOSS, "sweep": "activation"},
        )
        for a in params.activations
    ]
    names = {v.name for v in out}
    for loss in params.losses:
        if _loss_name(loss) not in names:
            out.append(
                Variant(
                    _loss_name(loss),
                    (f"model.activation={BASE_ACTIVATION}", f"loss.name={loss}"),
                    {"activation": BASE_ACTIVATION, "loss": loss, "sweep": "loss"},
                )
            )
    return out


def _threshold(results: StudyResults, names: list[str] | None = None) -> tuple[float | None, float | None]:
    """(chance, bar): halfway from chance to the best val top-1 of the variants `names` (default: all)."""
    runs = [v for v in results.ok if names is None or v.name in names]
    tops = [t for t in (best(v.curve("val_acc1")) for v in runs) if t is not None]
    classes = next((v.result.get("num_classes") for v in results.ok if v.result.get("num_classes")), None)
    chance = 1.0 / classes if classes else None
    if not tops or chance is None:
        return chance, None
    return chance, chance + 0.5 * (max(tops) - chance)


def _row(results: StudyResults, name: str, bar: float | None) -> dict[str, float | None]:
    try:
        v = results.get(name)
    except KeyError:
        v = None
    if v is None or not v.ok:
        return {"best_val_acc1": None, "final_val_acc1": None, "epochs_to_bar": None, "final_train_loss": None}
    acc = v.curve("val_acc1")
    ep = epochs_to(acc, bar)
    return {
        "best_val_acc1": best(acc),
        "final_val_acc1": last(acc),
        "epochs_to_bar": None if ep is None else float(ep),
        "final_train_loss": last(v.curve("train_loss")),
    }


SWEEPS = (
    ("activation", "activations", _act_name, f"{BASE_LOSS} loss"),
    ("loss", "losses", _loss_name, f"{BASE_ACTIVATION} activation"),
)


def verdict(results: StudyResults) -> dict:
    chance, _ = _threshold(results)
    numbers: dict[str, float | None] = {"chance": chance}
    text = []
    for sweep, plural, key, fixed in SWEEPS:
        items = getattr(results.params, plural)
        _, bar = _threshold(results, [key(i) for i in items])
        numbers[f"{sweep}.bar"] = bar
        rows = {item: _row(results, key(item), bar) for item in items}
        for item, row in rows.items():
            for k, val in row.items():
                numbers[f"{sweep}.{item}.{k}"] = val
        accs = {i: a for i in rows if (a := rows[i]["best_val_acc1"]) is not None}
        ranked = sorted(accs, key=lambda i: -accs[i])
        epochs = {i: rows[i]["epochs_to_bar"] for i in rows}
        parts = ", ".join(f"{i} {pct(accs[i])} ({_epochs_text(rows[i]['epochs_to_bar'])})" for i in ranked)
        reached = [e for e in epochs.values() if e is not None]
        fastest = [i for i in rows if reached and epochs[i] == min(reached)]
        top = [i for i in ranked if rows[i]["best_val_acc1"] == rows[ranked[0]]["best_val_acc1"]] if ranked else []
        text.append(
            f"{plural.capitalize()} (with the {fixed}): best val top-1, and epochs until val top-1 reaches "
            f"{pct(bar)}: {parts}. Most accurate: {', '.join(top) or 'n/a'}; fastest to {pct(bar)}: "
            f"{', '.join(fastest) or 'none'}."
        )
    for figure, better, worse in (
        ("activation.relu_minus_sigmoid", "activation.relu", "activation.sigmoid"),
        ("loss.cross_entropy_minus_mse", "loss.cross_entropy", "loss.mse"),
    ):
        x, y = numbers.get(f"{better}.best_val_acc1"), numbers.get(f"{worse}.best_val_acc1")
        numbers[figure] = None if x is None or y is None else x - y
    text.append(f"(Chance is {pct(chance)}; each sweep's bar is halfway from chance to its best variant.)")
    return {"numbers": numbers, "text": " ".join(text) + failed_note(results)}


def plot(results: StudyResults, path: Path) -> Path:
    plt = setup_axes()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    chance, _ = _threshold(results)
    for ax, (sweep, plural, key, _fixed) in zip(axes, SWEEPS):
        _, thr = _threshold(results, [key(i) for i in getattr(results.params, plural)])
        for v in results.ok:
            if v.tags.get("sweep") == sweep or (v.name == _act_name(BASE_ACTIVATION)):
                label = v.tags["activation"] if sweep == "activation" else v.tags["loss"]
                ax.plot([r["epoch"] for r in v.history], v.curve("val_acc1"), marker="o", ms=3, label=label)
        if thr is not None:
            ax.axhline(thr, color="grey", ls="--", lw=1, label="bar")
        if chance is not None:
            ax.axhline(chance, color="grey", ls=":", lw=1, label="chance")
        ax.set_title(f"{sweep} sweep: val top-1")
    return finish(fig, axes, path, "Activations (cross-entropy) and losses (ReLU)")


STUDY = Study(
    name="activations_losses",
    title="Activations and losses",
    question="Which hidden activation and which classification loss train best and fastest on one small task?",
    config="study-activations.yaml",
    dataset="imagenet",
    variants=variants,
    verdict=verdict,
    plot=plot,
    tolerate_failures=True,
    params=Params,
    sizes={**tiny(train_batches=1, epochs=2), **paper("trainer.max_epochs=30")},
)


def _epochs_text(epochs: float | None) -> str:
    return "never" if epochs is None else f"{int(epochs)} ep"
