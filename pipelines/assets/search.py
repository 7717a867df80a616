"""Hyperparameter search as an asset: Optuna (grid or random, median/successive-halving pruning) over
short pretraining jobs, every trial a nested MLflow run; the best configuration becomes a config file
that `pretrained_backbone` takes as an overlay (`extra_config_files`).
"""

import shutil
from pathlib import Path

import dagster as dg
from pydantic import Field

from pipelines import metadata
from pipelines.resources import MlflowResource, ProjectResource

GROUP = "studies"


class SearchConfig(dg.Config):
    search_file: str = Field(
        "configs/search-cpu.yaml",
        description="search YAML (space, sampler, pruner, budget), relative to the project root",
    )
    data: str = Field("imagenet", description="prepared set to search on (prepared/<data>)")
    parallel: int = Field(0, description="trials at once; 0 = the search file's `parallel`")


@dg.asset(
    group_name=GROUP,
    deps=["prepared_imagenet"],
    pool="train",
    kinds={"optuna", "mlflow"},
    description="Grid or random search of LR, batch size, momentum, weight decay and dropout with pruning "
    "of weak trials; writes runs/hparam_search/best.yaml for pretrained_backbone.",
)
def hparam_search(
    context: dg.AssetExecutionContext, config: SearchConfig, project: ProjectResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    from lightning_modules import search

    cfg = search.load_search_config(project.path / config.search_file)
    if config.parallel:
        cfg.parallel = config.parallel
    out = project.run_dir(context)
    # Trials run as parallel child processes (the training job itself, one per trial): Pipes
    # sessions are per step, so several at once from one step go through plain subprocesses.
    summary = search.run_search(cfg, project.prepared(config.data), out, tracking_uri=mlflow.uri())
    latest = project.path / "runs" / "hparam_search" / search.BEST_FILE
    shutil.copyfile(out / search.BEST_FILE, latest)  # a stable path for pretrained_backbone's overlay
    context.log.info(f"best trial {summary['best_trial']}: {summary['best_params']} -> {latest}")
    figure = Path(summary["figure"])
    return dg.MaterializeResult(
        metadata={
            "best_value": summary["best_value"],
            "metric": summary["metric"],
            "best_params": dg.MetadataValue.json(summary["best_params"]),
            "best_config": dg.MetadataValue.path(str(latest)),
            "n_trials": summary["n_trials"],
            "n_complete": summary["n_complete"],
            "n_pruned": summary["n_pruned"],
            "n_failed": summary["n_failed"],
            "trials": dg.MetadataValue.md(f"```\n{search.format_trials(summary)}\n```"),
            "search_plot": metadata.image(figure, "search") if figure.is_file() else "no figure",
            "mlflow_parent_run": dg.MetadataValue.url(mlflow.run_url(summary["parent_run_id"])),
        }
    )


SEARCH_ASSETS = [hparam_search]
