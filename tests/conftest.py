"""Shared fixtures: tiny synthetic raw data, its prepared classification set, a throwaway MLflow store.

Generic on purpose, so any test can reuse them:
- `tiny_raw_data`: `synthesize(...)` output folder (imagenet/, transfer/, detection/), 4 classes x 16.
- `tiny_prepared_imagenet`: `prep_classification` of it at 32 px (64 train / 16 val images).
- `mlflow_uri`: a SQLite tracking URI in a session temp folder, schema already created
  (pass it on explicitly, e.g. `--set tracking.tracking_uri=...`; the environment is left alone).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("DATA_OPTIMIZER_CACHE_FOLDER", str(REPO / ".cache" / "litdata"))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def tiny_raw_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lightning_modules.data.synth import synthesize

    out = tmp_path_factory.mktemp("raw")
    synthesize(
        out,
        classes=4,
        per_class=16,
        val_per_class=4,
        transfer_classes=2,
        transfer_per_class=4,
        transfer_val_per_class=2,
        transfer_test_per_class=10,
        det_train=4,
        det_val=2,
        det_test=2,
        seed=0,
    )
    return out


@pytest.fixture(scope="session")
def tiny_prepared_imagenet(tiny_raw_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lightning_modules.data.imagenet_prep import prep_classification

    out = tmp_path_factory.mktemp("prepared") / "imagenet"
    prep_classification(tiny_raw_data / "imagenet", out, image_size=32, seed=0)
    return out


@pytest.fixture(scope="session")
def prepared_transfer(tiny_raw_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny few-shot transfer set (train/val/test) prepared at 32 px; read-only for tests."""
    from lightning_modules.data.imagenet_prep import prep_classification

    out = tmp_path_factory.mktemp("prepared") / "transfer"
    prep_classification(tiny_raw_data / "transfer", out, image_size=32, seed=0)
    return out


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    from lightning_modules.tracking import ensure_store

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    ensure_store(uri)
    return uri
