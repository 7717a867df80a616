"""Where things live. One place, so the CLI, the jobs and Dagster agree.

The project root is `$VISIONFLOW_ROOT` when set, else the folder holding this package
(an editable install, as `make` does). Generated things (data, prepared sets, runs,
the MLflow store) live under it and are ignored by git.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    env = os.environ.get("VISIONFLOW_ROOT")
    return Path(env).resolve() if env else Path(__file__).resolve().parent.parent


def data_dir(root: Path | None = None) -> Path:
    """The DVC-tracked raw data (`data/`, tracked by `data.dvc`)."""
    return (root or project_root()) / "data"


def prepared_dir(root: Path | None = None) -> Path:
    return (root or project_root()) / "prepared"


def runs_dir(root: Path | None = None) -> Path:
    return (root or project_root()) / "runs"
