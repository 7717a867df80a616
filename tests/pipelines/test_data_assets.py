"""The data stage in Dagster, for real: tiny generated data in a git+DVC project, materialized with checks."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from lightning_modules.data import versioning
from pipelines.assets.data import DATA_ASSETS, prepared_detection, prepared_imagenet
from pipelines.launcher import LocalLauncher
from pipelines.resources import DvcResource, ProjectResource

TINY = dict(
    classes=4,
    per_class=12,
    val_per_class=3,
    transfer_classes=2,
    transfer_per_class=6,
    transfer_val_per_class=2,
    det_train=16,
    det_val=6,
    det_test=4,
)
CLS_CONFIG = {"image_size": 32, "workers": 2}


@pytest.fixture(scope="module")
def project(tmp_path_factory, versioned_project) -> Path:
    return versioned_project(tmp_path_factory.mktemp("project"), seed=3, **TINY)


def _resources(root: Path) -> dict:
    # The preps run as steps through the launcher (a subprocess here), reporting through Pipes.
    return {
        "project": ProjectResource(root=str(root)),
        "dvc": DvcResource(root=str(root)),
        "launcher": LocalLauncher(),
    }


def _run_config(detection: dict | None = None) -> dict:
    return {
        "ops": {
            "prepared_imagenet": {"config": CLS_CONFIG},
            "prepared_transfer": {"config": CLS_CONFIG},
            "prepared_detection": {"config": {"anchor_image_size": 256, **(detection or {})}},
        }
    }


def test_data_stage_materializes_with_checks_passing(project: Path) -> None:
    result = dg.materialize(DATA_ASSETS, resources=_resources(project), run_config=_run_config())
    assert result.success
    checks = {(e.asset_key.to_user_string(), e.check_name): e.passed for e in result.get_asset_check_evaluations()}
    assert len(checks) == 3 + 3 + 2 and all(checks.values()), checks

    version = versioning.read_data_version(project / "data.dvc")
    mats = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    imagenet = mats["prepared_imagenet"]
    assert imagenet["data_version"].value == version
    assert imagenet["classes"].value == TINY["classes"]
    assert imagenet["samples"].value.startswith("![samples](data:image/png;base64,")
    manifest = json.loads((project / "prepared" / "imagenet" / "manifest.json").read_text())
    assert manifest["source_data_version"] == version
    assert manifest["totals"]["train"] + manifest["totals"]["val"] + len(manifest["rejected"]) == TINY["classes"] * (
        TINY["per_class"] + TINY["val_per_class"]
    )
    det = mats["prepared_detection"]
    assert det["boxes"].value > 0 and det["background_images"].value > 0
    # The held-out test split is kept, counted on its own and written as test.json.
    assert det["test_images"].value == TINY["det_test"] and det["counts"].value["test"]["images"] == TINY["det_test"]
    assert len(json.loads((project / "prepared" / "detection" / "test.json").read_text())) == TINY["det_test"]
    assert len(json.loads((project / "prepared" / "detection" / "manifest.json").read_text())["anchors"]["v3"]) == 9


def test_failing_check_is_reported(project: Path) -> None:
    # A best-possible-recall floor no anchor set can reach: the blocking check must fail.
    result = dg.materialize(
        [prepared_detection],
        resources=_resources(project),
        run_config={"ops": {"prepared_detection": {"config": {"bpr_floor": 1.01}}}},
        raise_on_error=False,
    )
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["anchors_bpr"] is False and checks["detection_rejected_under_limit"] is True


def test_bad_source_fails_naming_the_file_and_keeps_the_old_output(project: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "bad"
    shutil.copytree(project, root, ignore=shutil.ignore_patterns("prepared"))
    res = _resources(root)
    assert dg.materialize(
        [prepared_imagenet], resources=res, run_config={"ops": {"prepared_imagenet": {"config": CLS_CONFIG}}}
    ).success
    before = (root / "prepared" / "imagenet" / "manifest.json").read_bytes()
    # Break far more files than the 5% limit allows.
    broken = sorted((root / "data" / "imagenet" / "train").rglob("*.JPEG"))[:10]
    for f in broken:
        f.write_bytes(f.read_bytes()[:40])
    result = dg.materialize(
        [prepared_imagenet],
        resources=res,
        raise_on_error=False,
        run_config={"ops": {"prepared_imagenet": {"config": CLS_CONFIG}}},
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error)
    assert any(f.name in message for f in broken), message
    assert (root / "prepared" / "imagenet" / "manifest.json").read_bytes() == before
