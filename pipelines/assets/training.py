"""Training stages: backbone pretraining (one partition per architecture), transfer fine-tuning
and its from-scratch baseline. Each asset creates the MLflow run, then launches the Lightning
job through the launcher (torchrun + Pipes); rank 0 reports the metrics and checkpoint back.
"""

from pathlib import Path

import dagster as dg
import yaml
from pydantic import Field

from lightning_modules.contract import JobRequest
from lightning_modules.data.lineage import prepared_version
from lightning_modules.errors import VisionflowError
from pipelines import metadata
from pipelines.resources import DvcResource, MlflowResource, ProjectResource, TrainingLauncher
from pipelines.upstream import upstream

GROUP = "training"
ARCHITECTURES = ["resnet18", "resnet34", "plain18", "plain34", "vgg16", "darknet19", "darknet53"]
DEFAULT_ARCH = "resnet18"
architectures = dg.StaticPartitionsDefinition(ARCHITECTURES)
# A retry of a step reruns in the same Dagster run, so in the same run folder: the job resumes
# from that folder's last.ckpt into the same MLflow run instead of starting over.
RESUMING_RETRY = dg.RetryPolicy(max_retries=2, delay=2)
FIGURES = ("learning_curves", "confusion_matrix", "gradient_flow", "pr_curves", "detections")


class TrainConfig(dg.Config):
    config_file: str = Field("configs/pretrain-cpu.yaml", description="job YAML, relative to the project root")
    overrides: list[str] = Field(default_factory=list, description="KEY=VALUE, e.g. trainer.max_epochs=30")
    nproc_per_node: int = Field(0, description="ranks (devices) on this node; 0 = the launcher's default")
    extra_config_files: list[str] = Field(
        default_factory=list,
        description="overlay YAML files after config_file, e.g. runs/hparam_search/best.yaml from hparam_search",
    )


def launch_job(
    context: dg.AssetExecutionContext,
    *,
    stage: str,
    config: TrainConfig,
    data: Path,
    overrides: list[str],
    project: ProjectResource,
    dvc: DvcResource,
    mlflow: MlflowResource,
    launcher: TrainingLauncher,
    tags: dict | None = None,
) -> dg.MaterializeResult:
    """Create the MLflow run, launch the job, and turn what rank 0 reported into asset metadata."""
    run_dir = project.run_dir(context)
    request = JobRequest(
        configs=tuple(str(project.path / f) for f in (config.config_file, *config.extra_config_files)),
        data=data,
        run_dir=run_dir,
        # The user's overrides come last: they win over what the stage sets.
        overrides=(f"tracking.experiment={mlflow.experiment(stage)}", *overrides, *config.overrides),
        env={"MLFLOW_TRACKING_URI": mlflow.uri()},
    )
    try:  # before anything is created: a bad override fails here, naming the field
        request.validate()
    except VisionflowError as exc:
        # no retry: the same config fails the same way
        raise dg.Failure(
            description=f"the job's config is invalid, nothing was launched: {exc}", allow_retries=False
        ) from None
    version = prepared_version(data)  # the data this job reads, as its prep recorded it
    run_id = mlflow.start_run(context, stage, run_dir, version, tags)
    result = launcher.launch(context, request.with_overrides(f"tracking.run_id={run_id}"), config.nproc_per_node)
    meta: dict[str, dg.RawMetadataValue] = dict(result.metadata or {})
    meta["mlflow_run"] = dg.MetadataValue.url(mlflow.run_url(run_id))
    meta["data_version"] = version or "untracked"
    figures = meta.get("figures")
    for path in (Path(p) for p in (figures.value if isinstance(figures, dg.JsonMetadataValue) else None) or []):
        if path.stem in FIGURES and path.is_file():
            meta[path.stem] = metadata.image(path, path.stem)
    return dg.MaterializeResult(metadata=meta)


