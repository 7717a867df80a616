"""The data stage: the DVC-tracked raw data, and the prepared sets every training stage reads.

Thin assets: each runs its prep as a step through the launcher (the same library function as the
`visionflow data ...` command, where the data and the compute are); the step reports the manifest as
metadata and the quality gates as asset checks through Pipes.
"""

import dagster as dg
from pydantic import Field

from lightning_modules.data.prep_settings import ClassificationPrepSettings, DetectionPrepSettings
from lightning_modules.steps.specs import ClassificationPrepSpec, DetectionPrepSpec
from pipelines import checks
from pipelines.resources import DvcResource, ProjectResource, TrainingLauncher

GROUP = "data"


@dg.observable_source_asset(group_name=GROUP, description="Raw datasets under data/, versioned by DVC (data.dvc).")
def raw_data(dvc: DvcResource) -> dg.DataVersion:
    # The md5 DVC wrote into data.dvc: a new version makes everything downstream stale.
    return dg.DataVersion(dvc.data_version() or "untracked")


class ClassificationPrepConfig(dg.Config, ClassificationPrepSettings):
    """The prep's own settings (defaults, bounds and help defined once, in prep_settings) plus the check's."""

    rejected_warn_fraction: float = Field(0.01, description="check rejected_under_limit warns above this share")


def _classification_asset(name: str, source: str, description: str):
    @dg.asset(
        name=name,
        group_name=GROUP,
        deps=[raw_data],
        description=description,
        check_specs=checks.specs(name, checks.CLASSIFICATION_CHECKS),
    )
    def _asset(
        context: dg.AssetExecutionContext,
        config: ClassificationPrepConfig,
        project: ProjectResource,
        dvc: DvcResource,
        launcher: TrainingLauncher,
    ) -> dg.MaterializeResult:
        version = dvc.workspace_version()  # None if data/ changed since `dvc add`
        spec = ClassificationPrepSpec(
            out=str(project.run_dir(context)),
            source=str(project.raw(source)),
            prepared=str(project.prepared(source)),
            settings=ClassificationPrepSettings.model_validate(config.model_dump(exclude={"rejected_warn_fraction"})),
            source_data_version=version,
            rejected_warn_fraction=config.rejected_warn_fraction,
        )
        context.log.info(f"preparing {spec.source} -> {spec.prepared} (data version {version})")
        return launcher.run_step(context, "prep_classification", spec)

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
    context: dg.AssetExecutionContext,
    config: DetectionPrepConfig,
    project: ProjectResource,
    dvc: DvcResource,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    checks_settings = {"rejected_warn_fraction", "bpr_floor"}
    spec = DetectionPrepSpec(
        out=str(project.run_dir(context)),
        source=str(project.raw("detection")),
        prepared=str(project.prepared("detection")),
        settings=DetectionPrepSettings.model_validate(config.model_dump(exclude=checks_settings)),
        source_data_version=dvc.workspace_version(),  # None if data/ changed since `dvc add`
        rejected_warn_fraction=config.rejected_warn_fraction,
        bpr_floor=config.bpr_floor,
    )
    return launcher.run_step(context, "prep_detection", spec)


DATA_ASSETS = [raw_data, prepared_imagenet, prepared_transfer, prepared_detection]
