"""Trackers beside MLflow (`tracking.loggers: [mlflow, wandb]`): Weights & Biases, as Lightning's own
WandbLogger (the `wandb` extra).

MLflow stays the record (registry, lineage, the Dagster links); W&B receives the same params and
metrics, from global rank 0 only, as MLflow does. It runs offline unless WANDB_API_KEY is set, so it works
with no account: it writes RUN_DIR/wandb/offline-run-*/ (`wandb sync` uploads it later). A rerun of the
same run folder continues the same W&B run (its id is kept in RUN_DIR/wandb_run_id).

Comet is not offered yet: Lightning 2.6's CometLogger turns `online=False` into a disabled experiment,
so it could not be checked here without an account.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from pathlib import Path
from typing import Any

from lightning_modules.config import JobConfig
from lightning_modules.errors import ConfigError

PACKAGES = {"wandb": "wandb"}  # tracker -> the package its extra installs


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
        logger = _wandb(cfg, run_dir, run_name)
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


def finish_loggers(loggers: list[Any]) -> None:
    """Close each tracker's run: W&B writes the run's summary and config when its run finishes, which
    Lightning's logger leaves to interpreter exit (too late for an offline run's files)."""
    for logger in loggers:
        logger.experiment.finish()
