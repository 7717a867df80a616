"""Transfer learning for detection, measured: the detector from the pretrained backbone (`yolo_detector`)
against the same network, data and budget from random weights, both val mAP curves on one plot, with
the start / slope / asymptote gains. Its own job (`detection_transfer`): a second detector fit is not
part of `make run`'s budget.
"""

import dagster as dg

from lightning_modules.steps.specs import TransferReportSettings
from pipelines.assets.detection import (
    DETECTOR_TRAINING,
    DetectorJobConfig,
    train_detector,
    yolo_detector,
    yolo_versions,
)
from pipelines.assets.evaluation import run_transfer_report
from pipelines.resources import DvcResource, MlflowResource, ProjectResource, TrainingLauncher
from pipelines.upstream import upstream

GROUP = "detection_transfer"


class DetectionScratchConfig(DetectorJobConfig):
    """yolo_detector's settings without `init` (always scratch). Give it the same `overrides`
    (e.g. trainer.max_time) as the detector it is compared with."""


@dg.asset(
    group_name=GROUP,
    **DETECTOR_TRAINING,
    description="Baseline: the yolo_detector's network, data and budget from random weights.",
)
def detection_scratch_baseline(
    context: dg.AssetExecutionContext,
    config: DetectionScratchConfig,
    project: ProjectResource,
    dvc: DvcResource,
    mlflow: MlflowResource,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    return train_detector(context, config, "scratch", project, dvc, mlflow, launcher)


class DetectionTransferReportConfig(dg.Config, TransferReportSettings):
    """The report's settings (defined once, in steps/specs.py)."""


@dg.asset(
    group_name=GROUP,
    partitions_def=yolo_versions,
    deps=[yolo_detector, detection_scratch_baseline],
    kinds={"mlflow"},
    description="Detector with vs without backbone transfer: both val mAP curves, start / slope / asymptote gains.",
)
def detection_transfer_report(
    context: dg.AssetExecutionContext,
    config: DetectionTransferReportConfig,
    project: ProjectResource,
    mlflow: MlflowResource,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    version = context.partition_key
    t = upstream(context, yolo_detector.key, version)
    s = upstream(context, detection_scratch_baseline.key, version)
    title = f"{version}: backbone transfer vs scratch"
    return run_transfer_report(
        context,
        t,
        s,
        "detection",
        config,
        project,
        mlflow,
        launcher,
        stage="detection-transfer-report",
        metric="val_map",
        title=title,
        lineage={"yolo_version": version},
    )


DETECTION_TRANSFER_ASSETS = [detection_scratch_baseline, detection_transfer_report]
