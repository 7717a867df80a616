"""Judging the trained models: the transfer report (with vs without transfer) and the held-out
evaluation that registers the model and promotes it to `champion` only when it is better.

Thin assets: each gathers its inputs (the upstream run, the data), creates the MLflow run with the
Dagster lineage tags, and runs its step (lightning_modules/steps) through the launcher, where the
compute is; the step reports metadata and checks back through Pipes.
"""

import dagster as dg

from lightning_modules.steps.specs import (
    ClassificationEvaluationSettings,
    ClassificationEvaluationSpec,
    TransferReportSettings,
    TransferReportSpec,
)
from pipelines.assets.training import scratch_baseline, transfer_finetuned
from pipelines.resources import MlflowResource, ProjectResource, TrainingLauncher
from pipelines.upstream import Upstream, upstream

GROUP = "evaluation"


class ReportConfig(dg.Config, TransferReportSettings):
    """The report's settings (defined once, in steps/specs.py)."""


@dg.asset(
    group_name=GROUP,
    deps=[transfer_finetuned, scratch_baseline],
    kinds={"mlflow"},
    description="Transfer vs scratch: both learning curves, and the start / slope / asymptote gains.",
)
def transfer_report(
    context: dg.AssetExecutionContext,
    config: ReportConfig,
    project: ProjectResource,
    mlflow: MlflowResource,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    t = upstream(context, transfer_finetuned.key)
    s = upstream(context, scratch_baseline.key)
    return run_transfer_report(context, t, s, "transfer", config, project, mlflow, launcher, stage="transfer-report")


def run_transfer_report(
    context: dg.AssetExecutionContext,
    t: Upstream,
    s: Upstream,
    prepared: str,
    config: TransferReportSettings,
    project: ProjectResource,
    mlflow: MlflowResource,
    launcher: TrainingLauncher,
    *,
    stage: str,
    metric: str = "val_acc1",
    title: str = "transfer vs scratch",
    lineage: dict[str, str] | None = None,
) -> dg.MaterializeResult:
    """The report step on two upstream training runs (with transfer `t`, from scratch `s`) of one task."""
    out = project.run_dir(context)
    tags = {"transfer_run_id": t["mlflow_run_id"], "scratch_run_id": s["mlflow_run_id"], **(lineage or {})}
    run_id = mlflow.start_run(context, stage, out, project.prepared_version(prepared), tags)
    spec = TransferReportSpec(
        out=str(out),
        tracking_uri=mlflow.uri(),
        run_id=run_id,
        mlflow_ui=mlflow.ui_url,
        transfer_history=t["history"],
        scratch_history=s["history"],
        metric=metric,
        title=title,
        settings=TransferReportSettings.model_validate(config.model_dump()),
    )
    links = {
        "transfer_run": dg.MetadataValue.url(mlflow.run_url(t["mlflow_run_id"])),
        "scratch_run": dg.MetadataValue.url(mlflow.run_url(s["mlflow_run_id"])),
        **t.lineage_metadata(),
        **s.lineage_metadata(),
    }
    return launcher.run_step(context, "transfer_report", spec, metadata=links)


class EvaluationConfig(dg.Config, ClassificationEvaluationSettings):
    """The evaluation's settings and quality gate (defined once, in steps/specs.py)."""


@dg.asset(
    group_name=GROUP,
    deps=[transfer_finetuned, "prepared_transfer"],
    kinds={"mlflow"},
    check_specs=[
        dg.AssetCheckSpec("accuracy_floor", asset="classification_evaluation", blocking=True),
        dg.AssetCheckSpec("no_nan", asset="classification_evaluation", blocking=True),
    ],
    description="Held-out top-1/top-5, per-class accuracy and confusion matrix; registers the model and "
    "moves the `champion` alias only when it beats the champion on the same data.",
)
def classification_evaluation(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    project: ProjectResource,
    mlflow: MlflowResource,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    trained = upstream(context, transfer_finetuned.key)
    data, out = project.prepared("transfer"), project.run_dir(context)
    lineage = {"evaluated_run_id": trained["mlflow_run_id"]}
    run_id = mlflow.start_run(context, "evaluation", out, project.prepared_version("transfer"), lineage)
    spec = ClassificationEvaluationSpec(
        out=str(out),
        tracking_uri=mlflow.uri(),
        run_id=run_id,
        mlflow_ui=mlflow.ui_url,
        checkpoint=trained["best_checkpoint"],
        data=str(data),
        settings=ClassificationEvaluationSettings.model_validate(config.model_dump()),
    )
    return launcher.run_step(context, "classification_evaluation", spec, metadata=trained.lineage_metadata())


EVALUATION_ASSETS = [transfer_report, classification_evaluation]
