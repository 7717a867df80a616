"""Pruning of hyperparameter-search trials: the training job's side of `lightning_modules.search`.

The search starts each trial as an ordinary training job and tells it, through the environment,
which Optuna study and trial it is (`trial_env`). The job's callback then reports the search metric
to the study at each validation end (step = epoch, 1-based as in history.json) and asks the study's
pruner whether to go on. When pruned it writes RUN_DIR/pruned.json and stops the trainer; the job
still ends normally (result.json, MLflow run) and the search marks the trial PRUNED.

The pruner is not stored by Optuna, so the search keeps its spec in the study's user attributes
(`STUDY_ATTR_PRUNER`, `STUDY_ATTR_METRIC`) and the job rebuilds it from `PRUNERS`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning_modules.errors import ConfigError

log = logging.getLogger("visionflow")

ENV_STORAGE = "VISIONFLOW_OPTUNA_STORAGE"
ENV_STUDY = "VISIONFLOW_OPTUNA_STUDY"
ENV_TRIAL_ID = "VISIONFLOW_OPTUNA_TRIAL_ID"
PRUNED_FILE = "pruned.json"
STUDY_ATTR_PRUNER = "visionflow_pruner"  # {"name": ..., "args": {...}}
STUDY_ATTR_METRIC = "visionflow_metric"  # e.g. "val/loss"
# Seconds a connection waits for the SQLite lock: trials report while the search asks and tells.
SQLITE_TIMEOUT = 120


def _median(**kw: Any):
    import optuna  # lazy: keeps optuna out of Dagster's import of search

    return optuna.pruners.MedianPruner(**kw)


def _successive_halving(**kw: Any):
    import optuna  # lazy: keeps optuna out of Dagster's import of search

    return optuna.pruners.SuccessiveHalvingPruner(**kw)


def _nop(**kw: Any):
    import optuna  # lazy: keeps optuna out of Dagster's import of search

    return optuna.pruners.NopPruner(**kw)


# name -> constructor(**args). median: n_startup_trials, n_warmup_steps, interval_steps, n_min_trials;
# successive_halving: min_resource, reduction_factor, min_early_stopping_rate, bootstrap_count.
PRUNERS: dict[str, Callable[..., Any]] = {
    "median": _median,
    "successive_halving": _successive_halving,
    "none": _nop,
}


# Used when the search config gives no pruner_args: the median pruner waits for 2 finished trials
# and never judges a trial on its first epoch (too noisy: batch norm statistics are still settling).
PRUNER_DEFAULTS: dict[str, dict[str, Any]] = {
    "median": {"n_startup_trials": 2, "n_warmup_steps": 2},
    "successive_halving": {"min_resource": 1, "reduction_factor": 2},
}


def build_pruner(name: str, args: dict[str, Any] | None = None, source: str = "pruner"):
    """An Optuna pruner from the registry; a bad name or argument is a ConfigError naming `source`."""
    if name not in PRUNERS:
        raise ConfigError(f"{source}: pruner={name!r} is unknown; choose one of: {', '.join(PRUNERS)}")
    try:
        return PRUNERS[name](**(args or {}))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: pruner_args for {name!r}: {exc}") from None


def open_storage(url: str):
    """Optuna's RDB storage with a long SQLite busy timeout (several processes share the file)."""
    import optuna  # lazy: keeps optuna out of Dagster's import of search

    kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT}} if url.startswith("sqlite:") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def trial_env(storage_url: str, study_name: str, trial_id: int) -> dict[str, str]:
    """What a trial's job needs in its environment to report to the study."""
    return {ENV_STORAGE: storage_url, ENV_STUDY: study_name, ENV_TRIAL_ID: str(trial_id)}


def pruning_callbacks(run_dir: Path) -> list:
    """Callbacks that report a trial's validation metric to its Optuna study; none outside a search."""
    storage, study, trial_id = (os.environ.get(k) for k in (ENV_STORAGE, ENV_STUDY, ENV_TRIAL_ID))
    if not (storage and study and trial_id):
        return []
    return [_callback_class()(Path(run_dir), storage, study, int(trial_id))]


def read_pruned(run_dir: Path) -> dict[str, Any] | None:
    """RUN_DIR/pruned.json ({"epoch", "value", "metric"}) when the trial was pruned, else None."""
    path = Path(run_dir) / PRUNED_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {"epoch": None, "value": None}


class _Reporter:
    """Rank 0's link to the trial: report a value for an epoch, ask whether to prune."""

    def __init__(self, storage_url: str, study_name: str, trial_id: int):
        import optuna  # lazy: keeps optuna out of Dagster's import of search

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = open_storage(storage_url)
        attrs = optuna.load_study(study_name=study_name, storage=storage).user_attrs
        spec = attrs.get(STUDY_ATTR_PRUNER) or {"name": "median", "args": {}}
        self.metric = attrs.get(STUDY_ATTR_METRIC, "val/loss")
        # RandomSampler: Trial() calls sampler.before_trial, a no-op for it (the search's sampler
        # has already chosen this trial's parameters).
        study = optuna.load_study(
            study_name=study_name,
            storage=storage,
            sampler=optuna.samplers.RandomSampler(),
            pruner=build_pruner(spec["name"], spec.get("args")),
        )
        self.trial = optuna.trial.Trial(study, trial_id)

    def report(self, value: float, epoch: int) -> bool:
        self.trial.report(value, step=epoch)  # a re-done epoch after a resume is ignored by Optuna
        return self.trial.should_prune()


def _callback_class():
    import pytorch_lightning as L  # lazy: torch/Lightning; Dagster loads this module
    import torch  # lazy: torch/Lightning; Dagster loads this module

    class OptunaPruning(L.Callback):
        """Reports the search metric at each validation end; stops the job when the study prunes it."""

        def __init__(self, run_dir: Path, storage_url: str, study_name: str, trial_id: int):
            self.run_dir = run_dir
            self.args = (storage_url, study_name, trial_id)
            self._reporter: _Reporter | None = None
            self._warned = False

        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking:
                return
            prune = self._decide(trainer) if trainer.is_global_zero else False
            # Every rank must stop together, or DDP hangs in the next collective.
            if trainer.world_size > 1:
                prune = bool(trainer.strategy.broadcast(prune, src=0))
            if prune:
                trainer.should_stop = True

        def _decide(self, trainer) -> bool:
            epoch = trainer.current_epoch + 1
            try:
                if self._reporter is None:
                    self._reporter = _Reporter(*self.args)
                metric = self._reporter.metric
                value = trainer.callback_metrics.get(metric)
                if value is None or torch.as_tensor(value).numel() != 1:
                    if not self._warned:
                        log.warning("pruning: metric %s is not logged by this job; the trial is not pruned", metric)
                        self._warned = True
                    return False
                value = float(value)
                prune = self._reporter.report(value, epoch)
                if trainer.max_epochs is not None and epoch >= trainer.max_epochs:
                    return False  # the trial has run its course: it completes, nothing to save by pruning
            except Exception as exc:  # noqa: BLE001 - the study being unreachable must not kill training
                log.warning("pruning: could not report to the Optuna study (%s); training goes on", exc)
                return False
            if prune:
                record = {"epoch": epoch, "value": value, "metric": metric}
                (self.run_dir / PRUNED_FILE).write_text(json.dumps(record))
                log.info("trial pruned at epoch %d (%s=%.4g): stopping", epoch, metric, value)
            return prune

    return OptunaPruning
