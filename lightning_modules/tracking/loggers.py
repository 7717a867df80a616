"""Trackers beside MLflow (`tracking.loggers: [mlflow, wandb, comet]`): Weights & Biases and Comet, as
Lightning's own WandbLogger and CometLogger (the `wandb` and `comet` extras).

MLflow stays the record (registry, lineage, the Dagster links); the others receive the same params and
metrics, from global rank 0 only, as MLflow does. Each runs offline unless its API key is set, so it works
with no account:
- W&B writes RUN_DIR/wandb/offline-run-*/ (`wandb sync` uploads it later); a rerun of the same run folder
  continues the same W&B run (its id is kept in RUN_DIR/wandb_run_id).
- Comet writes RUN_DIR/comet/<key>.zip when the run ends (`comet upload` uploads it). Lightning 2.6's
  CometLogger turns `online=False` into a *disabled* experiment, so offline is asked for through Comet's own
  setting (COMET_START_ONLINE=false) with `online` left unset.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from pathlib import Path
from typing import Any

from lightning_modules.config import JobConfig
from lightning_modules.errors import ConfigError

PACKAGES = {"wandb": "wandb", "comet": "comet_ml"}  # tracker -> the package its extra installs


def extra_loggers(cfg: JobConfig, run_dir: Path, run_name: str, params: dict[str, Any]) -> list[Any]:
    """The Lightning loggers for every tracker in tracking.loggers other than MLflow, params logged."""
    loggers = []
    for name in cfg.tracking.loggers:
        if name == "mlflow":
            continue
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ConfigError(
                f"tracking.loggers has {name}, but the {PACKAGES[name]} package is not installed: "
                f'pip install -e ".[{name}]"'
            )
        logger = _wandb(cfg, run_dir, run_name) if name == "wandb" else _comet(cfg, run_dir, run_name)
        logger.log_hyperparams(params)
        loggers.append(logger)
    return loggers


def _wandb(cfg: JobConfig, run_dir: Path, run_name: str):
    from pytorch_lightning.loggers import WandbLogger  # lazy: only a job that asks for W&B imports it

    id_file = run_dir / "wandb_run_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
    id_file.write_text(run_id)
    return WandbLogger(
        project=cfg.tracking.experiment,
        name=run_name,
        id=run_id,
        resume="allow",
        save_dir=str(run_dir),
        offline=not os.environ.get("WANDB_API_KEY"),
        tags=[f"{k}:{v}" for k, v in cfg.tracking.tags.items()][:64],
    )


def _comet(cfg: JobConfig, run_dir: Path, run_name: str):
    if not os.environ.get("COMET_API_KEY"):
        os.environ.setdefault("COMET_START_ONLINE", "false")  # see the module's docstring
    os.environ.setdefault("COMET_DISABLE_AUTO_LOGGING", "1")  # Lightning's logger logs; no monkey-patching
    from pytorch_lightning.loggers import CometLogger  # lazy: only a job that asks for Comet imports it

    key_file = run_dir / "comet_experiment_key"
    key = key_file.read_text().strip() if key_file.is_file() else uuid.uuid4().hex  # 32 characters, as Comet asks
    key_file.write_text(key)
    return CometLogger(
        project=cfg.tracking.experiment,
        name=run_name,
        experiment_key=key,
        offline_directory=str(run_dir / "comet"),
        log_code=False,
        log_git_metadata=False,
        log_git_patch=False,
        display_summary_level=0,
    )


def finish_loggers(loggers: list[Any]) -> None:
    """Close each tracker's run: W&B writes the run's summary and config, and Comet its offline archive,
    when the run ends, which Lightning's loggers leave to interpreter exit (too late for offline files)."""
    for logger in loggers:
        experiment = logger.experiment
        (experiment.finish if hasattr(experiment, "finish") else experiment.end)()
