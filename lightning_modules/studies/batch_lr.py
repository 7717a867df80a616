"""Batch size and learning rate: fixed LR vs the linear scaling rule, time per epoch, and the tuners.

Variants train the same epochs at several batch sizes, once with the LR fixed at `lr` and once with
`optim.reference_batch` = `reference_batch`, i.e. LR = lr x batch / reference_batch (Goyal et al. 2017);
at the reference batch both are the same job. Time per epoch is the job's fit wall time / epochs
(train + validation; the jobs run one after another, so they do not share the cores).

The batch-size finder and the LR finder (lightning_modules.training.tune, Lightning's Tuner) run in this
process after the jobs, at the reference batch: a launched job cannot be asked for them, because
JobRequest carries only configs and `--set` overrides (no `--tune` flag), and tuning is
single-device by necessity anyway. Their picks are in OUT/tune/{batch,lr}/tuned.yaml and
OUT/tune/lr/figures/lr_find.png.
On a CPU the batch-size finder has no out-of-memory signal: its "largest batch" is where its trials
(or the data) ran out, and the verdict says so.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field

from lightning_modules.config import load_config
from lightning_modules.studies.base import (
    Study,
    StudyParams,
    StudyResults,
    Variant,
    best,
    failed_note,
    fmt,
    last,
    paper,
    pct,
    ratio,
    save,
    setup_axes,
    tiny,
)
from lightning_modules.studies.criteria import Rule

log = logging.getLogger("visionflow")


def _name(batch: int, rule: str | None) -> str:
    return f"b{batch}" if rule is None else f"b{batch}-{rule}"


class Params(StudyParams):
    # Goyal et al. 2017 (linear scaling rule): at a large batch, an LR scaled with the batch beats the
    # reference LR; and a larger batch makes an epoch faster. Nulls: no accuracy gain, no speed-up.
    rules: list[Rule] = Field(
        default_factory=lambda: [
            Rule(
                claim="scaling the LR with the batch helps at the largest batch",
                figure="scaling_gain_at_largest_batch",
                op=">",
                threshold=0.0,
            ),
            Rule(
                claim="the largest batch makes an epoch faster",
                figure="epoch_speedup_largest_vs_smallest",
                op=">",
                threshold=1.0,
            ),
        ]
    )
    batch_sizes: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [16, 32, 64, 128], description="per-device batch sizes compared"
    )
    reference_batch: int = Field(16, gt=0, description="the batch `lr` is given for (linear scaling rule)")
    lr: float = Field(0.02, gt=0, description="learning rate at reference_batch")
    lr_steps: int = Field(100, gt=0, description="steps of the LR range test")
    max_batch_trials: int = Field(4, gt=0, description="doublings the batch-size finder tries")


def variants(params: Params) -> list[Variant]:
    ref, lr = params.reference_batch, params.lr
    out = []
    for b in params.batch_sizes:
        b = int(b)
        if b == ref:
            out.append(
                Variant(
                    _name(b, None),
                    (f"data.batch_size={b}", f"optim.lr={lr}", "optim.reference_batch=null"),
                    {"batch": str(b), "rule": "reference"},
                )
            )
            continue
        out.append(
            Variant(
                _name(b, "fixed"),
                (f"data.batch_size={b}", f"optim.lr={lr}", "optim.reference_batch=null"),
                {"batch": str(b), "rule": "fixed"},
            )
        )
        out.append(
            Variant(
                _name(b, "scaled"),
                (f"data.batch_size={b}", f"optim.lr={lr}", f"optim.reference_batch={ref}"),
                {"batch": str(b), "rule": "scaled"},
            )
        )
    return out


def tune_step(ctx: dict[str, Any]) -> dict[str, Any]:
    """Batch-size finder and LR finder, each on a fresh model at the reference batch and LR, in this
    process (OUT/tune/batch, OUT/tune/lr); a rerun reuses their tuned.yaml."""
    params, tune_dir = ctx["params"], Path(ctx["out"]) / "tune"
    ref, lr_steps = params.reference_batch, params.lr_steps
    train_images = json.loads((Path(ctx["data"]) / "manifest.json").read_text())["totals"]["train"]
    # lr_find stops at the trainer's max_epochs: give it enough epochs for all of its steps.
    epochs = max(1, math.ceil(lr_steps / max(1, train_images // ref)) + 1)
    overrides = [
        *ctx["overrides"],
        f"data.batch_size={ref}",
        f"optim.lr={params.lr}",
        "optim.reference_batch=null",
        f"trainer.max_epochs={epochs}",
    ]
    found = {}
    for what, run_dir in (("batch", tune_dir / "batch"), ("lr", tune_dir / "lr")):
        if not (run_dir / "tuned.yaml").is_file():
            _tune(
                ctx["configs"],
                overrides,
                Path(ctx["data"]),
                run_dir,
                ctx.get("env", {}),
                scale_batch=what == "batch",
                find_lr=what == "lr",
                max_batch_trials=params.max_batch_trials,
                lr_steps=lr_steps,
            )
        found[what] = yaml.safe_load((run_dir / "tuned.yaml").read_text()) or {}
    sweep = tune_dir / "lr" / "lr_find.json"
    files = [
        tune_dir / "batch" / "tuned.yaml",
        tune_dir / "lr" / "tuned.yaml",
        tune_dir / "lr" / "figures" / "lr_find.png",
        sweep,
    ]
    return {
        "tuned_batch": found["batch"].get("data", {}).get("batch_size"),
        "tuned_lr": found["lr"].get("optim", {}).get("lr"),
        "tuned_lr_batch": ref,
        "lr_steps": lr_steps,
        "lr_min_loss": json.loads(sweep.read_text()).get("lr_min_loss") if sweep.is_file() else None,
        "artifacts": [str(p) for p in files if p.is_file()],
    }


def _tune(configs, overrides, data: Path, run_dir: Path, env: dict[str, str], **kwargs) -> None:

    # lazy: the study registry (loaded by Dagster and the CLI) must not import torch
    import torch

    from lightning_modules.training.tune import tune  # lazy: Lightning

    threads, saved = torch.get_num_threads(), dict(os.environ)
    os.environ.update(env)  # the jobs' environment (VISIONFLOW_THREADS) applies to tuning too
    try:
        tune(load_config(configs, overrides), data, run_dir, **kwargs)
    finally:
        torch.set_num_threads(threads)  # tune() sets the process's threads for itself
        os.environ.clear()
        os.environ.update(saved)


def _series(results: StudyResults, rule: str) -> list:
    """(batch, variant) in batch order for one rule; the reference job belongs to both."""
    rows = []
    for v in results.ok:
        if v.tags.get("rule") in (rule, "reference"):
            rows.append((int(v.tags["batch"]), v))
    return sorted(rows, key=lambda r: r[0])


def _seconds_per_epoch(result: dict) -> float | None:
    epochs = len(result.get("history") or []) or result.get("epochs")
    secs = result.get("fit_seconds_this_attempt")
    return None if not epochs or secs is None else float(secs) / epochs


def verdict(results: StudyResults) -> dict:
    p = results.params
    numbers: dict[str, float | None] = {}
    for v in results.ok:
        numbers[f"{v.name}.effective_batch"] = float(v.result.get("effective_batch") or 0) or None
        numbers[f"{v.name}.lr_effective"] = v.result.get("lr_effective")
        numbers[f"{v.name}.seconds_per_epoch"] = _seconds_per_epoch(v.result)
        numbers[f"{v.name}.final_val_acc1"] = last(v.curve("val_acc1"))
        numbers[f"{v.name}.best_val_acc1"] = best(v.curve("val_acc1"))
        numbers[f"{v.name}.final_train_loss"] = last(v.curve("train_loss"))
    fixed, scaled = _series(results, "fixed"), _series(results, "scaled")
    text = []
    if fixed:
        (b0, v0), (b1, v1) = fixed[0], fixed[-1]
        t0, t1 = numbers[f"{v0.name}.seconds_per_epoch"], numbers[f"{v1.name}.seconds_per_epoch"]
        numbers["epoch_speedup_largest_vs_smallest"] = ratio(t0, t1)
        text.append(f"Time per epoch: {fmt(t0)} s at batch {b0} vs {fmt(t1)} s at batch {b1} ({fmt(ratio(t0, t1))}x).")
        accs = ", ".join(f"{b}: {pct(numbers[f'{v.name}.final_val_acc1'])}" for b, v in fixed)
        text.append(f"Fixed LR {fmt(p.lr)}: final val top-1 by batch {accs}.")
    if scaled:
        accs = ", ".join(
            f"{b}: {pct(numbers[f'{v.name}.final_val_acc1'])} (LR {fmt(numbers[f'{v.name}.lr_effective'])})"
            for b, v in scaled
        )
        text.append(f"Linearly scaled LR (reference batch {p.reference_batch}): {accs}.")
    if fixed and scaled and fixed[-1][0] == scaled[-1][0] and fixed[-1][0] != p.reference_batch:
        b = fixed[-1][0]
        af, as_ = numbers[f"{fixed[-1][1].name}.final_val_acc1"], numbers[f"{scaled[-1][1].name}.final_val_acc1"]
        gain = None if af is None or as_ is None else as_ - af
        numbers["scaling_gain_at_largest_batch"] = gain
        text.append(
            f"At batch {b} scaling the LR changes final val top-1 by "
            f"{'n/a' if gain is None else f'{100 * gain:+.1f} points'} over the fixed LR."
        )
    tb, tl = results.extra.get("tuned_batch"), results.extra.get("tuned_lr")
    numbers["tuner.batch_size"] = None if tb is None else float(tb)
    numbers["tuner.lr"] = tl
    numbers["tuner.lr_min_loss"] = results.extra.get("lr_min_loss")
    if tb is not None or tl is not None:
        text.append(
            f"Batch-size finder: largest batch tried that fits {fmt(tb)} (on a CPU there is no "
            "out-of-memory signal, so this is the limit of its doubling trials, not of memory); "
            f"LR finder ({results.extra.get('lr_steps', p.lr_steps)}-step sweep at batch "
            f"{results.extra.get('tuned_lr_batch', p.reference_batch)}): training loss lowest at LR "
            f"{fmt(results.extra.get('lr_min_loss'))}, suggestion a tenth of it, {fmt(tl)} (the study's LR "
            f"there, {fmt(p.lr)}, is {fmt(ratio(p.lr, tl))}x the suggestion; the sweep is in the parent "
            "run's study/extra/lr_find.png)."
        )
    return {"numbers": numbers, "text": " ".join(text) + failed_note(results)}


def plot(results: StudyResults, path: Path) -> Path:
    plt = setup_axes()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for rule, marker in (("fixed", "o"), ("scaled", "s")):
        rows = _series(results, rule)
        if not rows:
            continue
        batches = [b for b, _ in rows]
        axes[0].plot(batches, [_seconds_per_epoch(v.result) for _, v in rows], marker=marker, label=f"{rule} LR")
        axes[1].plot(batches, [last(v.curve("val_acc1")) for _, v in rows], marker=marker, label=f"{rule} LR")
    axes[0].set_title("wall time per epoch (s)")
    axes[1].set_title("final val top-1")
    tl = results.extra.get("tuned_lr")
    if tl is not None:
        axes[1].text(
            0.02,
            0.02,
            f"LR finder pick: {fmt(tl)}; batch finder: {fmt(results.extra.get('tuned_batch'))}",
            transform=axes[1].transAxes,
            fontsize=8,
        )
    batches = sorted({int(v.tags["batch"]) for v in results.ok})
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.set_xlabel("batch size")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Batch size: fixed vs linearly scaled learning rate")
    return save(fig, path)


STUDY = Study(
    name="batch_lr",
    title="Batch size and learning rate",
    question="What does a larger batch cost in accuracy and gain in speed, with the LR fixed or scaled linearly; "
    "what do the batch-size and LR finders pick?",
    config="study-batch.yaml",
    dataset="imagenet",
    variants=variants,
    verdict=verdict,
    plot=plot,
    extra=tune_step,
    params=Params,
    sizes={
        **tiny(
            train_batches=2,
            epochs=1,
            batch=None,  # the study sets the batch per variant
            params={"batch_sizes": [4, 8], "reference_batch": 4, "lr_steps": 5, "max_batch_trials": 1},
        ),
        **paper("trainer.max_epochs=20"),
    },
)
