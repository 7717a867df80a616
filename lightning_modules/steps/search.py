"""The hyperparameter search as one step: Optuna and its trials (each an ordinary training job, run as a
child process) run where the step runs, so on the cluster deployment the whole search runs in the
training image next to the GPUs; Dagster sees one Pipes session with the search's log and result.
Run by `python -m lightning_modules.steps hparam_search SPEC.json`."""

from __future__ import annotations

import shutil
from pathlib import Path

from lightning_modules import tracking
from lightning_modules.errors import VisionflowError
from lightning_modules.search import BEST_FILE, format_trials, load_search_config, run_search
from lightning_modules.steps.report import StepReport, image, typed
from lightning_modules.steps.specs import SearchSpec


def hparam_search(spec: SearchSpec) -> StepReport:
    cfg = load_search_config(spec.settings.search_file)
    if spec.settings.parallel:
        cfg.parallel = spec.settings.parallel
    summary = run_search(cfg, Path(spec.settings.data), spec.out_dir, tracking_uri=spec.tracking_uri)
    if summary["best_config"] is None:
        raise VisionflowError(
            f"search {spec.out}: no trial completed ({summary['n_pruned']} pruned, {summary['n_failed']} failed), "
            f"so there is no best configuration; see {spec.out}/trials.json"
        )
    best = Path(spec.best_file)
    best.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(spec.out_dir / BEST_FILE, best)  # a stable path for pretrained_backbone's overlay
    figure = Path(summary["figure"]) if summary["figure"] else None
    parent_url = tracking.run_url(spec.tracking_uri, summary["parent_run_id"], spec.mlflow_ui)
    metadata = {
        "best_value": summary["best_value"],
        "metric": summary["metric"],
        "best_params": typed(summary["best_params"], "json"),
        "best_config": typed(str(best), "path"),
        "n_trials": summary["n_trials"],
        "n_complete": summary["n_complete"],
        "n_pruned": summary["n_pruned"],
        "n_failed": summary["n_failed"],
        "trials": typed(f"```\n{format_trials(summary)}\n```", "md"),
        "search_plot": image(figure, "search") if figure and figure.is_file() else "no figure",
        "mlflow_parent_run": typed(parent_url, "url"),
    }
    message = f"best trial {summary['best_trial']}: {summary['best_params']} -> {best}"
    return StepReport(metadata, message=message)
