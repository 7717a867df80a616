"""Dagster resources: where the project lives and how its data is versioned."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from lightning_modules.data import versioning
from lightning_modules.paths import project_root


class ProjectResource(dg.ConfigurableResource):
    """The project root; raw data, prepared sets and runs are folders under it."""

    root: str = str(project_root())

    @property
    def path(self) -> Path:
        return Path(self.root)

    def raw(self, name: str) -> Path:
        return self.path / "data" / name

    def prepared(self, name: str) -> Path:
        return self.path / "prepared" / name


class DvcResource(dg.ConfigurableResource):
    """Reads the data version from `data.dvc` (no DVC lock); writes go through the library's file lock."""

    root: str = str(project_root())

    def data_version(self) -> str | None:
        return versioning.read_data_version(Path(self.root) / "data.dvc")

    def add_and_push(self) -> str:
        version = versioning.add(Path(self.root))
        versioning.push(Path(self.root))
        return version


def default_resources() -> dict:
    return {"project": ProjectResource(), "dvc": DvcResource()}
