"""Hyperparameter search as an asset: Optuna (grid or random, median/successive-halving pruning) over
short pretraining jobs, every trial a nested MLflow run; the best configuration becomes a config file
that `pretrained_backbone` takes as an overlay (`extra_config_files`).
"""

import dagster as dg

from lightning_modules.search.results import BEST_FILE
from lightning_modules.steps.specs import SearchSettings, SearchSpec
from pipelines.resources import MlflowResource, ProjectResource, TrainingLauncher

GROUP = "studies"


class SearchConfig(dg.Config, SearchSettings):
    """The search's settings (defined once, in steps/specs.py)."""


@dg.asset(
    group_name=GROUP,
    deps=["prepared_imagenet"],
    pool="train",
    kinds={"optuna", "mlflow"},
    description="Grid or random search of LR, batch size, momentum, weight decay and dropout with pruning "
    "of weak trials; writes runs/hparam_search/best.yaml for pretrained_backbone.",
)
def hparam_search(
    context: dg.AssetExecutionContext,
    config: SearchConfig,
    project: ProjectResource,
    mlflow: MlflowResource,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    # The whole search is one step: Optuna and its trials (child processes) run where the step runs.
    spec = SearchSpec(
        out=str(project.run_dir(context)),
        settings=SearchSettings(
            search_file=str(project.path / config.search_file),
            data=str(project.prepared(config.data)),
            parallel=config.parallel,
        ),
        tracking_uri=mlflow.uri(),
        best_file=str(project.path / "runs" / "hparam_search" / BEST_FILE),
        mlflow_ui=mlflow.ui_url,
    )
    return launcher.run_step(context, "hparam_search", spec)


SEARCH_ASSETS = [hparam_search]
