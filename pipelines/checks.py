"""Quality gates on prepared data, computed from each prep's manifest.

All are blocking: a failed check stops everything downstream (no training on broken data).
"""

from __future__ import annotations

import math

import dagster as dg

CLASSIFICATION_CHECKS = ("no_empty_class", "rejected_under_limit", "mean_std_finite")
DETECTION_CHECKS = ("anchors_bpr", "detection_rejected_under_limit")


def specs(asset_name: str, names: tuple[str, ...]) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(n, asset=asset_name, blocking=True) for n in names]


def no_empty_class(m: dict) -> dg.AssetCheckResult:
    empty = [c["wnid"] for c in m["classes"] if c["train"] == 0 or c["val"] == 0]
    return dg.AssetCheckResult(
        check_name="no_empty_class",
        passed=not empty,
        metadata={"classes": len(m["classes"]), "empty": ", ".join(empty[:20]) or "none"},
        description="every class has train and val images",
    )


def rejected_under_limit(m: dict, limit: float, name: str = "rejected_under_limit") -> dg.AssetCheckResult:
    """A warning, below the prep's hard limit: data that passed the prep but lost more than `limit`
    of its files (or boxes) to rejection deserves a look before it trains (the prep itself fails at
    max_rejected_fraction, so repeating that limit here could never fail)."""
    total = m.get("_rejectable_total") or (
        sum(m["totals"].get(s, 0) for s in ("train", "val", "test")) + len(m["rejected"])
    )
    fraction = len(m["rejected"]) / max(total, 1)
    return dg.AssetCheckResult(
        check_name=name,
        passed=fraction <= limit,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"rejected": len(m["rejected"]), "fraction": round(fraction, 4), "warn_above": limit},
    )


def mean_std_finite(m: dict) -> dg.AssetCheckResult:
    values = list(m["mean"]) + list(m["std"])
    ok = all(math.isfinite(v) for v in values) and all(s > 0 for s in m["std"])
    return dg.AssetCheckResult(
        check_name="mean_std_finite",
        passed=ok,
        metadata={"mean": str(m["mean"]), "std": str(m["std"])},
    )


def anchors_bpr(m: dict, floor: float) -> dg.AssetCheckResult:
    stats = m["anchor_stats"]
    worst = min(s["bpr"] for s in stats.values())
    return dg.AssetCheckResult(
        check_name="anchors_bpr",
        passed=worst >= floor,
        metadata={
            "bpr_v2": stats["v2"]["bpr"],
            "bpr_v3": stats["v3"]["bpr"],
            "floor": floor,
            "avg_iou_v2": stats["v2"]["avg_iou"],
            "avg_iou_v3": stats["v3"]["avg_iou"],
        },
    )


def classification_results(m: dict, rejected_limit: float) -> list[dg.AssetCheckResult]:
    return [no_empty_class(m), rejected_under_limit(m, rejected_limit), mean_std_finite(m)]


def detection_results(m: dict, rejected_limit: float, bpr_floor: float) -> list[dg.AssetCheckResult]:
    boxes = sum(c["boxes"] for c in m["counts"].values())
    m = {**m, "_rejectable_total": boxes + len(m["rejected"])}
    return [anchors_bpr(m, bpr_floor), rejected_under_limit(m, rejected_limit, "detection_rejected_under_limit")]
