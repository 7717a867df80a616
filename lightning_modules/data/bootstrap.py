"""Make sure the project's raw data is there and versioned, the way `make run` needs it.

Order of preference: the data already on disk; else `dvc pull` from the remote (the version
`data.dvc` names); else generate the embedded default set. Then `dvc add` + `dvc push`, so
every run can name the data version it used.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lightning_modules.data import versioning
from lightning_modules.data.synth import synthesize

log = logging.getLogger("visionflow")


def _has_data(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def ensure_default_data(root: Path, *, seed: int = 0, workers: int = 2) -> str:
    """Return the data version of `root/data`, pulling or generating the data when missing."""
    root = Path(root)
    data = root / "data"
    versioning.init(root)
    if not _has_data(data) and versioning.read_data_version(root / "data.dvc"):
        try:
            versioning.pull(root)
            log.info("pulled data version %s from the DVC remote", versioning.read_data_version(root / "data.dvc"))
        except Exception as exc:  # noqa: BLE001 - an empty or missing remote is expected on a fresh clone
            log.info("dvc pull found nothing usable (%s); generating the embedded default data", type(exc).__name__)
    if not _has_data(data):
        log.info("generating the embedded default data into %s", data)
        synthesize(data, seed=seed, workers=workers)
    version = versioning.add(root)
    versioning.push(root)
    return version
