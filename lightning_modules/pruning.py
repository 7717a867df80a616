"""Pruning of hyperparameter-search trials (see lightning_modules/search.py, in progress)."""

from __future__ import annotations

from pathlib import Path


def pruning_callbacks(run_dir: Path) -> list:
    """Callbacks that report a trial's validation loss to its Optuna study; none outside a search."""
    return []