@dg.asset(
    group_name=GROUP,
    partitions_def=architectures,
    deps=["prepared_imagenet"],
    retry_policy=RESUMING_RETRY,
    pool="train",
    kinds={"pytorch", "mlflow"},
    description="A backbone pretrained on the prepared ImageNet-style set, one partition per architecture. Only "
    f"the partitions someone launched exist (the asset is drawn partly materialized): `make run`, the schedule and "
    f"the sensors pretrain `{DEFAULT_ARCH}`; transfer uses the run's partition, detection its `backbone` setting "
    "(empty: the most recently pretrained one). The latest materialization below names the partition it made.",
)
def pretrained_backbone(
    context: dg.AssetExecutionContext,
    config: TrainConfig,
    project: ProjectResource,
    dvc: DvcResource,
    mlflow: MlflowResource,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    return launch_job(
        context,
        stage="pretraining",
        config=config,
        data=project.prepared("imagenet"),
        overrides=[f"model.name={context.partition_key}"],
        project=project,
        dvc=dvc,
        mlflow=mlflow,
        launcher=launcher,
        tags={"architecture": context.partition_key},
    )


class FinetuneConfig(TrainConfig):
    config_file: str = Field("configs/transfer-cpu.yaml", description="job YAML, relative to the project root")
    backbone: str = Field("", description="architecture to fine-tune; empty: the run's partition, else resnet18")
    init: str = Field(
        "pretrained",
        description="pretrained: our pretrained_backbone checkpoint; "
        "torchvision: ImageNet weights from `torchvision_weights`",
    )
    torchvision_weights: str = Field("", description="path of a torchvision state-dict file (init=torchvision)")


class ScratchConfig(TrainConfig):
    config_file: str = Field("configs/transfer-cpu.yaml", description="the same job YAML as transfer_finetuned")
    backbone: str = Field("", description="architecture; empty: the run's partition, else resnet18")


def _backbone(context: dg.AssetExecutionContext, config: FinetuneConfig | ScratchConfig) -> str:
    arch = config.backbone or context.run.tags.get("dagster/partition") or DEFAULT_ARCH
    if arch not in ARCHITECTURES:
        raise dg.Failure(f"backbone {arch!r} is not one of {', '.join(ARCHITECTURES)}")
    return arch


def pretrained_run(context: dg.AssetExecutionContext, arch: str) -> dict:
    """Checkpoint and model settings of pretrained_backbone[arch]: this run's, else the latest of arch."""
    source = upstream(context, dg.AssetKey("pretrained_backbone"), arch)
    model = yaml.safe_load((Path(source["run_dir"]) / "config.yaml").read_text())["model"]
    return {"checkpoint": source["best_checkpoint"], "model": model, "mlflow_run_id": source["mlflow_run_id"]}


def _model_overrides(model: dict) -> list[str]:
    """The fine-tuned net must be the pretrained one: same architecture, width, stem and activation."""
    keys = ("name", "width", "small_input", "activation")
    return [f"model.{k}={model[k]}" for k in keys if model.get(k) is not None]


@dg.asset(
    group_name=GROUP,
    deps=["prepared_transfer", pretrained_backbone],
    retry_policy=RESUMING_RETRY,
    pool="train",
    kinds={"pytorch", "mlflow"},
    description="The backbone fine-tuned on the few-shot transfer set: body frozen for k epochs, then a lower body LR.",
)
def transfer_finetuned(
    context: dg.AssetExecutionContext,
    config: FinetuneConfig,
    project: ProjectResource,
    dvc: DvcResource,
    mlflow: MlflowResource,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    arch = _backbone(context, config)
    if config.init == "torchvision":
        if not config.torchvision_weights:
            raise dg.Failure("init=torchvision needs torchvision_weights (a saved torchvision state dict)")
        overrides, tags = (
            [
                f"model.name={arch}",
                f"model.torchvision_weights={config.torchvision_weights}",
                "model.small_input=false",
            ],
            {"init": "torchvision"},
        )
    elif config.init == "pretrained":
        source = pretrained_run(context, arch)
        overrides = [*_model_overrides(source["model"]), f"model.pretrained_checkpoint={source['checkpoint']}"]
        tags = {"init": "pretrained", "pretrained_run_id": source["mlflow_run_id"]}
    else:
        raise dg.Failure(f"init must be 'pretrained' or 'torchvision', not {config.init!r}")
    return launch_job(
        context,
        stage="transfer",
        config=config,
        data=project.prepared("transfer"),
        overrides=overrides,
        project=project,
        dvc=dvc,
        mlflow=mlflow,
        launcher=launcher,
        tags={**tags, "architecture": arch},
    )


@dg.asset(
    group_name=GROUP,
    deps=["prepared_transfer", pretrained_backbone],
    retry_policy=RESUMING_RETRY,
    pool="train",
    kinds={"pytorch", "mlflow"},
    description="Baseline: the same target, network and budget as transfer_finetuned, from random weights.",
)
def scratch_baseline(
    context: dg.AssetExecutionContext,
    config: ScratchConfig,
    project: ProjectResource,
    dvc: DvcResource,
    mlflow: MlflowResource,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    arch = _backbone(context, config)
    # Same network as the transfer run (it reads the pretrained run's model settings), no weights,
    # and nothing frozen: freezing a random body would only handicap the baseline.
    model = pretrained_run(context, arch)["model"]
    overrides = [*_model_overrides(model), "optim.freeze_body_epochs=0", "optim.body_lr_mult=1.0"]
    return launch_job(
        context,
        stage="transfer",
        config=config,
        data=project.prepared("transfer"),
        overrides=overrides,
        project=project,
        dvc=dvc,
        mlflow=mlflow,
        launcher=launcher,
        tags={"init": "scratch", "architecture": arch},
    )


TRAINING_ASSETS = [pretrained_backbone, transfer_finetuned, scratch_baseline]
