"""The measured studies as assets (one per lesson) and `studies_report`, which gathers their verdicts.

Each study asset runs as one step through the launcher (`python -m lightning_modules.steps study`, where
the compute is): its variants train inside that step one after another, one MLflow run nested per
variant under the study's parent run, then it reports the verdict computed from those runs and its plot.
Study runs live in runs/studies/<study>/<setting>/ (size and overrides), so a rerun reuses finished
variants, a scaled-up run trains in its own folder, and the report takes the latest verdict of each study.
"""

import hashlib
import re
from pathlib import Path

import dagster as dg
from pydantic import Field

from lightning_modules.data.lineage import data_identity
from lightning_modules.steps.specs import StudySpec
from lightning_modules.studies import get_study
from lightning_modules.studies import studies_report as studies_report_of
from pipelines import metadata
from pipelines.resources import MlflowResource, ProjectResource, TrainingLauncher

GROUP = "studies"
# asset name -> study name in lightning_modules.studies.STUDIES
STUDY_ASSETS = {
    "vanishing_gradient_study": "vanishing_gradient",
    "degradation_study": "degradation",
    "dropout_study": "dropout",
    "batch_size_study": "batch_lr",
    "epochs_study": "epochs",
    "activation_loss_study": "activations_losses",
}


class StudyConfig(dg.Config):
    size: str = Field(
        "default",
        description="default: CPU minutes on the embedded data; tiny: seconds (tests); paper: the source's scale "
        "(e.g. plain/ResNet-20/56 for degradation), for a GPU",
    )
    overrides: list[str] = Field(
        default_factory=list, description="KEY=VALUE for every job, e.g. trainer.max_epochs=30 to scale the study up"
    )
    seeds: list[int] | None = Field(
        None,
        description="run every variant once per seed; the declared rules are judged on 95% intervals over them "
        "(null: the study's default, seeds 0, 1, 2; []: one run each, and no interval)",
    )


def studies_root(project: ProjectResource) -> Path:
    return project.path / "runs" / "studies"


def study_folder(project: ProjectResource, study_name: str, config: StudyConfig) -> Path:
    """runs/studies/<study>/<size>-<hash of data version and overrides>: each setting keeps its own finished
    jobs, and new data (a new prepared version) trains anew instead of reusing jobs run on the old data."""
    data = data_identity(project.prepared(get_study(study_name).dataset))
    key = "\n".join(
        [f"data={data}", *config.overrides, *([f"seeds={config.seeds}"] if config.seeds is not None else [])]
    )
    return studies_root(project) / study_name / f"{config.size}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def _study_asset(asset_name: str, study_name: str) -> dg.AssetsDefinition:
    study = get_study(study_name)

    @dg.asset(
        name=asset_name,
        group_name=GROUP,
        deps=[f"prepared_{study.dataset}"],
        pool="train",
        kinds={"pytorch", "mlflow"},
        description=f"{study.title}: {study.question}",
    )
    def _asset(
        context: dg.AssetExecutionContext,
        config: StudyConfig,
        project: ProjectResource,
        mlflow: MlflowResource,
        launcher: TrainingLauncher,
    ) -> dg.MaterializeResult:
        # The whole study is one step: its jobs run inside it, one after another (steps/study.py).
        spec = StudySpec(
            out=str(study_folder(project, study_name, config)),
            study=study_name,
            data=str(project.prepared(study.dataset)),
            size=config.size,
            overrides=config.overrides,
            seeds=config.seeds,
            tracking_uri=mlflow.uri(),
            mlflow_ui=mlflow.ui_url,
        )
        return launcher.run_step(context, "study", spec)

    return _asset


STUDIES = [_study_asset(a, s) for a, s in STUDY_ASSETS.items()]


@dg.asset(
    group_name=GROUP,
    deps=[*STUDY_ASSETS, "transfer_report", "hparam_search"],
    kinds={"mlflow"},
    description="Every study's verdict and plot side by side on one Markdown page (also an MLflow artifact); "
    "links the transfer report.",
)
def studies_report(
    context: dg.AssetExecutionContext, project: ProjectResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    transfer = context.instance.get_latest_materialization_event(dg.AssetKey("transfer_report"))
    link = None
    if transfer is not None:
        url = transfer.asset_materialization.metadata.get("mlflow_run")
        link = url.value if url is not None else None
    res = studies_report_of(
        studies_root(project), transfer_report=link, tracking_uri=mlflow.uri(), search=_search_summary(context)
    )
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.md(_inline_images(res["markdown"], Path(res["path"]).parent)),
            "path": dg.MetadataValue.path(res["path"]),
            "studies": dg.MetadataValue.json(res["studies"]),
            "mlflow_run": dg.MetadataValue.url(mlflow.run_url(res["mlflow_run_id"])),
        }
    )


def _search_summary(context: dg.AssetExecutionContext) -> dict | None:
    """The latest hparam_search's best trial, for the report (None if it never ran)."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey("hparam_search"))
    if event is None or event.asset_materialization is None:
        return None
    meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    keys = ("metric", "best_value", "best_params")
    return {**{k: meta.get(k) for k in keys}, "url": meta.get("mlflow_parent_run")}


def _inline_images(markdown: str, base: Path) -> str:
    """The page's relative image links as data URLs, so Dagster shows the plots."""

    def repl(m: re.Match) -> str:
        path = base / m.group(2)
        return metadata.image(path, m.group(1)).value if path.is_file() else m.group(0)

    return re.sub(r"!\[([^\]]*)\]\(([^)]+\.png)\)", repl, markdown)


STUDY_ASSETS_ALL = [*STUDIES, studies_report]
