"""The detection stage: a YOLO detector (one partition per YOLO version) on a pretrained backbone, and
its evaluation in the images' own pixels, which registers the detector and promotes it when better.
"""

from typing import Any

import dagster as dg
from pydantic import Field

from lightning_modules.steps.specs import DetectionEvaluationSettings, DetectionEvaluationSpec
from pipelines.assets.training import (
    ARCHITECTURES,
    RESUMING_RETRY,
    TrainConfig,
    _model_overrides,
    launch_job,
    pretrained_backbone,
    pretrained_run,
)
from pipelines.resources import DvcResource, MlflowResource, ProjectResource, TrainingLauncher
from pipelines.upstream import upstream

GROUP = "detection"
VERSIONS = ["yolov1", "yolov2", "yolov3"]
DEFAULT_VERSION = "yolov3"
yolo_versions = dg.StaticPartitionsDefinition(VERSIONS)
# The papers' backbones; used when that backbone was pretrained, else the latest pretrained one.
PAPER_BACKBONE = {"yolov1": "darknet19", "yolov2": "darknet19", "yolov3": "darknet53"}


class DetectorJobConfig(TrainConfig):
    """A detector job: its YAML and the backbone whose network (and, unless from scratch, weights) it uses."""

    config_file: str = Field("", description="job YAML relative to the project root; empty: configs/<version>-cpu.yaml")
    backbone: str = Field(
        "",
        description="pretrained_backbone partition to start from; empty: the paper's "
        "(Darknet-19/53) if pretrained, else the most recently pretrained one",
    )


class DetectorConfig(DetectorJobConfig):
    init: str = Field(
        "pretrained",
        description="pretrained: start from the backbone checkpoint; scratch: random "
        "weights, same network (the comparison run)",
    )


def pick_backbone(context: dg.AssetExecutionContext, version: str, wanted: str) -> str:
    if wanted:
        if wanted not in ARCHITECTURES:
            raise dg.Failure(f"backbone {wanted!r} is not one of {', '.join(ARCHITECTURES)}")
        return wanted
    done: dict[str, float] = {}
    for arch in ARCHITECTURES:
        event = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=pretrained_backbone.key, asset_partitions=[arch]), limit=1
        ).records
        if event:
            done[arch] = event[0].timestamp
    if not done:
        raise dg.Failure("no pretrained_backbone partition was ever materialized: pretrain a backbone first")
    return PAPER_BACKBONE[version] if PAPER_BACKBONE[version] in done else max(done, key=lambda arch: done[arch])


# What every detector training asset shares: one partition per YOLO version, resumable retries, the
# `train` pool, and any pretrained backbone (the job picks one) plus the prepared set upstream.
DETECTOR_TRAINING: dict[str, Any] = {
    "partitions_def": yolo_versions,
    "retry_policy": RESUMING_RETRY,
    "pool": "train",
    "kinds": {"pytorch", "mlflow"},
    "deps": [dg.AssetDep(pretrained_backbone, partition_mapping=dg.AllPartitionMapping()), "prepared_detection"],
}


@dg.asset(
    group_name=GROUP,
    **DETECTOR_TRAINING,
    description="A YOLO detector (v1/v2/v3 by partition) trained on the prepared detection set from a pretrained "
    f"backbone. Only launched partitions exist: `make run` and the detection_after_main sensor train "
    f"`{DEFAULT_VERSION}`; launch another version from the Launchpad with its partition.",
)
def yolo_detector(
    context: dg.AssetExecutionContext,
    config: DetectorConfig,
    project: ProjectResource,
    dvc: DvcResource,
    mlflow: MlflowResource,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    return train_detector(context, config, config.init, project, dvc, mlflow, launcher)


def train_detector(
    context: dg.AssetExecutionContext,
    config: DetectorJobConfig,
    init: str,
    project: ProjectResource,
    dvc: DvcResource,
    mlflow: MlflowResource,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    """The partition's YOLO version on the picked backbone's network, from its weights or from scratch."""
    version = context.partition_key
    arch = pick_backbone(context, version, config.backbone)
    source = pretrained_run(context, arch)
    overrides = [f"detection.version={version}", *_model_overrides(source["model"])]
    tags = {"init": init, "architecture": arch, "yolo_version": version}
    if init == "pretrained":
        overrides.append(f"model.pretrained_checkpoint={source['checkpoint']}")
        tags["pretrained_run_id"] = source["mlflow_run_id"]
    elif init == "scratch":
        # nothing to protect in a random body: no freezing, the body at the head's learning rate
        overrides += ["optim.freeze_body_epochs=0", "optim.body_lr_mult=1.0"]
    else:
        raise dg.Failure(f"init must be 'pretrained' or 'scratch', not {init!r}")
    job = config.model_copy(update={"config_file": config.config_file or f"configs/{version}-cpu.yaml"})
    return launch_job(
        context,
        stage="detection",
        config=job,
        data=project.prepared("detection"),
        overrides=overrides,
        project=project,
        dvc=dvc,
        mlflow=mlflow,
        launcher=launcher,
        tags=tags,
    )


class DetectionEvaluationConfig(dg.Config, DetectionEvaluationSettings):
    """The evaluation's settings and quality gate (defined once, in steps/specs.py)."""


@dg.asset(
    group_name=GROUP,
    partitions_def=yolo_versions,
    deps=[yolo_detector, "prepared_detection"],
    kinds={"mlflow"},
    check_specs=[
        dg.AssetCheckSpec("map50_floor", asset="detection_evaluation", blocking=True),
        dg.AssetCheckSpec("no_nan", asset="detection_evaluation", blocking=True),
    ],
    description="COCO mAP@0.5:0.95 and @0.5, VOC07/VOC10 AP, per-class AP, PR curves, confusion matrix and drawn "
    "samples; registers the detector and moves `champion` only when it beats the champion.",
)
def detection_evaluation(
    context: dg.AssetExecutionContext,
    config: DetectionEvaluationConfig,
    project: ProjectResource,
    mlflow: MlflowResource,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    version = context.partition_key
    trained = upstream(context, yolo_detector.key, version)
    data, out = project.prepared("detection"), project.run_dir(context)
    lineage = {"evaluated_run_id": trained["mlflow_run_id"], "yolo_version": version}
    run_id = mlflow.start_run(context, "detection-evaluation", out, project.prepared_version("detection"), lineage)
    spec = DetectionEvaluationSpec(
        out=str(out),
        tracking_uri=mlflow.uri(),
        run_id=run_id,
        mlflow_ui=mlflow.ui_url,
        checkpoint=trained["best_checkpoint"],
        data=str(data),
        settings=DetectionEvaluationSettings.model_validate(
            {**config.model_dump(), "model_name": f"{config.model_name}-{version}"}
        ),
    )
    return launcher.run_step(context, "detection_evaluation", spec, metadata=trained.lineage_metadata())


DETECTION_ASSETS = [yolo_detector, detection_evaluation]
