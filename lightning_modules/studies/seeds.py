"""Repeating a study's variants over seeds: one job per (variant, seed), verdicts on the mean curves.

A single run per variant cannot tell a real difference from noise: on the embedded data's 120 val
images one image is 0.8 points of top-1. With the study parameter `seeds: [0, 1, 2]` every variant
runs once per seed (`trainer.seed`, folder `<variant>-s<seed>`); the study's own verdict and plot
then see one result per variant whose history is the per-epoch mean over the seeds, and the verdict
adds the spread across seeds of the final val top-1 and train loss. Without `seeds` nothing changes:
one job per variant, in the folder of its own name.
"""

from __future__ import annotations

import statistics
from typing import Any

from lightning_modules.errors import ConfigError
from lightning_modules.studies.base import StudyParams, StudyResults, Variant, VariantResult, fmt, last

SEED_TAG = "seed"


def seeds_of(params: StudyParams) -> list[int]:
    """The study's `seeds` parameter as a list of distinct ints ([] = one run per variant)."""
    out = list(params.seeds)
    if len(set(out)) != len(out):
        raise ConfigError(f"seeds={out}: repeated seed")
    return out


def expand(variants: list[Variant], seeds: list[int]) -> list[Variant]:
    """One variant per (variant, seed); unchanged when `seeds` is empty."""
    if not seeds:
        return variants
    return [
        Variant(f"{v.name}-s{s}", (*v.overrides, f"trainer.seed={s}"), {**v.tags, SEED_TAG: str(s)})
        for v in variants
        for s in seeds
    ]


def merge(variants: list[Variant], results: list[VariantResult], seeds: list[int]) -> list[VariantResult]:
    """Per base variant, one result whose history is the per-epoch mean over its finished seeds."""
    if not seeds:
        return results
    by_name = {r.name: r for r in results}
    merged = []
    for v in variants:
        runs = [by_name[f"{v.name}-s{s}"] for s in seeds if f"{v.name}-s{s}" in by_name]
        ok = [r for r in runs if r.ok]
        if not ok:
            error = next((r.error for r in runs if r.error), "no seed finished")
            merged.append(VariantResult(v.name, dict(v.tags), runs[0].run_dir if runs else None, {}, error=error))
            continue
        failed = [r.tags.get(SEED_TAG, r.name) for r in runs if not r.ok]
        result = {
            **ok[0].result,
            "history": _mean_history([r.history for r in ok]),
            "seeds": [r.tags[SEED_TAG] for r in ok],
            "failed_seeds": failed,
        }
        # Per-run files (e.g. gradient_flow.jsonl) are read from the first seed's folder.
        merged.append(VariantResult(v.name, dict(v.tags), ok[0].run_dir, result))
    return merged


def _mean_history(histories: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Epoch-wise mean of every numeric column, over the epochs all runs have (None where one lacks it)."""
    epochs = min(len(h) for h in histories)
    rows = []
    for i in range(epochs):
        row: dict[str, Any] = {"epoch": histories[0][i]["epoch"]}
        keys = set().union(*(h[i].keys() for h in histories)) - {"epoch"}
        for k in sorted(keys):
            vals = [h[i].get(k) for h in histories]
            nums = [float(x) for x in vals if isinstance(x, (int, float)) and not isinstance(x, bool)]
            row[k] = statistics.fmean(nums) if len(nums) == len(vals) else None
        rows.append(row)
    return rows


def spread(
    variants: list[Variant], results: list[VariantResult], seeds: list[int]
) -> tuple[dict[str, float | None], str]:
    """Standard deviation across seeds of each variant's final val top-1 and train loss, and a sentence."""
    if len(seeds) < 2:
        return {}, ""
    by_name = {r.name: r for r in results}
    numbers: dict[str, float | None] = {}
    parts = []
    for v in variants:
        runs = [by_name.get(f"{v.name}-s{s}") for s in seeds]
        finished = [r for r in runs if r is not None and r.ok]
        for key in ("val_acc1", "train_loss"):
            finals = [x for x in (last(r.curve(key)) for r in finished) if x is not None]
            numbers[f"{v.name}.{key}_std_over_seeds"] = statistics.stdev(finals) if len(finals) >= 2 else None
        sd = numbers[f"{v.name}.val_acc1_std_over_seeds"]
        parts.append(f"{v.name} {'n/a' if sd is None else fmt(100 * sd, 2)}")
    numbers["seeds"] = float(len(seeds))
    text = (
        f" Curves are means over the seeds that finished (of {len(seeds)}); standard deviation across seeds "
        f"of the final val top-1 (points): " + ", ".join(parts) + "."
    )
    return numbers, text


def failures(results: list[VariantResult]) -> tuple[int, str]:
    """How many runs failed, and a sentence saying which: a verdict never drops a failed seed silently."""
    failed = [r for r in results if not r.ok]
    if not failed:
        return 0, ""
    names = ", ".join(f"{r.name} ({(r.error or 'failed')[:80]})" for r in failed[:6])
    return len(failed), (
        f"INCOMPLETE: {len(failed)} of {len(results)} runs failed: {names}; the figures below "
        "use only the runs that finished. "
    )


def per_seed(
    variants: list[Variant], results: list[VariantResult], seeds: list[int], params: Any, extra: dict[str, Any]
) -> list[StudyResults]:
    """One StudyResults per seed, holding that seed's run of every variant under the variant's own name, so
    the study's verdict computes the seed's numbers; without seeds, the single set of runs."""
    if not seeds:
        return [StudyResults(results, params, extra)]
    by_name = {r.name: r for r in results}
    out = []
    for s in seeds:
        renamed = [
            VariantResult(v.name, dict(v.tags), r.run_dir, r.result, r.error)
            for v in variants
            if (r := by_name.get(f"{v.name}-s{s}")) is not None
        ]
        out.append(StudyResults(renamed, params, extra))
    return out
