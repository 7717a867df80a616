"""The data stage: the DVC-tracked raw data, and the prepared sets every training stage reads.

Thin assets: each calls the same library function as the `visionflow data ...` command and
turns its manifest into metadata and check results.
"""

import dagster as dg
from pydantic import Field

from lightning_modules.data.detection_prep import prep_detection
from lightning_modules.data.imagenet_prep import prep_classification
from lightning_modules.data.prep_settings import ClassificationPrepSettings, DetectionPrepSettings
from pipelines import checks, metadata
from pipelines.resources import DvcResource, ProjectResource

GROUP = "data"


@dg.observable_source_asset(group_name=GROUP, description="Raw datasets under data/, versioned by DVC (data.dvc).")
def raw_data(dvc: DvcResource) -> dg.DataVersion:
    # The md5 DVC wrote into data.dvc: a new version makes everything downstream stale.
    return dg.DataVersion(dvc.data_version() or "untracked")


class ClassificationPrepConfig(dg.Config, ClassificationPrepSettings):
    """The prep's own settings (defaults, bounds and help defined once, in prep_settings) plus the check's."""

    rejected_warn_fraction: float = Field(0.01, description="check rejected_under_limit warns above this share")


def _classification_metadata(m: dict, out, version) -> dict:
    names = [c["name"] or c["wnid"] for c in m["classes"]]
    return {
        "path": dg.MetadataValue.path(str(out)),
        "data_version": version or "untracked",
        "classes": len(m["classes"]),
        "train_images": m["totals"]["train"],
        "val_images": m["totals"]["val"],
        "rejected": len(m["rejected"]),
        "rejected_files": metadata.table(m["rejected"], ["path", "reason"]),
        "image_size": m["image_size"],
        "mean": str([round(v, 4) for v in m["mean"]]),
        "std": str([round(v, 4) for v in m["std"]]),
        "class_histogram": metadata.bar_chart(names, [c["train"] for c in m["classes"]], "train images per class"),
        "samples": metadata.image(out / "preview.png", "samples"),
    }


def _classification_asset(name: str, source: str, description: str):
    @dg.asset(
        name=name,
        group_name=GROUP,
        deps=[raw_data],
        description=description,
        check_specs=checks.specs(name, checks.CLASSIFICATION_CHECKS),
    )
    def _asset(
        context: dg.AssetExecutionContext, config: ClassificationPrepConfig, project: ProjectResource, dvc: DvcResource
    ) -> dg.MaterializeResult:
        version = dvc.workspace_version()  # None if data/ changed since `dvc add`
        out = project.prepared(source)
        context.log.info(f"preparing {project.raw(source)} -> {out} (data version {version})")
        m = prep_classification(
            project.raw(source),
            out,
            image_size=config.image_size,
            val_fraction=config.val_fraction,
            max_rejected_fraction=config.max_rejected_fraction,
            workers=config.workers,
            seed=config.seed,
            source_data_version=version,
            max_image_pixels=config.max_image_pixels,
        )
        return dg.MaterializeResult(
            metadata=_classification_metadata(m, out, m["data_version"]),
            check_results=checks.classification_results(m, config.rejected_warn_fraction),
            data_version=dg.DataVersion(m["content_hash"]),  # changes with any prepared byte, label or setting
        )

    return _asset


prepared_imagenet = _classification_asset(
    "prepared_imagenet", "imagenet", "ImageNet-style pretraining set: checked, RGB, resized, litdata chunks."
)
prepared_transfer = _classification_asset(
    "prepared_transfer", "transfer", "Few-shot transfer target set, prepared like the pretraining set."
)


class DetectionPrepConfig(dg.Config, DetectionPrepSettings):
    """The prep's own settings (prep_settings) plus those of the checks."""

    rejected_warn_fraction: float = Field(0.01, description="check detection_rejected_under_limit warns above this")
    bpr_floor: float = Field(0.95, description="anchors_bpr check: minimum best-possible recall")


@dg.asset(
    group_name=GROUP,
    deps=[raw_data],
    description="Detection set: boxes checked, one internal form, k-means anchors for YOLOv2/v3.",
    check_specs=checks.specs("prepared_detection", checks.DETECTION_CHECKS),
)
def prepared_detection(
    context: dg.AssetExecutionContext, config: DetectionPrepConfig, project: ProjectResource, dvc: DvcResource
) -> dg.MaterializeResult:
    version = dvc.workspace_version()  # None if data/ changed since `dvc add`
    out = project.prepared("detection")
    m = prep_detection(
        project.raw("detection"),
        out,
        fmt=config.format,
        val_fraction=config.val_fraction,
        max_rejected_fraction=config.max_rejected_fraction,
        anchor_image_size=config.anchor_image_size,
        seed=config.seed,
        source_data_version=version,
        max_image_pixels=config.max_image_pixels,
    )
    counts = m["counts"]
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(out)),
            "data_version": m.get("data_version") or version or "untracked",
            "classes": dg.MetadataValue.json(m["classes"]),
            "images": sum(c["images"] for c in counts.values()),
            "boxes": sum(c["boxes"] for c in counts.values()),
            "background_images": sum(c["background"] for c in counts.values()),
            "rejected_labels": metadata.table(m["rejected"], ["path", "line", "reason"]),
            "anchors": dg.MetadataValue.json(m["anchors"]),
            "anchor_stats": dg.MetadataValue.json(m["anchor_stats"]),
            "samples_with_boxes": metadata.image(out / "preview.png", "samples with boxes"),
        },
        check_results=checks.detection_results(m, config.rejected_warn_fraction, config.bpr_floor),
        data_version=dg.DataVersion(m.get("content_hash") or f"{version}:{config.format}"),
    )


DATA_ASSETS = [raw_data, prepared_imagenet, prepared_transfer, prepared_detection]
