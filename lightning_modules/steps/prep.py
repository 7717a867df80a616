"""The two preps as steps: prepare the set, then report its manifest as metadata and its quality gates
as asset checks. Run by `python -m lightning_modules.steps prep_classification|prep_detection SPEC.json`,
where the data and the compute are (the same functions as `visionflow data prep-*`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lightning_modules.data.detection_prep import prep_detection
from lightning_modules.data.imagenet_prep import prep_classification
from lightning_modules.steps.report import Check, StepReport, image, markdown_table, typed
from lightning_modules.steps.specs import ClassificationPrepSpec, DetectionPrepSpec


def classification(spec: ClassificationPrepSpec) -> StepReport:
    prepared = Path(spec.prepared)
    m = prep_classification(
        Path(spec.source), prepared, source_data_version=spec.source_data_version, **spec.settings.model_dump()
    )
    names = [c["name"] or c["wnid"] for c in m["classes"]]
    histogram = _bar_chart(names, [c["train"] for c in m["classes"]], "train images per class", spec.out_dir)
    metadata = {
        "path": typed(str(prepared), "path"),
        "data_version": m["data_version"] or "untracked",
        "classes": len(m["classes"]),
        "train_images": m["totals"]["train"],
        "val_images": m["totals"]["val"],
        "rejected": len(m["rejected"]),
        "rejected_files": markdown_table(m["rejected"], ["path", "reason"]),
        "image_size": m["image_size"],
        "mean": str([round(v, 4) for v in m["mean"]]),
        "std": str([round(v, 4) for v in m["std"]]),
        "class_histogram": image(histogram, "train images per class"),
        "samples": image(prepared / "preview.png", "samples"),
    }
    total = sum(m["totals"].get(s, 0) for s in ("train", "val", "test")) + len(m["rejected"])
    checks = [
        no_empty_class(m),
        rejected_under_limit(len(m["rejected"]), total, spec.rejected_warn_fraction, "rejected_under_limit"),
        mean_std_finite(m),
    ]
    # The data version changes with any prepared byte, label or setting.
    return StepReport(metadata, checks, data_version=m["content_hash"])


def detection(spec: DetectionPrepSpec) -> StepReport:
    prepared = Path(spec.prepared)
    m = prep_detection(
        Path(spec.source),
        prepared,
        fmt=spec.settings.format,
        source_data_version=spec.source_data_version,
        **spec.settings.model_dump(exclude={"format"}),
    )
    counts = m["counts"]
    boxes = sum(c["boxes"] for c in counts.values())
    metadata = {
        "path": typed(str(prepared), "path"),
        "data_version": m.get("data_version") or spec.source_data_version or "untracked",
        "classes": typed(m["classes"], "json"),
        "images": sum(c["images"] for c in counts.values()),
        **{f"{split}_images": c["images"] for split, c in counts.items()},
        "counts": typed(counts, "json"),
        "boxes": boxes,
        "background_images": sum(c["background"] for c in counts.values()),
        "rejected_labels": markdown_table(m["rejected"], ["path", "line", "reason"]),
        "anchors": typed(m["anchors"], "json"),
        "anchor_stats": typed(m["anchor_stats"], "json"),
        "samples_with_boxes": image(prepared / "preview.png", "samples with boxes"),
    }
    checks = [
        anchors_bpr(m["anchor_stats"], spec.bpr_floor),
        rejected_under_limit(
            len(m["rejected"]),
            boxes + len(m["rejected"]),
            spec.rejected_warn_fraction,
            "detection_rejected_under_limit",
        ),
    ]
    return StepReport(metadata, checks, data_version=m["content_hash"])


# The quality gates. All but the rejected-share warning block what is downstream (no training on
# broken data); their names are declared on the Dagster side (pipelines/checks.py).


def no_empty_class(m: dict[str, Any]) -> Check:
    empty = [c["wnid"] for c in m["classes"] if c["train"] == 0 or c["val"] == 0]
    return Check("no_empty_class", not empty, {"classes": len(m["classes"]), "empty": ", ".join(empty[:20]) or "none"})


def rejected_under_limit(rejected: int, total: int, limit: float, name: str) -> Check:
    """A warning, below the prep's hard limit: data that passed the prep but lost more than `limit` of
    its files (or boxes) deserves a look before it trains (the prep itself fails at
    max_rejected_fraction, so repeating that limit here could never fail)."""
    fraction = rejected / max(total, 1)
    meta = {"rejected": rejected, "fraction": round(fraction, 4), "warn_above": limit}
    return Check(name, fraction <= limit, meta, severity="WARN")


def mean_std_finite(m: dict[str, Any]) -> Check:
    values = list(m["mean"]) + list(m["std"])
    ok = all(math.isfinite(v) for v in values) and all(s > 0 for s in m["std"])
    return Check("mean_std_finite", ok, {"mean": str(m["mean"]), "std": str(m["std"])})


def anchors_bpr(stats: dict[str, Any], floor: float) -> Check:
    worst = min(s["bpr"] for s in stats.values())
    meta = {
        "bpr_v2": stats["v2"]["bpr"],
        "bpr_v3": stats["v3"]["bpr"],
        "floor": floor,
        "avg_iou_v2": stats["v2"]["avg_iou"],
        "avg_iou_v3": stats["v3"]["avg_iou"],
    }
    return Check("anchors_bpr", worst >= floor, meta)


def _bar_chart(labels: list[str], values: list[int], title: str, out: Path) -> Path:
    import matplotlib  # lazy: the Agg backend is chosen here, only by a step that draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: must follow matplotlib.use("Agg")

    fig, ax = plt.subplots(figsize=(min(2 + 0.35 * len(labels), 12), 3), dpi=80)
    ax.bar(range(len(values)), values, color="#4c72b0")
    ax.set_title(title)
    if len(labels) <= 40:
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "class_histogram.png"
    fig.savefig(path)
    plt.close(fig)
    return path
