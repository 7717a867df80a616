"""Checks before any rank trains: registry names, and a training set that gives every rank work."""

from __future__ import annotations

from pathlib import Path

from lightning_modules.config import JobConfig
from lightning_modules.errors import ConfigError, DataError


def check_names(cfg: JobConfig, source: str) -> None:
    """Names picked from registries (model, activation, loss): a typo names the file and field."""
    from lightning_modules.classification.losses import LOSS_REGISTRY  # torch: only once the job really starts
    from lightning_modules.models import ACTIVATIONS, MODEL_REGISTRY  # torch: only once the job really starts

    checks = [
        ("model.name", cfg.model.name, MODEL_REGISTRY),
        ("model.activation", cfg.model.activation, {"default": None, **ACTIVATIONS}),
        ("loss.name", cfg.loss.name, LOSS_REGISTRY),
    ]
    if cfg.task == "detection":
        from lightning_modules.detection.models import DETECTORS  # torch: only once the job really starts

        checks.append(("detection.version", cfg.detection.version, DETECTORS))
    for key, value, registry in checks:
        if value not in registry:
            raise ConfigError(f"{source}: {key}={value!r} is unknown; choose one of: {', '.join(registry)}")


def check_trains(task, built, cfg: JobConfig, data_dir: Path, world_size: int) -> None:
    """A job whose training set makes no full batch would "finish" after zero steps: say so instead."""
    n, n_val = built.extra.get("train_samples"), built.extra.get("val_samples")
    if not n or cfg.trainer.fast_dev_run:
        return
    batch = cfg.data.batch_size
    if task.train_batches(n, batch, world_size) < 1:
        per_rank = n // world_size
        raise DataError(
            data_dir,
            f"{n} training images over {world_size} rank(s) ({per_rank} per rank) make no full "
            f"batch of data.batch_size={batch}, and partial batches are dropped: the job would "
            f"train zero steps. Use data.batch_size <= {max(1, per_rank)}, fewer ranks, or more data",
        )
    if n_val is not None and n_val < world_size:
        raise DataError(
            data_dir,
            f"{n_val} validation images cannot give each of {world_size} ranks one: use fewer "
            "ranks or more validation data",
        )
